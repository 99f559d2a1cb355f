"""GPU time of each kernel in one decode token, ours and mlx-lm's, as Nsight Compute (ncu) measures it: where
the device's share of a decode step goes, kernel by kernel, apart from what the host adds around it.

    python benchmarks/kernel_times.py [--prompt 1024] [--which ours mlx-lm] [--set module.NAME=int] [--out FILE]
        [--detail REGEX [--count N]]

Runs itself under ncu once per model (profiling only between cudaProfilerStart/Stop, around one token's eval
after warm-up steps; clocks and caches left alone), then prints per kernel name: launches, total and mean us,
and the sum over the token (--out: also every launch in order). ncu runs kernels one at a time, so the sum leaves out the gaps between launches and
any overlap. Qwen3.5-0.8B configuration, random bf16 weights.
"""

from __future__ import annotations

import argparse
import collections
import csv
import ctypes
import glob
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _profiler(on: bool):
    """cudaProfilerStart/Stop through the CUDA runtime MLX loaded (or the driver's, with MLX's context current)."""
    for lib, start, stop in (("libcudart.so.13", "cudaProfilerStart", "cudaProfilerStop"),
                             ("libcuda.so.1", "cuProfilerStart", "cuProfilerStop")):
        try:
            f = getattr(ctypes.CDLL(lib), start if on else stop)
        except OSError:
            continue
        rc = f()
        if rc == 0:
            return
        print(f"{lib} {start if on else stop} returned {rc}", file=sys.stderr)
    raise RuntimeError("could not switch the CUDA profiler")


def apply_sets(sets):
    """--set module.NAME=int: a module constant changed for the run (a kernel-launch parameter to A/B)."""
    import importlib
    for item in sets:
        path, value = item.split("=")
        mod, name = path.rsplit(".", 1)
        setattr(importlib.import_module(mod), name, int(value))


def child(which: str, T: int, warm: int, sets=()):
    """Prefill T tokens, decode `warm` tokens, then one token between profiler start and stop."""
    apply_sets(sets)
    import mlx.core as mx
    from bench_model import build_mlx_lm, build_ours, hf_weights, run
    from configs import QWEN35_0_8B
    from qwen35_mlx.generate import default_prefill_chunk

    weights = hf_weights(QWEN35_0_8B, mx.bfloat16)
    if which == "ours":
        model = build_ours(QWEN35_0_8B, weights, 0)
        cache = model.make_cache()
    else:
        from mlx_lm.models.cache import make_prompt_cache
        model = build_mlx_lm(QWEN35_0_8B, weights, 0)
        cache = make_prompt_cache(model)
    del weights
    ids = mx.random.randint(0, QWEN35_0_8B["text_config"]["vocab_size"], (1, T))
    logits = run(model, cache, ids, default_prefill_chunk())
    tok = mx.argmax(logits, axis=-1)[:, None]                     # run() returns the last position's logits
    for _ in range(warm):
        tok = mx.argmax(model(tok, cache=cache)[:, -1], axis=-1)[:, None]
        mx.eval(tok)
    mx.synchronize()
    _profiler(True)
    tok = mx.argmax(model(tok, cache=cache)[:, -1], axis=-1)[:, None]
    mx.eval(tok)
    mx.synchronize()
    _profiler(False)


def ncu_binary() -> str:
    found = shutil.which("ncu") or next(iter(sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu")) +
                                             sorted(glob.glob("/usr/local/cuda*/bin/ncu"))), None)
    if not found:
        raise SystemExit("ncu not found")
    return found


METRICS = {"gpu__time_duration.sum": 1e-3,            # ns -> us
           "dram__bytes.sum": 1e-6,                   # bytes -> MB (DRAM, read and written: not L2 hits)
           "sm__cycles_elapsed.avg.per_second": 1e-9}  # Hz -> GHz: the SM clock while the kernel ran


def run_ncu(options: list, which: str, T: int, warm: int, sets=(), found: str = "") -> str:
    """ncu's output for `child` run under it with these options (profiling one token, clocks and caches left
    alone); fails loudly if ncu does, or if `found` is not in what it printed."""
    cmd = [ncu_binary(), "--profile-from-start", "off", "--clock-control", "none", "--cache-control", "none",
           *options, sys.executable, __file__, "--child", which, "--prompt", str(T), "--warm", str(warm),
           *(a for x in sets for a in ("--set", x))]
    r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if r.returncode or found not in r.stdout:
        raise SystemExit(f"ncu failed (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def measure(which: str, T: int, warm: int, sets=()) -> list[tuple[str, float, float, float]]:
    """(kernel name, us, DRAM MB, SM GHz) for each launch of one token, in order."""
    text = run_ncu(["--metrics", ",".join(METRICS), "--csv", "--page", "raw", "--print-units", "base"],
                   which, T, warm, sets, found='"ID"')
    start = text.find('"ID"')
    rows = list(csv.DictReader(io.StringIO(text[start:])))
    out = []
    for row in rows:
        try:
            vals = [float(row[k].replace(",", "")) * f for k, f in METRICS.items()]
        except (ValueError, KeyError):
            continue                                              # the units row
        out.append((short_name(row["Kernel Name"]), *vals))
    return out


SECTIONS = ("SpeedOfLight", "LaunchStats", "Occupancy", "MemoryWorkloadAnalysis", "SchedulerStats", "WarpStateStats")


def detail(which: str, T: int, warm: int, regex: str, count: int, sets=()) -> str:
    """ncu's report (SECTIONS: throughput, occupancy, where warps stall) of the first `count` launches of kernels
    whose name matches `regex` in one token: why a kernel takes the time it takes."""
    text = run_ncu(["-k", f"regex:{regex}", "--launch-count", str(count),
                    *(a for x in SECTIONS for a in ("--section", x))], which, T, warm, sets)
    return text[text.find("==PROF== Disconnected"):]


def short_name(name: str) -> str:
    """A kernel's name without template arguments and MLX's type suffixes."""
    name = name.split("(")[0].split("<")[0].strip()
    for mark in ("custom_kernel_",):
        if mark in name:
            name = name.split(mark, 1)[1]
            for t in ("_bfloat16", "_float", "_half", "_int"):
                name = name.split(t)[0]
    return name[:48]


def summary(which: str, launches: list) -> list[str]:
    by = collections.defaultdict(list)
    for n, *vals in launches:
        by[n].append(vals)
    total = sum(v[1] for v in launches)
    lines = [f"{which}: {len(launches)} launches, {total:.1f} us of kernel time in one token, "
             f"{sum(v[2] for v in launches):.0f} MB through DRAM",
             "| kernel | launches | total us | mean us | share | DRAM MB | GB/s | SM GHz |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n, v in sorted(by.items(), key=lambda kv: -sum(x[0] for x in kv[1])):
        us, mb = sum(x[0] for x in v), sum(x[1] for x in v)
        lines.append(f"| {n} | {len(v)} | {us:.1f} | {us / len(v):.2f} | {us / total:.0%} | {mb:.1f} | "
                     f"{mb / us * 1e3:.0f} | {sum(x[2] for x in v) / len(v):.2f} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--warm", type=int, default=4)
    p.add_argument("--which", nargs="+", default=["ours", "mlx-lm"])
    p.add_argument("--child")
    p.add_argument("--set", action="append", default=[], help="module.NAME=int, for ours (repeatable)")
    p.add_argument("--detail", help="a kernel name regex: ncu's sections for its first --count launches instead")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.prompt, args.warm, args.set)
    if args.detail:
        text = detail(args.which[0], args.prompt, args.warm, args.detail, args.count, args.set)
        print(text, flush=True)
        if args.out:
            Path(args.out).write_text(text)
        return
    lines = [f"one decode token after a {args.prompt}-token prompt (ncu gpu__time_duration, kernels run one at a "
             f"time)"]
    order = []
    for which in args.which:
        launches = measure(which, args.prompt, args.warm, args.set if which == "ours" else ())
        lines += ["", *summary(which, launches)]
        order += ["", f"{which}, launches in order (us, DRAM MB, SM GHz):",
                  *(f"{i:4d} {n:48s} {us:8.2f} {mb:8.2f} {ghz:5.2f}" for i, (n, us, mb, ghz) in enumerate(launches))]
    print("\n".join(lines), flush=True)
    if args.out:                                                   # with every launch, in order
        Path(args.out).write_text("\n".join(lines + order) + "\n")


if __name__ == "__main__":
    main()
