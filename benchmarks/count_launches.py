"""Kernel launches of one decode token on MLX's CUDA backend, ours and mlx-lm's, from the CUDA graphs MLX
dumps (MLX_SAVE_CUDA_GRAPHS_DOT_FILE): decode on a GPU is bound by host work per launch, so this count is what
the fusions are for.

    MLX_SAVE_CUDA_GRAPHS_DOT_FILE=/tmp/dots/g python benchmarks/count_launches.py [--prompt 1024] [--tokens 8]

Qwen3.5-0.8B configuration, random bf16 weights. Prints, per package, kernel nodes per token by kernel name, and
the child graphs (cuBLAS and the like, whose own nodes are not counted).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import build_mlx_lm, build_ours, hf_weights, run  # noqa: E402
from configs import QWEN35_0_8B  # noqa: E402

_NAME = re.compile(r"_ZN3mlx4core2cu(\d+)(\w+)")


def kernel_name(label: str) -> str:
    """The kernel's name from its node label (a mangled symbol: custom kernels without their template suffix)."""
    m = _NAME.search(label)
    if not m:
        return label.strip().split("\n")[-1][:40]
    name = m.group(2)[:int(m.group(1))]
    c = re.match(r"custom_kernel_([a-z_]+?)_(?:bfloat16|float|half|int)", name)
    return c.group(1) if c else name


def count(prefix: str, step, tokens: int):
    """Kernel nodes per token in the graphs dumped while step() runs `tokens` times, by name."""
    mx.synchronize()
    before = set(glob.glob(prefix + "_*.dot"))
    for _ in range(tokens):
        step()
    mx.synchronize()
    kernels, children = collections.Counter(), 0
    for path in set(glob.glob(prefix + "_*.dot")) - before:
        for label in re.findall(r'label="(.*?)"\]', Path(path).read_text(), re.S):
            if "_ZN" in label:
                kernels[kernel_name(label)] += 1
            elif re.search(r"\ngraph_\d+\n", label):
                children += 1
    return {k: v / tokens for k, v in kernels.items()}, children / tokens


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=8)
    args = p.parse_args(argv)
    prefix = os.environ.get("MLX_SAVE_CUDA_GRAPHS_DOT_FILE")
    if not prefix:
        raise SystemExit("count_launches: set MLX_SAVE_CUDA_GRAPHS_DOT_FILE=<dir>/<prefix> (MLX's CUDA backend)")
    from mlx_lm.models.cache import make_prompt_cache
    w = hf_weights(QWEN35_0_8B, mx.bfloat16)
    models = {"qwen35_mlx": build_ours(QWEN35_0_8B, w, 0), "mlx-lm": build_mlx_lm(QWEN35_0_8B, w, 0)}
    ids = mx.array(np.random.default_rng(1).integers(0, 1000, (1, args.prompt)), mx.int32)
    for name, m in models.items():
        cache = m.make_cache() if name == "qwen35_mlx" else make_prompt_cache(m)
        tok = mx.argmax(run(m, cache, ids, 2048), axis=-1)
        state = {"tok": tok}

        def step():
            state["tok"] = mx.argmax(m(state["tok"][:, None], cache=cache)[:, -1], axis=-1)
            mx.eval(state["tok"])
        for _ in range(3):
            step()
        kernels, children = count(prefix, step, args.tokens)
        print(f"{name}: {sum(kernels.values()):.1f} kernel launches per token, {children:.1f} child graphs")
        for k, v in sorted(kernels.items(), key=lambda kv: -kv[1]):
            print(f"   {v:6.2f}  {k}")


if __name__ == "__main__":
    main()
