"""Long-context prefill attention of one Qwen3.5 full-attention layer (8 query heads, 2 KV heads, head dim
256, bf16): a chunk of queries against the whole cache, where MLX has no fused kernel for head dim 256
(its fallback materialises the scores). Time and peak memory of each way to do it, in one process:

  unblocked        mlx-lm's SDPA on the whole chunk (quantized SDPA for a quantized cache)
  blocks R         Attention.attend with query blocks of R rows (what the model runs)
  dequant + R      quantized cache only: dequantize K and V once, then bf16 blocks of R rows

    python benchmarks/bench_attention.py [--context 32768 131072] [--chunk 2048] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.base import scaled_dot_product_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qwen35_mlx.model import attention  # noqa: E402


class _QCache:
    """What mlx-lm's SDPA dispatch looks at on a quantized cache."""

    def __init__(self, bits, group_size):
        self.bits, self.group_size = bits, group_size


def timed(fn, reps=3):
    mx.eval(fn())
    mx.synchronize()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    t = time.perf_counter()
    for _ in range(reps):
        mx.eval(fn())
    mx.synchronize()
    return (time.perf_counter() - t) / reps * 1e3, (mx.get_peak_memory() - base) / 2**30


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--context", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--rows", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--out")
    args = p.parse_args(argv)
    lines = [f"device {mx.default_device()}, mlx {mx.__version__}; chunk {args.chunk}, 8 q heads / 2 kv heads, "
             "D 256, bf16; ms per call, peak GiB above the inputs"]
    print(lines[0], flush=True)
    Hq, Hkv, D, T = 8, 2, 256, args.chunk
    att = attention.Attention.__new__(attention.Attention)
    att.scale = D ** -0.5
    for S in args.context:
        mx.random.seed(0)
        q = mx.random.normal((1, Hq, T, D)).astype(mx.bfloat16)
        k = mx.random.normal((1, Hkv, S, D)).astype(mx.bfloat16)
        v = mx.random.normal((1, Hkv, S, D)).astype(mx.bfloat16)
        qk, qv = mx.quantize(k, 64, 8), mx.quantize(v, 64, 8)
        mx.eval(q, k, v, qk, qv)
        qc = _QCache(8, 64)
        runs = [("bf16 KV, unblocked", lambda: scaled_dot_product_attention(q, k, v, None, att.scale, "causal")),
                ("8-bit KV, unblocked", lambda: scaled_dot_product_attention(q, qk, qv, qc, att.scale, "causal"))]
        for R in args.rows:
            budget = R * Hq * S * 4
            runs.append((f"bf16 KV, blocks {R}", lambda b=budget: _attend(att, b, q, k, v, None)))
            runs.append((f"8-bit KV, blocks {R}", lambda b=budget: _attend(att, b, q, qk, qv, qc)))
            runs.append((f"8-bit KV, dequant + blocks {R}",
                         lambda b=budget: _attend(att, b, q, mx.dequantize(*qk, 64, 8), mx.dequantize(*qv, 64, 8),
                                                  None)))
        for name, fn in runs:
            try:
                ms, gb = timed(fn)
                s = f"S {S:7d}  {name:34s} {ms:9.2f} ms  peak +{gb:6.2f} GiB"
            except Exception as e:                                        # noqa: BLE001 (report, go on)
                s = f"S {S:7d}  {name:34s} failed: {type(e).__name__}: {str(e)[:80]}"
            print(s, flush=True)
            lines.append(s)
        del q, k, v, qk, qv
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


def _attend(att, budget, q, k, v, cache):
    old = attention.SCORE_BYTES
    attention.SCORE_BYTES = budget
    try:
        return att.attend(q, k, v, "causal", cache)
    finally:
        attention.SCORE_BYTES = old


if __name__ == "__main__":
    main()
