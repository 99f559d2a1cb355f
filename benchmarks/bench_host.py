"""Python graph-building time of one decode step on the GPU code path, measurable on any machine: the custom
kernels are replaced by stand-ins that return zeros of their output shapes, so the graph the model builds is
the one a GPU backend gets (fused projections, gdn_decode, attn_qk, rms_norm, compiled segments) while the
backend underneath is whatever this machine has. Decode of a small model on a GPU is bound by host time per
step (see bench_launch.py, profile_decode.py): this is the Python part of it.

    python benchmarks/bench_host.py [--steps 300] [--profile]

Qwen3.5-0.8B configuration, random bf16 weights, 8 tokens of context. Reports the median and 10th percentile
of per-step build time (the step's graph is evaluated after each timing, outside it), and the nodes of one
step's graph by primitive (custom kernel calls, MLX ops, and the views among them: each node costs host time,
when the graph is built and again when it is evaluated).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_model import build_ours, hf_weights  # noqa: E402
from configs import QWEN35_0_8B  # noqa: E402
from helpers import graph_nodes  # noqa: E402

from qwen35_mlx.kernels import attn, gdn, gdn_kernels, norm  # noqa: E402


class ZerosKernel:
    """Stands in for a built kernel: outputs of the requested shapes, no work. Set `connect` to make them depend
    on the inputs (one Depends node per launch), so the step's graph stays one graph as with the real kernel (for
    graph_nodes; the timing leaves it off, as it costs more graph building than the real kernel's call)."""

    connect = False

    def __call__(self, inputs, output_shapes, output_dtypes, **_):
        outs = [mx.zeros(s, d) for s, d in zip(output_shapes, output_dtypes)]
        return mx.depends(outs, list(inputs)) if self.connect else outs


STAND_IN = {"Depends", "Full", "Broadcast"}      # the nodes ZerosKernel adds (one Depends per kernel launch)


def fake_gpu_kernels():
    for mod in (gdn, gdn_kernels, norm, attn):
        mod.gpu_backend = lambda: "cuda"
    mx.fast.cuda_kernel = lambda **_: ZerosKernel()      # a new factory: _metal builds kernels afresh


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the build, by own time")
    args = ap.parse_args()
    model = build_ours(QWEN35_0_8B, hf_weights(QWEN35_0_8B, mx.bfloat16), 0)
    cache = model.make_cache()
    mx.eval(model(mx.array([[1, 2, 3, 4, 5, 6, 7, 8]]), cache=cache, last_only=True))
    fake_gpu_kernels()
    tok = mx.array([[7]])
    for _ in range(3):
        mx.eval(model(tok, cache=cache))
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        out = model(tok, cache=cache)
        times.append(time.perf_counter() - t)
        mx.eval(out)
    times.sort()
    n = len(times)
    print(f"device {mx.default_device()}, mlx {mx.__version__}: graph building per decode step (GPU code path, "
          f"kernels stood in): median {times[n // 2] * 1e3:.3f} ms, p10 {times[n // 10] * 1e3:.3f} ms")
    ZerosKernel.connect = True
    model.__dict__["_segment_fns"] = model.__dict__["_step_fn"] = None      # retraced with the connected stand-ins
    mx.eval(cache.state_arrays())                           # (the unconnected stand-ins left the KV updates lazy)
    nodes = graph_nodes(mx.argmax(model(tok, cache=cache)[:, -1], axis=-1))
    ZerosKernel.connect = False
    model.__dict__["_segment_fns"] = model.__dict__["_step_fn"] = None
    own = sum(n for k, n in nodes.items() if k not in STAND_IN)
    print(f"graph nodes per decode step (with argmax): {nodes['Depends']} custom kernel calls, {own} other: "
          + ", ".join(f"{k} {n}" for k, n in nodes.most_common() if k not in STAND_IN))
    if args.profile:
        pr = cProfile.Profile()
        for _ in range(50):
            pr.enable()
            out = model(tok, cache=cache)
            pr.disable()
            mx.eval(out)
        pstats.Stats(pr).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
