"""Whole-model prefill and decode of the Qwen3.5-0.8B configuration (random weights), ours vs mlx-lm's own
Qwen3.5 model, in one process on the same weights.

    python benchmarks/bench_model.py [--prompt 1024 8192] [--decode 64] [--dtype bfloat16] [--bits 4]
        [--out benchmarks/RESULTS.md]

Both models are built from the same Hugging Face-layout weight dict through each package's own sanitize,
so they compute the same function (checked: the last-token logits agree). Prefill is one call per
--prefill-chunk tokens (default: qwen35_mlx's for this backend; both packages chunk the same way); decode is
greedy with the cache after the prompt, the median of DECODE_RUNS runs of --decode tokens, the two packages'
runs alternating (each run's rate is printed). Peak memory covers the prefill and 3 decode steps. With --bits
both are quantized the same way (affine, group 64) after loading.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from configs import QWEN35_0_8B  # noqa: E402


def hf_weights(cfg: dict, dtype, seed=0) -> dict:
    """Random weights in the Hugging Face VL layout (what both packages' loaders read)."""
    from qwen35_mlx.config import Qwen35Config
    from qwen35_mlx.model.qwen35 import Qwen35Model
    from mlx.utils import tree_flatten

    c = Qwen35Config.from_dict({**cfg, "vision_config": None})
    shapes = {k: v.shape for k, v in tree_flatten(Qwen35Model(c).parameters())}
    mx.random.seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith("conv1d.weight"):
            shape = (shape[0], 1, shape[1])                       # HF [C, 1, K]
        if "norm" in k and len(shape) == 1:
            w = mx.random.normal(shape) * 0.1 if "linear_attn.norm" not in k else 1 + mx.random.normal(shape) * 0.1
        elif k.endswith("A_log"):
            w = mx.log(mx.random.uniform(1, 16, shape))
        elif k.endswith("dt_bias"):
            w = mx.ones(shape)
        else:
            w = mx.random.normal(shape) * (0.02 if "embed" not in k else 1.0)
        out[k] = w.astype(dtype)
    mx.eval(out)
    return out


def build_ours(cfg, weights, bits, pkg: str = "qwen35_mlx"):
    """Our model from the Hugging Face-layout weights; pkg: the package to build it with (ab_decode.py loads other
    versions of it under other names)."""
    import importlib
    config = importlib.import_module(f"{pkg}.config")
    loading = importlib.import_module(f"{pkg}.loading")
    qwen35 = importlib.import_module(f"{pkg}.model.qwen35")

    c = config.Qwen35Config.from_dict({**cfg, "vision_config": None})
    model = qwen35.Qwen35Model(c)
    w, _ = loading.sanitize(dict(weights), c, mlx_layout=False)
    model.load_weights(list(w.items()), strict=True)
    if bits:
        importlib.import_module(f"{pkg}.quantize").quantize_model(model, bits=bits, group_size=64)
    mx.eval(model.parameters())
    return model


def build_mlx_lm(cfg, weights, bits):
    from mlx_lm.models import qwen3_5

    args = qwen3_5.ModelArgs.from_dict({**cfg, "vision_config": None})
    model = qwen3_5.Model(args)
    w = model.sanitize({k: v for k, v in weights.items()})
    model.load_weights(list(w.items()), strict=True)
    if bits:
        nn.quantize(model, group_size=64, bits=bits, class_predicate=lambda p, m: hasattr(m, "to_quantized")
                    and not p.endswith(("in_proj_a", "in_proj_b", "mlp.gate", "shared_expert_gate"))
                    and m.weight.shape[-1] % 64 == 0)
    mx.eval(model.parameters())
    return model


def last_logits(model, ids, cache):
    """Logits of the last position only (what generation needs; the lm_head over every prompt position
    would cost as much as a third of the model)."""
    if not hasattr(model, "language_model"):                           # ours (or a wrapper of it)
        return model(ids, cache=cache, last_only=True)[:, -1]
    lm = model.language_model                                          # mlx-lm: its inner model, then its head
    h = lm.model(ids, cache)[:, -1:]
    head = lm.model.embed_tokens.as_linear if lm.args.tie_word_embeddings else lm.lm_head
    return head(h)[:, -1]


def run(model, cache, ids, chunk):
    for s in range(0, ids.shape[1], chunk):
        logits = last_logits(model, ids[:, s:s + chunk], cache)
        mx.eval(logits)
    return logits


DECODE_RUNS = 3


def prefill(name, model, make_cache, T, chunk, vocab):
    """Prefill a T-token prompt, then decode 3 tokens (warming the decode path). Returns the state decode_run
    continues from, with the prefill rate and the peak memory of both."""
    ids = mx.array(np.random.default_rng(1).integers(0, vocab, (1, T)), mx.int32)
    cache = make_cache()
    run(model, cache, ids[:, :min(T, 256)], chunk)                       # warm up kernels/compile
    cache = make_cache()
    gc.collect()
    mx.synchronize()
    mx.reset_peak_memory()
    t = time.perf_counter()
    logits = run(model, cache, ids, chunk)
    tok = mx.argmax(logits, axis=-1)
    mx.eval(tok)
    prefill = time.perf_counter() - t
    for _ in range(3):
        tok = mx.argmax(model(tok[:, None], cache=cache)[:, -1], axis=-1)
        mx.eval(tok)
    return {"name": name, "T": T, "prefill_tps": T / prefill, "peak_gb": mx.get_peak_memory() / 1e9,
            "logits": np.array(logits.astype(mx.float32)), "model": model, "cache": cache, "tok": tok,
            "decode_runs": []}


def decode_run(r, n, read_each: bool = False):
    """n greedy tokens from where r stands, each step queued before the last is read. read_each: each token read
    after the next step is queued, as generation does (the host one step ahead at most); else none until the
    end (the host as far ahead as MLX lets it). Appends the rate to r["decode_runs"], and the host's time to
    queue the n steps, per step, to r["queue_ms"]: near the whole step's time, the host is the bound; well under
    it, the GPU (with read_each the waits for each token count in it too)."""
    model, cache, tok = r["model"], r["cache"], r["tok"]
    t = time.perf_counter()
    for _ in range(n):
        last, tok = tok, mx.argmax(model(tok[:, None], cache=cache)[:, -1], axis=-1)
        mx.async_eval(tok)
        if read_each:
            last.item()
    queued = time.perf_counter()
    mx.eval(tok)
    r["decode_runs"].append(n / (time.perf_counter() - t))
    r.setdefault("queue_ms", []).append((queued - t) / n * 1e3)
    r["tok"] = tok


def bench_pair(runs, n_decode, rounds=DECODE_RUNS, read_each: bool = False):
    """Decode is bound by per-launch host work on a GPU, and its rate drifts by up to 30% within a process: the
    packages (prefill's results) take turns, `rounds` runs of n_decode tokens each (the context grows by each),
    and each reports its median, so a drift reaches all alike."""
    for _ in range(rounds):
        for r in runs:
            decode_run(r, n_decode, read_each)
    for r in runs:
        r["decode_tps"] = float(np.median(r["decode_runs"]))
        del r["model"], r["cache"], r["tok"]


def decode_ab(models: dict, T: int, chunk: int, vocab: int, n_decode: int, rounds: int, read_each: bool = False):
    """Decode A/B of `models` (name -> (model, make_cache); the last one is the baseline the ratios are to): each
    prefills its own cache with the same T-token prompt, one decode step's logits are compared with the
    baseline's, each reports how far a decode's peak memory rises over what it holds (a KV buffer copied each
    step would show), then bench_pair; prints each one's median and runs."""
    runs = [prefill(name, m, make_cache, T, chunk, vocab) for name, (m, make_cache) in models.items()]
    step = [np.array(last_logits(r["model"], mx.array([[7]]), r["cache"]).astype(mx.float32)) for r in runs]
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)       # noqa: E731
    w = max(len(n) for n in models)
    print(f"T={T:6d} one decode step (token 7), logits rel diff to {runs[-1]['name']}: "
          + ", ".join(f"{r['name']} {rel(s, step[-1]):.1e}" for r, s in zip(runs[:-1], step)), flush=True)
    for r in runs:
        mx.synchronize()
        held = mx.get_active_memory()
        mx.reset_peak_memory()
        decode_run(r, 20, read_each)
        r["decode_runs"].pop()
        r["queue_ms"].pop()
        print(f"T={T:6d} {r['name']:{w}s} decode peak over held memory {(mx.get_peak_memory() - held) / 1e6:7.0f} MB",
              flush=True)
    bench_pair(runs, n_decode, rounds, read_each)
    for r in runs:
        med = r["decode_tps"]
        each = "/".join(f"{x:.0f}" for x in r["decode_runs"])
        print(f"T={T:6d} {r['name']:{w}s} {med:7.1f} tok/s ({each}) {med / runs[-1]['decode_tps']:5.2f}x "
              f"{runs[-1]['name']}; host queues a step in {np.median(r['queue_ms']):.2f} of "
              f"{1e3 / med:.2f} ms", flush=True)


def decode_ab_with_mlx_lm(models: dict, theirs, prompts, n_decode: int, rounds: int, cfg: dict = QWEN35_0_8B,
                          read_each: bool = False):
    """decode_ab of our `models` (name -> model) and mlx-lm's model `theirs` (the baseline) at each prompt length;
    cfg: the configuration they were built from."""
    from mlx_lm.models.cache import make_prompt_cache
    from qwen35_mlx.generate import default_prefill_chunk
    chunk, vocab = default_prefill_chunk(), cfg["text_config"]["vocab_size"]
    print(f"device {mx.default_device()}, mlx {mx.__version__}; decode tok/s, median of {rounds} runs of "
          f"{n_decode} tokens (each run's rate in brackets)" + (", each token read as generation does"
                                                                if read_each else ""), flush=True)
    runs = {name: (m, m.make_cache) for name, m in models.items()}
    runs["mlx-lm"] = (theirs, lambda: make_prompt_cache(theirs))
    for T in prompts:
        decode_ab(runs, T, chunk, vocab, n_decode, rounds, read_each)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--bits", type=int, default=0)
    p.add_argument("--prefill-chunk", type=int, default=None)
    p.add_argument("--skip-mlx-lm-above", type=int, default=1 << 30,
                   help="prompt lengths above this run ours only (mlx-lm's per-token GDN prefill is slow)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.prefill_chunk is None:
        from qwen35_mlx.generate import default_prefill_chunk
        args.prefill_chunk = default_prefill_chunk()
    dtype = getattr(mx, args.dtype)
    cfg = QWEN35_0_8B
    weights = hf_weights(cfg, dtype)
    ours = build_ours(cfg, weights, args.bits)
    theirs = build_mlx_lm(cfg, weights, args.bits)
    del weights
    from mlx_lm.models.cache import make_prompt_cache
    vocab = cfg["text_config"]["vocab_size"]
    rows = []
    for T in args.prompt:
        a = prefill("qwen35_mlx", ours, ours.make_cache, T, args.prefill_chunk, vocab)
        b = None
        if T <= args.skip_mlx_lm_above:
            b = prefill("mlx-lm", theirs, lambda: make_prompt_cache(theirs), T, args.prefill_chunk, vocab)
            a["agree"] = float(np.linalg.norm(a["logits"] - b["logits"]) / np.linalg.norm(b["logits"]))
        bench_pair([r for r in (a, b) if r], args.decode)
        rows.append((a, b))
        gc.collect()
        print(_row(a, b), flush=True)
    if args.out:
        _write(args, rows)


def _row(a, b):
    runs = lambda r: "/".join(f"{x:.0f}" for x in r["decode_runs"])   # noqa: E731
    s = f"T={a['T']}: ours prefill {a['prefill_tps']:.0f} tok/s, decode {a['decode_tps']:.1f} tok/s " \
        f"({runs(a)}), peak {a['peak_gb']:.2f} GB"
    if b:
        s += f" | mlx-lm prefill {b['prefill_tps']:.0f} tok/s, decode {b['decode_tps']:.1f} tok/s ({runs(b)}), " \
             f"peak {b['peak_gb']:.2f} GB | ratio prefill {a['prefill_tps'] / b['prefill_tps']:.1f}x, " \
             f"decode {a['decode_tps'] / b['decode_tps']:.2f}x | logits rel diff {a.get('agree', 0):.1e}"
    return s


def _write(args, rows):
    dev = mx.default_device()
    try:
        name = mx.device_info().get("device_name", str(dev))
    except Exception:  # noqa: BLE001
        name = str(dev)
    lines = [f"\n### Whole model, Qwen3.5-0.8B config, random {args.dtype} weights"
             f"{f', {args.bits}-bit' if args.bits else ''} ({datetime.date.today()}, {name}, mlx {mx.__version__})",
             f"`python benchmarks/bench_model.py {' '.join(sys.argv[1:])}` (prefill steps of {args.prefill_chunk} tokens)",
             "", "| prompt | ours prefill tok/s | mlx-lm prefill tok/s | ratio | ours decode tok/s | mlx-lm decode tok/s |"
             " ratio | ours peak GB | mlx-lm peak GB | logits rel diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for a, b in rows:
        if b:
            lines.append(f"| {a['T']} | {a['prefill_tps']:.0f} | {b['prefill_tps']:.0f} | "
                         f"{a['prefill_tps'] / b['prefill_tps']:.1f}x | {a['decode_tps']:.1f} | {b['decode_tps']:.1f} | "
                         f"{a['decode_tps'] / b['decode_tps']:.2f}x | {a['peak_gb']:.2f} | {b['peak_gb']:.2f} | "
                         f"{a.get('agree', 0):.1e} |")
        else:
            lines.append(f"| {a['T']} | {a['prefill_tps']:.0f} | – | – | {a['decode_tps']:.1f} | – | – | "
                         f"{a['peak_gb']:.2f} | – | – |")
    with open(args.out, "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
