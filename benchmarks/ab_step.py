"""Decode A/B in one process: the step as one compiled graph (Qwen35Model._step_in_graph, at any context, as
GRAPH_STEP_MAX_ROWS has it since 2026-12-07) or segmented, each with attn_decode's split target at DECODE_SPLITS or --splits, and
mlx-lm, on the same weights. Each variant prefills its own cache with the same prompt, then reports how far a
decode's peak memory rises over what is held (a KV buffer copied each step would show), and the variants take
turns, --rounds runs of --decode tokens each; each reports its median.

    python benchmarks/ab_step.py [--prompt 1024 32768] [--decode 128] [--rounds 3] [--splits 512]

Qwen3.5-0.8B configuration, random bf16 weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_mlx_lm, build_ours, decode_ab_with_mlx_lm, hf_weights  # noqa: E402
from configs import QWEN35_0_8B  # noqa: E402


class Variant:
    """Our model with the one-graph step on or off and attn_decode's split target set while it runs (both are
    read when a step is traced or built, so each variant keeps its own)."""

    def __init__(self, model, one_graph: bool, splits: int):
        self.model, self.one_graph, self.splits = model, one_graph, splits
        self.make_cache = model.make_cache

    def __call__(self, *a, **kw):
        from qwen35_mlx.kernels import attn
        from qwen35_mlx.model import qwen35
        saved = attn.DECODE_SPLITS, qwen35.GRAPH_STEP_MAX_ROWS
        attn.DECODE_SPLITS = self.splits
        qwen35.GRAPH_STEP_MAX_ROWS = 1 << 30 if self.one_graph else 0
        try:
            return self.model(*a, **kw)
        finally:
            attn.DECODE_SPLITS, qwen35.GRAPH_STEP_MAX_ROWS = saved


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", type=int, nargs="+", default=[1024, 32768])
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--splits", type=int, nargs="+", default=[512])
    args = p.parse_args(argv)
    from qwen35_mlx.kernels.attn import DECODE_SPLITS
    weights = hf_weights(QWEN35_0_8B, mx.bfloat16)
    variants = {f"{'graph' if g else 'segments'}/{s}": Variant(build_ours(QWEN35_0_8B, weights, 0), g, s)
                for s in [DECODE_SPLITS, *args.splits] for g in (True, False)}
    theirs = build_mlx_lm(QWEN35_0_8B, weights, 0)
    del weights
    decode_ab_with_mlx_lm(variants, theirs, args.prompt, args.decode, args.rounds)


if __name__ == "__main__":
    main()
