"""config.json -> frozen dataclasses. Every missing or bad value is a ConfigError naming its key.

Two layouts exist: the published VL layout (`model_type` qwen3_5 / qwen3_5_moe, a `text_config` and a
`vision_config` inside) and the text-only layout (qwen3_5_text / qwen3_5_moe_text, flat). Both become
one `Qwen35Config` whose `vision` is None when there is no vision tower.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

VL_TYPES = {"qwen3_5", "qwen3_5_moe"}
TEXT_TYPES = {"qwen3_5_text", "qwen3_5_moe_text"}
LAYER_KINDS = {"linear_attention", "full_attention"}


def _get(d: dict, key: str, where: str, kind=int, default: Any = ...):
    if key not in d or d[key] is None:
        if default is ...:
            raise ConfigError(f"{where}.{key}: missing from config.json")
        return default
    value = d[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"{where}.{key}: expected a positive integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
    return float(value) if kind is float else value


def _extra(d: dict, cls) -> dict:
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k not in known}


@dataclass(frozen=True)
class TextConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    layer_types: tuple[str, ...]
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    rope_theta: float
    partial_rotary_factor: float
    mrope_section: tuple[int, ...]
    tie_word_embeddings: bool
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    mtp_num_hidden_layers: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @classmethod
    def from_dict(cls, d: dict, where: str = "text_config") -> "TextConfig":
        n_layers = _get(d, "num_hidden_layers", where)
        layer_types = d.get("layer_types")
        if layer_types is None:
            interval = _get(d, "full_attention_interval", where, default=4)
            layer_types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                           for i in range(n_layers)]
        if len(layer_types) != n_layers or not set(layer_types) <= LAYER_KINDS:
            raise ConfigError(f"{where}.layer_types: expected {n_layers} entries from {sorted(LAYER_KINDS)}, "
                              f"got {layer_types!r}")
        rope = _rope_parameters(d, where)
        num_experts = d.get("num_experts") or 0
        cfg = cls(
            hidden_size=_get(d, "hidden_size", where),
            intermediate_size=_get(d, "intermediate_size", where, default=0) if num_experts
            else _get(d, "intermediate_size", where),
            num_hidden_layers=n_layers,
            num_attention_heads=_get(d, "num_attention_heads", where),
            num_key_value_heads=_get(d, "num_key_value_heads", where),
            head_dim=_get(d, "head_dim", where),
            vocab_size=_get(d, "vocab_size", where),
            rms_norm_eps=_get(d, "rms_norm_eps", where, kind=float, default=1e-6),
            max_position_embeddings=_get(d, "max_position_embeddings", where, default=262144),
            layer_types=tuple(layer_types),
            linear_num_key_heads=_get(d, "linear_num_key_heads", where),
            linear_num_value_heads=_get(d, "linear_num_value_heads", where),
            linear_key_head_dim=_get(d, "linear_key_head_dim", where),
            linear_value_head_dim=_get(d, "linear_value_head_dim", where),
            linear_conv_kernel_dim=_get(d, "linear_conv_kernel_dim", where, default=4),
            rope_theta=rope["rope_theta"],
            partial_rotary_factor=rope["partial_rotary_factor"],
            mrope_section=rope["mrope_section"],
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            num_experts=num_experts,
            num_experts_per_tok=_get(d, "num_experts_per_tok", where) if num_experts else 0,
            moe_intermediate_size=_get(d, "moe_intermediate_size", where) if num_experts else 0,
            shared_expert_intermediate_size=d.get("shared_expert_intermediate_size") or 0,
            mtp_num_hidden_layers=d.get("mtp_num_hidden_layers") or 0,
            extra=_extra(d, cls),
        )
        cfg._validate(where)
        return cfg

    def _validate(self, where: str) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"{where}.num_key_value_heads ({self.num_key_value_heads}) must divide "
                              f"num_attention_heads ({self.num_attention_heads})")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ConfigError(f"{where}.linear_num_key_heads ({self.linear_num_key_heads}) must divide "
                              f"linear_num_value_heads ({self.linear_num_value_heads})")
        rd = self.rotary_dim
        if rd <= 0 or rd % 2 or rd > self.head_dim:
            raise ConfigError(f"{where}.rope_parameters.partial_rotary_factor: rotary dim {rd} of head_dim "
                              f"{self.head_dim} must be even and in (0, head_dim]")
        if sum(self.mrope_section) != rd // 2:
            raise ConfigError(f"{where}.rope_parameters.mrope_section {list(self.mrope_section)} must sum to "
                              f"rotary_dim/2 = {rd // 2}")
        if self.num_experts and self.num_experts_per_tok > self.num_experts:
            raise ConfigError(f"{where}.num_experts_per_tok ({self.num_experts_per_tok}) exceeds num_experts "
                              f"({self.num_experts})")


def _rope_parameters(d: dict, where: str) -> dict:
    """Rope settings live in `rope_parameters` (transformers 5) or, in older files, at top level and in
    `rope_scaling`. Only plain (unscaled) rope is defined for Qwen3.5."""
    rp = dict(d.get("rope_scaling") or {})
    rp.update(d.get("rope_parameters") or {})
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConfigError(f"{where}.rope_parameters.rope_type: {rope_type!r} is not supported "
                          "(Qwen3.5 uses plain interleaved mrope)")
    theta = rp.get("rope_theta", d.get("rope_theta", 10_000_000.0))
    prf = rp.get("partial_rotary_factor", d.get("partial_rotary_factor", 0.25))
    for key, value in (("rope_theta", theta), ("partial_rotary_factor", prf)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{where}.rope_parameters.{key}: expected a positive number, got {value!r}")
    section = rp.get("mrope_section", [11, 11, 10])
    if not (isinstance(section, (list, tuple)) and len(section) == 3 and all(isinstance(s, int) for s in section)):
        raise ConfigError(f"{where}.rope_parameters.mrope_section: expected 3 integers, got {section!r}")
    if rp.get("mrope_interleaved", True) is False:
        raise ConfigError(f"{where}.rope_parameters.mrope_interleaved: false is not supported "
                          "(Qwen3.5 interleaves the mrope sections)")
    return {"rope_theta": float(theta), "partial_rotary_factor": float(prf), "mrope_section": tuple(section)}


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    num_position_embeddings: int = 2304
    hidden_act: str = "gelu_pytorch_tanh"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_dict(cls, d: dict, where: str = "vision_config") -> "VisionConfig":
        cfg = cls(
            depth=_get(d, "depth", where),
            hidden_size=_get(d, "hidden_size", where),
            intermediate_size=_get(d, "intermediate_size", where),
            num_heads=_get(d, "num_heads", where),
            out_hidden_size=_get(d, "out_hidden_size", where),
            in_channels=_get(d, "in_channels", where, default=3),
            patch_size=_get(d, "patch_size", where, default=16),
            temporal_patch_size=_get(d, "temporal_patch_size", where, default=2),
            spatial_merge_size=_get(d, "spatial_merge_size", where, default=2),
            num_position_embeddings=_get(d, "num_position_embeddings", where, default=2304),
            hidden_act=d.get("hidden_act", "gelu_pytorch_tanh"),
            extra=_extra(d, cls),
        )
        side = int(round(cfg.num_position_embeddings ** 0.5))
        if side * side != cfg.num_position_embeddings:
            raise ConfigError(f"{where}.num_position_embeddings ({cfg.num_position_embeddings}) must be a square")
        if cfg.hidden_size % cfg.num_heads or cfg.head_dim % 4:
            raise ConfigError(f"{where}: head dim {cfg.hidden_size}/{cfg.num_heads} must be a multiple of 4")
        return cfg


@dataclass(frozen=True)
class Qwen35Config:
    model_type: str
    text: TextConfig
    vision: VisionConfig | None
    tie_word_embeddings: bool
    image_token_id: int | None = None
    video_token_id: int | None = None
    vision_start_token_id: int | None = None
    vision_end_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    quantization: dict | None = None      # MLX layout (mlx-lm / mlx-vlm / ours): bits, group_size, overrides
    hf_quantization: dict | None = None   # transformers' quantization_config (e.g. fp8 releases)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_moe(self) -> bool:
        return self.text.is_moe

    @classmethod
    def from_dict(cls, d: dict) -> "Qwen35Config":
        if not isinstance(d, dict):
            raise ConfigError("config.json: expected a JSON object")
        model_type = d.get("model_type")
        if model_type not in VL_TYPES | TEXT_TYPES:
            raise ConfigError(f"config.json: model_type {model_type!r} is not a Qwen3.5 model "
                              f"(expected one of {sorted(VL_TYPES | TEXT_TYPES)})")
        nested = "text_config" in d
        text_dict = d["text_config"] if nested else d
        if not isinstance(text_dict, dict):
            raise ConfigError("config.json: text_config must be an object")
        text = TextConfig.from_dict(text_dict, "text_config" if nested else "config")
        vision = None
        if isinstance(d.get("vision_config"), dict):
            vision = VisionConfig.from_dict(d["vision_config"])
        # For the VL layout transformers honours the top-level flag; text-only files have only one.
        tie = d.get("tie_word_embeddings", text.tie_word_embeddings) if nested else text.tie_word_embeddings
        eos = d.get("eos_token_id", text_dict.get("eos_token_id"))
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
        return cls(
            model_type=model_type, text=text, vision=vision, tie_word_embeddings=bool(tie),
            image_token_id=d.get("image_token_id"), video_token_id=d.get("video_token_id"),
            vision_start_token_id=d.get("vision_start_token_id"),
            vision_end_token_id=d.get("vision_end_token_id"),
            eos_token_ids=eos_ids,
            quantization=d.get("quantization"),
            hf_quantization=d.get("quantization_config") if "quant_method" in (d.get("quantization_config") or {})
            else None,
            raw=d,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> "Qwen35Config":
        file = Path(path) / "config.json"
        if not file.is_file():
            raise ConfigError(f"{file}: not found (a Qwen3.5 checkpoint directory has a config.json)")
        try:
            d = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{file}: not valid JSON ({e})") from None
        return cls.from_dict(d)
