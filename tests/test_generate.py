"""generate / stream_generate and the CLI, end to end on the tiny checkpoints, as users run them."""

import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from helpers import hf_greedy, load_hf
from qwen35_mlx import GenerationError, PromptError, generate, load, stream_generate


@pytest.fixture(scope="module")
def tiny(dense_text_path):
    model, processor = load(dense_text_path, dtype="float32")
    return model, processor


def test_greedy_text_equals_transformers_greedy(tiny, dense_text_path):
    model, proc = tiny
    ids = proc("Explain the delta rule in one paragraph.")["input_ids"]
    ref = hf_greedy(load_hf(dense_text_path), np.array(ids), 20)[0].tolist()
    eos = set(proc.tokenizer.eos_token_ids)
    if any(t in eos for t in ref):
        ref = ref[:next(i for i, t in enumerate(ref) if t in eos) + 1]
    tokens = [c.token for c in stream_generate(model, proc, "Explain the delta rule in one paragraph.",
                                               max_tokens=20, temperature=0.0)]
    assert tokens == ref
    text = generate(model, proc, "Explain the delta rule in one paragraph.", max_tokens=20, temperature=0.0)
    assert text == proc.tokenizer.decode([t for t in ref if t not in eos])


def test_chunks_carry_stats_and_finish_reason(tiny):
    model, proc = tiny
    chunks = list(stream_generate(model, proc, "hi", max_tokens=5, temperature=0.0))
    assert 1 <= len(chunks) <= 5
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and all(c.finish_reason is None for c in chunks[:-1])
    assert last.prompt_tokens > 0 and last.prompt_tps > 0 and last.generation_tps > 0
    assert last.logprobs.shape == (model.config.text.vocab_size,)
    assert abs(float(mx.logsumexp(last.logprobs)) ) < 1e-4


def test_stops_at_eos(tiny):
    """Force the first sampled token to be EOS: generation stops and emits no text."""
    model, proc = tiny
    eos = proc.tokenizer.eos_token_ids[0] if isinstance(proc.tokenizer.eos_token_ids, list) \
        else next(iter(proc.tokenizer.eos_token_ids))
    head = model.logits
    model.logits = lambda h: head(h) + 1e4 * (mx.arange(model.config.text.vocab_size) == eos)
    try:
        chunks = list(stream_generate(model, proc, "hi", max_tokens=10, temperature=0.0))
    finally:
        del model.logits
    assert len(chunks) == 1 and chunks[0].finish_reason == "stop" and chunks[0].text == ""


def test_seed_makes_sampling_reproducible(tiny):
    model, proc = tiny
    run = lambda seed: [c.token for c in stream_generate(model, proc, "hello", max_tokens=12, temperature=1.0,
                                                         top_p=0.9, top_k=50, seed=seed)]
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_penalties_cover_the_whole_text():
    """Repetition penalty over prompt + generated tokens, presence penalty over generated tokens, however
    far back (mlx-lm's processors only look at a 20-token window)."""
    from qwen35_mlx.generate import Penalties, Sampling
    p = Penalties(6, mx.array([1]), Sampling(presence_penalty=1.5, repetition_penalty=2.0))
    for t in [2] + [3] * 40:                                   # token 2 was generated 41 steps ago
        p.add(mx.array([t]))
    out = p(mx.array([[4.0, 4.0, 4.0, -4.0, 4.0, 4.0]]))[0].tolist()
    assert out == [4.0, 2.0, 2.0 - 1.5, -8.0 - 1.5, 4.0, 4.0]


def test_cancel_by_breaking_out(tiny):
    model, proc = tiny
    for n, chunk in enumerate(stream_generate(model, proc, "hello", max_tokens=50, temperature=0.0)):
        if n == 2:
            break
    assert generate(model, proc, "hello", max_tokens=3, temperature=0.0)     # the model is still usable


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"min_p": 1.0}, "min_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"presence_penalty": float("nan")}, "presence_penalty"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"kv_bits": 3}, "kv_bits"),
])
def test_bad_sampling_values_are_clear_errors(tiny, kwargs, match):
    model, proc = tiny
    with pytest.raises(GenerationError, match=match):
        generate(model, proc, "hi", **kwargs)


def test_prompt_over_context_is_a_clear_error(tiny):
    model, proc = tiny
    with pytest.raises(PromptError, match="more than the model's context"):
        generate(model, proc, "word " * (model.config.text.max_position_embeddings + 10), max_tokens=1)


def test_system_thinking_and_raw_prompts_render(tiny):
    _, proc = tiny
    text = proc.render("Q?", system="Be brief.", enable_thinking=False)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not proc.render("Q?", enable_thinking=True).endswith("</think>\n\n")
    assert proc.render("raw text", chat_template=False) == "raw text"


def test_text_only_checkpoint_refuses_images(tiny):
    model, proc = tiny
    with pytest.raises(PromptError, match="no vision tower"):
        generate(model, proc, "what is this?", images=[np.zeros((32, 32, 3), np.uint8)], max_tokens=1)


def run_cli(*args):
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
    return subprocess.run([sys.executable, "-m", "qwen35_mlx.generate", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_streams_text_and_prints_stats(dense_text_path, tiny):
    model, proc = tiny
    r = run_cli("--model", str(dense_text_path), "--prompt", "Explain the delta rule.", "--max-tokens", "8",
                "--temp", "0", "--verbose", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    expected = generate(model, proc, "Explain the delta rule.", max_tokens=8, temperature=0.0)
    assert r.stdout == expected + "\n"
    for line in ("Prompt:", "tokens/s", "Generation:", "Peak memory:", "GDN state"):
        assert line in r.stderr


@pytest.mark.parametrize("args,match", [
    (["--model", "/nonexistent/dir", "--prompt", "hi"], "not a checkpoint directory"),
    (["--prompt", "hi", "--temp", "-1"], "temperature"),
    (["--prompt", "hi", "--top-p", "2"], "top_p"),
])
def test_cli_errors_are_one_line(dense_text_path, args, match):
    if "--model" not in args:
        args = ["--model", str(dense_text_path), *args]
    r = run_cli(*args)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and match in r.stderr and "Traceback" not in r.stderr


def test_prompt_cache_reuses_the_shared_prefix(tiny):
    """A second chat turn restores the snapshot at the end of the first and prefills only the new tokens;
    tokens and logprobs equal a run from scratch."""
    from qwen35_mlx import PromptCache
    model, proc = tiny
    pc = PromptCache(model)
    turn1 = [{"role": "user", "content": "Explain the delta rule. " * 20}]
    first = list(stream_generate(model, proc, turn1, max_tokens=6, temperature=0.0, prefill_chunk=64,
                                 prompt_cache=pc, enable_thinking=False))
    assert first[-1].cached_prompt_tokens == 0
    assert first
    turn2 = turn1 + [{"role": "assistant", "content": "It corrects the state."},
                     {"role": "user", "content": "Shorter, please."}]
    kw = dict(max_tokens=8, temperature=0.0, prefill_chunk=64, enable_thinking=False)
    reused = list(stream_generate(model, proc, turn2, prompt_cache=pc, **kw))
    fresh = list(stream_generate(model, proc, turn2, **kw))
    assert reused[-1].cached_prompt_tokens >= 64                 # at least the chunk snapshots were reused
    assert [c.token for c in reused] == [c.token for c in fresh]
    for a, b in zip(reused, fresh):
        assert float(mx.abs(a.logprobs - b.logprobs).max()) < 1e-4
    # a different conversation shares nothing: the cache starts afresh and still agrees
    other = list(stream_generate(model, proc, "Something else.", prompt_cache=pc, **kw))
    assert other[-1].cached_prompt_tokens == 0
    assert [c.token for c in other] == [c.token for c in stream_generate(model, proc, "Something else.", **kw)]


def test_snapshot_restore_equals_recompute(tiny):
    model, _ = tiny
    ids = mx.array(np.random.default_rng(9).integers(0, 400, (1, 90)))
    cache = model.make_cache()
    model(ids[:, :50], cache=cache)
    snap = cache.snapshot()
    model(ids[:, 50:], cache=cache)                              # move on past the snapshot
    cache.restore(snap)
    again = model(ids[:, 50:], cache=cache)
    fresh = model.make_cache()
    model(ids[:, :50], cache=fresh)
    from helpers import assert_rel_close
    assert_rel_close(again, model(ids[:, 50:], cache=fresh), 1e-6, "restored vs recomputed")
