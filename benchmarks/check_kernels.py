"""The fused kernels on a GPU backend (CUDA twin, or Metal on a Mac), each against its MLX-ops branch (float32,
same weights and inputs), and timed fused against unfused at the Qwen3.5-0.8B shapes:
gdn_decode (a GDN mixer's decode step), gdn_conv (prefill conv / norms / gates), rms_norm (with the residual add),
attn_qk (attention's q/k norms and rope in decode); attn_flash (prefill attention) and attn_decode (decode
attention) against float64 on their kernel tests' shapes (their timing: bench_attention.py); norm_gemv (a decode
block's add + norm + input projections) against float64, timed against the MLX ops it replaces. (The chunk
kernels have their own: bench_gdn.py.)

    python benchmarks/check_kernels.py [--only flash gated attn_decode norm_gemv norm attn_qk conv gdn_decode]

Each check JIT-builds its kernels on first use (seconds each on CUDA): --only keeps a short device session short.
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
from qwen35_mlx.kernels import gdn_kernels, norm  # noqa: E402
from qwen35_mlx.kernels.gdn import gpu_backend  # noqa: E402
from test_gdn_conv import RUNS, make_run, run_kernel  # noqa: E402
from test_gdn_conv import SHAPES as CONV_SHAPES  # noqa: E402
from test_gdn_decode import SHAPES, as_float32, make_layer, make_step  # noqa: E402
from test_attn_qk import make_attention  # noqa: E402
import test_attn_flash  # noqa: E402
import test_attn_decode  # noqa: E402
import test_norm_gemv  # noqa: E402
from qwen35_mlx.model import attention  # noqa: E402


def rel(a, b):
    a, b = (np.asarray(x.astype(mx.float32) if isinstance(x, mx.array) else x, np.float64) for x in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def unfused(layer, *args):
    orig = gdn_kernels.decode_backend
    gdn_kernels.decode_backend = lambda *a: None
    try:
        return layer.mix(*args)
    finally:
        gdn_kernels.decode_backend = orig


def timed(fn, n=100):
    """ms per call of fn(), calls chained lazily and evaluated once at the end (the cost inside a graph)."""
    for _ in range(3):
        mx.eval(fn())
    t = time.perf_counter()
    outs = [fn() for _ in range(n)]
    mx.eval(outs)
    return (time.perf_counter() - t) / n * 1e3


def check_conv():
    f = lambda x: x.astype(mx.float32)
    for shape, dims in CONV_SHAPES.items():
        for run, (B, T, history) in RUNS.items():
            for dt in (mx.float32, mx.bfloat16):
                layer = make_layer(*dims, dt, seed=1)
                qkv, conv, a, b = make_run(layer, B, T, dt, history=history)
                zeros = mx.zeros((B, layer.K - 1, qkv.shape[-1]), mx.float32)
                want = as_float32(layer).conv_gates(f(qkv), zeros if conv is None else f(conv), f(a), f(b))
                got = run_kernel(layer, qkv, conv, a, b, gpu_backend())
                errs = " ".join(f"{n} {rel(x, y):.1e}" for n, x, y in zip(("q", "k", "v", "g", "beta"), got, want))
                print(f"gdn_conv {shape:26s} {run:28s} {str(dt):14s} {errs}  history exact "
                      f"{bool(mx.array_equal(f(got[5]), want[5]).item())}", flush=True)
    layer = make_layer(16, 16, 128, 128, mx.bfloat16, H=1024)
    qkv, conv, a, b = make_run(layer, 1, 2048, mx.bfloat16)
    fused = lambda: run_kernel(layer, qkv, conv, a, b, gpu_backend())
    print(f"gdn_conv, Qwen3.5-0.8B GDN shape, bf16, T = 2048: fused {timed(fused):.3f} ms, MLX ops "
          f"{timed(lambda: layer.conv_gates(qkv, conv, a, b)):.3f} ms", flush=True)


def check_norm():
    rng = np.random.default_rng(0)
    for rows, H in ((1, 1024), (2048, 1024), (16384, 256), (3, 5120)):
        for dt in (mx.float32, mx.bfloat16):
            x, h = (mx.array(rng.standard_normal((rows, H)).astype(np.float32)).astype(dt) for _ in range(2))
            w = mx.array(1 + 0.3 * rng.standard_normal(H).astype(np.float32))
            y, res = norm.rms_norm(x, w, 1e-6, residual=h)
            s = (h + x).astype(mx.float32)
            ref = w * s * mx.rsqrt((s * s).mean(-1, keepdims=True) + 1e-6)
            print(f"rms_norm rows {rows:6d} H {H:5d} {str(dt):14s} y {rel(y, ref):.1e}  residual exact "
                  f"{bool(mx.array_equal(res, h + x).item())}", flush=True)
    for rows in (1, 2048, 8192):
        x, h = (mx.array(rng.standard_normal((rows, 1024)).astype(np.float32)).astype(mx.bfloat16) for _ in range(2))
        w = mx.ones((1024,), mx.float32)
        fused = lambda: norm.rms_norm(x, w, 1e-6, residual=h)
        plain = mx.compile(lambda: norm.rms_norm(x, w, 1e-6, residual=h, backend=None))
        alone = lambda: norm.rms_norm(x, w, 1e-6)
        print(f"add + rms_norm, [{rows}, 1024] bf16: fused {timed(fused):.3f} ms, MLX ops (compiled) "
              f"{timed(plain):.3f} ms; rms_norm alone {timed(alone):.3f} ms (copy of x {timed(lambda: x + 0):.3f} ms)",
              flush=True)
    for rows in (16, 8192 * 16):                                   # the GDN output norm: rows of one head
        x, z = (mx.array(rng.standard_normal((rows, 128)).astype(np.float32)).astype(mx.bfloat16) for _ in range(2))
        w = mx.array(1 + 0.3 * rng.standard_normal(128).astype(np.float32)).astype(mx.bfloat16)
        y = norm.rms_norm(x, w, 1e-6, gate=z)
        xf, zf = x.astype(mx.float32), z.astype(mx.float32)
        ref = w.astype(mx.float32) * xf * mx.rsqrt((xf * xf).mean(-1, keepdims=True) + 1e-6) * zf * mx.sigmoid(zf)
        kernel = lambda: norm.rms_norm(x, w, 1e-6, gate=z)
        ops = lambda: norm.rms_norm(x, w, 1e-6, gate=z, backend=None)
        print(f"gated rms_norm [{rows}, 128] bf16: err {rel(y, ref):.1e}, kernel {timed(kernel):.3f} ms, MLX ops "
              f"(compiled) {timed(ops):.3f} ms", flush=True)


def check_norm_gemv():
    """norm_gemv on the GPU backend: its kernel tests' cases plus the 0.8B decode projections, against float64, and
    timed against the MLX ops it replaces (add + norm kernel, matmul, silu * up; compiled)."""
    t = test_norm_gemv
    cases = dict(t.CASES, **{"0.8B GDN in": (1, 1024, 8224, False, True, mx.bfloat16),
                             "0.8B MLP gate/up": (1, 1024, 3584, True, True, mx.bfloat16)})
    for case, (M, K, N, glu, add, dt) in cases.items():
        x, h, nw, w = t.make(M, K, N, glu, dt, seed=K)
        y = norm.norm_gemv(x, nw, 1e-6, w, residual=h if add else None, glu=glu, backend=gpu_backend())
        y = y[0] if add else y
        ref, _ = t.reference(x, h, nw, w, 1e-6, glu, add)
        err = rel(y, ref)
        fused = lambda: norm.norm_gemv(x, nw, 1e-6, w, residual=h, glu=glu, backend=gpu_backend())

        def ops(x, h):
            n, s = norm.rms_norm(x, nw, 1e-6, residual=h)
            p = n @ w.T
            if glu:
                g, u = mx.split(p, 2, axis=-1)
                p = g * mx.sigmoid(g) * u
            return p, s
        plain = mx.compile(ops)
        print(f"norm_gemv {case:18s} M {M} K {K:5d} N {N:5d} {str(dt):14s} err {err:.1e} "
              f"{'ok' if err < t.TOL[dt] else 'FAIL'}  one launch {timed(fused):.3f} ms, MLX ops "
              f"{timed(lambda: plain(x, h)):.3f} ms", flush=True)


def check_attn_qk():
    """attn_qk against Attention.project's MLX-ops branch (float32 weights and input for the reference)."""
    for NQ, NK, D, dt in ((8, 2, 256, mx.float32), (8, 2, 256, mx.bfloat16), (4, 1, 128, mx.bfloat16)):
        layer, rope = make_attention(NQ, NK, D, 0.25, dt)
        ref_layer, _ = make_attention(NQ, NK, D, 0.25, mx.float32)
        layer.ensure_fused()
        x = mx.array(np.random.default_rng(1).standard_normal((2, 1, 64)).astype(np.float32))
        pos = mx.array(31000, mx.int32)
        got = layer.project(x.astype(dt), rope, pos)
        orig = attention.qk_backend
        attention.qk_backend = lambda *a: None
        try:
            want = ref_layer.project(x, rope, pos)
            plain = mx.compile(lambda x: layer.project(x, rope, pos))
            t_plain = timed(lambda: plain(x.astype(dt)))
        finally:
            attention.qk_backend = orig
        fused = mx.compile(lambda x: layer.project(x, rope, pos))
        print(f"attn_qk NQ {NQ} NK {NK} D {D} {str(dt):14s} q {rel(got[0], want[0]):.1e} k {rel(got[1], want[1]):.1e}"
              f"  project, compiled: fused {timed(lambda: fused(x.astype(dt))):.3f} ms, MLX ops {t_plain:.3f} ms",
              flush=True)


def check_flash():
    """attn_flash on the GPU backend, every shape and run of its kernel tests, in several launch variants
    (threads : keys per block : queries in threadgroup memory)."""
    from qwen35_mlx.kernels import attn
    t = test_attn_flash
    variants = [(64, None, False), (None, None, None), (128, 32, True), (128, 64, True), (256, 64, True)]
    for shape, (Hq, Hkv, D) in t.SHAPES.items():
        for run, (B, T, S, causal) in t.RUNS.items():
            for dt in (mx.bfloat16, mx.float16):
                q, k, v = t.make(B, T, S, Hq, Hkv, D, dt, seed=T + S)
                ref = t.reference(q, k, v, D ** -0.5, causal)
                errs = [rel(attn.attn_flash(q, k, v, D ** -0.5, causal=causal, backend=gpu_backend(), nt=nt, bk=bk,
                                            qs=qs), ref) for nt, bk, qs in variants]
                ok = max(errs) < t.TOL[dt]
                cells = " ".join(f"{nt or '-'}:{bk or '-'}:{'-' if qs is None else int(qs)} {e:.1e}"
                                 for (nt, bk, qs), e in zip(variants, errs))
                print(f"attn_flash {shape:16s} {run:15s} {str(dt):14s} err {cells} {'ok' if ok else 'FAIL'}",
                      flush=True)


def check_attn_decode():
    """attn_decode + combine on the GPU backend, every shape and run of their kernel tests (cache rows past S are
    NaN: a read of them shows), S as an int and as data (a compiled step's: 1,500 spare rows, most splits idle),
    and with the newest rows in a tail buffer."""
    from qwen35_mlx.kernels import attn
    t = test_attn_decode
    for shape, (Hq, Hkv, D, dt) in t.SHAPES.items():
        for run, (B, S) in t.RUNS.items():
            for spare, n_keys in ((40, S), (1500, mx.array([S], dtype=mx.int32))):
                q, kc, vc = t.make(B, S, Hq, Hkv, D, dt, seed=S, spare=spare)
                ref = test_attn_flash.reference(q, kc[:, :, :S], vc[:, :, :S], D ** -0.5, False).reshape(B, 1, Hq * D)
                err = rel(attn.attn_decode(q, kc, vc, n_keys, D ** -0.5, backend=gpu_backend()), ref)
                gate = t.gate_view(B, Hq, D, dt, seed=S)                   # a strided view, read in place
                gref = ref * mx.sigmoid(gate.astype(mx.float32)).reshape(B, 1, Hq * D)
                gerr = rel(attn.attn_decode(q, kc, vc, n_keys, D ** -0.5, backend=gpu_backend(), gate=gate), gref)
                print(f"attn_decode {shape:22s} {run:8s} {'S data' if spare > 40 else 'S int ':6s} err {err:.1e}, "
                      f"gated {gerr:.1e} {'ok' if max(err, gerr) < t.TOL[dt] else 'FAIL'}", flush=True)
            tail_rows = min(S, 100)                          # the newest rows in a tail (a compiled step's)
            km, vm, tail, N0 = t.split_tail(kc, vc, S, tail_rows, TR=tail_rows + 7)
            terr = rel(attn.attn_decode(q, km, vm, mx.array([S, N0, 0, 0], dtype=mx.int32), D ** -0.5,
                                        backend=gpu_backend(), tail=tail), ref)
            print(f"attn_decode {shape:22s} {run:8s} tail {tail_rows:3d} err {terr:.1e} "
                  f"{'ok' if terr < t.TOL[dt] else 'FAIL'}", flush=True)


def per_call(fn, x, conv, state, n=100):
    for _ in range(3):
        mx.eval(fn(x, conv, state))
    t = time.perf_counter()
    for _ in range(n):
        out, conv, state = fn(x, conv, state)
    mx.eval(out, conv, state)
    return (time.perf_counter() - t) / n * 1e3


def check_gdn_decode():
    for shape, (B, Hk, Hv, Dk, Dv) in SHAPES.items():
        for dt in (mx.float32, mx.bfloat16):
            layer = make_layer(Hk, Hv, Dk, Dv, dt, seed=list(SHAPES).index(shape))
            x, conv, state = make_step(layer, B, dt)
            ref = unfused(as_float32(layer), x.astype(mx.float32), conv.astype(mx.float32), state)
            out = layer.mix(x, conv, state)
            hist = mx.concatenate([conv[:, 1:], layer.in_proj_qkv(x)], axis=1)
            print(f"gdn_decode {shape:28s} {str(dt):14s} y {rel(out[0], ref[0]):.1e}  state {rel(out[2], ref[2]):.1e}  "
                  f"history exact {bool(mx.array_equal(out[1], hist).item())}", flush=True)
    layer = make_layer(16, 16, 128, 128, mx.bfloat16, H=1024)
    x, conv, state = make_step(layer, 1, mx.bfloat16)
    fused = mx.compile(layer.mix)
    print(f"mixer step, Qwen3.5-0.8B GDN shape, bf16, compiled, chained: fused {per_call(fused, x, conv, state):.3f} ms, "
          f"unfused {per_call(mx.compile(lambda *a: unfused(layer, *a)), x, conv, state):.3f} ms", flush=True)


def check_gated():
    """norm_gemv's GDN output norm with out_proj (GATED): the tests' checks (float64 references) on the GPU; the
    0.8B GDN mixer step as gdn_decode + norm_gemv, timed."""
    for case in test_norm_gemv.GATED:
        _verdict(f"norm_gemv gated {case:24s}", lambda: test_norm_gemv.check_gated(case, gpu_backend()))
    layer = make_layer(16, 16, 128, 128, mx.bfloat16, H=1024)
    x, conv, state = make_step(layer, 1, mx.bfloat16)
    layer.ensure_fused()
    row = layer._fused.joined(x)
    y, _, _ = gdn_kernels.gdn_decode(row, conv, layer.conv1d.weight, layer.A_log, layer.dt_bias, state, Hk=16, Hv=16,
                                     Dk=128, Dv=128, backend=gpu_backend())
    print(f"GDN mixer step, 0.8B shape, bf16, chained: gdn_decode + norm_gemv {per_call(layer.mix_row, row, conv, state):.3f}"
          f" ms; norm_gemv (gated + out_proj) alone {timed(lambda: layer.out_row(y, row)):.3f} ms", flush=True)


def _verdict(name, check):
    try:
        check()
        print(f"{name} ok", flush=True)
    except AssertionError as e:
        print(f"{name} FAIL {str(e)[:200]}", flush=True)


CHECKS = {"flash": check_flash, "gated": check_gated, "attn_decode": check_attn_decode, "norm_gemv": check_norm_gemv,
          "norm": check_norm, "attn_qk": check_attn_qk, "conv": check_conv, "gdn_decode": check_gdn_decode}


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    args = p.parse_args(argv)
    print(f"device {mx.default_device()}, mlx {mx.__version__}, kernel backend "
          f"{gdn_kernels.decode_backend(128, 4)}", flush=True)
    for name in args.only:
        CHECKS[name]()

if __name__ == "__main__":
    main()
