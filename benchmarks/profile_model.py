"""Where the time goes in one prefill chunk and one decode step of the Qwen3.5-0.8B configuration (random
bf16 weights): whole forward, then each layer type and each part of a GDN layer, timed in isolation.

    python benchmarks/profile_model.py [--chunk 2048] [--context 8192] [--out FILE]

Each line is the mean over repeated evaluations minus the cost of evaluating nothing (sync overhead).
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

from qwen35_mlx.kernels import gdn_kernels  # noqa: E402
from qwen35_mlx.kernels.gdn import gated_delta  # noqa: E402
from qwen35_mlx.model.gated_deltanet import l2norm  # noqa: E402


def timeit(fn, n=20):
    for _ in range(3):
        mx.eval(fn())
    mx.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        mx.eval(fn())
    mx.synchronize()
    return (time.perf_counter() - t) / n * 1e3


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--out")
    args = p.parse_args(argv)
    lines = []
    say = lambda s: (print(s, flush=True), lines.append(s))
    model = build_ours(QWEN35_0_8B, hf_weights(QWEN35_0_8B, mx.bfloat16), 0)
    base = timeit(lambda: mx.array(0))
    say(f"device {mx.default_device()}, eval overhead {base:.3f} ms")
    T = args.chunk
    H = model.config.text.hidden_size
    ids = mx.random.randint(0, 1000, (1, T))
    x = (mx.random.normal((1, T, H)) * 0.5).astype(mx.bfloat16)
    mx.eval(ids, x)
    lm = model.model.language_model
    gdn_layer, attn_layer = lm.layers[0], lm.layers[3]
    tm = lambda fn, n=20: timeit(fn, n) - base

    say(f"\n== prefill chunk of {T} tokens, empty cache")
    say(f"whole forward, last-token logits   {tm(lambda: model(ids, cache=model.make_cache(), last_only=True)):8.3f} ms")
    say(f"whole forward, all logits          {tm(lambda: model(ids, cache=model.make_cache())):8.3f} ms")
    say(f"lm_head over {T} tokens            {tm(lambda: model.logits(x)):8.3f} ms")
    say(f"GDN decoder layer                  {tm(lambda: gdn_layer(x, x, model.rope, 0, 'causal', None, None)):8.3f} ms")
    say(f"attention decoder layer            {tm(lambda: attn_layer(x, x, model.rope, 0, 'causal', None, None)):8.3f} ms")
    say(f"MLP                                {tm(lambda: gdn_layer.mlp(x)):8.3f} ms")
    say(f"RMSNorm (fp32 weight)              {tm(lambda: gdn_layer.input_layernorm(x)):8.3f} ms")
    say(f"residual add + RMSNorm             {tm(lambda: gdn_layer.post_attention_layernorm.residual(x, x)):8.3f} ms")
    a = gdn_layer.linear_attn
    say(f"GDN mixer (whole)                  {tm(lambda: a(x)):8.3f} ms")
    say(f"  in_proj_qkv                      {tm(lambda: a.in_proj_qkv(x)):8.3f} ms")
    say(f"  in_proj_z                        {tm(lambda: a.in_proj_z(x)):8.3f} ms")
    qkv, ga, gb = a.in_proj_qkv(x), a.in_proj_a(x), a.in_proj_b(x)
    hist = mx.zeros((1, a.K - 1, qkv.shape[-1]), qkv.dtype)
    mx.eval(qkv, ga, gb, hist)
    Dk, Hk, Hv, Dv = a.Dk, a.Hk, a.Hv, a.Dv
    backend = gdn_kernels.conv_backend(Dk, Dv, a.K)
    if backend:
        conv_w = a.conv1d.weight[:, :, 0]
        say(f"  conv, norms, gates (gdn_conv)    {tm(lambda: gdn_kernels.gdn_conv(qkv, hist, conv_w, ga, gb, a.A_log, a.dt_bias, Hk=Hk, Hv=Hv, Dk=Dk, Dv=Dv, backend=backend)):8.3f} ms")
    say(f"  conv, norms, gates (MLX ops)     {tm(lambda: a.conv_gates(qkv, hist, ga, gb)):8.3f} ms")
    q = l2norm(mx.random.normal((1, T, Hk, Dk))).astype(mx.bfloat16) * Dk ** -0.5
    k = l2norm(mx.random.normal((1, T, Hk, Dk))).astype(mx.bfloat16)
    v = mx.random.normal((1, T, Hv, Dv)).astype(mx.bfloat16)
    g = -mx.random.uniform(0, 1, (1, T, Hv))
    beta = mx.random.uniform(0, 1, (1, T, Hv))
    mx.eval(q, k, v, g, beta)
    say(f"  gated_delta (kernel)             {tm(lambda: gated_delta(q, k, v, g, beta)):8.3f} ms")
    z = v
    say(f"  gated RMSNorm                    {tm(lambda: a.norm(v, z)):8.3f} ms")
    say(f"  out_proj                         {tm(lambda: a.out_proj(v.reshape(1, T, -1))):8.3f} ms")
    w = mx.random.normal((6144, H)).astype(mx.bfloat16)
    mx.eval(w)
    ms = tm(lambda: x @ w.T)
    say(f"matmul [{T},{H}]x[{H},6144] bf16     {ms:8.3f} ms  ({2 * T * H * 6144 / ms / 1e9:.0f} TFLOP/s)")

    cache = model.make_cache()
    ctx = mx.random.randint(0, 1000, (1, args.context))
    for s in range(0, args.context, 2048):
        model(ctx[:, s:s + 2048], cache=cache, last_only=True)
        mx.eval(cache.state_arrays())
    snap = cache.snapshot()
    attn_cache = cache[3]

    def chunk_at():                                                # prefill chunk at this context, rewound
        out = model(ids, cache=cache, last_only=True)
        mx.eval(out)
        cache.restore(snap)
        return out

    def attn_at():
        out = attn_layer(x, x, model.rope, args.context, "causal", None, attn_cache)
        mx.eval(out)
        attn_cache.trim(T)
        return out
    say(f"\n== prefill chunk of {T} tokens after {args.context} tokens of context")
    say(f"whole forward, last-token logits   {tm(chunk_at, 5):8.3f} ms")
    say(f"attention decoder layer            {tm(attn_at, 5):8.3f} ms")

    say(f"\n== decode, one token after {args.context} tokens of context")
    tok = mx.array([[7]])

    def step():
        out = model(tok, cache=cache)
        for c in cache:                                            # keep the context length fixed
            if not hasattr(c, "state"):
                c.trim(1)
        cache.offset -= 1
        return out
    say(f"whole decode step                  {tm(step, 50):8.3f} ms")
    x1 = x[:, :1]
    gc = cache[0]
    step1 = mx.compile(gdn_layer.linear_step)
    say(f"GDN layer step (compiled)          {tm(lambda: step1(x1, x1, gc.conv, gc.state), 50):8.3f} ms")
    say(f"lm_head, one token                 {tm(lambda: model.logits(x1), 50):8.3f} ms")
    say(f"GDN mixer step (uncompiled)        {tm(lambda: a.mix(x1, gc.conv, gc.state), 50):8.3f} ms")
    st = gc.state
    say(f"gated_delta step kernel            {tm(lambda: gated_delta(q[:, :1], k[:, :1], v[:, :1], g[:, :1], beta[:, :1], st), 50):8.3f} ms")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
