"""`python -m qwen35_mlx.convert --hf-path <id|dir> --mlx-path <dir> [-q ...]`: a checkpoint in the MLX layout
that our `load()`, mlx-lm (text) and mlx-vlm (text + vision) read.

Layout written (what mlx-lm's / mlx-vlm's qwen3_5 `sanitize` take as already converted):
- `language_model.model.*`, `language_model.lm_head.*`, `vision_tower.*`, `mtp.*` (kept, same recipe)
- conv1d `[C, K, 1]`; zero-centred norms stored as 1 + w in float32 (bf16 would round 1 + w to 2^-7);
  experts as `switch_mlp.{gate,up,down}_proj`; the vision patch embedding as mlx-vlm's Conv3d `[O, T, P, P, C]`
- `model*.safetensors` shards + `model.safetensors.index.json`; config.json with mlx-lm's `quantization`
  section (default bits / group size / mode, plus one entry per layer stored at other bits)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .config import Qwen35Config
from .errors import Qwen35Error
from .loading import ZERO_CENTRED_NORMS, load_model, resolve
from .quantize import QuantSpec, quantize_model, quantize_tensors, recipe

MAX_SHARD_BYTES = 5 << 30                    # mlx-lm's shard size
AUX_PATTERNS = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken")
NOT_COPIED = {"config.json", "model.safetensors.index.json"}
MODE_DEFAULTS = {"affine": (4, 64), "mxfp4": (4, 32), "mxfp8": (8, 32)}


class ConvertError(Qwen35Error, ValueError):
    """The conversion cannot start: output directory in use, source already quantized."""


def out_module(path: str) -> str:
    """Our module path -> the mlx-lm / mlx-vlm one."""
    for ours, theirs in (("model.language_model.", "language_model.model."), ("lm_head", "language_model.lm_head"),
                         ("model.visual.", "vision_tower.")):
        if path.startswith(ours):
            return theirs + path[len(ours):]
    return path


def _expert_tensors(prefix: str, name: str, value) -> dict:
    """`<prefix>.experts.gate_up_proj[_scales|_biases]` -> switch_mlp gate/up; down_proj -> switch_mlp down."""
    m = re.fullmatch(r"(gate_up_proj|down_proj)(?:_(scales|biases))?", name)
    if m is None:
        raise ConvertError(f"{prefix}.experts.{name}: unexpected expert tensor")
    leaf = m.group(2) or "weight"
    if m.group(1) == "down_proj":
        return {f"{prefix}.switch_mlp.down_proj.{leaf}": value}
    gate, up = mx.split(value, 2, axis=1)                             # rows: gate first, then up
    return {f"{prefix}.switch_mlp.gate_proj.{leaf}": gate, f"{prefix}.switch_mlp.up_proj.{leaf}": up}


def out_tensors(weights: dict, cfg: Qwen35Config) -> dict:
    """Our parameter names and layouts -> the tensors to write (mlx-lm / mlx-vlm names and layouts)."""
    out = {}
    for name, value in weights.items():
        m = re.match(r"(.*)\.experts\.(\w+)$", name)
        if m and not re.search(r"\.experts\.\d+\.", name):
            out.update({out_module(k): v for k, v in _expert_tensors(m.group(1), m.group(2), value).items()})
            continue
        if name == "model.visual.patch_embed.proj.weight" and mx.issubdtype(value.dtype, mx.floating):
            v = cfg.vision
            value = value.reshape(value.shape[0], v.in_channels, v.temporal_patch_size, v.patch_size,
                                  v.patch_size).transpose(0, 2, 3, 4, 1)       # Conv3d [O, T, P, P, C]
        module, _, leaf = name.rpartition(".")
        out[f"{out_module(module)}.{leaf}" if module else name] = value
    return out


def _mtp_tensors(mtp: dict, dtype) -> dict:
    """MTP head tensors as our loader keeps them (norms already 1 + w in float32), experts fused
    `[E, 2I, H]` / `[E, H, I]` whatever the source layout, cast like the model."""
    out, per_expert = {}, {}
    for k, v in mtp.items():
        m = re.match(r"(.*)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", k)
        if m:
            per_expert.setdefault(m.group(1), {}).setdefault(m.group(3), {})[int(m.group(2))] = v
            continue
        m = re.match(r"(.*)\.switch_mlp\.(gate_proj|up_proj|down_proj)\.weight$", k)
        if m:
            per_expert.setdefault(m.group(1), {})[m.group(2)] = v
            continue
        keep = ZERO_CENTRED_NORMS.search(k) or not mx.issubdtype(v.dtype, mx.floating) or dtype is None
        out[k] = v if keep else v.astype(dtype)
    for prefix, parts in per_expert.items():
        stack = lambda p: parts[p] if not isinstance(parts[p], dict) else mx.stack(  # noqa: E731
            [parts[p][e] for e in sorted(parts[p])])
        gate_up = mx.concatenate([stack("gate_proj"), stack("up_proj")], axis=1)
        down = stack("down_proj")
        out[f"{prefix}.experts.gate_up_proj"] = gate_up if dtype is None else gate_up.astype(dtype)
        out[f"{prefix}.experts.down_proj"] = down if dtype is None else down.astype(dtype)
    return out


def quantization_config(spec: QuantSpec, decisions: dict) -> dict:
    """mlx-lm's `quantization` section: the default, plus each layer stored at other settings, keyed by the
    module path mlx-lm / mlx-vlm build (experts: the three switch_mlp projections)."""
    q = dict(spec.params)
    for path, d in decisions.items():
        if d is None or d == spec:
            continue
        targets = [f"{path[:-len('.experts')]}.switch_mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")] \
            if path.endswith(".experts") else [path]
        for t in targets:
            q[out_module(t)] = dict(d.params)
    return q


def out_config(raw: dict, cfg: Qwen35Config, quant: dict | None) -> dict:
    """config.json for the output. Text-only sources are wrapped as `qwen3_5` / `qwen3_5_moe` with a
    `text_config` (mlx-lm has no `qwen3_5_text` model); the tie flag is written where every reader looks."""
    d = json.loads(json.dumps(raw))
    d.pop("quantization_config", None)
    if "text_config" not in d:
        text = d
        d = {k: text.pop(k) for k in ("architectures", "transformers_version") if k in text}
        d.update(model_type=text["model_type"].replace("_text", ""), text_config=text)
        if "eos_token_id" in text:
            d["eos_token_id"] = text["eos_token_id"]
    d["tie_word_embeddings"] = cfg.tie_word_embeddings
    d["text_config"]["tie_word_embeddings"] = cfg.tie_word_embeddings
    if quant is not None:
        d["quantization"] = quant
        d["quantization_config"] = quant                 # mlx-lm writes both
    return d


def _prepare_output(src: Path, dst: Path, force: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise ConvertError(f"{dst}: exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()):
        if dst.resolve() == src.resolve():
            raise ConvertError(f"{dst}: is the source checkpoint; write the conversion somewhere else")
        if not force:
            raise ConvertError(f"{dst}: directory is not empty; pass --force to overwrite the checkpoint in it")
        for f in list(dst.glob("*.safetensors")) + [dst / "model.safetensors.index.json"]:
            f.unlink(missing_ok=True)                    # stale shards would be read back
    dst.mkdir(parents=True, exist_ok=True)


def save_shards(weights: dict, dst: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """`model.safetensors` or `model-0000i-of-0000n.safetensors` (mlx-lm's names) and the index."""
    shards, size = [], 0
    for k in sorted(weights):
        v = weights[k]
        if not shards or size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        mx.save_safetensors(str(dst / name), shard, metadata={"format": "mlx"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
    return names


def convert(hf_path, mlx_path, quantize: bool = False, q_bits: int | None = None, q_group_size: int | None = None,
            q_mode: str = "affine", dtype: str | None = None, force: bool = False, predicate=recipe,
            max_shard_bytes: int = MAX_SHARD_BYTES, log=None) -> Path:
    """Load `hf_path` with our loader, apply the recipe (when `quantize`), write an MLX checkpoint to
    `mlx_path`. Returns the output directory."""
    log = log or (lambda msg: None)
    spec = None
    if quantize:
        if q_mode not in MODE_DEFAULTS:
            raise ConvertError(f"--q-mode {q_mode!r}: one of {', '.join(MODE_DEFAULTS)}")
        bits, group = MODE_DEFAULTS[q_mode]
        spec = QuantSpec(q_bits or bits, q_group_size or group, q_mode)        # checks mx.quantize's rules
    src = resolve(hf_path)
    dst = Path(mlx_path).expanduser()
    cfg = Qwen35Config.from_dir(src)
    if cfg.quantization or cfg.hf_quantization:
        q = cfg.quantization or cfg.hf_quantization
        desc = (f"{q.get('bits')}-bit {q.get('mode', 'affine')}, group size {q.get('group_size')}"
                if cfg.quantization else f"quant_method {q.get('quant_method')!r}")
        raise ConvertError(f"{src}: the checkpoint is already quantized ({desc}); convert from the original "
                           "bfloat16 checkpoint instead")
    _prepare_output(src, dst, force)
    model, cfg = load_model(src, dtype)
    mtp = _mtp_tensors(model.mtp_weights.weights, getattr(mx, dtype) if dtype else None)
    decisions = {}
    if spec is not None:
        decisions = quantize_model(model, spec, predicate)
        mtp, mtp_decisions = quantize_tensors(mtp, spec, predicate)
        decisions.update(mtp_decisions)
    weights = out_tensors({**dict(tree_flatten(model.parameters())), **mtp}, cfg)
    names = save_shards(weights, dst, max_shard_bytes)
    quant = quantization_config(spec, decisions) if spec is not None else None
    (dst / "config.json").write_text(json.dumps(out_config(cfg.raw, cfg, quant), indent=4) + "\n")
    for pattern in AUX_PATTERNS:
        for f in src.glob(pattern):
            if f.is_file() and f.name not in NOT_COPIED:
                shutil.copy2(f, dst / f.name)
    total = sum(v.nbytes for v in weights.values())
    kept = sum(1 for d in decisions.values() if d is None)
    log(f"wrote {dst}: {len(names)} shard(s), {total / 1e9:.3f} GB"
        + (f"; {spec.bits}-bit {spec.mode} group {spec.group_size}, {kept} matrices kept high precision"
           if spec is not None else ""))
    return dst


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m qwen35_mlx.convert",
                                description="Convert (and quantize) a Qwen3.5 checkpoint to the MLX layout.")
    p.add_argument("--hf-path", required=True, help="hub id (e.g. Qwen/Qwen3.5-0.8B) or local checkpoint directory")
    p.add_argument("--mlx-path", required=True, help="output directory")
    p.add_argument("-q", "--quantize", action="store_true", help="quantize with the GDN-aware recipe")
    p.add_argument("--q-bits", type=int, help="bits per weight (affine: 2-8, default 4; mxfp4: 4; mxfp8: 8)")
    p.add_argument("--q-group-size", type=int, help="weights per scale (affine: 32/64/128, default 64; mxfp: 32)")
    p.add_argument("--q-mode", default="affine", help="affine, mxfp4 or mxfp8")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                   help="cast the unquantized weights (default: as stored; norms stay float32)")
    p.add_argument("--force", action="store_true", help="overwrite a checkpoint in a non-empty --mlx-path")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        convert(args.hf_path, args.mlx_path, quantize=args.quantize, q_bits=args.q_bits,
                q_group_size=args.q_group_size, q_mode=args.q_mode, dtype=args.dtype, force=args.force,
                log=lambda msg: print(msg, file=sys.stderr))
    except Qwen35Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
