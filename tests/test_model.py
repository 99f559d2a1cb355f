"""Whole-model parity with transformers (float32) on the tiny checkpoints, through the public `load`.

Measured relative errors of the logits (this machine, mlx 0.32.4 CPU): 3e-6 .. 1e-5 for every kind, short
and long prompts; greedy step logits 4e-6 .. 8e-6. Threshold 1e-4, ~10x the largest.
"""

import mlx.core as mx
import numpy as np
import pytest

from helpers import assert_rel_close, hf_greedy, hf_logits, load_hf
from qwen35_mlx import load

TOL = 1e-4
KINDS = ["dense_text_path", "dense_vl_path", "moe_vl_path", "moe_per_expert_path"]


@pytest.fixture(scope="module", params=KINDS, ids=["dense_text", "dense_vl", "moe_vl", "moe_per_expert"])
def pair(request):
    path = request.getfixturevalue(request.param)
    model, _ = load(path, dtype="float32")
    return model, load_hf(path)


def prompt(T, seed=0, vocab=400):
    return np.random.default_rng(seed).integers(0, vocab, (1, T))


@pytest.mark.parametrize("T", [1, 9, 333], ids=["T1", "T9", "T333_many_chunks"])
def test_logits_match_transformers(pair, T):
    model, hf = pair
    ids = prompt(T)
    assert_rel_close(model(mx.array(ids)), hf_logits(hf, ids), TOL, f"logits T={T}")


def test_chunked_prefill_equals_one_shot(pair):
    model, _ = pair
    ids = mx.array(prompt(200, seed=1))
    whole = model(ids)
    cache = model.make_cache()
    parts = [model(ids[:, s:e], cache=cache) for s, e in ((0, 1), (1, 64), (64, 129), (129, 200))]
    assert_rel_close(mx.concatenate(parts, axis=1), whole, 1e-5, "chunked prefill")
    assert cache.offset == 200


def test_greedy_decode_with_cache_matches_transformers(pair):
    model, hf = pair
    ids = prompt(70, seed=2)
    n = 24
    ref = hf_greedy(hf, ids, n)[0].tolist()
    cache = model.make_cache()
    logits = model(mx.array(ids), cache=cache)[:, -1]
    ours, step_logits = [], []
    for _ in range(n):
        tok = int(mx.argmax(logits, axis=-1).item())
        ours.append(tok)
        step_logits.append(np.array(logits[0]))
        logits = model(mx.array([[tok]]), cache=cache)[:, -1]
    assert ours == ref
    full = hf_logits(hf, np.concatenate([ids, [ours[:-1]]], axis=1))[0, ids.shape[1] - 1:]
    assert_rel_close(np.stack(step_logits), full, TOL, "step logits")


def test_padded_batch_equals_single_rows(dense_text_path):
    """Left-padded batch of two prompts: each row's logits and greedy continuation equal the row alone."""
    model, _ = load(dense_text_path, dtype="float32")
    a, b = prompt(40, seed=3)[0], prompt(25, seed=4)[0]
    pad = len(a) - len(b)
    ids = mx.array(np.stack([a, np.concatenate([np.zeros(pad, np.int64), b])]))
    mask = mx.array(np.stack([np.ones(len(a), bool), np.arange(len(a)) >= pad]))
    cache = model.make_cache()
    out = model(ids, cache=cache, attention_mask=mask)
    singles = [model(mx.array(x[None])) for x in (a, b)]
    assert_rel_close(out[0], singles[0][0], 1e-5, "row 0")
    assert_rel_close(out[1, pad:], singles[1][0], 1e-5, "row 1 (left padded)")
    # one decode step for both rows, mask extended by a real token
    nxt = mx.argmax(out[:, -1], axis=-1)[:, None]
    step = model(nxt, cache=cache, attention_mask=mx.concatenate([mask, mx.ones((2, 1), mx.bool_)], axis=1))
    for row, x in enumerate((a, b)):
        ref = model(mx.array(np.concatenate([x, [int(nxt[row, 0])]])[None]))[0, -1]
        assert_rel_close(step[row, -1], ref, 1e-5, f"decode row {row}")


def test_bfloat16_error_no_worse_than_transformers_bf16(dense_text_path):
    """bf16 inference loses accuracy; ours must lose no more than transformers' own bf16 path does.
    Measured on dense_text: transformers bf16 5.7e-2, ours 6.2e-2 relative to float32 (ratio 1.08)."""
    import torch
    import transformers
    m32, _ = load(dense_text_path, dtype="float32")
    m16, _ = load(dense_text_path)                       # checkpoint dtype (bf16)
    assert m16.model.language_model.norm.weight.dtype == mx.float32   # 1 + w kept in fp32
    ids = prompt(64, seed=5)
    ref = np.array(m32(mx.array(ids)))
    hf16 = transformers.Qwen3_5ForCausalLM.from_pretrained(dense_text_path, dtype=torch.bfloat16).eval()
    hf_err = np.linalg.norm(hf_logits(hf16, ids) - ref) / np.linalg.norm(ref)
    assert_rel_close(m16(mx.array(ids)).astype(mx.float32), ref, 1.5 * hf_err, "bf16 logits vs float32")


def test_context_limit_is_a_clear_error(dense_text_path):
    from qwen35_mlx.errors import PromptError
    model, _ = load(dense_text_path, dtype="float32")
    n = model.config.text.max_position_embeddings
    with pytest.raises(PromptError, match="exceed the model's context"):
        model(mx.zeros((1, n + 1), mx.int32))


def test_long_prefill_keeps_one_segment_queued(dense_text_path, monkeypatch):
    """From EVAL_LAYERS_T tokens a forward pass queues each segment (up to an attention layer) and waits only for
    the one before it: the GPU always has the next segment while Python builds the one after. Same logits as
    a pass that waits for every segment."""
    import types
    from qwen35_mlx.model import qwen35
    model, _ = load(dense_text_path, dtype="float32")
    ids = mx.array(prompt(qwen35.EVAL_LAYERS_T + 40, seed=5))
    n_attn = sum(not layer.is_linear for layer in model.model.language_model.layers)
    calls, real = [], qwen35.mx
    spy = types.ModuleType("mx_spy")
    spy.__dict__.update(real.__dict__)
    spy.async_eval = lambda *a: calls.append(("queue", id(a[0]))) or real.async_eval(*a)
    spy.eval = lambda *a: calls.append(("wait", id(a[0][0] if isinstance(a[0], tuple) else a[0]))) or real.eval(*a)
    monkeypatch.setattr(qwen35, "mx", spy)
    got = model(ids)
    queued = [i for kind, i in calls if kind == "queue"]
    assert len(queued) == n_attn >= 2, calls
    assert [kind for kind, _ in calls] == ["queue"] + ["queue", "wait"] * (n_attn - 1), calls
    assert [i for kind, i in calls if kind == "wait"] == queued[:-1]        # each wait is for the one before
    spy.async_eval = real.eval                                             # wait for every segment
    assert_rel_close(got, model(ids), 1e-6, "queued vs waited")
