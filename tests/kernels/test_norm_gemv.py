"""The fused norm + projection of a decode step (metal/norm_gemv.metal) through the CPU emulator: against float64
NumPy on the same rounded inputs (the normalised row rounded to the activation dtype, as the MLX ops feed their
matmul); the residual add + RMSNorm, plain and SwiGLU (silu(gate) * up), rows of the output not a multiple of a
threadgroup's, two tokens; the GDN output norm per head (GATED) with out_proj; planted bugs.
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


@pytest.mark.parametrize("min_tg, nt", [(0, 128), (1 << 20, 128), (1 << 20, 256)],
                         ids=["4-outputs-per-simdgroup", "1-output-per-simdgroup", "8-simdgroups-of-1"])
def test_outputs_per_simdgroup(metal_on_cpu, monkeypatch, min_tg, nt):
    """The cases above take 1 output per simdgroup (few outputs, many threadgroups wanted); wide products take up
    to 4: both ends, plain and GLU, and the gated norm; and 8 simdgroups a threadgroup (the launch shape of MLX's
    own gemv, one row per simdgroup: an A/B for benchmarks/kernel_times.py --set)."""
    monkeypatch.setattr(norm, "GEMV_MIN_TG", min_tg)
    monkeypatch.setattr(norm, "GEMV_NT", nt)
    assert norm.gemv_rows(200) == (4 if min_tg == 0 else 1)
    check("bf16-add", seed=8)
    check("fp32-glu", seed=9)
    check_gated("fp32-dv40-3heads", "metal", seed=10)


GATED = {  # id: (M, heads, head dim, N, dtype)
    "bf16-0.8b-head-2tok": (2, 4, 128, 70, mx.bfloat16),
    "fp32-dv40-3heads": (1, 3, 40, 45, mx.float32),       # K = 120: a head not a whole simdgroup's groups
}


def reference_gated(y, z, nw, w, eps, head):
    """out_proj of the GDN output norm per head: nw * y / rms(y) * silu(z), rounded to the dtype, in float64."""
    f64 = lambda a: np.asarray(a.astype(mx.float32), np.float64)            # noqa: E731
    M, K = y.shape[0], y.shape[-1]
    f, zf = f64(y).reshape(M, K // head, head), f64(z).reshape(M, K // head, head)
    xn = f64(nw) * f / np.sqrt((f * f).mean(-1, keepdims=True) + eps) * zf / (1 + np.exp(-zf))
    xn = f64(mx.array(xn.reshape(M, 1, K).astype(np.float32)).astype(y.dtype))
    return xn @ f64(w).T


def check_gated(case, backend, seed=5, eps=1e-6):
    """GATED: y [M, 1, K] and z read in place from a wider row (at an odd offset, rows of an odd length)."""
    M, H, D, N, dtype = GATED[case]
    K = H * D
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)              # noqa: E731
    y = mx.array(f(M, 1, K) * 0.7 + 0.1).astype(dtype)
    row = mx.array(f(M, 1, 3 + K + 6)).astype(dtype)                        # z = row[..., 3:3 + K]
    nw = mx.array(1 + 0.3 * f(D))
    w = mx.array(f(N, K) / np.sqrt(K)).astype(dtype)
    assert norm.gemv_backend(y, w, row, D) == backend
    out = norm.norm_gemv(y, nw, eps, w, gate=row, gate_at=3, head=D, backend=backend)
    assert out.shape == (M, 1, N) and out.dtype == dtype, case
    assert_rel_close(out.astype(mx.float32), reference_gated(y, row[..., 3:3 + K], nw, w, eps, D), TOL[dtype],
                     f"{case} gated")
    with pytest.raises(ValueError, match="gate"):
        norm.norm_gemv(y, nw, eps, w, gate=row[..., :K], gate_at=3, head=D, backend=backend)     # z past the row


@pytest.mark.parametrize("case", list(GATED), ids=list(GATED))
def test_gated_norm_then_product(metal_on_cpu, case):
    check_gated(case, "metal")


PLANTED_GATED = {
    "head-sum-short": ("g < (hd + 1) * (DV / 4); ++g)", "g < (hd + 1) * (DV / 4) - 1; ++g)"),
    "no-barrier-after-squares": ("    gsq[i / 4] = ss;\n  }\n  BARRIER();", "    gsq[i / 4] = ss;\n  }"),
    "one-head-scale": ("const float inv = hinv[i / DV];", "const float inv = hinv[0];"),
    "gate-offset-dropped": ("h + (int64_t)m * HS + ZO;", "h + (int64_t)m * HS;"),
}


@pytest.mark.parametrize("bug", list(PLANTED_GATED), ids=list(PLANTED_GATED))
def test_gated_planted_bug_is_caught(metal_on_cpu, monkeypatch, bug):
    text, replacement = PLANTED_GATED[bug]
    assert_caught(monkeypatch, "norm_gemv.metal", text, replacement, lambda: check_gated("bf16-0.8b-head-2tok", "metal"))


def test_backend_choice(metal_on_cpu):
    x = mx.zeros((1, 1, 1024), mx.bfloat16)
    assert norm.gemv_backend(x, mx.zeros((64, 1024), mx.bfloat16)) == "metal"
    assert norm.gemv_backend(x, mx.zeros((64, 1024), mx.float32)) is None            # mixed dtypes
    assert norm.gemv_backend(x, mx.zeros((64, 128), mx.uint32)) is None              # quantized (packed) weight
    big = mx.zeros((1, 1, 16384), mx.bfloat16)
    assert norm.gemv_backend(big, mx.zeros((8, 16384), mx.bfloat16)) is None         # row past 16 KiB
    w = mx.zeros((64, 1024), mx.bfloat16)
    assert norm.gemv_backend(x, w, x, 128) == "metal"                                 # gated: heads of 128
    assert norm.gemv_backend(x, w, x, 100) is None                                    # heads not dividing K
    assert norm.gemv_backend(x, w, x, 2) is None                                      # nor of 4-channel groups
    assert norm.gemv_backend(x, w, x.astype(mx.float32), 128) is None                 # a gate of another dtype


PLANTED = {
    "no-barrier-before-products": ("}\nBARRIER();\n\n// 2.", "}\n\n// 2."),
    "glu-up-is-gate": ("const float u = float(static_cast<InT>(acc[r][NR - 1]));",
                       "const float u = float(static_cast<InT>(acc[r][0]));"),
    "norm-weight-dropped": ("static_cast<InT>(float(nw[i + e]) * (float(xs[i + e]) * inv))",
                            "static_cast<InT>(float(xs[i + e]) * inv)"),
    "last-step-skipped": ("    if (k < K) {\n      float xv", "    if (k < K - SW) {\n      float xv"),
}


@pytest.mark.parametrize("bug", list(PLANTED), ids=list(PLANTED))
def test_planted_bug_is_caught(metal_on_cpu, monkeypatch, bug):
    text, replacement = PLANTED[bug]
    assert_caught(monkeypatch, "norm_gemv.metal", text, replacement, lambda: check("bf16-glu-add-2tok", seed=4))
