"""RMSNorm of the decoder (and of attention's q/k heads), optionally fused with the residual add before it:
one launch of metal/rms_norm.metal on a GPU backend, MLX ops elsewhere (same numbers up to float32 rounding
order; the kernel is checked against this MLX-ops branch). For a decode step, norm_gemv also takes the input
projections after the norm into the same launch (metal/norm_gemv.metal)."""

from __future__ import annotations


import mlx.core as mx
import mlx.nn as nn

from . import _metal
from .gdn import gpu_backend

ROW_GROUPS = 128               # 16-byte groups of a row per simdgroup (4 per lane in registers)
ROWS_THREADS = 128            # a threadgroup takes rows until it has this many threads
MAX_WPR = 16                  # simdgroups per row: rows up to 16 * 128 groups (bf16: 16384 elements)


def layout(H: int, itemsize: int) -> tuple[int, int] | None:
    """(simdgroups per row, rows per threadgroup) of metal/rms_norm.metal for rows of H elements, or None when
    it does not take them (H not a whole number of 16-byte groups, or wider than MAX_WPR simdgroups hold)."""
    vw = 16 // itemsize
    if H % vw:
        return None
    wpr = -(-(H // vw) // ROW_GROUPS)
    return (wpr, max(1, ROWS_THREADS // (32 * wpr))) if wpr <= MAX_WPR else None


def rms_norm(x, weight, eps: float, residual=None, *, gate=None, backend: str | None = "auto"):
    """y = weight * rmsnorm(x) over the last axis, in float32, returned in x's dtype. With `residual`, x is
    first residual + x (in x's dtype) and the result is (y, that sum). With `gate` (x's shape): y * silu(gate),
    the GDN output norm (its MLX ops round where transformers does; the kernel rounds once)."""
    backend = gpu_backend() if backend == "auto" else backend
    H = x.shape[-1]
    mixed = any(a is not None and (a.dtype != x.dtype or a.shape != x.shape) for a in (residual, gate))
    lay = layout(H, x.dtype.size)
    if backend is None or lay is None or x.size == 0 or mixed or not _metal.enabled("rms_norm"):
        return _rms_norm_ops(x, weight, eps, residual, gate)
    add = residual is not None
    wpr, rpt = lay
    NT = 32 * wpr * rpt
    rows = x.size // H
    y, res = _metal.kernel("rms_norm", backend)(
        inputs=[residual if add else x, x, x if gate is None else gate, weight, _metal.ints(rows)],
        template=[("InT", x.dtype), ("H", H), ("WPR", wpr), ("RPT", rpt), ("ADD", add), ("GATE", gate is not None),
                  ("EPS", _metal.float_bits(eps))],
        grid=(NT * -(-rows // rpt), 1, 1),
        threadgroup=(NT, 1, 1),
        output_shapes=[x.shape, x.shape if add else (1,)],
        output_dtypes=[x.dtype, x.dtype],
    )
    return (y, res) if add else y


def _rms_norm_ops(x, weight, eps, residual, gate):
    if residual is not None:
        x = residual + x
    if gate is not None:
        return _gated_rms_norm(x, gate, weight, eps)
    y = mx.fast.rms_norm(x, weight, eps).astype(x.dtype)
    return y if residual is None else (y, x)


@mx.compile
def _gated_rms_norm(x, z, weight, eps):
    y = mx.fast.rms_norm(x, None, eps) * weight.astype(x.dtype)
    return (y.astype(mx.float32) * nn.silu(z.astype(mx.float32))).astype(x.dtype)


GEMV_NT = 128                 # norm_gemv: 4 simdgroups ...
GEMV_R = 4                    # ... of up to 4 outputs each; narrower products take fewer ...
GEMV_MIN_TG = 256             # ... so as to make this many threadgroups (a large GPU has 100+ cores to fill)
GEMV_MAX_BYTES = 16384        # the normalised row in threadgroup memory (Metal has 32 KiB)


def gemv_backend(x, w, gate=None, head: int = 0) -> str | None:
    """The backend norm_gemv runs on here for rows x [..., K] and an unquantized weight w [N, K] of x's dtype, or
    None: no GPU kernel backend, switched off, quantized or mixed weights, or K past what it takes (a multiple of
    16 bytes, the row within GEMV_MAX_BYTES). With gate (GATED): also heads of a multiple of 4 channels that
    divide K, and a gate of x's dtype."""
    K = x.shape[-1]
    if (w is None or w.dtype != x.dtype or w.ndim != 2 or w.shape[1] != K or (K * x.dtype.size) % 16
            or K * x.dtype.size > GEMV_MAX_BYTES or not _metal.enabled("norm_gemv")):
        return None
    if gate is not None and (head <= 0 or head % 4 or K % head or gate.dtype != x.dtype):
        return None
    return gpu_backend()


def gemv_rows(N: int) -> int:
    """norm_gemv's outputs per simdgroup for N outputs (GEMV_R, halved while that leaves fewer than GEMV_MIN_TG
    threadgroups)."""
    r = GEMV_R
    while r > 1 and -(-N // (GEMV_NT // 32 * r)) < GEMV_MIN_TG:
        r //= 2
    return r


def norm_gemv(x, weight, eps: float, w, residual=None, *, glu: bool = False, gate=None, gate_at: int = 0,
              head: int = 0, backend: str):
    """RMSNorm of x [..., K] (with `residual`: of residual + x, rounded to x's dtype) then the product with w
    [N, K] (w @ row for each row), in one launch. glu: w holds [gate; up] (2 N rows) and the result is
    silu(gate) * up, [..., N]. Returns y (and, with residual, the sum residual + x).
    gate: the GDN output norm instead, per head of `head` channels, weight [head]: weight * x / rms(x) * silu(z)
    with z = gate[..., gate_at:gate_at + K] (a GDN layer's projection row, read in place; one row per row of x)."""
    K = x.shape[-1]
    N = w.shape[0] // 2 if glu else w.shape[0]
    add = residual is not None
    M = x.size // K
    gated = gate is not None
    if gated and (add or gate.size != M * gate.shape[-1] or gate.shape[-1] < gate_at + K or K % head):
        raise ValueError(f"norm_gemv: gate {tuple(gate.shape)} at {gate_at} for rows {tuple(x.shape)} of heads "
                         f"of {head}" + (" with a residual" if add else ""))
    R = gemv_rows(N)
    y, res = _metal.kernel("norm_gemv", backend)(
        inputs=[residual if add else x, gate if gated else x, weight, w],
        template=[("InT", x.dtype), ("K", K), ("N", N), ("NT", GEMV_NT), ("R", R), ("ADD", add),
                  ("GLU", glu), ("GATED", gated), ("DV", head if gated else 4), ("ZO", gate_at),
                  ("HS", gate.shape[-1] if gated else K), ("EPS", _metal.float_bits(eps))],
        grid=(GEMV_NT * -(-N // (GEMV_NT // 32 * R)), 1, M),
        threadgroup=(GEMV_NT, 1, 1),
        output_shapes=[(*x.shape[:-1], N), x.shape if add else (1,)],
        output_dtypes=[x.dtype, x.dtype],
    )
    return (y, res) if add else y
