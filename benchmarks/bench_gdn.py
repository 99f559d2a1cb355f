"""GDN scan: parity of the kernel paths and speed against the MLX peers and flash-linear-attention.

    python benchmarks/bench_gdn.py --gpu --out DIR     # on the NVIDIA machine (MLX CUDA backend):
                                                       # CUDA-twin parity, then timings at T = 1K..128K
    python benchmarks/bench_gdn.py --cpu               # this CPU: gdn_chunked vs mlx-lm's token loop

Timings: median wall time of `reps` synchronised calls after warm-up, inputs random (never zeros),
q/k L2-normalised, g in [-5, -0.01], beta in (0, 1); batch 1, Hk = Hv = 16, Dk = Dv = 128.
Everything is written to DIR (bench.json, bench.md) as it is measured, so a cut-off run keeps its numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx.core as mx  # noqa: E402

from qwen35_mlx.kernels import gdn, gdn_kernels  # noqa: E402


def make_inputs(B, T, Hk, Hv, Dk, Dv, dtype=mx.bfloat16, seed=0, state=True):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, Hk, Dk), np.float32)
    k = rng.standard_normal((B, T, Hk, Dk), np.float32)
    q *= Dk ** -0.5 / np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, Hv, Dv), np.float32)
    g = -np.exp(rng.uniform(np.log(0.01), np.log(5.0), (B, T, Hv))).astype(np.float32)
    beta = rng.uniform(0.02, 0.98, (B, T, Hv)).astype(np.float32)
    s = (0.3 * rng.standard_normal((B, Hv, Dv, Dk))).astype(np.float32) if state else None
    a = lambda x, dt=mx.float32: None if x is None else mx.array(x).astype(dt)
    return a(q, dtype), a(k, dtype), a(v, dtype), a(g), a(beta), a(s)


def reference_np(q, k, v, g, beta, state=None):
    """Sequential gated delta rule in float64 NumPy (the same definition as gdn_reference)."""
    f = lambda x: np.asarray(x.astype(mx.float32), np.float64)
    q, k, v, g, beta = map(f, (q, k, v, g, beta))
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[2:]
    r = Hv // Hk
    q, k = np.repeat(q, r, axis=2), np.repeat(k, r, axis=2)
    S = np.zeros((B, Hv, Dv, Dk)) if state is None else f(state)
    y = np.empty((B, T, Hv, Dv))
    for t in range(T):
        S = S * np.exp(g[:, t])[..., None, None]
        kv = np.einsum("bhvk,bhk->bhv", S, k[:, t])
        S = S + np.einsum("bhv,bhk->bhvk", (v[:, t] - kv) * beta[:, t][..., None], k[:, t])
        y[:, t] = np.einsum("bhvk,bhk->bhv", S, q[:, t])
    return y, S


def rel_err(out, ref):
    out = np.asarray(out.astype(mx.float32), np.float64) if isinstance(out, mx.array) else out
    if not np.isfinite(out).all():
        return float("inf")
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def timeit(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def mlx_call(f, *args, **kw):
    def run():
        out = f(*args, **kw)
        mx.eval(out)
        mx.synchronize()
    return run


class Report:
    def __init__(self, out_dir):
        self.dir = Path(out_dir) if out_dir else None
        self.data = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "command": " ".join([Path(sys.executable).name] + sys.argv),
                     "mlx": mx.__version__, "host": platform.node(), "parity": [], "timings": [], "errors": []}
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, section, row):
        self.data[section].append(row)
        print(section, json.dumps(row), flush=True)
        self.flush()

    def flush(self):
        if self.dir:
            (self.dir / "bench.json").write_text(json.dumps(self.data, indent=1))


def device_info():
    info = {"default_device": str(mx.default_device()), "cuda": mx.cuda.is_available(),
            "metal": mx.metal.is_available()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["gpu"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# ---- GPU: parity of the CUDA twin ------------------------------------------------------------------

PARITY_CASES = [  # (B, T, Hk, Hv, Dk, Dv, dtype, initial state)
    (1, 1, 16, 16, 128, 128, mx.bfloat16, True),
    (2, 7, 16, 32, 128, 128, mx.bfloat16, True),
    (1, 15, 2, 4, 32, 48, mx.float32, True),
    (1, 16, 2, 4, 32, 48, mx.float32, True),
    (1, 63, 16, 16, 32, 32, mx.float32, False),
    (1, 64, 16, 32, 32, 32, mx.float32, True),
    (2, 65, 2, 4, 32, 48, mx.float32, True),
    (1, 200, 16, 16, 128, 128, mx.float32, True),
    (2, 200, 16, 32, 128, 128, mx.bfloat16, True),
    (1, 1000, 16, 16, 128, 128, mx.float32, True),
    (1, 1000, 16, 48, 128, 128, mx.bfloat16, True),
    (1, 333, 16, 64, 128, 128, mx.float16, True),
    (2, 300, 2, 4, 64, 256, mx.float32, True),
]


def gpu_parity(rep, precs=(0, 1, 2)):
    for case in PARITY_CASES:
        B, T, Hk, Hv, Dk, Dv, dt, has_state = case
        args = make_inputs(B, T, Hk, Hv, Dk, Dv, dt, seed=T + Hv, state=has_state)
        yr, sr = reference_np(*args)
        name = f"B{B} T{T} H{Hk}/{Hv} D{Dk}/{Dv} {str(dt).split('.')[-1]}{' +s0' if has_state else ''}"
        for prec in precs:
            try:
                if T < gdn_kernels.STEP_MAX_T:
                    if prec:
                        continue
                    y, s = gdn_kernels.gdn_step(*args, backend="cuda")
                    path = "cuda step"
                else:
                    y, s = gdn_kernels.gdn_chunk(*args, backend="cuda", prec=prec)
                    path = f"cuda chunk prec{prec}"
                mx.eval(y, s)
                rep.add("parity", {"case": name, "path": path, "y": rel_err(y, yr), "state": rel_err(s, sr)})
            except Exception as e:  # keep going: one broken case must not cost the rest of the lease
                rep.add("errors", {"case": name, "prec": prec, "error": repr(e)[:2000]})
    # per-step states (rollback), the dispatch through gated_delta, masks
    try:
        args = make_inputs(2, 5, 16, 32, 128, 128, mx.bfloat16, seed=5)
        y, s, st = gdn_kernels.gdn_step(*args, backend="cuda", return_states=True)
        yr, sr = reference_np(*args)
        _, s3 = reference_np(*(a[:, :3] for a in args[:5]), args[5])
        rep.add("parity", {"case": "B2 T5 H16/32 bf16 states", "path": "cuda step states",
                           "y": rel_err(y, yr), "state": rel_err(s, sr), "states[2]": rel_err(st[:, 2], s3)})
        args = make_inputs(2, 130, 16, 32, 64, 64, mx.float32, seed=7)
        mask = np.ones((2, 130), bool)
        mask[0, :37] = False                                     # left padding
        lengths = [130, 100]
        y, s = gdn.gated_delta(*args, mask=mx.array(mask), lengths=lengths)
        m = mask & (np.arange(130)[None] < np.array(lengths)[:, None])
        g0 = args[3] * mx.array(m[..., None].astype(np.float32))
        b0 = args[4] * mx.array(m[..., None].astype(np.float32))
        yr, sr = reference_np(args[0], args[1], args[2], g0, b0, args[5])
        yr = yr * m[..., None, None]
        rep.add("parity", {"case": "B2 T130 H16/32 D64 masked (left pad + lengths)", "path": f"gated_delta -> {gdn._pick(130)}",
                           "y": rel_err(y, yr), "state": rel_err(s, sr)})
    except Exception as e:
        rep.add("errors", {"case": "states/mask", "error": repr(e)[:2000]})


# ---- GPU: timings ----------------------------------------------------------------------------------

def fla_runner(q, k, v, g, beta, s):
    import torch
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    t = lambda x, dt=None: torch.from_numpy(np.asarray(x.astype(mx.float32))).cuda().to(dt or torch.float32)
    tq, tk, tv = (t(x, torch.bfloat16) for x in (q, k, v))
    tg, tb = t(g), t(beta).to(torch.bfloat16)
    ts = t(s).transpose(-1, -2).contiguous()                     # fla: [N, H, K, V]

    def run():
        with torch.inference_mode():
            o, st = chunk_gated_delta_rule(tq, tk, tv, tg, tb, scale=1.0, initial_state=ts,
                                           output_final_state=True)
        torch.cuda.synchronize()
        return o, st
    return run


def gpu_timings(rep, Ts, variants, H=16, D=128, skip_peers=False):
    for T in Ts:
        args = make_inputs(1, T, H, H, D, D, mx.bfloat16, seed=1)
        mx.eval(args)
        reps = 10 if T <= 32768 else 5
        for bv, prec, nt, seg in variants:
            try:
                f = mlx_call(gdn_kernels.gdn_chunk, *args, backend="cuda", bv=bv, prec=prec, nt_scan=nt,
                             segment=seg or None)
                t = timeit(f, reps, warmup=2)
                rep.add("timings", {"T": T, "impl": f"ours cuda (bv{bv} prec{prec} nt{nt} seg{seg or 'auto'})",
                                    "s": t, "tok_per_s": T / t})
            except Exception as e:
                rep.add("errors", {"T": T, "variant": [bv, prec, nt, seg], "error": repr(e)[:2000]})
        try:  # the two launches separately (default variant)
            q, k, v, g, beta, s = args
            parts = gdn_kernels.chunk_parts(q, k, v, g, beta, s, backend="cuda")
            tp = timeit(mlx_call(parts["prep"]), reps, warmup=2)
            inter = parts["prep"]()
            mx.eval(inter)
            ts_ = timeit(mlx_call(parts["scan"], inter), reps, warmup=2)
            rep.add("timings", {"T": T, "impl": "ours cuda (default): prep only", "s": tp, "tok_per_s": T / tp})
            rep.add("timings", {"T": T, "impl": "ours cuda (default): scan only", "s": ts_, "tok_per_s": T / ts_})
        except Exception as e:
            rep.add("errors", {"T": T, "what": "parts", "error": repr(e)[:2000]})
        try:
            run = fla_runner(*args)
            t = timeit(run, reps, warmup=3)
            rep.add("timings", {"T": T, "impl": "flash-linear-attention chunk (Triton, torch)", "s": t, "tok_per_s": T / t})
            if T <= 8192:
                o, st = run()
                y, s = gdn_kernels.gdn_chunk(*args, backend="cuda")
                mx.eval(y, s)
                yo = np.asarray(y.astype(mx.float32), np.float64)
                rep.add("parity", {"case": f"T{T} H16 D128 bf16 vs fla", "path": "ours cuda vs fla",
                                   "y": float(np.linalg.norm(yo - o.float().cpu().numpy()) / np.linalg.norm(yo)),
                                   "state": float(np.linalg.norm(np.asarray(s) - st.transpose(-1, -2).float().cpu().numpy())
                                                  / np.linalg.norm(np.asarray(s)))})
        except Exception as e:
            rep.add("errors", {"T": T, "what": "fla", "error": repr(e)[:2000]})
        if T <= 8192 and not skip_peers:  # the per-token peers take seconds to minutes beyond this
            q, k, v, g, beta, s = args
            try:
                f = mlx_call(mx.fast.gated_delta_update, q, k, v, mx.exp(g), beta, s)
                rep.add("timings", {"T": T, "impl": "mx.fast.gated_delta_update", "s": (t := timeit(f, 2)), "tok_per_s": T / t})
            except Exception as e:
                rep.add("errors", {"T": T, "what": "gated_delta_update", "error": repr(e)[:2000]})
            try:
                from mlx_lm.models.gated_delta import gated_delta_ops
                f = mlx_call(gated_delta_ops, q, k, v, mx.exp(g), beta, s)
                rep.add("timings", {"T": T, "impl": "mlx-lm gated_delta_ops (token loop)", "s": (t := timeit(f, 2)), "tok_per_s": T / t})
            except Exception as e:
                rep.add("errors", {"T": T, "what": "mlx-lm", "error": repr(e)[:2000]})
    for T in (1, 4):  # decode / speculation
        args = make_inputs(1, T, H, H, D, D, mx.bfloat16, seed=2)
        f = mlx_call(gdn_kernels.gdn_step, *args, backend="cuda")
        rep.add("timings", {"T": T, "impl": "ours cuda step", "s": (t := timeit(f, 50, 5)), "tok_per_s": T / t})
        f = mlx_call(gdn.gdn_reference, *args)
        rep.add("timings", {"T": T, "impl": "MLX ops token loop (gdn_reference)", "s": (t := timeit(f, 50, 5)), "tok_per_s": T / t})


def gpu_ceilings(rep):
    x = mx.random.normal((256, 1024, 1024)).astype(mx.float32)    # 1 GiB
    mx.eval(x)
    f = mlx_call(lambda a: a * 1.0, x)
    t = timeit(f, 10, 2)
    rep.add("timings", {"impl": "ceiling: device copy (x*1, fp32 1 GiB)", "s": t, "GB_per_s": 2 * x.nbytes / t / 1e9})
    a = mx.random.normal((8192, 8192)).astype(mx.bfloat16)
    f = mlx_call(lambda m: m @ m, a)
    t = timeit(f, 10, 2)
    rep.add("timings", {"impl": "ceiling: bf16 matmul 8192^3", "s": t, "TFLOP_per_s": 2 * 8192 ** 3 / t / 1e12})
    a = mx.random.normal((8192, 8192))
    f = mlx_call(lambda m: m @ m, a)
    t = timeit(f, 5, 2)
    rep.add("timings", {"impl": "ceiling: fp32 matmul 8192^3 (MLX default)", "s": t, "TFLOP_per_s": 2 * 8192 ** 3 / t / 1e12})


# ---- CPU ------------------------------------------------------------------------------------------

def cpu_bench(rep, T=4096, H=16, D=128):
    args = make_inputs(1, T, H, H, D, D, mx.float32, seed=3)
    mx.eval(args)
    q, k, v, g, beta, s = args
    from mlx_lm.models.gated_delta import gated_delta_ops
    t_lm = timeit(mlx_call(gated_delta_ops, q, k, v, mx.exp(g), beta, s), 1, 0)
    rep.add("timings", {"T": T, "impl": "cpu: mlx-lm gated_delta_ops (token loop), fp32", "s": t_lm, "tok_per_s": T / t_lm})
    for route, chunks in (("numpy", (16, 32, 64)), ("mlx", (16, 64))):
        for C in chunks:
            t = timeit(mlx_call(gdn.gdn_chunked, q, k, v, g, beta, s, chunk=C, numpy=route == "numpy"), 2, 1)
            rep.add("timings", {"T": T, "impl": f"cpu: gdn_chunked {route} C={C}, fp32", "s": t, "tok_per_s": T / t,
                                "speedup_vs_mlx_lm": t_lm / t})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT"))
    p.add_argument("--T", default="1024,8192,32768,131072")
    p.add_argument("--variants", default="16:0:256:0,16:1:256:0,32:0:256:0",
                   help="bv:prec:nt_scan:segment (0 = auto) of the CUDA chunk path, comma-separated")
    p.add_argument("--skip-parity", action="store_true")
    p.add_argument("--skip-peers", action="store_true", help="skip the per-token MLX peers (seconds per call)")
    a = p.parse_args(argv)
    rep = Report(a.out)
    rep.data["device"] = device_info()
    print(rep.data["device"], flush=True)
    if a.gpu:
        if not a.skip_parity:
            gpu_parity(rep)
        gpu_ceilings(rep)
        variants = [tuple(int(x) for x in v.split(":")) for v in a.variants.split(",")]
        gpu_timings(rep, [int(t) for t in a.T.split(",")], variants, skip_peers=a.skip_peers)
    if a.cpu:
        cpu_bench(rep)
    rep.flush()
    print("\n| T | impl | time | tokens/s |\n|---|---|---|---|")
    for r in rep.data["timings"]:
        print(f"| {r.get('T', '')} | {r['impl']} | {r['s'] * 1e3:.3f} ms | {r.get('tok_per_s', 0):,.0f} |")
    if rep.data["errors"]:
        print("ERRORS:", json.dumps(rep.data["errors"], indent=1)[:4000])


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
