"""Runs the CUDA chunk path a few times at one size, for a profiler to attach to (benchmarks/RESULTS.md says how):

    ncu -k regex:gdn_chunk --launch-skip 2 --launch-count 2 python3 benchmarks/profile_gdn.py --T 32768
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx.core as mx  # noqa: E402

from bench_gdn import make_inputs  # noqa: E402
from qwen35_mlx.kernels import gdn_kernels  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, default=32768)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--D", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--bv", type=int, default=None)
    p.add_argument("--nt", type=int, default=gdn_kernels.NT_SCAN)
    a = p.parse_args(argv)
    args = make_inputs(1, a.T, a.H, a.H, a.D, a.D, mx.bfloat16, seed=1)
    for _ in range(a.reps):
        mx.eval(gdn_kernels.gdn_chunk(*args, backend="cuda", bv=a.bv, nt_scan=a.nt))
        mx.synchronize()


if __name__ == "__main__":
    main()
