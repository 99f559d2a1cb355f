"""Where decode time goes on a backend whose cost is per operation (MLX on CUDA; small Metal GPUs too):
per-call cost of single ops, of one layer step, and of the whole step, each measured two ways:

  sync   evaluate after every call (what a timing of one call alone sees)
  chain  N calls chained lazily (each feeds the next), evaluated once: the cost inside a long graph

    python benchmarks/profile_decode.py [--context 1024] [--n 64] [--out FILE]

Qwen3.5-0.8B configuration, random bf16 weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_model import build_ours, hf_weights  # noqa: E402
from configs import QWEN35_0_8B  # noqa: E402

from qwen35_mlx.kernels.gdn import gated_delta  # noqa: E402


def per_call(fn, x0, n):
    """(sync ms, chain ms) per call of x -> fn(x), x a tuple of arrays threaded through."""
    x = x0
    for _ in range(3):
        x = fn(*x)
        mx.eval(x)
    t = time.perf_counter()
    x = x0
    for _ in range(n):
        x = fn(*x)
        mx.eval(x)
    sync = (time.perf_counter() - t) / n * 1e3
    x = x0
    t = time.perf_counter()
    for _ in range(n):
        x = fn(*x)
    mx.eval(x)
    chain = (time.perf_counter() - t) / n * 1e3
    return sync, chain


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out")
    args = p.parse_args(argv)
    lines = []

    def say(name, sc):
        s = f"{name:44s} sync {sc[0]:8.3f} ms   chain {sc[1]:8.3f} ms"
        print(s, flush=True)
        lines.append(s)

    n = args.n
    print(f"device {mx.default_device()}, mlx {mx.__version__}", flush=True)
    model = build_ours(QWEN35_0_8B, hf_weights(QWEN35_0_8B, mx.bfloat16), 0)
    H = model.config.text.hidden_size
    x = (mx.random.normal((1, 1, H)) * 0.5).astype(mx.bfloat16)
    w = (mx.random.normal((6144, H)) * 0.02).astype(mx.bfloat16)
    mx.eval(x, w)
    say("elementwise x*1.0001 [1,1024]", per_call(lambda x: (x * 1.0001,), (x,), n))
    say("matvec [1,1024]x[1024,6144]", per_call(lambda x: ((x @ w.T)[..., :H],), (x,), n))
    lm = model.model.language_model
    norm = lm.layers[0].input_layernorm
    say("RMSNorm (model's)", per_call(lambda x: (norm(x),), (x,), n))

    cache = model.make_cache()
    ctx = mx.random.randint(0, 1000, (1, args.context))
    for s in range(0, args.context, 2048):
        model(ctx[:, s:s + 2048], cache=cache, last_only=True)
        mx.eval(cache.state_arrays())
    gc = cache[0]
    a = lm.layers[0].linear_attn
    Hk, Dk, Hv, Dv = a.Hk, a.Dk, a.Hv, a.Dv
    q = (mx.random.normal((1, 1, Hk, Dk)) * 0.08).astype(mx.bfloat16)
    v = mx.random.normal((1, 1, Hv, Dv)).astype(mx.bfloat16)
    g = -mx.random.uniform(0, 1, (1, 1, Hv))
    beta = mx.random.uniform(0, 1, (1, 1, Hv))
    mx.eval(q, v, g, beta)
    say("gated_delta, T=1 (recurrent kernel)",
        per_call(lambda st: (gated_delta(q, q, v, g, beta, st)[1],), (gc.state,), n))
    layer = lm.layers[0]
    say("GDN decoder layer step (compiled)", per_call(mx.compile(layer.linear_step), (x, x, gc.conv, gc.state), n))
    say("GDN decoder layer step (uncompiled)", per_call(layer.linear_step, (x, x, gc.conv, gc.state), n))
    say("GDN mixer step (uncompiled)", per_call(lambda x, c, s: a.mix(x, c, s), (x, gc.conv, gc.state), n))
    say("MLP", per_call(lambda x: (layer.mlp(x),), (x,), n))

    tok = mx.array([[7]])

    def step(tok):
        out = model(tok, cache=cache)
        for c in cache:                                            # keep the context length fixed
            if not hasattr(c, "state"):
                c.trim(1)
        cache.offset -= 1
        return (mx.argmax(out[:, -1], axis=-1)[:, None],)
    say(f"whole decode step at {args.context} tokens", per_call(step, (tok,), n))
    t = time.perf_counter()
    nxt = tok
    build = encode = 0.0
    for _ in range(n):                                              # generate's pipelining
        t0 = time.perf_counter()
        nxt = step(nxt)[0]
        t1 = time.perf_counter()
        mx.async_eval(nxt)
        build, encode = build + t1 - t0, encode + time.perf_counter() - t1
    mx.eval(nxt)
    s = f"{'whole decode step, async_eval pipelined':44s} {(time.perf_counter() - t) / n * 1e3:8.3f} ms " \
        f"(of which building the graph in Python {build / n * 1e3:.3f} ms, async_eval {encode / n * 1e3:.3f} ms)"
    print(s, flush=True)
    lines.append(s)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
