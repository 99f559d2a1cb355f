"""Decode A/B in one process: this tree's model, the same model from other source trees (other commits), and
mlx-lm, on the same weights. Each prefills its own cache with the same prompt, then they take turns, --rounds runs
of --decode tokens each, so drift within the process reaches all alike; each reports its median.

    python benchmarks/ab_decode.py [--trees DIR ...] [--prompt 1024 8192] [--decode 128] [--rounds 5]
        [--config 0.8b|2b|4b|9b] [--read-each]

A tree is `mkdir DIR && git archive REV qwen35_mlx metal | tar -x -C DIR`. It is imported as a renamed copy of its
package (DIR/qwen35_mlx_ab<i>, made here; its kernels read DIR/metal), so several versions live in one process.
Qwen3.5-0.8B configuration (--config: another of benchmarks/hub_configs, text only), random bf16 weights.
--read-each reads every token as generation does, the host one step ahead at most (else it runs as far ahead as
MLX lets it): where the GPU is the slower side, that is where a KV write can find its buffer still held by the
step before, and copy it (the "decode peak over held memory" line shows such copies).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import sys
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_mlx_lm, build_ours, decode_ab_with_mlx_lm, hf_weights  # noqa: E402
from configs import QWEN35_0_8B, hub_config  # noqa: E402


def tree_package(tree: Path, i: int) -> str:
    """Copy tree/qwen35_mlx to tree/qwen35_mlx_ab<i> with its absolute self-imports renamed; returns the name."""
    name = f"qwen35_mlx_ab{i}"
    dst = tree / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(tree / "qwen35_mlx", dst)
    for f in dst.rglob("*.py"):
        f.write_text(re.sub(r"\bqwen35_mlx\b", name, f.read_text()))
    sys.path.insert(0, str(tree))
    importlib.invalidate_caches()
    return name


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--trees", nargs="*", default=[], type=Path)
    p.add_argument("--prompt", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--config", default="0.8b", choices=["0.8b", "2b", "4b", "9b"])
    p.add_argument("--read-each", action="store_true")
    args = p.parse_args(argv)
    cfg = QWEN35_0_8B if args.config == "0.8b" else hub_config(args.config, vision=False)
    weights = hf_weights(cfg, mx.bfloat16)
    models = {"this tree": build_ours(cfg, weights, 0)}
    for i, tree in enumerate(args.trees):
        models[str(tree)] = build_ours(cfg, weights, 0, pkg=tree_package(tree.resolve(), i))
    theirs = build_mlx_lm(cfg, weights, 0)
    del weights
    decode_ab_with_mlx_lm(models, theirs, args.prompt, args.decode, args.rounds, cfg, args.read_each)


if __name__ == "__main__":
    main()
