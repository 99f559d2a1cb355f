"""Each custom kernel's worth end to end: bench_model.py (ours only) in a fresh process per variant, with all
kernels and with each named kernel switched off through QWEN35_MLX_DISABLE_KERNELS, in rounds (variants in
order, then reversed) so that drift of the machine shows as disagreement between rounds.

    python benchmarks/ab_kernels.py [--variants attn_qk gdn_decode ...] [--trees DIR ...] [--rounds 2]
        [--prompt 1024 8192] [--decode 128]

A variant is a kernel name or several joined by commas ("rms_norm,gdn_conv"); "all" (every kernel on) always
runs. --trees adds whole other source trees as variants, every kernel on: a commit to compare against, made with
`mkdir DIR && git archive REV qwen35_mlx metal benchmarks | tar -x -C DIR` (its own bench_model.py runs, with DIR
first on PYTHONPATH). Prints one row per run: prefill and decode tok/s per prompt length, peak GB.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench_model.py"
ROW = re.compile(r"T=(\d+): ours prefill (\d+) tok/s, decode ([\d.]+) tok/s, peak ([\d.]+) GB")


def run(disabled: str, prompt, decode, tree: Path | None = None) -> list:
    env = {**os.environ, "QWEN35_MLX_DISABLE_KERNELS": disabled}
    bench = BENCH
    if tree is not None:
        bench = tree / "benchmarks" / "bench_model.py"
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, str(bench), "--prompt", *map(str, prompt), "--decode", str(decode),
           "--skip-mlx-lm-above", "0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"ab_kernels: {' '.join(cmd)} failed (disabled: {disabled!r}):\n{out.stderr[-3000:]}")
    return ROW.findall(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["attn_qk", "attn_decode", "attn_flash", "norm_gemv", "gdn_decode",
                                                      "gdn_conv", "rms_norm"])
    ap.add_argument("--trees", nargs="*", default=[], type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--decode", type=int, default=128)
    args = ap.parse_args()
    variants = ["all"] + [v for v in args.variants if v != "all"] + [f"tree:{t}" for t in args.trees]
    cols = " | ".join(f"prefill {t} | decode after {t}" for t in args.prompt)
    print(f"| round | kernels off | {cols} | peak GB |\n|---|---|{'---:|' * (2 * len(args.prompt) + 1)}", flush=True)
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            tree = Path(v[5:]) if v.startswith("tree:") else None
            rows = run("" if v == "all" or tree else v, args.prompt, args.decode, tree)
            cells = " | ".join(f"{int(p)} | {float(d):.1f}" for _, p, d, _ in rows)
            print(f"| {r + 1} | {'none' if v == 'all' else v} | {cells} | {max(float(g) for *_, g in rows):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
