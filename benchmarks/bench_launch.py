"""What one launch costs on the host, by kind of operation: decode of a small model on a GPU is bound by
per-operation host work (building the graph, encoding each kernel), not by the GPU. Chains of N tiny ops on a
[1, H] row, built lazily and evaluated once; reported as microseconds per op (graph building in Python, then
mx.eval, then both), plain and inside one mx.compile'd function of 8 ops.

    python benchmarks/bench_launch.py [--n 512] [--hidden 1024]

Rows: a builtin elementwise op; mx.fast.rms_norm; a trivial custom kernel (y = x * c) with no header, with
the header our simple kernels get and with the header of the tile kernels (MLX builds and hashes a custom
kernel's whole source on each launch); our rms_norm kernel (kernels/norm.py) with and without the residual add.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qwen35_mlx.kernels import _metal, norm  # noqa: E402
from qwen35_mlx.kernels.gdn import gpu_backend  # noqa: E402

TRIVIAL = {
    "cuda": "unsigned i = blockIdx.x * blockDim.x + threadIdx.x; if (i < x_shape[1]) y[i] = x[i] * T(1.0001f);",
    "metal": "uint i = thread_position_in_grid.x; if (i < x_shape[1]) y[i] = x[i] * T(1.0001f);",
}


def trivial_kernel(backend: str, header: str):
    factory = mx.fast.metal_kernel if backend == "metal" else mx.fast.cuda_kernel
    k = factory(name=f"scale_{len(header)}", input_names=["x"], output_names=["y"], source=TRIVIAL[backend],
                header=header)
    return lambda x: k(inputs=[x], template=[("T", x.dtype)], grid=(x.shape[1], 1, 1), threadgroup=(256, 1, 1),
                       output_shapes=[x.shape], output_dtypes=[x.dtype])[0]


def per_op(step, x, n, reps=7):
    """(build, eval, total) microseconds per op for a chain of n calls of step, median of reps."""
    mx.eval(step(x))
    rows = []
    for _ in range(reps):
        t0 = time.perf_counter()
        y = x
        for _ in range(n):
            y = step(y)
        t1 = time.perf_counter()
        mx.eval(y)
        t2 = time.perf_counter()
        rows.append(((t1 - t0) * 1e6 / n, (t2 - t1) * 1e6 / n, (t2 - t0) * 1e6 / n))
    return tuple(statistics.median(r[i] for r in rows) for i in range(3))


def compiled8(step):
    """One compiled function applying step 8 times (called n/8 times: per-op cost inside a compiled graph)."""
    def f(x):
        for _ in range(8):
            x = step(x)
        return x
    return mx.compile(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=1024)
    args = ap.parse_args()
    backend = gpu_backend()
    if backend is None:
        sys.exit("bench_launch: needs a GPU backend (Metal, or MLX's CUDA backend)")
    H, eps = args.hidden, 1e-6
    x = mx.random.normal((1, H)).astype(mx.bfloat16)
    w = (1 + 0.1 * mx.random.normal((H,))).astype(mx.float32)
    wb = w.astype(mx.bfloat16)
    small = _metal.kernel_source("rms_norm", backend)[0]
    tiled = _metal.kernel_source("gdn_chunk_scan", backend)[0]
    unstripped = "".join(_metal.read_source(f) for f in (f"portable_{backend}.h", f"tiles_{backend}.h", "tiles.h"))
    ops = {
        "builtin elementwise (x * c)": lambda y: y * 1.0001,
        "mx.fast.rms_norm (bf16 weight)": lambda y: mx.fast.rms_norm(y, wb, eps),
        "mx.fast.rms_norm, fp32 weight, cast": lambda y: mx.fast.rms_norm(y, w, eps).astype(y.dtype),
        "custom kernel, no header": trivial_kernel(backend, ""),
        f"custom kernel, simple kernels' header ({len(small)} B)": trivial_kernel(backend, small),
        f"custom kernel, tile kernels' header ({len(tiled)} B)": trivial_kernel(backend, tiled),
        f"custom kernel, same unstripped ({len(unstripped)} B)": trivial_kernel(backend, unstripped),
        "rms_norm kernel": lambda y: norm.rms_norm(y, w, eps, backend=backend),
        "rms_norm kernel + residual add": lambda y: norm.rms_norm(y, w, eps, residual=y, backend=backend)[0],
        "add + mx.fast.rms_norm + cast (MLX ops)":
            lambda y: mx.fast.rms_norm(y + y, w, eps).astype(y.dtype),
    }
    print(f"device {mx.default_device()} backend {backend} mlx {mx.__version__}; n = {args.n}, H = {H}")
    print(f"{'op':48s} {'build':>7s} {'eval':>7s} {'total':>7s} | compiled x8: {'build':>7s} {'eval':>7s} "
          f"{'total':>7s}  (us per op)")
    for name, step in ops.items():
        b, e, t = per_op(step, x, args.n)
        c = compiled8(step)
        cb, ce, ct = per_op(c, x, args.n // 8)
        print(f"{name:48s} {b:7.2f} {e:7.2f} {t:7.2f} | {'':13s} {cb / 8:7.2f} {ce / 8:7.2f} {ct / 8:7.2f}")


if __name__ == "__main__":
    main()
