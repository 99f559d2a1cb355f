"""The recipe: what it quantizes and what it keeps, mx.quantize's rules, the MTP head under the same recipe,
and the weight-size estimate against what a quantized model really holds."""

import mlx.core as mx
import mlx.nn as nn
import pytest

from qwen35_mlx import load
from qwen35_mlx.memory import checkpoint_weight_bytes, weight_bytes
from qwen35_mlx.quantize import QuantizationError, QuantSpec, quantize_model, quantize_tensors, recipe

SPEC = QuantSpec(4, 64)
L = "model.language_model.layers.0."


@pytest.mark.parametrize("path,shape,want", [
    (L + "linear_attn.in_proj_a", (16, 1024), None),                 # decay input
    (L + "linear_attn.in_proj_b", (16, 1024), None),                 # beta input
    (L + "linear_attn.conv1d", (6144, 4, 1), None),
    (L + "linear_attn.A_log", (16,), None),
    (L + "input_layernorm", (1024,), None),
    (L + "mlp.gate", (256, 2048), None),                             # MoE router
    (L + "mlp.shared_expert_gate", (1, 2048), None),
    ("model.visual.patch_embed.proj", (768, 1536), None),
    ("model.visual.blocks.0.attn.qkv", (2304, 768), None),
    (L + "linear_attn.in_proj_qkv", (6144, 1000), None),             # 1000 % 64: cannot be grouped
    (L + "linear_attn.in_proj_qkv", (6144, 1024), SPEC),
    (L + "linear_attn.out_proj", (1024, 2048), SPEC),
    (L + "self_attn.q_proj", (4096, 1024), SPEC),
    (L + "mlp.gate_proj", (3584, 1024), SPEC),                       # dense MLP's gate is quantized
    (L + "mlp.shared_expert.gate_proj", (512, 2048), SPEC),
    (L + "mlp.experts", (256, 1024, 2048), SPEC),
    ("mtp.fc", (1024, 2048), SPEC),
    ("mtp.layers.0.mlp.gate", (256, 2048), None),
    ("model.language_model.embed_tokens", (248320, 1024), QuantSpec(8, 64)),
    ("lm_head", (248320, 1024), QuantSpec(8, 64)),
])
def test_recipe(path, shape, want):
    assert recipe(path, shape, SPEC) == want


def test_embeddings_follow_the_mode():
    assert recipe("lm_head", (512, 1024), QuantSpec(8, 32)) == QuantSpec(8, 32)
    assert recipe("lm_head", (512, 1024), QuantSpec(4, 32, "mxfp4")) == QuantSpec(8, 64)   # affine 8-bit
    assert recipe("lm_head", (512, 1024), QuantSpec(8, 32, "mxfp8")) == QuantSpec(8, 64)
    assert recipe("lm_head", (512, 1024), SPEC, embed_bits=None) == SPEC


@pytest.mark.parametrize("bits,group,mode,match", [
    (4, 16, "affine", "group size 16"),
    (7, 64, "affine", "7-bit"),
    (8, 32, "mxfp4", "mxfp4 quantization does not support 8-bit"),
    (4, 64, "mxfp4", "group size 64"),
    (4, 64, "int4", "mode 'int4' is not supported"),
])
def test_unsupported_settings(bits, group, mode, match):
    with pytest.raises(QuantizationError, match=match):
        QuantSpec(bits, group, mode)


def test_quantize_model_decisions(moe_vl_path):
    model, _ = load(moe_vl_path)
    decisions = quantize_model(model, QuantSpec(4, 32))
    lm = model.model.language_model
    assert isinstance(lm.layers[0].linear_attn.in_proj_qkv, nn.QuantizedLinear)
    assert type(lm.layers[0].linear_attn.in_proj_a) is nn.Linear
    assert type(lm.layers[0].mlp.gate) is nn.Linear and type(lm.layers[0].mlp.shared_expert_gate) is nn.Linear
    assert lm.layers[0].mlp.experts.quant == {"group_size": 32, "bits": 4, "mode": "affine"}
    assert isinstance(lm.embed_tokens, nn.QuantizedEmbedding) and lm.embed_tokens.bits == 8
    assert type(model.model.visual.blocks[0].attn.qkv) is nn.Linear
    assert decisions["lm_head"] == QuantSpec(8, 32) and decisions[f"{L}linear_attn.in_proj_b"] is None
    assert lm.layers[0].input_layernorm.weight.dtype == mx.float32


def test_mtp_tensors_follow_the_recipe(moe_vl_path):
    model, _ = load(moe_vl_path)
    mtp = model.mtp_weights.weights
    out, decisions = quantize_tensors(mtp, QuantSpec(4, 32))
    assert out["mtp.fc.weight"].dtype == mx.uint32 and "mtp.fc.scales" in out and "mtp.fc.biases" in out
    assert out["mtp.layers.0.mlp.experts.gate_up_proj"].dtype == mx.uint32
    assert "mtp.layers.0.mlp.experts.down_proj_scales" in out
    assert out["mtp.layers.0.mlp.gate.weight"].dtype == mx.bfloat16 and "mtp.layers.0.mlp.gate.scales" not in out
    assert out["mtp.norm.weight"].dtype == mx.float32
    assert decisions["mtp.layers.0.mlp.experts"] == QuantSpec(4, 32)


@pytest.mark.parametrize("spec", [None, QuantSpec(4, 32), QuantSpec(8, 64), QuantSpec(4, 32, "mxfp4")],
                         ids=["bf16", "4bit", "8bit", "mxfp4"])
def test_weight_estimate_is_what_the_model_holds(dense_vl_path, moe_vl_path, spec):
    for path in (dense_vl_path, moe_vl_path):
        model, _ = load(path)
        if spec is not None:
            quantize_model(model, spec)
        assert checkpoint_weight_bytes(model.config, spec)["total"] == weight_bytes(model)
