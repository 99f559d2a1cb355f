"""`load` on every layout users have, and a clear error for every way a checkpoint can be broken."""

import json
import shutil

import mlx.core as mx
import pytest

from helpers import assert_rel_close
from qwen35_mlx import load
from qwen35_mlx.config import Qwen35Config
from qwen35_mlx.errors import ConfigError, WeightsError


def copy(src, tmp_path, name="ckpt"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def shards(path):
    return sorted(path.glob("*.safetensors"))


def test_layouts_and_mtp_kept_aside(dense_vl_path, dense_text_path):
    model, proc = load(dense_vl_path)
    assert model.config.model_type == "qwen3_5" and model.config.tie_word_embeddings
    assert "lm_head" not in model                                  # tied: no separate head
    assert len(model.mtp_weights) > 0 and all(k.startswith("mtp.") for k in model.mtp_weights.weights)
    norm = model.mtp_weights.weights["mtp.norm.weight"]
    assert norm.dtype == mx.float32                                # 1 + w, folded in fp32
    text, _ = load(dense_text_path)
    assert "lm_head" in text and not text.has_vision


def test_fused_and_per_expert_layouts_agree(moe_per_expert_path, tmp_path):
    """The same experts written fused (hub layout) load to the same model as per-expert tensors."""
    import torch
    from safetensors.torch import load_file as load_torch, save_file as save_torch
    dst = copy(moe_per_expert_path, tmp_path)
    f = shards(dst)[0]
    w = load_torch(f)
    fused = {k: v for k, v in w.items() if ".experts." not in k}
    for p in {k.split(".experts.")[0] for k in w if ".experts." in k}:
        n = sum(1 for k in w if k.startswith(p + ".experts.") and k.endswith("gate_proj.weight"))
        stack = lambda proj: torch.stack([w[f"{p}.experts.{e}.{proj}.weight"] for e in range(n)])
        fused[f"{p}.experts.gate_up_proj"] = torch.cat([stack("gate_proj"), stack("up_proj")], dim=1)
        fused[f"{p}.experts.down_proj"] = stack("down_proj")
    save_torch(fused, str(f), metadata={"format": "pt"})
    a, _ = load(moe_per_expert_path, dtype="float32")
    b, _ = load(dst, dtype="float32")
    ids = mx.array([[1, 2, 3, 4, 5, 6, 7]])
    assert_rel_close(b(ids), a(ids), 1e-6, "fused vs per-expert")


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        load(tmp_path / "nope")
    with pytest.raises(ConfigError, match="config.json: not found"):
        load(tmp_path)


def test_hub_id_offline_uses_the_local_cache(dense_text_path, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache layout with HF_HUB_OFFLINE=1 (no network)."""
    repo = tmp_path / "hub" / "models--Qwen--Qwen3.5-Tiny"
    snap = repo / "snapshots" / "0123456789abcdef"
    shutil.copytree(dense_text_path, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model, proc = load("Qwen/Qwen3.5-Tiny")
    assert proc.path == snap
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        load("Qwen/Qwen3.5-NotCached")


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(model_type="llama"), "model_type 'llama' is not a Qwen3.5 model"),
    (lambda d: d.pop("hidden_size"), "config.hidden_size: missing"),
    (lambda d: d.update(num_key_value_heads=3), "num_key_value_heads"),
    (lambda d: d.update(linear_num_value_heads=3), "linear_num_key_heads"),
    (lambda d: d["rope_parameters"].update(rope_type="yarn"), "rope_type: 'yarn' is not supported"),
    (lambda d: d.update(layer_types=["full_attention"]), "layer_types"),
], ids=["model_type", "missing_key", "gqa", "gdn_heads", "rope_type", "layer_types"])
def test_bad_config_is_a_clear_error(dense_text_path, tmp_path, edit, match):
    dst = copy(dense_text_path, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=match):
        load(dst)


def test_corrupt_config_json(dense_text_path, tmp_path):
    dst = copy(dense_text_path, tmp_path)
    (dst / "config.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(dst)


def test_missing_shard_names_the_file(dense_vl_path, tmp_path):
    dst = copy(dense_vl_path, tmp_path)
    victim = shards(dst)[-1]
    victim.unlink()
    with pytest.raises(WeightsError, match=victim.name):
        load(dst)


def test_truncated_shard_names_the_file(dense_vl_path, tmp_path):
    dst = copy(dense_vl_path, tmp_path)
    victim = shards(dst)[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=victim.name):
        load(dst)


def test_tensor_missing_from_shard_is_named(dense_text_path, tmp_path):
    from safetensors.torch import load_file as load_torch, save_file as save_torch
    dst = copy(dense_text_path, tmp_path)
    f = shards(dst)[0]
    w = load_torch(f)
    victim = "model.layers.2.linear_attn.A_log"
    del w[victim]
    save_torch(w, str(f), metadata={"format": "pt"})           # the torch writer keeps bf16 intact
    with pytest.raises(WeightsError, match="model.language_model.layers.2.linear_attn.A_log"):
        load(dst)


def test_wrong_shape_is_named(dense_text_path, tmp_path):
    from safetensors.torch import load_file as load_torch, save_file as save_torch
    dst = copy(dense_text_path, tmp_path)
    f = shards(dst)[0]
    w = load_torch(f)
    key = "model.layers.0.mlp.up_proj.weight"
    w[key] = w[key][:-1]
    save_torch(w, str(f), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"layers\.0\.mlp\.up_proj\.weight: shape"):
        load(dst)


def test_config_reads_both_layouts(dense_vl_path, dense_text_path):
    vl = Qwen35Config.from_dir(dense_vl_path)
    text = Qwen35Config.from_dir(dense_text_path)
    assert vl.vision is not None and text.vision is None
    assert vl.text.layer_types[3] == "full_attention" and vl.text.layer_types[0] == "linear_attention"
    assert vl.text.rotary_dim == int(vl.text.head_dim * vl.text.partial_rotary_factor)
