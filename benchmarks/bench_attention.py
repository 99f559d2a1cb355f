"""Long-context prefill attention of one Qwen3.5 full-attention layer (8 query heads, 2 KV heads, head dim
256, bf16): a chunk of T queries at the end of a cache of S keys, causal. Time, peak memory and error of each
way to do it, in one process:

  ours: attn_flash           Attention.attend through our flash kernel (metal/attn_flash.metal)
  MLX SDPA, unblocked        mx.fast.scaled_dot_product_attention on the whole chunk (MLX core; for head dim
                             256 it materialises the [T, S] scores)
  ours without the kernel    Attention.attend with attn_flash switched off: the MLX SDPA in query blocks of
                             bounded score memory (what the model ran before the kernel)
  8-bit KV: ours             a quantized cache through Attention.attend (dequantize, then the kernel)
  8-bit KV: mlx-lm           mlx-lm's quantized SDPA on the whole chunk (on a copy of q: it scales its
                             queries in place)

Errors are relative to a float32 attention on the same bf16 inputs (materialised; skipped above --ref-max keys).
TFLOP/s counts the causal work only: 4 D per (query, visible key) pair and head.

    python benchmarks/bench_attention.py [--context 8192 32768 131072] [--chunk 2048 8192] [--out FILE]
        [--flash-variants NT:BK:QS ...]

--flash-variants adds rows of attn_flash launched with other threadgroup sizes (NT), keys per block (BK) and
queries in threadgroup memory (QS 0/1), e.g. 128:64:1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import scaled_dot_product_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qwen35_mlx.kernels import _metal, attn  # noqa: E402
from qwen35_mlx.kernels.gdn import gpu_backend  # noqa: E402
from qwen35_mlx.model import attention  # noqa: E402

Hq, Hkv, D = 8, 2, 256


class _QCache:
    """What mlx-lm's SDPA dispatch and Attention.attend look at on a quantized cache."""

    def __init__(self, bits, group_size):
        self.bits, self.group_size = bits, group_size


def timed(fn, reps=5):
    mx.eval(fn())
    mx.synchronize()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    t = time.perf_counter()
    for _ in range(reps):
        mx.eval(fn())
    mx.synchronize()
    return (time.perf_counter() - t) / reps * 1e3, (mx.get_peak_memory() - base) / 2**30


def without_kernel(fn):
    def run():
        old = _metal.DISABLED
        _metal.DISABLED = old | {"attn_flash"}
        try:
            return fn()
        finally:
            _metal.DISABLED = old
    return run


def reference(q, k, v, scale):
    """float32, materialised, in query blocks: [B, T, Hq * D]."""
    T, S = q.shape[2], k.shape[2]
    k, v = (mx.repeat(x.astype(mx.float32), Hq // Hkv, axis=1) for x in (k, v))
    parts = []
    for t0 in range(0, T, 1024):
        qs = q[:, :, t0:t0 + 1024].astype(mx.float32)
        s = (qs @ k.transpose(0, 1, 3, 2)) * scale
        allowed = mx.arange(S)[None, :] <= mx.arange(S - T + t0, S - T + t0 + qs.shape[2])[:, None]
        s = mx.where(allowed, s, -mx.inf)
        parts.append(mx.softmax(s, axis=-1) @ v)
        mx.eval(parts[-1])
    out = mx.concatenate(parts, axis=2)
    return out.transpose(0, 2, 1, 3).reshape(1, T, -1)


def rel(a, b):
    a, b = np.asarray(a.astype(mx.float32), np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--context", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--chunk", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--ref-max", type=int, default=32768)
    p.add_argument("--out")
    p.add_argument("--flash-variants", nargs="*", default=[])
    args = p.parse_args(argv)
    lines = [f"device {mx.default_device()}, mlx {mx.__version__}; {Hq} q heads / {Hkv} kv heads, D {D}, bf16, "
             "causal chunk of T queries at the end of S keys; ms per call, peak GiB above the inputs, rel. error "
             "vs float32"]
    print(lines[0], flush=True)
    att = attention.Attention.__new__(attention.Attention)
    att.scale = D ** -0.5
    for S in args.context:
        for T in (t for t in args.chunk if t <= S):
            mx.random.seed(0)
            q = mx.random.normal((1, Hq, T, D)).astype(mx.bfloat16)
            k = mx.random.normal((1, Hkv, S, D)).astype(mx.bfloat16)
            v = mx.random.normal((1, Hkv, S, D)).astype(mx.bfloat16)
            qk, qv = mx.quantize(k, 64, 8), mx.quantize(v, 64, 8)
            mx.eval(q, k, v, qk, qv)
            qc = _QCache(8, 64)
            ref = np.asarray(reference(q, k, v, att.scale)) if S <= args.ref_max else None
            flops = 4 * D * Hq * (T * (S - T) + T * (T + 1) / 2)
            runs = [
                ("ours: attn_flash", lambda: att.attend(q, k, v, "causal", None)),
                ("MLX SDPA, unblocked",
                 lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=att.scale, mask="causal")
                 .transpose(0, 2, 1, 3).reshape(1, T, -1)),
                ("ours without the kernel", without_kernel(lambda: att.attend(q, k, v, "causal", None))),
                ("8-bit KV: ours", lambda: att.attend(q, qk, qv, "causal", qc)),
                ("8-bit KV: mlx-lm", lambda: scaled_dot_product_attention(q + 0, qk, qv, qc, att.scale, "causal")
                 .transpose(0, 2, 1, 3).reshape(1, T, -1)),
            ]
            for var in args.flash_variants:
                nt, bk, qs = map(int, var.split(":"))
                runs.insert(1, (f"attn_flash {var}", lambda nt=nt, bk=bk, qs=qs: attn.attn_flash(
                    q, k, v, att.scale, causal=True, backend=gpu_backend(), nt=nt, bk=bk, qs=bool(qs)).reshape(1, T, -1)))
            for name, fn in runs:
                try:
                    ms, gb = timed(fn)
                    err = "" if ref is None else f"  err {rel(fn(), ref):.1e}"
                    s = (f"S {S:7d} T {T:5d}  {name:26s} {ms:9.2f} ms  {flops / ms / 1e9:6.1f} TFLOP/s  "
                         f"peak +{gb:6.2f} GiB{err}")
                except Exception as e:                                        # noqa: BLE001 (report, go on)
                    s = f"S {S:7d} T {T:5d}  {name:26s} failed: {type(e).__name__}: {str(e)[:80]}"
                print(s, flush=True)
                lines.append(s)
    lines += decode_rows(args.context)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


def decode_rows(contexts, n=50):
    """Decode: one query per head over S cached keys, the filled rows of a longer cache buffer: MLX's SDPA (its
    vector kernel takes head dim 256) on the view, and our attn_decode + attn_decode_combine on the buffer in
    place. ms per call inside a chain of n dependent calls, K+V bytes read per ms, error vs float32."""
    out = []
    for S in contexts:
        q = mx.random.normal((1, Hq, 1, D)).astype(mx.bfloat16)
        kbuf = mx.random.normal((1, Hkv, S + 256, D)).astype(mx.bfloat16)
        vbuf = mx.random.normal((1, Hkv, S + 256, D)).astype(mx.bfloat16)
        mx.eval(q, kbuf, vbuf)
        k, v = kbuf[..., :S, :], vbuf[..., :S, :]
        ref = np.asarray(mx.fast.scaled_dot_product_attention(q.astype(mx.float32), k.astype(mx.float32),
                                                              v.astype(mx.float32), scale=D ** -0.5)
                         .reshape(1, 1, Hq * D))
        runs = [("MLX SDPA (vector)", lambda x: mx.fast.scaled_dot_product_attention(x, k, v, scale=D ** -0.5))]
        if gpu_backend():
            runs.append(("ours: attn_decode", lambda x: attn.attn_decode(x, kbuf, vbuf, S, D ** -0.5,
                                                                       backend=gpu_backend()).reshape(1, Hq, 1, D)))
        for name, fn in runs:
            mx.eval(fn(q))
            t = time.perf_counter()
            x = q
            for _ in range(n):
                x = fn(x)
            mx.eval(x)
            ms = (time.perf_counter() - t) / n * 1e3
            err = rel(fn(q).reshape(1, 1, Hq * D), ref)
            s = (f"decode S {S:7d}  {name:20s} {ms:7.3f} ms  {2 * Hkv * S * D * 2 / ms / 1e9:6.2f} TB/s of K+V  "
                 f"err {err:.1e}")
            print(s, flush=True)
            out.append(s)
    return out


if __name__ == "__main__":
    main()
