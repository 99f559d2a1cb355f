"""Attention q/k kernel (metal/attn_qk.metal) through the CPU emulator: per-head RMSNorm + rope from the fused
projection row, against a float64 NumPy reference on the same rounded values, the layer's decode path
against its MLX-ops branch, and planted bugs.

Measured relative errors (this machine): float32 q/k 6e-8 .. 8e-8 (the reference forms the angles in float32 as
the kernel does, cos/sin in float64; positions up to 30011); bfloat16 up to 1.6e-3 (its own rounding).
"""

import mlx.core as mx
import numpy as np
import pytest

from planted import assert_caught
from helpers import assert_rel_close
from qwen35_mlx.kernels import attn
from qwen35_mlx.model.attention import Attention
from qwen35_mlx.model.rope import Rope

TOL = {mx.float32: 1e-5, mx.bfloat16: 1e-2}
SHAPES = {  # id: (NQ, NK, D, rot)
    "qwen35-8q2k-256-rot64": (8, 2, 256, 64),
    "4q1k-128-rot32": (4, 1, 128, 32),
    "full-rope-2q2k-64": (2, 2, 64, 64),
    "partial-groups-3q1k-36-rot12": (3, 1, 36, 12),      # 9 groups of 4 on 32 threads
}


def make(B, T, NQ, NK, D, dtype, seed):
    rng = np.random.default_rng(seed)
    proj = mx.array((rng.standard_normal((B, T, 2 * NQ * D + 2 * NK * D)) * 1.5 + 0.2).astype(np.float32))
    w = lambda: mx.array((1 + 0.3 * rng.standard_normal(D)).astype(np.float32))
    return proj.astype(dtype), w(), w()


def reference(proj, qw, kw, inv_freq, pos, eps, NQ, NK, D, rot):
    """float64, with the normed head rounded to proj's dtype (as the norm returns it) and the angles formed in
    float32 (position times the float32 frequency, as the kernel and mx.fast.rope form them)."""
    B, T, _ = proj.shape
    f = np.asarray(proj.astype(mx.float32), np.float64)
    qg = f[..., :2 * NQ * D].reshape(B, T, NQ, 2 * D)[..., :D]
    k = f[..., 2 * NQ * D:2 * NQ * D + NK * D].reshape(B, T, NK, D)
    ang = (np.arange(pos, pos + T, dtype=np.float32)[:, None] * np.asarray(inv_freq)[None]).astype(np.float64)
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]          # [1, T, 1, rot/2]

    def norm_rope(x, w):
        y = np.asarray(w, np.float64) * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        y = np.asarray(mx.array(y.astype(np.float32)).astype(proj.dtype).astype(mx.float32), np.float64)
        a, b = y[..., :rot // 2], y[..., rot // 2:rot]
        out = y.copy()
        out[..., :rot // 2], out[..., rot // 2:rot] = a * cos - b * sin, b * cos + a * sin
        return out.transpose(0, 2, 1, 3)                                        # [B, heads, T, D]
    v = f[..., 2 * NQ * D + NK * D:].reshape(B, T, NK, D).transpose(0, 2, 1, 3)
    return norm_rope(qg, qw), norm_rope(k, kw), v


def run(proj, qw, kw, inv_freq, pos, NQ, NK, D, rot, eps=1e-6):
    return attn.attn_qk(proj, qw, kw, inv_freq, mx.array(pos, mx.int32), eps, NQ=NQ, NK=NK, D=D, rot=rot,
                        backend="metal")


def check(shape, B, T, pos, dtype, seed, name):
    NQ, NK, D, rot = SHAPES[shape]
    proj, qw, kw = make(B, T, NQ, NK, D, dtype, seed)
    inv_freq = Rope(rot, 1e7, [11, 11, 10]).inv_freq
    q, k, v = run(proj, qw, kw, inv_freq, pos, NQ, NK, D, rot)
    ref_q, ref_k, ref_v = reference(proj, qw, kw, inv_freq, pos, 1e-6, NQ, NK, D, rot)
    assert q.shape == (B, NQ, T, D) and k.shape == v.shape == (B, NK, T, D) and q.dtype == v.dtype == dtype, name
    assert_rel_close(q.astype(mx.float32), ref_q, TOL[dtype], f"{name} q")
    assert_rel_close(k.astype(mx.float32), ref_k, TOL[dtype], f"{name} k")
    np.testing.assert_array_equal(np.asarray(v.astype(mx.float32), np.float64), ref_v, err_msg=f"{name} v")


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("run_", [(1, 1, 0), (2, 3, 37), (1, 1, 30011)], ids=["decode-pos0", "B2-T3", "pos30011"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_kernel_matches_reference(metal_on_cpu, shape, run_, dtype):
    B, T, pos = run_
    check(shape, B, T, pos, dtype, seed=list(SHAPES).index(shape), name=shape)


def make_attention(NQ, NK, D, rot_factor, dtype, seed=0):
    from types import SimpleNamespace
    from mlx.utils import tree_flatten
    cfg = SimpleNamespace(num_attention_heads=NQ, num_key_value_heads=NK, head_dim=D, hidden_size=64,
                          rms_norm_eps=1e-6)
    layer = Attention(cfg)
    rng = np.random.default_rng(seed)
    params = [(n, mx.array((rng.standard_normal(p.shape) * (0.3 if "norm" in n else 0.2) + ("norm" in n))
                           .astype(np.float32)).astype(mx.float32 if "norm" in n else dtype))
              for n, p in tree_flatten(layer.parameters())]
    layer.load_weights(params)
    return layer, Rope(int(D * rot_factor), 1e7, [11, 11, 10])


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("position", ["int", "array"])
def test_layer_decode_takes_the_kernel(metal_on_cpu, monkeypatch, dtype, position):
    """Attention.project for one token with fused projections runs attn_qk on a GPU backend and equals its
    MLX-ops branch (which the model runs elsewhere, and which the model tests check against transformers)."""
    layer, rope = make_attention(4, 2, 64, 0.25, dtype)
    layer.ensure_fused()
    x = mx.array(np.random.default_rng(4).standard_normal((2, 1, 64)).astype(np.float32)).astype(dtype)
    pos = 1234 if position == "int" else mx.array(1234, mx.int32)
    calls = []
    real = attn.attn_qk
    monkeypatch.setattr("qwen35_mlx.model.attention.attn_qk", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = layer.project(x, rope, pos)
    assert calls, "attn_qk was not used"
    monkeypatch.setattr("qwen35_mlx.model.attention.qk_backend", lambda *a: None)
    want = layer.project(x, rope, pos)
    for g, w, name in zip(got, want, ("q", "k", "v", "gate")):
        assert g.shape == w.shape, name
        assert_rel_close(g.astype(mx.float32), w.astype(mx.float32), TOL[dtype], name)


def test_unsupported_shapes():
    assert attn.qk_backend(30, 8) is None and attn.qk_backend(64, 3) is None and attn.qk_backend(64, 0) is None
    assert attn.qk_backend(64, 128) is None and attn.qk_backend(2048, 64) is None


# ---- planted bugs: each must make the check above fail ------------------------------------------

PLANTED = {  # id: (exact text in attn_qk.metal, replacement, shape)
    "dropped-barrier-before-rope": ("BARRIER();\nconst float p", "const float p", "qwen35-8q2k-256-rot64"),
    "rope-partner-off-by-one": ("head[c + HALF] * sn", "head[c + HALF - 1] * sn", "4q1k-128-rot32"),
    "position-ignores-token": ("float(pos[0] + t)", "float(pos[0])", "4q1k-128-rot32"),
    "keys-take-query-weight": ("isq ? qw[i + e] : kw[i + e]", "qw[i + e]", "4q1k-128-rot32"),
    "v-from-the-key-head": ("const int64_t vsrc = src + NK * D;", "const int64_t vsrc = src;", "4q1k-128-rot32"),
    "v-last-channel-dropped": ("i < D; i += NT) v", "i < D - 1; i += NT) v", "partial-groups-3q1k-36-rot12"),
    "last-group-dropped": ("  if (i < D) {\n    vload<4>", "  if (i < D - 4) {\n    vload<4>", "partial-groups-3q1k-36-rot12"),
}


@pytest.mark.parametrize("bug", list(PLANTED), ids=list(PLANTED))
def test_planted_bug_is_caught(metal_on_cpu, monkeypatch, bug):
    text, replacement, shape = PLANTED[bug]
    assert_caught(monkeypatch, "attn_qk.metal", text, replacement,
                  lambda: check(shape, 2, 3, 37, mx.float32, seed=5, name=bug))
