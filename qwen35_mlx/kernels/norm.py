"""RMSNorm of the decoder (and of attention's q/k heads), optionally fused with the residual add before it:
one launch of metal/rms_norm.metal on a GPU backend, MLX ops elsewhere (same numbers up to float32 rounding
order; the kernel is checked against this MLX-ops branch). For a decode step, norm_gemv also takes the input
projections after the norm into the same launch (metal/norm_gemv.metal)."""

from __future__ import annotations


import mlx.core as mx

from . import _metal
from .gdn import gpu_backend

MAX_GROUPS_PER_THREAD = 8     # registers: rows up to 8 * 4 * 256 = 8192 elements take the kernel


def threads(H: int) -> int:
    """Threads per row: one group of 4 elements each up to 256 threads (at least one simdgroup)."""
    n = 32
    while n < 256 and n * 4 < H:
        n *= 2
    return n


def kernel_supported(H: int) -> bool:
    return H % 4 == 0 and H <= 4 * threads(H) * MAX_GROUPS_PER_THREAD


def rms_norm(x, weight, eps: float, residual=None, *, backend: str | None = "auto"):
    """y = weight * rmsnorm(x) over the last axis, in float32, returned in x's dtype. With `residual`, x is
    first residual + x (in x's dtype) and the result is (y, that sum)."""
    backend = gpu_backend() if backend == "auto" else backend
    H = x.shape[-1]
    mixed = residual is not None and (residual.dtype != x.dtype or residual.shape != x.shape)
    if backend is None or not kernel_supported(H) or x.size == 0 or mixed or not _metal.enabled("rms_norm"):
        if residual is not None:
            x = residual + x
        y = mx.fast.rms_norm(x, weight, eps).astype(x.dtype)
        return y if residual is None else (y, x)
    add = residual is not None
    NT = threads(H)
    rows = x.size // H
    y, res = _metal.kernel("rms_norm", backend)(
        inputs=[residual if add else x, x, weight, _metal.f32_scalar(float(eps))],
        template=[("InT", x.dtype), ("H", H), ("NT", NT), ("ADD", add)],
        grid=(NT * rows, 1, 1),
        threadgroup=(NT, 1, 1),
        output_shapes=[x.shape, x.shape if add else (1,)],
        output_dtypes=[x.dtype, x.dtype],
    )
    return (y, res) if add else y


GEMV_NT = 128                 # norm_gemv: 4 simdgroups ...
GEMV_R = 4                    # ... of 4 outputs each
GEMV_MAX_BYTES = 16384        # the normalised row in threadgroup memory (Metal has 32 KiB)


def gemv_backend(x, w) -> str | None:
    """The backend norm_gemv runs on here for rows x [..., K] and an unquantized weight w [N, K] of x's dtype, or
    None: no GPU kernel backend, switched off, quantized or mixed weights, or K past what it takes (a multiple of
    16 bytes, the row within GEMV_MAX_BYTES)."""
    K = x.shape[-1]
    if (w is None or w.dtype != x.dtype or w.ndim != 2 or w.shape[1] != K or (K * x.dtype.size) % 16
            or K * x.dtype.size > GEMV_MAX_BYTES or not _metal.enabled("norm_gemv")):
        return None
    return gpu_backend()


def norm_gemv(x, weight, eps: float, w, residual=None, *, glu: bool = False, backend: str):
    """RMSNorm of x [..., K] (with `residual`: of residual + x, rounded to x's dtype) then the product with w
    [N, K] (w @ row for each row), in one launch. glu: w holds [gate; up] (2 N rows) and the result is
    silu(gate) * up, [..., N]. Returns y (and, with residual, the sum residual + x)."""
    K = x.shape[-1]
    N = w.shape[0] // 2 if glu else w.shape[0]
    M = x.size // K
    add = residual is not None
    y, res = _metal.kernel("norm_gemv", backend)(
        inputs=[residual if add else x, x, weight, w, _metal.f32_scalar(float(eps))],
        template=[("InT", x.dtype), ("K", K), ("N", N), ("NT", GEMV_NT), ("R", GEMV_R), ("ADD", add), ("GLU", glu)],
        grid=(GEMV_NT * -(-N // (GEMV_NT // 32 * GEMV_R)), 1, M),
        threadgroup=(GEMV_NT, 1, 1),
        output_shapes=[(*x.shape[:-1], N), x.shape if add else (1,)],
        output_dtypes=[x.dtype, x.dtype],
    )
    return (y, res) if add else y
