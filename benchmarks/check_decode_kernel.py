"""The fused GDN decode kernel on a GPU backend (CUDA twin, or Metal on a Mac): parity with the mixer in MLX
ops (float32, same weights and inputs) and the time of one mixer step, fused against unfused.

    python benchmarks/check_decode_kernel.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernels"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qwen35_mlx.kernels import gdn_kernels  # noqa: E402
from test_gdn_decode import SHAPES, as_float32, make_layer, make_step  # noqa: E402


def rel(a, b):
    a, b = np.asarray(a.astype(mx.float32), np.float64), np.asarray(b.astype(mx.float32), np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def unfused(layer, *args):
    orig = gdn_kernels.decode_backend
    gdn_kernels.decode_backend = lambda *a: None
    try:
        return layer.mix(*args)
    finally:
        gdn_kernels.decode_backend = orig


def per_call(fn, x, conv, state, n=100):
    for _ in range(3):
        mx.eval(fn(x, conv, state))
    t = time.perf_counter()
    for _ in range(n):
        out, conv, state = fn(x, conv, state)
    mx.eval(out, conv, state)
    return (time.perf_counter() - t) / n * 1e3


def main():
    print(f"device {mx.default_device()}, mlx {mx.__version__}, decode backend "
          f"{gdn_kernels.decode_backend(128, 4)}", flush=True)
    for shape, (B, Hk, Hv, Dk, Dv) in SHAPES.items():
        for dt in (mx.float32, mx.bfloat16):
            layer = make_layer(Hk, Hv, Dk, Dv, dt, seed=list(SHAPES).index(shape))
            x, conv, state = make_step(layer, B, dt)
            ref = unfused(as_float32(layer), x.astype(mx.float32), conv.astype(mx.float32), state)
            out = layer.mix(x, conv, state)
            hist = mx.concatenate([conv[:, 1:], layer.in_proj_qkv(x)], axis=1)
            print(f"{shape:28s} {str(dt):14s} y {rel(out[0], ref[0]):.1e}  state {rel(out[2], ref[2]):.1e}  "
                  f"history exact {bool(mx.array_equal(out[1], hist).item())}", flush=True)
    layer = make_layer(16, 16, 128, 128, mx.bfloat16, H=1024)
    x, conv, state = make_step(layer, 1, mx.bfloat16)
    fused = mx.compile(layer.mix)
    print(f"mixer step, Qwen3.5-0.8B GDN shape, bf16, compiled, chained: fused {per_call(fused, x, conv, state):.3f} ms, "
          f"unfused {per_call(mx.compile(lambda *a: unfused(layer, *a)), x, conv, state):.3f} ms", flush=True)


if __name__ == "__main__":
    main()
