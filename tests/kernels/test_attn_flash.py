"""Flash attention kernel (metal/attn_flash.metal) through the CPU emulator: causal chunks at the end of a longer
cache and full attention, GQA, several key blocks and query blocks, against a float64 NumPy softmax attention
on the same 16-bit inputs; the layer's prefill through the kernel against its MLX-ops path; planted bugs.
"""

import mlx.core as mx
import numpy as np
import pytest

from planted import assert_caught
from helpers import assert_rel_close
from qwen35_mlx.kernels import attn

TOL = {mx.bfloat16: 1e-2, mx.float16: 2e-3}
SHAPES = {  # id: (Hq, Hkv, D)
    "qwen35-8q2k-256": (8, 2, 256),
    "4q1k-64": (4, 1, 64),
    "3q3k-48": (3, 3, 48),            # three 16-wide k-steps, an odd number of 8-column output tiles
}
RUNS = {  # id: (B, T, S, causal)
    "T1": (1, 1, 1, True),
    "chunk-at-end": (1, 20, 90, True),       # 20 queries after 70 cached keys: masks cross key blocks
    "B2-two-qblocks": (2, 70, 70, True),     # 70 queries: a partial second query block
    "full": (1, 9, 40, False),
    "long-cache": (1, 40, 300, True),        # many key blocks before the diagonal, none of them masked
}


def make(B, T, S, Hq, Hkv, D, dtype, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, Hq, T, D)).astype(np.float32)
    k = (rng.standard_normal((B, Hkv, S, D)) + 0.3).astype(np.float32)
    v = rng.standard_normal((B, Hkv, S, D)).astype(np.float32)
    return tuple(mx.array(x).astype(dtype) for x in (q, k, v))


def reference(q, k, v, scale, causal):
    """float64 softmax attention on the rounded inputs -> [B, T, Hq, D]."""
    q, k, v = (np.asarray(x.astype(mx.float32), np.float64) for x in (q, k, v))
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    k, v = np.repeat(k, Hq // Hkv, axis=1), np.repeat(v, Hq // Hkv, axis=1)
    s = np.einsum("bhtd,bhsd->bhts", q, k) * scale
    if causal:
        s = np.where(np.arange(S)[None, :] <= np.arange(S - T, S)[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhts,bhsd->bthd", p / p.sum(-1, keepdims=True), v)


def check(shape, run_id, dtype, seed, nt=64, **opts):
    Hq, Hkv, D = SHAPES[shape]
    B, T, S, causal = RUNS[run_id]
    q, k, v = make(B, T, S, Hq, Hkv, D, dtype, seed)
    out = attn.attn_flash(q, k, v, D ** -0.5, causal=causal, backend="metal", nt=nt, **opts)
    assert out.shape == (B, T, Hq, D) and out.dtype == dtype
    assert_rel_close(out.astype(mx.float32), reference(q, k, v, D ** -0.5, causal), TOL[dtype], f"{shape} {run_id}")


@pytest.mark.parametrize("run_id", list(RUNS), ids=list(RUNS))
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_kernel_matches_reference(metal_on_cpu, shape, run_id):
    check(shape, run_id, mx.bfloat16, seed=len(run_id) + 7 * len(shape))


def test_half_and_default_threadgroup(metal_on_cpu):
    """fp16 operands; the 128-thread threadgroup the model launches (4 simdgroups, 64 queries)."""
    check("4q1k-64", "B2-two-qblocks", mx.float16, seed=3, nt=attn.FLASH_NT["metal"])


@pytest.mark.parametrize("run_id", ["B2-two-qblocks", "long-cache"])
@pytest.mark.parametrize("shape", ["4q1k-64", "3q3k-48"])
def test_queries_in_threadgroup_memory(metal_on_cpu, shape, run_id):
    """QS (the queries staged in threadgroup memory, a piece per k-step) with 64-key blocks: a CUDA variant (its
    head dim 256 passes Metal's 32 KiB, which the emulator holds to, so smaller heads run it here)."""
    check(shape, run_id, mx.bfloat16, seed=len(run_id) + len(shape), nt=128, bk=64, qs=True)


def test_strong_scores_stay_finite(metal_on_cpu):
    """Scores far above exp's range: the running max must be subtracted before exp, block after block."""
    q, k, v = make(1, 24, 60, 2, 1, 64, mx.bfloat16, seed=5)
    q = q * 40
    out = attn.attn_flash(q, k, v, 0.125, causal=True, backend="metal", nt=64)
    assert_rel_close(out.astype(mx.float32), reference(q, k, v, 0.125, True), 1e-2, "strong scores")


def test_backend_choice(metal_on_cpu, monkeypatch):
    q, k, _ = make(1, 4, 4, 4, 2, 64, mx.bfloat16, seed=1)
    assert attn.flash_backend(q, k, "causal") == "metal" and attn.flash_backend(q, k, None) == "metal"
    assert attn.flash_backend(q.astype(mx.float32), k, "causal") is None           # float32: the MLX path
    assert attn.flash_backend(q, k, mx.ones((1, 1, 4, 4), mx.bool_)) is None        # padded batches
    assert attn.flash_backend(q[..., :40], k[..., :40], "causal") is None           # D not a multiple of 16
    monkeypatch.setattr(attn._metal, "DISABLED", frozenset({"attn_flash"}))
    assert attn.flash_backend(q, k, "causal") is None


def test_layer_prefill_matches_mlx_path(metal_on_cpu, monkeypatch):
    """Attention.attend through the kernel equals its MLX-ops path (switched off), a chunk after a cache."""
    from qwen35_mlx.model.attention import Attention
    from types import SimpleNamespace
    cfg = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, head_dim=64, hidden_size=32, rms_norm_eps=1e-6)
    layer = Attention(cfg)
    q, k, v = make(1, 12, 30, 4, 2, 64, mx.bfloat16, seed=9)
    fast = layer.attend(q, k, v, "causal", None)
    monkeypatch.setattr(attn._metal, "DISABLED", frozenset({"attn_flash"}))
    slow = layer.attend(q, k, v, "causal", None)
    assert fast.shape == slow.shape == (1, 12, 4 * 64)
    assert_rel_close(fast.astype(mx.float32), slow.astype(mx.float32), 1e-2, "layer")


PLANTED = {
    "K-overwritten-in-use": ("BARRIER();                                    // everyone is done with Ks", ""),
    "causal-off-by-one": ("key > S - T + qi", "key >= S - T + qi"),
    "no-rescale": ("o[n].x[e] *= alpha[e >> 1];", "o[n].x[e] *= 1.0f;"),
    "QS-rows-of-simdgroup-0": ("Qs + 16 * int(sg) * LD", "Qs"),
}


@pytest.mark.parametrize("bug", list(PLANTED), ids=list(PLANTED))
def test_planted_bug_is_caught(metal_on_cpu, monkeypatch, bug):
    text, replacement = PLANTED[bug]
    assert_caught(monkeypatch, "attn_flash.metal", text, replacement,
                  lambda: check("4q1k-64", "chunk-at-end", mx.bfloat16, seed=11, qs=bug.startswith("QS")))
