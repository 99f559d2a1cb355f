"""Decode A/B in one process: our model with gdn_decode taking the GDN output projection (per-head partial sums
that norm_gemv adds: 18 launches a token fewer for the 0.8B) and without, and mlx-lm, on the same weights. Each
variant prefills its own cache with the same prompt, then the variants take turns, --rounds runs of --decode
tokens each, so drift within the process reaches all alike; each reports its median.

    python benchmarks/ab_decode.py [--prompt 1024 8192] [--decode 128] [--rounds 5]

Qwen3.5-0.8B configuration, random bf16 weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_mlx_lm, build_ours, decode_ab, hf_weights  # noqa: E402
from configs import QWEN35_0_8B  # noqa: E402


class Switched:
    """Our model with gdn_kernels.FUSE_OUT_PROJ set as given while it runs (the compiled decode step and segments
    are traced with the switch, so each variant keeps its own)."""

    def __init__(self, model, fuse: bool):
        self.model, self.fuse, self.segments, self.step = model, fuse, None, None
        self.make_cache = model.make_cache

    def __call__(self, *a, **kw):
        from qwen35_mlx.kernels import gdn_kernels
        m = self.model
        m.ensure_fused()
        gdn_kernels.FUSE_OUT_PROJ = self.fuse
        m.__dict__["_segment_fns"], m.__dict__["_step_fn"] = self.segments, self.step
        try:
            return m(*a, **kw)
        finally:
            self.segments, self.step = m.__dict__.get("_segment_fns"), m.__dict__.get("_step_fn")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    from mlx_lm.models.cache import make_prompt_cache
    from qwen35_mlx.generate import default_prefill_chunk
    weights = hf_weights(QWEN35_0_8B, mx.bfloat16)
    ours = build_ours(QWEN35_0_8B, weights, 0)
    theirs = build_mlx_lm(QWEN35_0_8B, weights, 0)
    del weights
    chunk, vocab = default_prefill_chunk(), QWEN35_0_8B["text_config"]["vocab_size"]
    print(f"device {mx.default_device()}, mlx {mx.__version__}; decode tok/s, median of {args.rounds} runs of "
          f"{args.decode} tokens (each run's rate in brackets)", flush=True)
    models = {name: (m, m.make_cache) for name, m in
              (("ours, out_proj in gdn_decode", Switched(ours, True)), ("ours, out_proj apart", Switched(ours, False)))}
    models["mlx-lm"] = (theirs, lambda: make_prompt_cache(theirs))
    for T in args.prompt:
        decode_ab(models, T, chunk, vocab, args.decode, args.rounds)

if __name__ == "__main__":
    main()
