"""What is quantized and what stays high precision: the GDN-aware recipe, and the code that applies it.

One predicate, `recipe`, decides per weight from its module path and shape alone, so the same rule serves
the model's modules, the MTP head's loose tensors and the memory estimates. What it keeps in the stored
precision (README "Quantization" has the measured error of each choice):

- everything 1-D: all norms (float32, 1 + w), `A_log`, `dt_bias`, biases; and the conv1d `[C, K, 1]`
- GDN `in_proj_a` / `in_proj_b` `[Hv, H]`: decay and beta go through exp/softplus/sigmoid into every step
  of the recurrence; they are ~0.1% of a layer's weights
- the MoE router `mlp.gate` `[E, H]` and `shared_expert_gate` `[1, H]`: routing is discontinuous
- the vision tower (as mlx-vlm does): patch embedding, position table, blocks and merger
- anything whose input dimension is not a multiple of the group size

The token embedding and the untied `lm_head` are quantized at 8 bits (affine) when the rest is at fewer bits
(`EMBED_BITS`); with tied weights the embedding is the output projection too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .errors import Qwen35Error

MODES = {"affine": {"bits": (2, 3, 4, 5, 6, 8), "group_size": (32, 64, 128)},   # mx.quantize's rules
         "mxfp4": {"bits": (4,), "group_size": (32,)},
         "mxfp8": {"bits": (8,), "group_size": (32,)},
         "nvfp4": {"bits": (4,), "group_size": (16,)}}
EMBED_BITS = 8                                            # embed_tokens / lm_head when the rest is narrower

KEEP = re.compile(r"(\.|^)(in_proj_a|in_proj_b|conv1d|shared_expert_gate)$|\.mlp\.gate$|^model\.visual\.")
EMBEDDINGS = re.compile(r"(^|\.)(embed_tokens|lm_head)$")


class QuantizationError(Qwen35Error, ValueError):
    """A quantization setting mx.quantize does not support."""


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int = 64
    mode: str = "affine"

    def __post_init__(self):
        rules = MODES.get(self.mode)
        if rules is None:
            raise QuantizationError(f"quantization mode {self.mode!r} is not supported "
                                    f"(one of {', '.join(MODES)})")
        if self.bits not in rules["bits"] or self.group_size not in rules["group_size"]:
            raise QuantizationError(
                f"{self.mode} quantization does not support {self.bits}-bit weights with group size "
                f"{self.group_size}: it takes bits in {list(rules['bits'])} and group size in "
                f"{list(rules['group_size'])}")

    @property
    def params(self) -> dict:
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode}

    def for_embeddings(self, embed_bits: int | None) -> "QuantSpec":
        """The spec of embed_tokens / lm_head: at least `embed_bits`, affine (group 64 for the fp modes), since
        nn.QuantizedEmbedding dequantizes the fp modes to bfloat16 whatever the model's dtype."""
        bits = max(self.bits, embed_bits or 0)
        if self.mode == "affine":
            return self if bits == self.bits else QuantSpec(bits, self.group_size, "affine")
        return QuantSpec(bits, 64, "affine")


def recipe(path: str, shape: tuple, spec: QuantSpec, embed_bits: int | None = EMBED_BITS) -> QuantSpec | None:
    """The default recipe: the QuantSpec to store the weight of module `path` (shape [..., out, in]) with,
    or None to keep it in the stored precision. Paths are ours (`model.language_model.layers.3.mlp.experts`)
    or the MTP head's (`mtp.layers.0.self_attn.q_proj`)."""
    if len(shape) < 2 or KEEP.search(path):
        return None
    chosen = spec.for_embeddings(embed_bits) if EMBEDDINGS.search(path) else spec
    if shape[-1] % chosen.group_size:
        return None
    return chosen


def experts_decision(path: str, shapes, spec: QuantSpec, predicate=recipe) -> QuantSpec | None:
    """One decision for an MoE layer's two expert stacks (gate_up [E, 2I, H], down [E, H, I]): both or none."""
    qs = [predicate(path, tuple(s), spec) for s in shapes]
    return qs[0] if all(q == qs[0] for q in qs) else None


def quantize_model(model: nn.Module, spec: QuantSpec | None = None, predicate=recipe, *, bits: int = 4,
                   group_size: int = 64, mode: str = "affine") -> dict[str, QuantSpec | None]:
    """Quantize the model in place with the recipe (`spec`, or bits / group_size / mode). Returns every
    quantizable module's decision (path -> spec or None)."""
    spec = spec or QuantSpec(bits, group_size, mode)
    decisions: dict[str, QuantSpec | None] = {}
    replace = []
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            q = predicate(path, tuple(module.weight.shape), spec)
            decisions[path] = q
            if q is not None:
                replace.append((path, module.to_quantized(**q.params)))
        elif type(module).__name__ == "Experts" and module.quant is None:
            q = experts_decision(path, [module.gate_up_proj.shape, module.down_proj.shape], spec, predicate)
            decisions[path] = q
            if q is not None:
                module.quantize(**q.params)
    if replace:
        from mlx.utils import tree_unflatten  # noqa: PLC0415
        model.update_modules(tree_unflatten(replace))
    mx.eval(model.parameters())
    return decisions


def quantize_tensors(weights: dict, spec: QuantSpec, predicate=recipe) -> tuple[dict, dict]:
    """The same recipe over loose tensors (the MTP head): `<path>.weight` -> `.weight/.scales/.biases`,
    fused experts `<path>.experts.{gate_up_proj,down_proj}` -> `<name>` + `<name>_scales/_biases`.
    Returns (tensors, decisions)."""
    out, decisions = {}, {}
    for name, w in weights.items():
        if name.endswith(".weight"):
            path, tail = name[: -len(".weight")], None
        elif re.search(r"\.experts\.(gate_up_proj|down_proj)$", name):
            path, tail = name.rsplit(".", 1)
        else:
            out[name] = w
            continue
        q = predicate(path, tuple(w.shape), spec) if tail is None else experts_decision(
            path, [weights[f"{path}.{t}"].shape for t in ("gate_up_proj", "down_proj")], spec, predicate)
        if q is None or not mx.issubdtype(w.dtype, mx.floating):
            out[name] = w
            decisions.setdefault(path, None)
            continue
        decisions[path] = q
        packed = mx.quantize(w, **q.params)
        if tail is None:
            out[name], out[f"{path}.scales"] = packed[0], packed[1]
            if len(packed) > 2 and packed[2] is not None:
                out[f"{path}.biases"] = packed[2]
        else:
            out[name], out[f"{name}_scales"] = packed[0], packed[1]
            if len(packed) > 2 and packed[2] is not None:
                out[f"{name}_biases"] = packed[2]
    return out, decisions


def dequantize_model(model: nn.Module, dtype=None) -> nn.Module:
    """Replace every quantized layer by a float one holding its dequantized weights (in place, as `dtype`,
    default the scales' float dtype): the model a quantized checkpoint computes, run through plain matmuls.
    Used to check the quantized kernels end to end."""
    from mlx.utils import tree_unflatten  # noqa: PLC0415
    replace = []
    for path, m in model.named_modules():
        if isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding):
            w = mx.dequantize(m.weight, m.scales, m.get("biases"), m.group_size, m.bits, m.mode,
                              dtype=dtype or _float_dtype(m.scales))
            if isinstance(m, nn.QuantizedLinear):
                new = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
                if "bias" in m:
                    new.bias = m.bias
            else:
                new = nn.Embedding(*w.shape)
            new.weight = w
            replace.append((path, new))
        elif type(m).__name__ == "Experts" and m.quant is not None:
            q = m.quant
            for name in ("gate_up_proj", "down_proj"):
                scales = m[f"{name}_scales"]
                m[name] = mx.dequantize(m[name], scales, m.get(f"{name}_biases"), q["group_size"], q["bits"],
                                        q["mode"], dtype=dtype or _float_dtype(scales))
                m.pop(f"{name}_scales")
                if f"{name}_biases" in m:
                    m.pop(f"{name}_biases")
            m.quant = None
    if replace:
        model.update_modules(tree_unflatten(replace))
    mx.eval(model.parameters())
    return model


def _float_dtype(scales):
    """Affine scales carry the weights' dtype; the fp modes' uint8 scales do not (bfloat16 then)."""
    return scales.dtype if mx.issubdtype(scales.dtype, mx.floating) else mx.bfloat16


def quantized_bytes(shape: tuple, q: QuantSpec | None, dtype_bytes: int = 2) -> float:
    """Bytes a weight of `shape` takes stored with q (None: dtype_bytes per element). Affine keeps a scale
    and a bias per group in the weight dtype; the mx/nv fp modes one uint8 scale per group."""
    n = 1
    for s in shape:
        n *= s
    if q is None:
        return n * dtype_bytes
    per_group = 2 * dtype_bytes if q.mode == "affine" else 1
    return n * q.bits / 8 + n / q.group_size * per_group
