"""Hub id or local directory -> config + weights -> model. The one weight-name map lives here.

Checkpoint layouts accepted, each recognised from explicit evidence in the files:
- Hugging Face VL (`model.language_model.*`, `model.visual.*`, `lm_head`, `mtp.*`) and text-only
  (`model.*`): zero-centred norms (stored w, applied as 1 + w), conv1d [C, 1, K], experts fused
  (`experts.gate_up_proj`) or per expert (`experts.{e}.{gate,up,down}_proj`).
- MLX conversions by mlx-lm / mlx-vlm / us (`language_model.model.*`, `vision_tower.*`): conv1d already
  [C, K, 1] and norms already stored as 1 + w; experts as `switch_mlp.{gate,up,down}_proj`; optionally
  quantized (`.scales` / `.biases` beside a packed weight, `quantization` in config.json).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .config import Qwen35Config
from .errors import ConfigError, WeightsError

ZERO_CENTRED_NORMS = re.compile(r"(input_layernorm|post_attention_layernorm|q_norm|k_norm|pre_fc_norm_\w+)\.weight$"
                                r"|^model\.language_model\.norm\.weight$|^mtp\.norm\.weight$")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub id through huggingface_hub (cache first; HF_HUB_OFFLINE honoured)."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    s = str(path_or_id)
    if p.exists() or s.startswith((".", "/", "~")) or s.count("/") != 1:
        raise ConfigError(f"{s}: not a checkpoint directory, and not a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download  # noqa: PLC0415
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError  # noqa: PLC0415
    try:
        return Path(snapshot_download(s, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError as e:
        raise ConfigError(f"{s}: not in the local Hugging Face cache and the hub cannot be reached "
                          f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): {e}") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ConfigError(f"{s}: could not be fetched from the Hugging Face hub: {e}") from None


def read_safetensors(path: Path) -> tuple[dict[str, mx.array], dict[str, str]]:
    """All tensors of a checkpoint (lazily loaded) and the file each came from."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise WeightsError(f"{index}: unreadable index ({e})") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise WeightsError(f"{path}: shard(s) listed in model.safetensors.index.json are missing: "
                               f"{', '.join(missing)}")
    else:
        files = sorted(f.name for f in path.glob("*.safetensors"))
        weight_map = {}
        if not files:
            raise WeightsError(f"{path}: no *.safetensors weights found")
    weights, origin = {}, {}
    for f in files:
        try:
            shard = mx.load(str(path / f))
        except Exception as e:  # noqa: BLE001  (MLX raises plain RuntimeError/ValueError on corrupt files)
            raise WeightsError(f"{path / f}: cannot be read as safetensors, truncated or corrupt? ({e})") from None
        for k, v in shard.items():
            weights[k], origin[k] = v, f
    for k, f in weight_map.items():
        if k not in weights:
            raise WeightsError(f"{path / f}: tensor {k!r} is listed in the index but missing from the file "
                               "(truncated download?)")
    return weights, origin


def canonical_name(key: str) -> str:
    """Checkpoint key -> our module path (transformers' VL names)."""
    for old, new in (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                     ("vision_tower.", "model.visual.")):
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + key[len("model."):]
    return key


def is_mlx_layout(weights: dict) -> bool:
    """MLX conversions store conv1d as [C, K, 1] (HF: [C, 1, K]) and have already folded 1 + w into norms."""
    convs = [v for k, v in weights.items() if k.endswith("conv1d.weight")]
    if not convs:
        raise WeightsError("no linear_attn.conv1d.weight in the checkpoint: not a Qwen3.5 model?")
    return convs[0].shape[-1] == 1


def sanitize(weights: dict, cfg: Qwen35Config, mlx_layout: bool):
    """Canonical names, layouts and norm convention. Returns (model weights, mtp weights)."""
    out, mtp = {}, {}
    experts: dict[str, dict] = {}
    vision = {}
    for key, value in weights.items():
        name = canonical_name(key)
        if name.startswith("mtp."):
            mtp[name] = value
            continue
        if name.startswith("model.visual."):
            vision[name[len("model.visual."):]] = value
            continue
        m = re.match(r"(.*\.mlp)\.(?:experts\.(\d+)\.|switch_mlp\.)(gate_proj|up_proj|down_proj)\.(\w+)$", name)
        if m:
            experts.setdefault(m.group(1), {}).setdefault((m.group(3), m.group(4)), {})[m.group(2)] = value
            continue
        if name.endswith("conv1d.weight") and not mlx_layout:
            value = value.swapaxes(1, 2)
        if ZERO_CENTRED_NORMS.search(name):
            # fold 1 + w in float32 (bf16 would round it); MLX conversions already hold 1 + w
            value = value.astype(mx.float32) + (0.0 if mlx_layout else 1.0)
        out[name] = value
    for prefix, parts in experts.items():
        out.update(_fuse_experts(prefix, parts))
    for name in [k for k in mtp if ZERO_CENTRED_NORMS.search(k)]:
        mtp[name] = mtp[name].astype(mx.float32) + (0.0 if mlx_layout else 1.0)
    if vision:
        if cfg.vision is None:
            raise WeightsError("the checkpoint has vision weights but config.json has no vision_config")
        from .model.vision import sanitize as sanitize_vision  # noqa: PLC0415
        out.update({"model.visual." + k: v for k, v in sanitize_vision(vision, cfg.vision).items()})
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out, mtp


def _fuse_experts(prefix: str, parts: dict) -> dict:
    """Per-expert or switch_mlp tensors -> experts.gate_up_proj [E, 2I, H] and experts.down_proj [E, H, I]
    (with their `_scales` / `_biases` when quantized)."""
    def stacked(proj, suffix):
        d = parts.get((proj, suffix))
        if d is None:
            return None
        if "" in d or None in d:                                   # switch_mlp: already [E, ...]
            return d.get(None, d.get(""))
        return mx.stack([d[str(e)] for e in range(len(d))])

    out = {}
    for suffix in ("weight", "scales", "biases"):
        gate, up, down = (stacked(p, suffix) for p in ("gate_proj", "up_proj", "down_proj"))
        if gate is None:
            continue
        tail = "" if suffix == "weight" else f"_{suffix}"
        out[f"{prefix}.experts.gate_up_proj{tail}"] = mx.concatenate([gate, up], axis=1)
        out[f"{prefix}.experts.down_proj{tail}"] = down
    return out


def quantize_like(model: nn.Module, weights: dict, cfg: Qwen35Config) -> None:
    """Make the model's layers quantized wherever the checkpoint has `.scales`, with bits and group size
    read from the tensors' shapes and checked against config.json's `quantization`."""
    q = cfg.quantization or {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Embedding) and f"{path}.scales" in weights:
            w = weights[f"{path}.weight"]
            in_dims = module.weight.shape[-1]
            bits, group = _infer_bits(path, w, weights[f"{path}.scales"], in_dims)
            mode = _check_against_config(path, bits, group, q)
            parent, _, leaf = path.rpartition(".")
            owner = model if not parent else _get(model, parent)
            qm = module.to_quantized(group_size=group, bits=bits, mode=mode)
            if isinstance(owner, list):
                owner[int(leaf)] = qm
            else:
                setattr(owner, leaf, qm)
        elif type(module).__name__ == "Experts" and f"{path}.gate_up_proj_scales" in weights:
            in_dims = module.gate_up_proj.shape[-1]
            bits, group = _infer_bits(path, weights[f"{path}.gate_up_proj"],
                                      weights[f"{path}.gate_up_proj_scales"], in_dims)
            module.quantize(group, bits, _check_against_config(path, bits, group, q))


def _get(model, path):
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else getattr(obj, part)
    return obj


def _infer_bits(path, packed, scales, in_dims):
    bits = packed.shape[-1] * 32 // in_dims
    group = in_dims // scales.shape[-1] if scales.shape[-1] else 0
    if bits not in (2, 3, 4, 5, 6, 8) or group not in (16, 32, 64, 128) or packed.shape[-1] * 32 != bits * in_dims:
        raise WeightsError(f"{path}: quantized weight {tuple(packed.shape)} with scales {tuple(scales.shape)} "
                           f"does not fit an input size of {in_dims}")
    return bits, group


def _check_against_config(path, bits, group, q) -> str:
    """Bits and group size inferred from the tensors must be what config.json says (its per-layer entry,
    else the default); returns the mode to quantize the module with."""
    if not q:
        raise WeightsError(f"{path}: the weights are quantized ({bits}-bit, group {group}) but config.json "
                           "has no `quantization` section")
    spec = q
    for key, value in q.items():
        if isinstance(value, dict | bool) and _module_path(key) == path:
            spec = value
    if spec is False:
        raise WeightsError(f"{path}: the weights are quantized ({bits}-bit, group {group}) but config.json's "
                           "quantization lists this layer as not quantized")
    spec = q if spec is True else spec
    want_bits, want_group = spec.get("bits"), spec.get("group_size")
    if (want_bits, want_group) != (bits, group):
        raise WeightsError(f"{path}: config.json's quantization says {want_bits}-bit group {want_group}, "
                           f"the weights are {bits}-bit group {group}")
    return spec.get("mode", q.get("mode", "affine"))


def _module_path(key: str) -> str:
    """A per-layer key of config.json's `quantization` (mlx-lm / mlx-vlm module paths) -> our module path;
    the three switch_mlp projections of an MoE layer are our one `experts` module."""
    return re.sub(r"\.switch_mlp\.(gate|up|down)_proj$", ".experts", canonical_name(key + ".")[:-1])


def check_weights(model: nn.Module, weights: dict, origin: dict) -> None:
    """Every parameter present with its shape; nothing in the checkpoint left unused."""
    expected = dict(tree_flatten(model.parameters()))
    missing = [k for k in expected if k not in weights]
    if missing:
        raise WeightsError(f"missing tensor(s) in the checkpoint: {', '.join(missing[:5])}"
                           + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for k, v in expected.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise WeightsError(f"{k}: shape {tuple(weights[k].shape)} in the checkpoint, the config implies "
                               f"{tuple(v.shape)}")
    unused = [k for k in weights if k not in expected]
    if unused:
        raise WeightsError(f"tensor(s) the model does not use: {', '.join(unused[:5])}"
                           + (f" and {len(unused) - 5} more" if len(unused) > 5 else ""))


def cast(weights: dict, dtype) -> dict:
    """Cast floating weights to dtype. Kept as stored: the float32 norms (1 + w), and the tiny decay
    parameters A_log / dt_bias whose exp/softplus amplify rounding."""
    if dtype is None:
        return weights
    keep = lambda k: ZERO_CENTRED_NORMS.search(k) or k.endswith(("A_log", "dt_bias"))
    return {k: v if keep(k) or not mx.issubdtype(v.dtype, mx.floating) else v.astype(dtype)
            for k, v in weights.items()}


def load_model(path: Path, dtype=None):
    """Build the model from a checkpoint directory. Returns (model, config)."""
    from .model.qwen35 import Qwen35Model  # noqa: PLC0415

    cfg = Qwen35Config.from_dir(path)
    raw, origin = read_safetensors(path)
    weights, mtp = sanitize(raw, cfg, is_mlx_layout(raw))
    model = Qwen35Model(cfg)
    quantize_like(model, weights, cfg)
    check_weights(model, weights, origin)
    if isinstance(dtype, str):
        dtype = getattr(mx, dtype)
    model.load_weights(list(cast(weights, dtype).items()), strict=True)
    model.mtp_weights = MTPWeights(mtp)
    mx.eval(model.parameters())
    model.eval()
    return model, cfg


class MTPWeights:
    """The multi-token-prediction head's tensors, kept aside (lazily loaded; unused by plain decoding)."""

    def __init__(self, weights: dict):
        self.weights = weights

    def __len__(self):
        return len(self.weights)
