"""`python -m qwen35_mlx.convert`: round trips on the tiny checkpoints, the written layout, compatibility with
mlx-lm (both ways) and with mlx-vlm's layout, and the errors.

Measured relative logits errors against the unquantized model (float32 runs, this machine, mlx 0.32.4 CPU),
tiny checkpoints, 24-token prompt: dense_vl 8-bit 0.11, 4-bit 0.80, mxfp4 0.91; moe_vl 4-bit 1.10. The tiny
fixtures are built to amplify any change (layer outputs at gain 2 outweigh the residual stream: casting the
same weights to bfloat16 alone moves dense_vl's logits by 0.048), so these only order the bit widths; the
README's recipe table has the errors on a random model with the 0.8B structure. A converted checkpoint's
logits equal its dequantized self's exactly for affine, to 3e-6 for mxfp4 (threshold 5e-5). mlx-lm and we agree
to 2e-6 .. 4e-6 on the same checkpoint, either direction (threshold 5e-5).
"""

import json
import re

import mlx.core as mx
import numpy as np
import pytest
from safetensors import safe_open

from helpers import assert_rel_close, hf_logits, load_hf
from qwen35_mlx import WeightsError, load
from qwen35_mlx.convert import ConvertError, convert, main
from qwen35_mlx.quantize import QuantizationError, dequantize_model

VARIANTS = {  # name: (fixture, convert kwargs, bound on the error against the unquantized model)
    "dense_vl_8bit": ("dense_vl_path", dict(quantize=True, q_bits=8, q_group_size=32), 0.3),
    "dense_vl_4bit": ("dense_vl_path", dict(quantize=True, q_bits=4, q_group_size=32), 1.5),
    "dense_vl_mxfp4": ("dense_vl_path", dict(quantize=True, q_mode="mxfp4"), 1.5),
    "moe_vl_4bit": ("moe_vl_path", dict(quantize=True, q_bits=4, q_group_size=32), 1.5),
    "dense_text_float": ("dense_text_path", dict(), 1e-7),
    "moe_per_expert_float": ("moe_per_expert_path", dict(), 1e-7),      # per-expert tensors -> switch_mlp
}
KEPT = re.compile(r"\.(in_proj_a|in_proj_b|conv1d|input_layernorm|post_attention_layernorm|q_norm|k_norm|norm"
                  r"|pre_fc_norm_\w+|shared_expert_gate)$|\.mlp\.gate$|^vision_tower\.")


def ids(T=24, seed=0):
    return mx.array(np.random.default_rng(seed).integers(0, 400, (1, T)))


@pytest.fixture(scope="module")
def converted(request, tmp_path_factory):
    out = {}
    for name, (fixture, kwargs, _) in VARIANTS.items():
        src = request.getfixturevalue(fixture)
        out[name] = (src, convert(src, tmp_path_factory.mktemp(name), max_shard_bytes=600_000, **kwargs))
    return out


def tensors(path):
    """name -> (dtype string, shape) over every shard of a written checkpoint."""
    index = json.loads((path / "model.safetensors.index.json").read_text())
    out = {}
    for f in sorted(set(index["weight_map"].values())):
        with safe_open(str(path / f), "numpy") as st:
            for k in st.keys():
                sl = st.get_slice(k)
                out[k] = (sl.get_dtype(), tuple(sl.get_shape()))
    assert set(out) == set(index["weight_map"])
    return out


@pytest.mark.parametrize("name", VARIANTS)
def test_round_trip_logits(converted, name):
    src, dst = converted[name]
    bound = VARIANTS[name][2]
    ref, _ = load(src, dtype="float32")
    model, _ = load(dst, dtype="float32")
    x = ids()
    out = model(x)
    err = float(np.linalg.norm(np.array(out - ref(x))) / np.linalg.norm(np.array(ref(x))))
    assert err < bound, f"{name}: relative error {err:.2e} against the unquantized model"
    dequantize_model(model, mx.float32)                      # the same weights through plain matmuls
    assert_rel_close(out, model(x), 5e-5, f"{name}: quantized vs dequantized")


def test_written_layout(converted):
    src, dst = converted["moe_vl_4bit"]
    t = tensors(dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1                # sharded, with an index
    assert all(k.startswith(("language_model.model.", "language_model.lm_head.", "vision_tower.", "mtp."))
               for k in t)
    for k, (dtype, shape) in t.items():
        module, leaf = k.rsplit(".", 1)
        if KEPT.search(module) or leaf in ("A_log", "dt_bias"):
            assert dtype in ("F32", "BF16") and f"{module}.scales" not in t, \
                f"{k}: the recipe keeps it high precision, the file has {dtype}"
        if re.search(r"(layernorm|q_norm|k_norm|model\.norm|pre_fc_norm_\w+|mtp\.norm)\.weight$", k):
            assert dtype == "F32", f"{k}: 1 + w must stay float32, is {dtype}"
    for proj in ("q_proj", "o_proj", "in_proj_qkv", "out_proj", "shared_expert.up_proj", "fc"):
        hits = [k for k in t if k.endswith(f"{proj}.weight")]
        assert hits and all(t[k][0] == "U32" and k[:-6] + "scales" in t for k in hits), proj
    assert t["language_model.model.embed_tokens.weight"][1][-1] * 32 // 8 == 64     # 8-bit embedding
    assert t["language_model.model.layers.0.linear_attn.conv1d.weight"][1][-1] == 1  # [C, K, 1]
    assert t["vision_tower.patch_embed.proj.weight"][1][1:] == (2, 16, 16, 3)       # Conv3d [O, T, P, P, C]
    for p in ("gate_proj", "up_proj", "down_proj"):
        assert f"language_model.model.layers.0.mlp.switch_mlp.{p}.scales" in t
    for k in (k for k in tensors_hf(src) if k.startswith("mtp.")):     # nothing the user had is dropped
        m = re.match(r"(.*)\.experts\.(gate_up_proj|down_proj)$", k)
        want = [k] if m is None else [f"{m.group(1)}.switch_mlp.{p}.weight" for p in
                                      (("gate_proj", "up_proj") if m.group(2) == "gate_up_proj" else ("down_proj",))]
        assert all(w in t for w in want), k
    assert t["mtp.fc.weight"][0] == "U32" and "mtp.fc.scales" in t                # quantized like the model
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4 and cfg["quantization"]["group_size"] == 32
    assert cfg["quantization"]["language_model.model.embed_tokens"]["bits"] == 8
    assert cfg["quantization"]["language_model.lm_head"]["bits"] == 8
    assert cfg["text_config"]["tie_word_embeddings"] == cfg["tie_word_embeddings"]
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
              "generation_config.json"):
        assert (dst / f).is_file(), f


def tensors_hf(path):
    out = {}
    for f in path.glob("*.safetensors"):
        with safe_open(str(f), "numpy") as st:
            out.update(dict.fromkeys(st.keys()))
    return out


def test_moe_experts_run_through_gather_qmm(converted, monkeypatch):
    calls = {"qmm": 0}
    real = mx.gather_qmm

    def counting(*a, **k):
        calls["qmm"] += 1
        return real(*a, **k)

    def forbidden(*a, **k):
        raise AssertionError("a quantized expert went through gather_mm")

    monkeypatch.setattr(mx, "gather_qmm", counting)
    monkeypatch.setattr(mx, "gather_mm", forbidden)
    model, _ = load(converted["moe_vl_4bit"][1])                    # bfloat16, as users run it
    experts = model.layers[0].mlp.experts
    assert experts.quant == {"group_size": 32, "bits": 4, "mode": "affine"}
    out = model(ids(70))                                            # >= 64 routed rows: the sorted path too
    mx.eval(out)
    assert calls["qmm"] == 2 * len(model.layers) and np.isfinite(np.array(out.astype(mx.float32))).all()


def _mlx_lm_f32(path):
    from mlx.utils import tree_map
    from mlx_lm.utils import load_model as mlx_lm_load
    m, _ = mlx_lm_load(path)
    m.update(tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p, m.parameters()))
    return m


@pytest.mark.parametrize("name", ["dense_vl_4bit", "moe_vl_4bit", "dense_text_float"])
def test_mlx_lm_reads_ours(converted, name):
    dst = converted[name][1]
    ours, _ = load(dst, dtype="float32")
    x = ids()
    assert_rel_close(_mlx_lm_f32(dst)(x), ours(x), 5e-5, f"mlx-lm on our {name}")


def test_mlx_lm_conversion_loads(dense_vl_path, tmp_path):
    """A checkpoint written by mlx-lm's own convert (norms 1 + w in bf16, as it stores them)."""
    import mlx_lm
    dst = tmp_path / "mlx-lm-4bit"
    mlx_lm.convert(str(dense_vl_path), str(dst), quantize=True, q_bits=4, q_group_size=32)
    ours, _ = load(dst, dtype="float32")
    x = ids()
    assert_rel_close(ours(x), _mlx_lm_f32(dst)(x), 5e-5, "ours on mlx-lm's conversion")


def mlx_vlm_layout(src, dst, norm_dtype):
    """The tiny HF checkpoint rewritten by mlx-vlm's documented qwen3_5 `sanitize` rules: keys
    `language_model.model.*` / `vision_tower.*`, conv1d [C, K, 1], patch embed Conv3d [O, T, P, P, C],
    zero-centred norms stored as 1 + w (mlx-vlm adds 1.0 in the stored dtype), mtp.* and a tied lm_head dropped."""
    import shutil
    from safetensors.torch import load_file, save_file
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    out = {}
    for f in src.glob("*.safetensors"):
        for k, v in load_file(str(f)).items():
            if k.startswith("mtp.") or k == "lm_head.weight":
                continue
            k = k.replace("model.language_model", "language_model.model", 1).replace("model.visual", "vision_tower", 1)
            if "conv1d.weight" in k:
                v = v.movedim(2, 1)
            if k.endswith("patch_embed.proj.weight"):
                v = v.permute(0, 2, 3, 4, 1)
            if re.search(r"(input_layernorm|post_attention_layernorm|q_norm|k_norm)\.weight$|model\.norm\.weight$", k):
                v = (v.float() + 1.0).to(norm_dtype)
            out[k] = v.contiguous()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "mlx"})
    return dst


@pytest.mark.parametrize("norm_dtype,tol", [("float32", 1e-4), ("bfloat16", 0.1)], ids=["f32_norms", "bf16_norms"])
def test_mlx_vlm_layout_matches_transformers(dense_vl_path, tmp_path, norm_dtype, tol):
    """Text and image prompts. Measured: 2.5e-6 / 1.5e-5 with 1 + w in float32; with mlx-vlm's bfloat16
    1 + w the rounding of the norms alone gives 2.8e-2 / 3.1e-2 on this fixture (the numerics trap, not the
    layout)."""
    import torch
    dst = mlx_vlm_layout(dense_vl_path, tmp_path / "vlm", getattr(torch, norm_dtype))
    model, proc = load(dst, dtype="float32")
    hf = load_hf(dense_vl_path)
    x = np.array(ids(30))
    assert_rel_close(model(mx.array(x)), hf_logits(hf, x), tol, "text")
    img = np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    inputs = proc("What is in the picture?", images=[img])
    ref = hf_logits(hf, np.array(inputs["input_ids"]),
                    **{k: np.array(v) for k, v in inputs.items() if k != "input_ids"})
    assert_rel_close(model(**inputs), ref, tol, "image prompt")


def test_output_directory_rules(dense_text_path, tmp_path, capsys):
    dst = tmp_path / "out"
    assert main(["--hf-path", str(dense_text_path), "--mlx-path", str(dst), "-q", "--q-group-size", "32"]) == 0
    assert main(["--hf-path", str(dense_text_path), "--mlx-path", str(dst)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    (dst / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    assert main(["--hf-path", str(dense_text_path), "--mlx-path", str(dst), "--force"]) == 0
    assert not (dst / "model-00001-of-00002.safetensors").exists()                # stale shards go
    model, _ = load(dst)
    assert not any("Quantized" in type(m).__name__ for _, m in model.named_modules())
    with pytest.raises(ConvertError, match="is the source checkpoint"):
        convert(dst, dst, force=True)


def test_already_quantized_source(converted, tmp_path):
    with pytest.raises(ConvertError, match=r"already quantized \(4-bit affine, group size 32\)"):
        convert(converted["dense_vl_4bit"][1], tmp_path / "again", quantize=True)


@pytest.mark.parametrize("args,match", [
    (["--q-mode", "mxfp4", "--q-group-size", "64"], "mxfp4 quantization does not support 4-bit weights with group "
                                                     "size 64"),
    (["--q-bits", "7"], "affine quantization does not support 7-bit"),
    (["--q-group-size", "16"], "group size 16"),
    (["--q-mode", "int4"], "--q-mode 'int4'"),
], ids=["mxfp4_group", "bits", "affine_group", "mode"])
def test_unsupported_settings(dense_text_path, tmp_path, capsys, args, match):
    assert main(["--hf-path", str(dense_text_path), "--mlx-path", str(tmp_path / "o"), "-q", *args]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()                        # refused before anything is written


def test_quantization_config_mismatch_names_the_layer(converted, tmp_path):
    import shutil
    dst = shutil.copytree(converted["dense_vl_4bit"][1], tmp_path / "ckpt")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization"]["language_model.model.layers.2.linear_attn.out_proj"] = {"bits": 8, "group_size": 32}
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"model\.language_model\.layers\.2\.linear_attn\.out_proj: config.json's "
                                           r"quantization says 8-bit group 32, the weights are 4-bit group 32"):
        load(dst)
    del cfg["quantization"]
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="has no `quantization` section"):
        load(dst)
    with pytest.raises(QuantizationError):
        convert(dst, tmp_path / "x", quantize=True, q_bits=4, q_group_size=48)
