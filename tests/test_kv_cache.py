"""Quantized KV cache for the full-attention layers (mlx-lm's QuantizedKVCache + its quantized SDPA), end to
end: prefill then decode, chunked == one-shot, snapshots; the memory report and the context-fits check.

Measured relative logits errors against the float cache (float32 model, 700-token prompt, every position
plus 4 decode steps, group size 64): 8-bit 8.8e-4, 4-bit 1.5e-2 (thresholds ~6x). Chunked prefill equals
one-shot exactly when chunks end on multiples of the GDN chunk (64; the default --prefill-chunk 2048 does),
with and without quantized KV. At other boundaries the scan's rounding differs (float: 3.2e-6), and with
quantized KV such a difference can move a key across a quantization step: 8-bit 8.8e-5, 4-bit 9e-6.
"""

import importlib

import mlx.core as mx
import numpy as np
import pytest

from helpers import assert_rel_close
from qwen35_mlx import GenerationError, load, stream_generate
from qwen35_mlx import memory
from qwen35_mlx.generate import main
from qwen35_mlx.memory import ContextMemoryError, gdn_state_bytes, kv_bytes_per_token

TOL = {8: 5e-3, 4: 0.1}


@pytest.fixture(scope="module")
def tiny(dense_text_path):
    return load(dense_text_path, dtype="float32")


def prompt(T, seed=0):
    return mx.array(np.random.default_rng(seed).integers(0, 400, (1, T)))


def run(model, ids, kv_bits, chunks=None, steps=4):
    """Logits of every prompt position (prefilled in `chunks`) and of `steps` greedy decode steps."""
    cache = model.make_cache(kv_bits=kv_bits)
    T = ids.shape[1]
    bounds = chunks or [T]
    outs, s = [], 0
    for e in bounds:
        outs.append(model(ids[:, s:e], cache=cache))
        s = e
    tok = mx.argmax(outs[-1][:, -1], axis=-1)
    for _ in range(steps):
        outs.append(model(tok[:, None], cache=cache))
        tok = mx.argmax(outs[-1][:, -1], axis=-1)
    return mx.concatenate(outs, axis=1), cache


@pytest.fixture(scope="module")
def float_run(tiny):
    return run(tiny[0], prompt(700), None)[0]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_kv_close_to_float_cache(tiny, float_run, bits):
    model, _ = tiny
    out, cache = run(model, prompt(700), bits)
    attn = [c for c in cache if hasattr(c, "bits")]
    assert len(attn) == 2 and all(c.bits == bits and c.offset == 704 for c in attn)
    assert isinstance(attn[0].keys, tuple) and attn[0].keys[0].dtype == mx.uint32
    assert_rel_close(out, float_run, TOL[bits], f"{bits}-bit KV vs float KV")


@pytest.mark.parametrize("bits", [None, 8, 4], ids=["float", "kv8", "kv4"])
def test_chunked_prefill_equals_one_shot(tiny, bits):
    model, _ = tiny
    ids = prompt(700, seed=1)
    whole, _ = run(model, ids, bits, steps=2)
    aligned, _ = run(model, ids, bits, chunks=[64, 320, 640, 700], steps=2)
    assert_rel_close(aligned, whole, 1e-7, f"prefill in chunks of 64k tokens, kv_bits={bits}")
    ragged, _ = run(model, ids, bits, chunks=[1, 300, 601, 700], steps=2)
    assert_rel_close(ragged, whole, 1e-5 if bits is None else 1e-3, f"ragged chunks, kv_bits={bits}")


def test_snapshot_restore_with_a_quantized_cache(tiny):
    """Restore trims the quantized KV back to the snapshot; decoding from there repeats the same logits."""
    model, _ = tiny
    _, cache = run(model, prompt(300, seed=2), 8, steps=0)
    snap = cache.snapshot()
    tok = mx.array([[7]])
    a = model(tok, cache=cache)
    model(mx.array([[9]]), cache=cache)                      # move on past the snapshot
    cache.restore(snap)
    assert cache.offset == 300
    assert_rel_close(model(tok, cache=cache), a, 1e-6, "decode after restore")


def test_stream_generate_chunked_equals_one_shot_with_quantized_kv(tiny):
    model, proc = tiny
    text = "The quick brown fox jumps over the lazy dog. " * 12
    kw = dict(max_tokens=6, kv_bits=8, temperature=0.0, chat_template=False)
    one = [c.token for c in stream_generate(model, proc, text, prefill_chunk=4096, **kw)]
    chunked = [c.token for c in stream_generate(model, proc, text, prefill_chunk=32, **kw)]
    assert one == chunked and len(one) == 6


def test_kv_group_size_must_divide_the_head_dim(tiny):
    model, proc = tiny
    with pytest.raises(GenerationError, match="kv_group_size=48"):
        next(stream_generate(model, proc, "hi", kv_bits=4, kv_group_size=48, max_tokens=1))


@pytest.mark.parametrize("bits", [None, 8, 4], ids=["float", "kv8", "kv4"])
def test_memory_formulas_are_what_the_cache_holds(tiny, bits):
    """The cache allocates in steps of 256 tokens: at 512 tokens the formula is exact."""
    model, _ = tiny
    cfg = model.config.text
    _, cache = run(model, prompt(512, seed=3), bits, steps=0)
    held = cache.nbytes
    assert held["kv"] == kv_bytes_per_token(cfg, bits, 64, dtype_bytes=4) * 512
    assert held["gdn"] == gdn_state_bytes(cfg, dtype_bytes=4)
    assert f"KV cache {held['kv'] / 1e9:.3f} GB" in memory.report(model, 512, bits, cache=cache)
    assert f"KV cache {held['kv'] / 1e9:.3f} GB" in memory.report(model, 512, bits)   # the estimate agrees


def test_context_that_cannot_fit_is_a_clear_error(tiny, monkeypatch):
    model, proc = tiny
    assert memory.device_memory() is None or memory.device_memory() > 0        # CPU: no limit reported
    need = memory.check_fits(model, 2000, limit=10**12)["total"]
    monkeypatch.setattr(memory, "device_memory", lambda: int(need * 0.9))
    with pytest.raises(ContextMemoryError) as e:
        next(stream_generate(model, proc, "hello", max_tokens=1990, prefill_chunk=2048))
    msg = str(e.value)
    for part in ("tokens needs about", "the device reports", "--kv-bits 8", "--prefill-chunk",
                 "python -m qwen35_mlx.convert -q"):
        assert part in msg, msg
    monkeypatch.setattr(memory, "device_memory", lambda: int(need * 2))
    assert len(list(stream_generate(model, proc, "hello", max_tokens=3))) == 3


def test_default_prefill_chunk_shrinks_to_fit(tiny, monkeypatch):
    """The backend's default step (8192 on CUDA) is halved while the context would not fit, not below 2048; a
    step the caller gave is kept (check_fits then names the fix)."""
    gen = importlib.import_module("qwen35_mlx.generate")        # the package exports a function of that name
    model, proc = tiny
    rest = memory.check_fits(model, 20000, limit=10**12)
    fits = lambda c: rest["total"] - rest["prefill"] + memory.prefill_bytes(model.config.text, c, 20000, None, 64, 4)
    limit = (fits(4096) + fits(8192)) // 2
    assert memory.prefill_chunk(model, 20000, None, 64, 8192, floor=2048, limit=limit) == 4096
    assert memory.prefill_chunk(model, 20000, None, 64, 8192, floor=2048, limit=10) == 2048
    assert memory.prefill_chunk(model, 20000, None, 64, 8192, floor=2048, limit=10**12) == 8192
    monkeypatch.setattr(gen, "default_prefill_chunk", lambda: 8192)
    monkeypatch.setattr(memory, "device_memory", lambda: 10**12)
    seen = []
    monkeypatch.setattr(gen, "_prefill", lambda model, cache, inputs, chunk, *a: seen.append(chunk) or
                        (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        next(stream_generate(model, proc, "hello", max_tokens=1))
    with pytest.raises(RuntimeError, match="stop"):
        next(stream_generate(model, proc, "hello", max_tokens=1, prefill_chunk=100))
    assert seen == [8192, 100]
    with pytest.raises(GenerationError, match="prefill_chunk"):
        next(stream_generate(model, proc, "hello", max_tokens=1, prefill_chunk=0))


def test_cli_verbose_memory_report(dense_text_path, capsys):
    assert main(["--model", str(dense_text_path), "--prompt", "hello there", "--max-tokens", "3", "--kv-bits", "8",
                 "--no-chat-template", "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "Memory at" in err and "(8-bit)" in err and "GDN state" in err and "peak" in err


@pytest.mark.parametrize("kv_bits", [None, 8])
def test_attention_in_query_blocks_equals_one_block(dense_text_path, monkeypatch, kv_bits):
    """Long contexts attend in query blocks (bounded score memory); the result is the same as one block."""
    import qwen35_mlx.model.attention as attention
    model, _ = load(dense_text_path, dtype="float32")
    ids = mx.array(np.random.default_rng(3).integers(0, 400, (1, 300)))
    outs = []
    for budget in (1 << 40, 4 * 300 * 4 * 20):                   # one block; blocks of ~20 queries
        monkeypatch.setattr(attention, "SCORE_BYTES", budget)
        cache = model.make_cache(kv_bits=kv_bits)
        outs.append(mx.concatenate([model(ids[:, :100], cache=cache), model(ids[:, 100:], cache=cache)], axis=1))
    assert_rel_close(outs[1], outs[0], 1e-6, f"blocked attention, kv_bits={kv_bits}")
