"""RMSNorm kernel (metal/rms_norm.metal) through the CPU emulator: plain, with the fused residual add, and gated
(the GDN output norm, y * silu(z)); against a float64 NumPy reference on the same (dtype-rounded) inputs, and
with planted bugs.

Measured relative errors (this machine): float32 y 5e-8 .. 7e-8; bfloat16 y 1.5e-3 .. 1.7e-3 (its own rounding);
the residual sum is exact (equal to MLX's x + h in every dtype).
"""

import mlx.core as mx
import numpy as np
import pytest

from planted import assert_caught
from helpers import assert_rel_close
from qwen35_mlx.kernels import _metal, norm

TOL = {mx.float32: 1e-6, mx.bfloat16: 1e-2, mx.float16: 2e-3}


def make(rows, H, dtype, seed):
    rng = np.random.default_rng(seed)
    f = lambda *s: mx.array((rng.standard_normal(s) * 2 + 0.5).astype(np.float32))
    return f(rows, H).astype(dtype), f(rows, H).astype(dtype), 1 + 0.3 * f(H)


def reference(x, w, eps, residual=None, gate=None):
    """float64 on the rounded inputs: the residual sum rounded to x's dtype first, as the model adds."""
    if residual is not None:
        x = residual + x
    f = np.asarray(x.astype(mx.float32), np.float64)
    y = np.asarray(w.astype(mx.float32), np.float64) * f / np.sqrt((f * f).mean(-1, keepdims=True) + eps)
    if gate is not None:
        z = np.asarray(gate.astype(mx.float32), np.float64)
        y = y * z / (1 + np.exp(-z))
    return y, x


def check(x, h, w, dtype, add, name, eps=1e-6, gate=None):
    residual = h if add else None
    out = norm.rms_norm(x, w, eps, residual=residual, gate=gate, backend="metal")
    y, res = out if add else (out, None)
    ref_y, ref_res = reference(x, w, eps, residual, gate)
    assert y.dtype == dtype and y.shape == x.shape, name
    assert_rel_close(y.astype(mx.float32), ref_y, TOL[dtype], f"{name} y")
    if add:
        np.testing.assert_array_equal(np.array(res.astype(mx.float32)), np.array(ref_res.astype(mx.float32)),
                                      err_msg=f"{name} residual sum")


SHAPES = {  # id: (rows, H); layouts (simdgroups per row, rows per threadgroup) for fp32 / bf16
    "hidden-1024": (7, 1024),             # (2, 2) / (1, 4): a spare row in the last threadgroup
    "head-256": (12, 256),                # (1, 4) / (1, 4)
    "partial-groups-40": (5, 40),         # 10 / 5 groups on 32 lanes
    "wide-5120": (2, 5120),               # (10, 1) / (5, 1): the row over simdgroups, 4 groups per lane
    "uneven-2568": (3, 2568),             # (6, 1) / (3, 1): the last simdgroup part-filled
}
@pytest.mark.parametrize("add", [False, True], ids=["norm", "add+norm"])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_kernel_matches_reference(metal_on_cpu, shape, dtype, add):
    rows, H = SHAPES[shape]
    check(*make(rows, H, dtype, seed=list(SHAPES).index(shape)), dtype, add, shape)


def test_mlx_ops_branch_matches_reference():
    """The branch every non-GPU backend runs (and the kernel's stand-in): same check."""
    x, h, w = make(4, 1024, mx.bfloat16, seed=9)
    y, res = norm.rms_norm(x, w, 1e-6, residual=h, backend=None)
    ref_y, ref_res = reference(x, w, 1e-6, h)
    assert_rel_close(y.astype(mx.float32), ref_y, TOL[mx.bfloat16], "MLX ops y")
    np.testing.assert_array_equal(np.array(res.astype(mx.float32)), np.array(ref_res.astype(mx.float32)))


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("rows,H", [(9, 128), (3, 64)], ids=["gdn-head-128", "head-64"])
def test_gated_kernel_matches_reference(metal_on_cpu, rows, H, dtype):
    """The GDN output norm: rows of one head, w in the activation dtype, y * silu(z)."""
    x, z, w = make(rows, H, dtype, seed=H)
    check(x, None, w.astype(dtype), dtype, False, f"gated {H}", gate=z)


@pytest.mark.parametrize("add", [False, True], ids=["norm", "add+norm"])
def test_kernel_fp16(metal_on_cpu, add):
    """half rows: 8 elements per 16-byte group, as bfloat16, through the other 16-bit conversions."""
    check(*make(7, 1024, mx.float16, seed=11), mx.float16, add, "fp16 hidden-1024")


def test_mlx_ops_gated_branch_matches_reference():
    x, z, w = make(6, 128, mx.bfloat16, seed=4)
    y = norm.rms_norm(x, w.astype(mx.bfloat16), 1e-6, gate=z, backend=None)
    assert_rel_close(y.astype(mx.float32), reference(x, w.astype(mx.bfloat16), 1e-6, gate=z)[0], TOL[mx.bfloat16],
                     "MLX ops gated y")


def test_rows_the_kernel_does_not_take_run_mlx_ops(metal_on_cpu, monkeypatch):
    """H not a whole number of 16-byte groups (or wider than MAX_WPR simdgroups hold), mixed dtypes: MLX ops,
    same result."""
    assert norm.layout(1022, 4) is None and norm.layout(1020, 2) is None and norm.layout(16384, 4) is None
    assert norm.layout(8192, 4) == (16, 1) and norm.layout(1024, 2) == (1, 4)
    monkeypatch.setattr(_metal, "kernel", lambda *a: pytest.fail("kernel launched for an unsupported row"))
    for x, h, w in (make(2, 1022, mx.float32, 1), make(1, 16384, mx.float32, 2)):
        assert_rel_close(norm.rms_norm(x, w, 1e-6, backend="metal"), reference(x, w, 1e-6)[0], 1e-6, "fallback")
    x, h, w = make(2, 64, mx.float32, 3)
    y, res = norm.rms_norm(x, w, 1e-6, residual=h.astype(mx.bfloat16), backend="metal")
    assert res.dtype == mx.float32


# ---- planted bugs: each must make the check above fail ------------------------------------------

PLANTED = {  # id: (exact text in rms_norm.metal, replacement, (rows, H))
    "dropped-barrier": ("if (lane == 0) red[sg] = ss;\n  BARRIER();", "if (lane == 0) red[sg] = ss;", (2, 5120)),
    "reduction-skips-a-part": ("for (int s = 0; s < WPR; ++s) ss", "for (int s = 1; s < WPR; ++s) ss", (2, 5120)),
    "last-group-dropped": ("  if (live && gi < G) {\n    const int i = gi * VW;\n    vload<VW>(v[j]",
                           "  if (live && gi < G - 1) {\n    const int i = gi * VW;\n    vload<VW>(v[j]", (5, 40)),
    "mean-over-wrong-count": ("ss / float(H)", "ss / float(H - 1)", (2, 256)),
    "spare-row-not-masked": ("const bool live = r < rows;", "const bool live = r <= rows;", (7, 1024)),
    "every-part-the-first": ("const int part = int(sg) % WPR;", "const int part = 0;", (3, 2568)),
}
@pytest.mark.parametrize("bug", list(PLANTED), ids=list(PLANTED))
def test_planted_bug_is_caught(metal_on_cpu, monkeypatch, bug):
    text, replacement, (rows, H) = PLANTED[bug]
    args = make(rows, H, mx.float32, seed=7)
    assert_caught(monkeypatch, "rms_norm.metal", text, replacement, lambda: check(*args, mx.float32, True, bug))
