"""The fused residual add + RMSNorm + projection of a decode step (metal/norm_gemv.metal) through the CPU
emulator: against float64 NumPy on the same rounded inputs (the normalised row rounded to the activation dtype,
as the MLX ops feed their matmul), plain and SwiGLU (silu(gate) * up), rows of the output not a multiple of a
threadgroup's, two tokens; planted bugs.
"""

import mlx.core as mx
import numpy as np
import pytest

from planted import assert_caught
from helpers import assert_rel_close
from qwen35_mlx.kernels import norm

TOL = {mx.float32: 1e-5, mx.bfloat16: 1e-2}
CASES = {  # id: (M, K, N, glu, add, dtype)
    "bf16-add": (1, 1024, 200, False, True, mx.bfloat16),
    "bf16-glu-add-2tok": (2, 512, 70, True, True, mx.bfloat16),
    "fp32-first-layer": (1, 96, 37, False, False, mx.float32),     # no residual (the first layer); K < a step
    "fp32-glu": (2, 600, 45, True, False, mx.float32),             # K not a multiple of a simdgroup's step
}


def make(M, K, N, glu, dtype, seed):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    x, h = (mx.array(f(M, 1, K) * 2 + 0.3).astype(dtype) for _ in range(2))
    nw = mx.array(1 + 0.3 * f(K))
    w = mx.array(f(2 * N if glu else N, K) / np.sqrt(K)).astype(dtype)
    return x, h, nw, w


def reference(x, h, nw, w, eps, glu, add):
    s = h + x if add else x                                       # rounded to the dtype, as the model adds
    f = np.asarray(s.astype(mx.float32), np.float64)
    xn = np.asarray(nw, np.float64) * f / np.sqrt((f * f).mean(-1, keepdims=True) + eps)
    xn = np.asarray(mx.array(xn.astype(np.float32)).astype(x.dtype).astype(mx.float32), np.float64)
    y = xn @ np.asarray(w.astype(mx.float32), np.float64).T
    if glu:
        g, u = np.split(y, 2, axis=-1)
        y = g / (1 + np.exp(-g)) * u
    return y, s


def check(case, seed, eps=1e-6):
    M, K, N, glu, add, dtype = CASES[case]
    x, h, nw, w = make(M, K, N, glu, dtype, seed)
    out = norm.norm_gemv(x, nw, eps, w, residual=h if add else None, glu=glu, backend="metal")
    y, res = out if add else (out, None)
    ref_y, ref_s = reference(x, h, nw, w, eps, glu, add)
    assert y.shape == (M, 1, N) and y.dtype == dtype, case
    assert_rel_close(y.astype(mx.float32), ref_y, TOL[dtype], f"{case} y")
    if add:
        assert mx.array_equal(res, ref_s).item(), f"{case}: the residual sum is not x + h"


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_kernel_matches_reference(metal_on_cpu, case):
    check(case, seed=len(case))


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
def test_partial_sums(metal_on_cpu, dtype):
    """parts: what is added is float32 partial sums [B, P, K] (gdn_decode's output projection by head), summed in
    float32 and rounded once: s = dtype(x + sum of parts). Two tokens, 5 parts, GLU."""
    check_parts(dtype, "metal")


def check_parts(dtype, backend):
    B, P, K, N = 2, 5, 512, 70
    rng = np.random.default_rng(3)
    x, _, nw, w = make(B, K, N, True, dtype, seed=9)
    parts = mx.array(rng.standard_normal((B, P, K)).astype(np.float32))
    y, res = norm.norm_gemv(parts, nw, 1e-6, w, residual=x, glu=True, parts=True, backend=backend)
    total = np.asarray(x.astype(mx.float32), np.float64) + np.asarray(parts, np.float64).sum(1, keepdims=True)
    s = mx.array(total.astype(np.float32)).astype(dtype)
    assert res.shape == x.shape and y.shape == (B, 1, N)
    assert_rel_close(res.astype(mx.float32), s.astype(mx.float32), 1e-6 if dtype == mx.float32 else 4e-3, "sum")
    ref_y, _ = reference(s, None, nw, w, 1e-6, True, False)
    assert_rel_close(y.astype(mx.float32), ref_y, TOL[dtype], "y over the summed parts")
    with pytest.raises(ValueError, match="parts"):
        norm.norm_gemv(parts, nw, 1e-6, w, glu=True, parts=True, backend=backend)      # parts need a residual


def test_parts_planted_bug_is_caught(metal_on_cpu, monkeypatch):
    assert_caught(monkeypatch, "norm_gemv.metal", "for (int p = 1; p < PARTS; ++p)",
                  "for (int p = 1; p < PARTS - 1; ++p)", lambda: check_parts(mx.float32, "metal"))


def test_backend_choice(metal_on_cpu):
    x = mx.zeros((1, 1, 1024), mx.bfloat16)
    assert norm.gemv_backend(x, mx.zeros((64, 1024), mx.bfloat16)) == "metal"
    assert norm.gemv_backend(x, mx.zeros((64, 1024), mx.float32)) is None            # mixed dtypes
    assert norm.gemv_backend(x, mx.zeros((64, 128), mx.uint32)) is None              # quantized (packed) weight
    big = mx.zeros((1, 1, 16384), mx.bfloat16)
    assert norm.gemv_backend(big, mx.zeros((8, 16384), mx.bfloat16)) is None         # row past 16 KiB


PLANTED = {
    "no-barrier-before-products": ("}\nBARRIER();\n\n// 2.", "}\n\n// 2."),
    "glu-up-is-gate": ("const float u = float(static_cast<InT>(acc[r][NR - 1]));",
                       "const float u = float(static_cast<InT>(acc[r][0]));"),
    "norm-weight-dropped": ("static_cast<InT>(nw[i + e] * (float(xs[i + e]) * inv))",
                            "static_cast<InT>(float(xs[i + e]) * inv)"),
    "last-step-skipped": ("    if (k < K) {\n      float xv", "    if (k < K - SW) {\n      float xv"),
}


@pytest.mark.parametrize("bug", list(PLANTED), ids=list(PLANTED))
def test_planted_bug_is_caught(metal_on_cpu, monkeypatch, bug):
    text, replacement = PLANTED[bug]
    assert_caught(monkeypatch, "norm_gemv.metal", text, replacement, lambda: check("bf16-glu-add-2tok", seed=4))
