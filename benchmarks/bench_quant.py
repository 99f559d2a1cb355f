"""Quantized weights and KV cache on the Qwen3.5-0.8B configuration (random weights), in one process.

    python benchmarks/bench_quant.py [--quick] [--sections recipe decode prefill table] [--write]

Sections:
  recipe   logits error of each recipe choice on a random float32 model with the 0.8B structure (vision
           tower included), one tensor group quantized at a time, then the whole recipe; router flips on a
           small random MoE. Quantization is simulated by writing dequantize(quantize(w)) into the float
           model, which is what the quantized kernels compute (tests/test_convert.py checks that identity).
  decode   decode tokens/s, resident weights and peak memory: our bf16 and 4-bit (recipe) checkpoints, mlx-lm's
           own 4-bit quantization of the same weights, and mlx-lm reading our 4-bit checkpoint; against the
           bandwidth floor (weight bytes per token / measured copy bandwidth). Text-only model (no tower).
  prefill  peak memory of one long prefill with 4-bit weights and 8-bit KV, against memory.estimate.
  table    memory needed at 8K..262K context for the 0.8B/2B/4B/9B configs in benchmarks/hub_configs.
Runs unchanged on MLX's CUDA backend (mx.cuda.is_available()) and on Metal; --quick picks CPU-sized runs.
--write replaces this benchmark's section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map_with_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from configs import hub_config  # noqa: E402

from qwen35_mlx.config import Qwen35Config  # noqa: E402
from qwen35_mlx.convert import convert, out_config, out_tensors, save_shards  # noqa: E402
from qwen35_mlx.generate import _prefill  # noqa: E402
from qwen35_mlx.loading import ZERO_CENTRED_NORMS, load_model  # noqa: E402
from qwen35_mlx.memory import (checkpoint_weight_bytes, estimate, gdn_state_bytes, kv_bytes_per_token,  # noqa: E402
                               prefill_bytes, weight_bytes)
from qwen35_mlx.model.qwen35 import Qwen35Model  # noqa: E402
from qwen35_mlx.quantize import QuantSpec, recipe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Quantization (bench_quant.py)"
GB = 1e9


def device_name() -> str:
    try:
        info = mx.device_info()
    except Exception:  # noqa: BLE001
        info = {}
    backend = "cuda" if mx.cuda.is_available() else ("metal" if mx.metal.is_available() else "cpu")
    return f"{info.get('device_name', platform.processor() or 'unknown')} ({backend})"


def random_model(raw: dict, dtype=mx.bfloat16, seed: int = 0):
    """A model of this config with random weights: matrices N(0, 0.02), the residual-stream outputs
    (out_proj, o_proj, down_proj) N(0, 0.02 / sqrt(2 * layers)) and the embedding N(0, 1), so each layer
    perturbs the residual stream rather than replacing it (plain N(0, 0.02) everywhere makes a random
    network whose logits swing by O(1) under any weight change: a trained model is not like that);
    norms 1 + N(0, 0.02), A_log = log U(1, 16), dt_bias 1, conv N(0, 0.3); norms, A_log and dt_bias float32
    as the loader keeps them."""
    cfg = Qwen35Config.from_dict(raw)
    model = Qwen35Model(cfg)
    mx.random.seed(seed)
    out_std = 0.02 / (2 * cfg.text.num_hidden_layers) ** 0.5

    def draw(name, v):
        shape = v.shape
        if ZERO_CENTRED_NORMS.search(name):
            return 1 + 0.02 * mx.random.normal(shape)
        if name.endswith("A_log"):
            return mx.log(mx.random.uniform(1, 16, shape))
        if name.endswith("dt_bias"):
            return mx.ones(shape)
        if re.search(r"(linear_attn\.norm|norm\d?)\.weight$", name):
            return (1 + 0.02 * mx.random.normal(shape)).astype(dtype)
        if name.endswith("conv1d.weight"):
            return (0.3 * mx.random.normal(shape)).astype(dtype)
        if name.endswith("embed_tokens.weight"):
            return mx.random.normal(shape).astype(dtype)
        if re.search(r"language_model\..*(out_proj|o_proj|down_proj)\.weight$", name):
            return (out_std * mx.random.normal(shape)).astype(dtype)
        return (0.02 * mx.random.normal(shape)).astype(dtype)

    params = tree_map_with_path(draw, model.parameters())
    model.update(params)
    mx.eval(model.parameters())
    model.eval()
    return model, cfg


def save_checkpoint(model, cfg, dst: Path) -> Path:
    """Our model's weights as an (unquantized) MLX-layout checkpoint: what `convert` writes."""
    dst.mkdir(parents=True, exist_ok=True)
    save_shards(out_tensors(dict(tree_flatten(model.parameters())), cfg), dst)
    (dst / "config.json").write_text(json.dumps(out_config(cfg.raw, cfg, None), indent=2))
    return dst


def rel(a, b) -> float:
    a, b = np.asarray(a.astype(mx.float32), np.float64), np.asarray(b.astype(mx.float32), np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def fake_quant(w, q: QuantSpec):
    packed = mx.quantize(w, **q.params)
    return mx.dequantize(*packed[:2], packed[2] if len(packed) > 2 else None, dtype=w.dtype, **q.params)


def quantized_run(model, originals, chosen: dict, forward):
    """forward() with the chosen parameters (name -> QuantSpec) replaced by their dequantized selves."""
    from mlx.utils import tree_unflatten
    model.update(tree_unflatten([(k, fake_quant(originals[k], q)) for k, q in chosen.items()]))
    try:
        return forward()
    finally:
        model.update(tree_unflatten([(k, originals[k]) for k in chosen]))


GROUPS = {
    "GDN in_proj_qkv / in_proj_z / out_proj": r"linear_attn\.(in_proj_qkv|in_proj_z|out_proj)\.weight$",
    "GDN in_proj_a / in_proj_b (decay, beta)": r"linear_attn\.(in_proj_a|in_proj_b)\.weight$",
    "attention q / k / v / o_proj": r"self_attn\.(q|k|v|o)_proj\.weight$",
    "MLP gate / up / down_proj": r"mlp\.(gate|up|down)_proj\.weight$",
    "embed_tokens (tied: also the output layer)": r"embed_tokens\.weight$",
}
VISION = {
    "vision blocks + merger": r"^model\.visual\.(blocks|merger)\..*\.weight$",
    "vision patch_embed": r"^model\.visual\.patch_embed\.proj\.weight$",
    "vision pos_embed": r"^model\.visual\.pos_embed\.weight$",
}


def section_recipe(args) -> dict:
    raw = hub_config("0.8b", layers=args.recipe_layers)
    model, cfg = random_model(raw, mx.float32)
    originals = dict(tree_flatten(model.parameters()))
    rng = np.random.default_rng(0)
    T = args.recipe_tokens
    ids = mx.array(rng.integers(0, 200_000, (1, T)))
    text_fwd = lambda: model(ids)  # noqa: E731
    grid = [(1, 16, 16)]                                     # 256 patches -> 64 image tokens
    n_img = 64
    img_ids = mx.array([[*rng.integers(0, 200_000, 8).tolist(), cfg.vision_start_token_id,
                         *[cfg.image_token_id] * n_img, cfg.vision_end_token_id, *rng.integers(0, 200_000, 8).tolist()]])
    px = mx.array(rng.standard_normal((256, 1536)).astype(np.float32))
    img_fwd = lambda: model(img_ids, pixel_values=px, image_grid_thw=mx.array(grid))  # noqa: E731
    ref_text, ref_img = text_fwd(), img_fwd()
    mx.eval(ref_text, ref_img)
    specs = {"4-bit": QuantSpec(4, 64), "8-bit": QuantSpec(8, 64), "mxfp4": QuantSpec(4, 32, "mxfp4")}
    rows = []

    def group(pattern):
        return [k for k in originals if re.search(pattern, k) and originals[k].ndim >= 2]

    def share(names):
        return sum(originals[k].size for k in names) / sum(v.size for k, v in originals.items())

    for groups, prompt, fwd, ref in ((GROUPS, "text", text_fwd, ref_text), (VISION, "image", img_fwd, ref_img)):
        for label, pattern in groups.items():
            names = group(pattern)
            errs = {s: rel(quantized_run(model, originals, dict.fromkeys(names, q), fwd), ref)
                    for s, q in specs.items()}
            rows.append((label, share(names), prompt, errs))
            print(f"recipe: {label}: {errs}", flush=True)

    def by_recipe(spec, embed_bits=8, extra=()):
        chosen = {}
        for k in originals:
            if originals[k].ndim < 2:
                continue
            path = k.rsplit(".", 1)[0]
            q = recipe(path, tuple(originals[k].shape), spec, embed_bits)
            if q is None and any(re.search(p, k) for p in extra):
                q = spec
            if q is not None:
                chosen[k] = q
        return chosen

    whole = []
    a_b = GROUPS["GDN in_proj_a / in_proj_b (decay, beta)"]
    for s, spec in specs.items():
        variants = {"recipe (embeddings 8-bit)": by_recipe(spec)}
        if s == "4-bit":
            variants.update({"recipe, embeddings at the same bits": by_recipe(spec, embed_bits=None),
                             "recipe + in_proj_a/b quantized": by_recipe(spec, extra=[a_b])})
        for label, chosen in variants.items():
            e_text = rel(quantized_run(model, originals, chosen, text_fwd), ref_text)
            e_img = rel(quantized_run(model, originals, chosen, img_fwd), ref_img)
            whole.append((s, label, e_text, e_img))
            print(f"recipe: {s} {label}: text {e_text:.2e} image {e_img:.2e}", flush=True)
    bf16 = rel(quantized_run_cast(model, originals, text_fwd), ref_text)
    return {"groups": rows, "whole": whole, "bf16": bf16, "router": router_flips(args), "T": T,
            "layers": cfg.text.num_hidden_layers}


def quantized_run_cast(model, originals, forward):
    """The same float32 model with every matrix rounded to bfloat16: the scale of 'no quantization'."""
    from mlx.utils import tree_unflatten
    model.update(tree_unflatten([(k, v.astype(mx.bfloat16).astype(mx.float32)) for k, v in originals.items()
                                 if v.ndim >= 2]))
    try:
        return forward()
    finally:
        model.update(tree_unflatten(list(originals.items())))


def router_flips(args) -> dict:
    """Share of (token, layer) top-k expert sets that change when the router is quantized, on a small random
    MoE with the 35B-A3B routing shape (top-8 of 256 experts, hidden 2048, softmax over all experts)."""
    rng = np.random.default_rng(1)
    H, E, k, N = 2048, 256, 8, 4096
    w = mx.array(rng.standard_normal((E, H)).astype(np.float32) * 0.02)
    x = mx.array(rng.standard_normal((N, H)).astype(np.float32))

    def topk(weight):
        probs = mx.softmax(x @ weight.T, axis=-1)
        return np.sort(np.array(mx.argpartition(-probs, kth=k - 1, axis=-1)[:, :k]), axis=-1)

    ref = topk(w)
    out = {"bfloat16": float(np.mean(np.any(topk(w.astype(mx.bfloat16).astype(mx.float32)) != ref, axis=-1)))}
    for s, q in {"8-bit": QuantSpec(8, 64), "4-bit": QuantSpec(4, 64)}.items():
        out[s] = float(np.mean(np.any(topk(fake_quant(w, q)) != ref, axis=-1)))
    print(f"recipe: router flips {out}", flush=True)
    return out


def bandwidth() -> float:
    """Bytes per second of a large elementwise copy (read + write)."""
    x = mx.random.normal((64 << 20,))                       # 256 MiB float32
    mx.eval(x)
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        y = x * 1.5
        mx.eval(y)
        best = min(best, time.perf_counter() - t)
        del y
    return 2 * x.nbytes / best


def decode_tps(model, make_cache, prompt: int, n: int) -> float:
    ids = mx.array(np.random.default_rng(2).integers(0, 200_000, (1, prompt)))
    cache = make_cache()
    tok = mx.argmax(model(ids, cache=cache)[:, -1], axis=-1)
    for _ in range(2):                                      # warm up the decode path
        tok = mx.argmax(model(tok[:, None], cache=cache)[:, -1], axis=-1)
        mx.eval(tok)
    t = time.perf_counter()
    for _ in range(n):                                      # as stream_generate: queue the next step first
        nxt = mx.argmax(model(tok[:, None], cache=cache)[:, -1], axis=-1)
        mx.async_eval(nxt)
        tok.item()
        tok = nxt
    tok.item()
    return n / (time.perf_counter() - t)


def measure(name, build, make_cache, args, bw) -> dict:
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    model = build()
    mx.eval(model.parameters())
    resident = mx.get_active_memory() - base
    wbytes = weight_bytes(model)
    tps = decode_tps(model, lambda: make_cache(model), args.decode_prompt, args.decode_tokens)
    peak = mx.get_peak_memory()
    row = {"name": name, "tps": tps, "weights_gb": wbytes / GB, "resident_gb": resident / GB, "peak_gb": peak / GB,
           "floor_tps": bw / wbytes}
    print(f"decode: {name}: {tps:.1f} tok/s (floor {row['floor_tps']:.1f}), weights {wbytes / GB:.3f} GB, "
          f"peak {peak / GB:.3f} GB", flush=True)
    return row


def _mlx_lm_own_4bit(src: Path):
    """mlx-lm's own conversion of the same weights, in memory: cast to bfloat16 except A_log (its
    cast_predicate, so norms become bfloat16 1 + w), then its quantize_model (4-bit, group 64)."""
    from mlx_lm.utils import load_model as mlx_lm_load, quantize_model
    model, config = mlx_lm_load(src)
    keep = model.cast_predicate
    model.update(tree_map_with_path(lambda p, v: v.astype(mx.bfloat16) if keep(p) and
                                    mx.issubdtype(v.dtype, mx.floating) else v, model.parameters()))
    model, _ = quantize_model(model, config, 64, 4)
    return model


def section_decode(args, work: Path) -> dict:
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model as mlx_lm_load
    model, cfg = random_model(hub_config("0.8b", vision=False))
    src = save_checkpoint(model, cfg, work / "bf16")
    del model
    gc.collect()
    q4 = convert(src, work / "q4", quantize=True, q_bits=4, q_group_size=64)
    bw = bandwidth()
    print(f"decode: copy bandwidth {bw / GB:.1f} GB/s", flush=True)
    ours = lambda m: m.make_cache()  # noqa: E731
    theirs = lambda m: make_prompt_cache(m)  # noqa: E731
    rows = [
        measure("qwen35_mlx bf16", lambda: load_model(src)[0], ours, args, bw),
        measure("qwen35_mlx 4-bit (recipe)", lambda: load_model(q4)[0], ours, args, bw),
        measure("mlx-lm 4-bit (its own quantization)", lambda: _mlx_lm_own_4bit(src), theirs, args, bw),
        measure("mlx-lm reading our 4-bit checkpoint", lambda: mlx_lm_load(q4)[0], theirs, args, bw),
    ]
    return {"rows": rows, "bandwidth": bw, "prompt": args.decode_prompt, "tokens": args.decode_tokens, "q4": q4}


def section_prefill(args, q4: Path) -> dict:
    gc.collect()
    mx.clear_cache()
    model, cfg = load_model(q4)
    T, chunk = args.prefill_tokens, args.prefill_chunk
    ids = mx.array(np.random.default_rng(3).integers(0, 200_000, (1, T)))
    mx.eval(ids)
    mx.reset_peak_memory()
    cache = model.make_cache(kv_bits=8, kv_group_size=64)
    t = time.perf_counter()
    marks = [t]
    logits = _prefill(model, cache, {"input_ids": ids}, chunk, on_chunk=lambda: marks.append(time.perf_counter()))
    mx.eval(logits)
    dt = time.perf_counter() - t
    laps = [b - a for a, b in zip(marks, marks[1:])]
    print(f"prefill chunk times: first {laps[:3]}, last {laps[-3:]}", flush=True)
    peak = mx.get_peak_memory()
    est = estimate(cfg.text, T, weight_bytes(model), kv_bits=8, prefill_chunk=chunk)
    held = cache.nbytes
    out = {"T": T, "chunk": chunk, "seconds": dt, "peak_gb": peak / GB, "estimate": {k: v / GB for k, v in est.items()},
           "kv_gb": held["kv"] / GB, "gdn_gb": held["gdn"] / GB, "weights_gb": weight_bytes(model) / GB}
    print(f"prefill: {T} tokens (chunk {chunk}) in {dt:.1f} s, peak {peak / GB:.3f} GB, estimate "
          f"{est['total'] / GB:.3f} GB ({ {k: round(v / GB, 3) for k, v in est.items()} })", flush=True)
    del model, cache
    return out


CONTEXTS = [8192, 32768, 131072, 262144]
LABEL = {8192: "8K", 32768: "32K", 131072: "128K", 262144: "262K"}


def section_table(args) -> dict:
    out = {}
    for name in ("0.8b", "2b", "4b", "9b"):
        raw = hub_config(name)
        cfg = Qwen35Config.from_dict(raw)
        w = {"bf16": checkpoint_weight_bytes(cfg), "8-bit": checkpoint_weight_bytes(cfg, QuantSpec(8, 64)),
             "4-bit": checkpoint_weight_bytes(cfg, QuantSpec(4, 64))}
        params = checkpoint_weight_bytes(cfg, dtype_bytes=1)                # ~parameter count (norms 4 bytes)
        t = cfg.text
        out[name] = {"weights": w, "params": params, "kv_bf16": kv_bytes_per_token(t),
                     "kv_8": kv_bytes_per_token(t, 8), "kv_4": kv_bytes_per_token(t, 4), "gdn": gdn_state_bytes(t),
                     "prefill": {c: {ch: prefill_bytes(t, ch, c, 8) for ch in (256, 512, 2048)} for c in CONTEXTS},
                     "tied": cfg.tie_word_embeddings, "vision": cfg.vision is not None}
    return out


def fmt_table(t: dict) -> list[str]:
    lines = ["Weights (GB; text + vision tower; norms float32; 8-bit and 4-bit by the recipe, group 64):", "",
             "| model | parameters (text + vision) | bf16 | 8-bit | 4-bit | KV per 1K tokens bf16 / 8-bit / 4-bit | GDN state |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for name, r in t.items():
        p = r["params"]
        vis = f" + {p['vision'] / 1e9:.2f}B" if r["vision"] else " + ? (vision config not found)"
        lines.append(f"| {name} | {p['text'] / 1e9:.2f}B{vis} | {r['weights']['bf16']['total'] / GB:.2f} | "
                     f"{r['weights']['8-bit']['total'] / GB:.2f} | {r['weights']['4-bit']['total'] / GB:.2f} | "
                     f"{r['kv_bf16'] * 1024 / 1e6:.1f} / {r['kv_8'] * 1024 / 1e6:.1f} / {r['kv_4'] * 1024 / 1e6:.1f} MB | "
                     f"{r['gdn'] / 1e6:.1f} MB |")
    lines += ["", "Resident memory to hold a context (GB: weights + KV cache + GDN state; decode adds little). "
              "Rows: weights / KV precision.", "",
              "| model | weights / KV | " + " | ".join(LABEL[c] for c in CONTEXTS) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in CONTEXTS) + " |"]
    for name, r in t.items():
        for wname, kv in (("bf16", "kv_bf16"), ("8-bit", "kv_8"), ("4-bit", "kv_8"), ("4-bit", "kv_4")):
            kvname = {"kv_bf16": "bf16", "kv_8": "8-bit", "kv_4": "4-bit"}[kv]
            vals = [(r["weights"][wname]["total"] + r[kv] * c + r["gdn"]) / GB for c in CONTEXTS]
            lines.append(f"| {name} | {wname} / {kvname} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    lines += ["", "Prefill working set on top (GB; one query block's attention scores, one layer's dequantized KV, the activations of the layers in flight; "
              "8-bit KV), by --prefill-chunk:", "",
              "| model (query heads) | chunk | " + " | ".join(LABEL[c] for c in CONTEXTS) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in CONTEXTS) + " |"]
    for name, r in t.items():
        heads = hub_config(name)["text_config"]["num_attention_heads"]
        for ch in (256, 512, 2048):
            lines.append(f"| {name} ({heads}) | {ch} | " + " | ".join(f"{r['prefill'][c][ch] / GB:.2f}" for c in CONTEXTS)
                         + " |")
    return lines


def fmt_results(args, res: dict) -> list[str]:
    lines = [SECTION, "",
             f"Device: {device_name()}, mlx {mx.__version__}. Date: {datetime.date.today()}. "
             f"Command: `python benchmarks/bench_quant.py {' '.join(args.argv)}`.", ""]
    if "recipe" in res:
        r = res["recipe"]
        lines += [f"Recipe errors: random float32 model with the Qwen3.5-0.8B widths, vocabulary and vision tower, "
                  f"{r['layers']} decoder layers (random_model's init), relative logits error over a {r['T']}-token "
                  f"text prompt or a 64-image-token "
                  f"prompt; quantization simulated exactly (dequantize(quantize(w))). Rounding every matrix to "
                  f"bfloat16 alone: {r['bf16']:.1e}.", "",
                  "| quantized alone | share of weights | prompt | 4-bit g64 | 8-bit g64 | mxfp4 |",
                  "| --- | ---: | --- | ---: | ---: | ---: |"]
        for label, share, prompt, e in r["groups"]:
            lines.append(f"| {label} | {100 * share:.2f}% | {prompt} | {e['4-bit']:.1e} | {e['8-bit']:.1e} | "
                         f"{e['mxfp4']:.1e} |")
        lines += ["", "| bits | whole model | text | image |", "| --- | --- | ---: | ---: |"]
        for s, label, et, ei in r["whole"]:
            lines.append(f"| {s} | {label} | {et:.1e} | {ei:.1e} |")
        f = r["router"]
        lines += ["", f"MoE router (top-8 of 256, hidden 2048, random): share of tokens whose expert set changes: "
                  f"bf16 {100 * f['bfloat16']:.1f}%, 8-bit {100 * f['8-bit']:.1f}%, 4-bit {100 * f['4-bit']:.1f}%.", ""]
    if "decode" in res:
        d = res["decode"]
        lines += [f"Decode: Qwen3.5-0.8B text config, random weights, {d['prompt']}-token prompt then "
                  f"{d['tokens']} greedy tokens, one sequence. Floor = copy bandwidth ({d['bandwidth'] / GB:.1f} GB/s, "
                  f"read + write of 256 MiB) / weight bytes read per token.", "",
                  "| model | tok/s | bandwidth floor tok/s | % of floor | weights GB | peak GB |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in d["rows"]:
            lines.append(f"| {row['name']} | {row['tps']:.1f} | {row['floor_tps']:.1f} | "
                         f"{100 * row['tps'] / row['floor_tps']:.0f}% | {row['weights_gb']:.3f} | {row['peak_gb']:.3f} |")
        lines += ["", "mlx-lm's own 4-bit model keeps the embedding at 4 bits (hence fewer weight bytes) and its peak "
                  "includes the bf16 weights it loads before quantizing. Reading our checkpoint, mlx-lm computes in "
                  "float32 (its RMSNorm returns float32 with our float32 norm weights)."]
        if not (mx.cuda.is_available() or mx.metal.is_available()):
            lines.append("On MLX's CPU backend `quantized_matmul` with bfloat16 activations is the bottleneck "
                         "(a 3584x1024 4-bit matrix-vector product: 38 ms, against 4.6 ms for the bf16 matmul; "
                         "float32 activations are far faster there, which is why mlx-lm on our checkpoint beats "
                         "both bf16-activation 4-bit rows): these CPU decode numbers measure that kernel, not the "
                         "models. The GPU run is the one that compares them.")
        lines.append("")
    if "prefill" in res:
        p = res["prefill"]
        e = p["estimate"]
        lines += [f"Long prefill: {p['T']} tokens, 4-bit weights (recipe), 8-bit KV, --prefill-chunk {p['chunk']}: "
                  f"{p['seconds']:.1f} s, peak {p['peak_gb']:.3f} GB (MLX allocator). memory.estimate: weights "
                  f"{e['weights']:.3f} + KV {e['kv']:.3f} + GDN {e['gdn']:.3f} + prefill working set {e['prefill']:.3f} "
                  f"= {e['total']:.3f} GB; the cache holds KV {p['kv_gb']:.3f} GB, GDN {p['gdn_gb']:.3f} GB.", ""]
    return lines


def write_results(lines: list[str]):
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(SECTION)
    if start >= 0:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start].rstrip("\n") + "\n\n" + "\n".join(lines).rstrip("\n") + "\n" + \
            (text[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines).rstrip("\n") + "\n"
    RESULTS.write_text(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized runs")
    p.add_argument("--sections", nargs="+", default=["recipe", "decode", "prefill", "table"])
    p.add_argument("--recipe-tokens", type=int)
    p.add_argument("--recipe-layers", type=int, help="decoder layers of the recipe model (default: all 24)")
    p.add_argument("--decode-prompt", type=int)
    p.add_argument("--decode-tokens", type=int)
    p.add_argument("--prefill-tokens", type=int)
    p.add_argument("--prefill-chunk", type=int)
    p.add_argument("--write", action="store_true", help="replace this benchmark's section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    quick = dict(recipe_tokens=16, recipe_layers=8, decode_prompt=8, decode_tokens=4, prefill_tokens=128, prefill_chunk=64)
    full = dict(recipe_tokens=128, decode_prompt=512, decode_tokens=128, prefill_tokens=131072, prefill_chunk=2048)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.argv = sys.argv[1:] if argv is None else argv
    return args


def main(argv=None):
    args = parse_args(argv)
    print(f"device: {device_name()}, mlx {mx.__version__}", flush=True)
    res = {}
    work = Path(tempfile.mkdtemp(prefix="bench_quant-"))
    try:
        if "recipe" in args.sections:
            res["recipe"] = section_recipe(args)
        q4 = None
        if "decode" in args.sections:
            res["decode"] = section_decode(args, work)
            q4 = res["decode"]["q4"]
        if "prefill" in args.sections:
            if q4 is None:
                model, cfg = random_model(hub_config("0.8b", vision=False))
                src = save_checkpoint(model, cfg, work / "bf16")
                del model
                q4 = convert(src, work / "q4", quantize=True, q_bits=4, q_group_size=64)
            res["prefill"] = section_prefill(args, q4)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = fmt_results(args, res)
    if "table" in args.sections:
        lines += ["Memory table (from the configs in benchmarks/hub_configs; see README):", ""] + \
            fmt_table(section_table(args)) + [""]
    print("\n".join(lines))
    if args.write:
        write_results(lines)


if __name__ == "__main__":
    main()
