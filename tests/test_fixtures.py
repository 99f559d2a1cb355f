"""The tiny checkpoints themselves: hub layout, exact loading in transformers, tokenizer,
chat template, and a model that is neither saturated nor degenerate."""

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

import make_tiny
from helpers import hf_greedy, hf_logits, load_hf

FIXTURES = {
    "dense_text": "dense_text_path",
    "dense_vl": "dense_vl_path",
    "moe_vl": "moe_vl_path",
    "moe_text_per_expert": "moe_per_expert_path",
}
COMMON_FILES = {"chat_template.jinja", "config.json", "generation_config.json", "merges.txt",
                "tokenizer.json", "tokenizer_config.json", "vocab.json"}
VL_FILES = {"model.safetensors.index.json", "preprocessor_config.json", "video_preprocessor_config.json"}
PROMPT = "Describe this image: a cat sits on a red chair next to a green lamp."


@pytest.fixture(scope="module", params=list(FIXTURES))
def tiny(request):
    return request.param, request.getfixturevalue(FIXTURES[request.param])


@pytest.fixture(scope="module")
def hf(tiny):
    import torch
    import transformers

    kind, path = tiny
    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, info = getattr(transformers, arch).from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    return model.eval(), info


def read_float32(path: Path) -> dict:
    """All tensors on disk as float32 torch tensors (safetensors.numpy cannot hold bf16)."""
    from safetensors.torch import load_file as load_torch

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update({k: v.float() for k, v in load_torch(f).items()})
    return out


def expected_state(kind: str, disk: dict) -> dict:
    """What transformers' state_dict must hold: disk minus mtp.*, per-expert tensors fused,
    lm_head tied to the embedding where the checkpoint ties them."""
    import torch

    state = {k: v for k, v in disk.items() if not k.startswith("mtp.")}
    fused = {}
    for key in list(state):
        m = re.match(r"(.*mlp\.experts\.)(\d+)\.(gate|up|down)_proj\.weight$", key)
        if m:
            fused.setdefault(m[1], {})[(int(m[2]), m[3])] = state.pop(key)
    for base, parts in fused.items():
        n = 1 + max(e for e, _ in parts)
        state[base + "gate_up_proj"] = torch.stack([torch.cat([parts[e, "gate"], parts[e, "up"]]) for e in range(n)])
        state[base + "down_proj"] = torch.stack([parts[e, "down"] for e in range(n)])
    if kind == "dense_vl":
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
    return state


def test_file_layout(tiny):
    kind, path = tiny
    files = {p.name for p in path.iterdir()}
    shards = {"dense_vl": 2, "moe_vl": 3}.get(kind)
    if shards is None:
        assert files == COMMON_FILES | {"model.safetensors"}
        return
    names = {f"model.safetensors-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)}
    assert files == COMMON_FILES | VL_FILES | names
    index = json.loads((path / "model.safetensors.index.json").read_text())
    from safetensors import safe_open

    on_disk = {}
    for name in names:
        with safe_open(path / name, "np") as f:
            on_disk.update({k: name for k in f.keys()})
    assert index["weight_map"] == on_disk
    last = max(names)
    assert all(f == last for k, f in on_disk.items() if k.startswith("mtp."))


def test_config_values(tiny):
    kind, path = tiny
    cfg = json.loads((path / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    assert text["layer_types"] == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"]
    assert text["hidden_size"] // text["num_attention_heads"] != text["head_dim"]
    assert text["linear_num_key_heads"] != text["linear_num_value_heads"]
    assert text["linear_key_head_dim"] != text["linear_value_head_dim"]
    rope = text["rope_parameters"]
    assert sum(rope["mrope_section"]) == text["head_dim"] * rope["partial_rotary_factor"] / 2
    assert text["max_position_embeddings"] == 2048
    assert cfg.get("tie_word_embeddings", False) == (kind == "dense_vl") == text["tie_word_embeddings"]
    if kind.endswith("_vl"):
        ids = make_tiny.TOKEN_IDS
        assert cfg["image_token_id"] == ids["<|image_pad|>"] and cfg["video_token_id"] == ids["<|video_pad|>"]
        assert cfg["vision_start_token_id"] == ids["<|vision_start|>"]
        assert cfg["vision_end_token_id"] == ids["<|vision_end|>"]
        assert cfg["vision_config"]["deepstack_visual_indexes"] == []
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [make_tiny.TOKEN_IDS["<|im_end|>"], make_tiny.TOKEN_IDS["<|endoftext|>"]]


def test_loads_exactly_in_transformers(tiny, hf):
    """Nothing missing or re-initialised: the loaded weights are the safetensors (mtp.* aside)."""
    kind, path = tiny
    model, info = hf
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["error_msgs"], info
    assert all(k.startswith("mtp.") for k in info["unexpected_keys"]), info["unexpected_keys"]
    disk = read_float32(path)
    expected = expected_state(kind, disk)
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert state[key].shape == value.shape and bool((state[key] == value).all()), key


def test_expert_and_mtp_layout(tiny):
    kind, path = tiny
    from safetensors import safe_open

    shapes = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "np") as h:
            shapes.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    layer = "model.language_model.layers.0." if kind.endswith("_vl") else "model.layers.0."
    E, I, H = make_tiny.EXPERTS, make_tiny.MOE_INTERMEDIATE, make_tiny.HIDDEN
    if kind == "moe_vl":
        assert shapes[layer + "mlp.experts.gate_up_proj"] == (E, 2 * I, H)
        assert shapes[layer + "mlp.experts.down_proj"] == (E, H, I)
        assert shapes["mtp.layers.0.mlp.experts.gate_up_proj"] == (E, 2 * I, H)
    if kind == "moe_text_per_expert":
        assert shapes[layer + f"mlp.experts.{E - 1}.gate_proj.weight"] == (I, H)
        assert shapes[layer + f"mlp.experts.{E - 1}.down_proj.weight"] == (H, I)
        assert not any(k.endswith(("gate_up_proj", "experts.down_proj")) for k in shapes)
    assert ("lm_head.weight" in shapes) == (kind != "dense_vl")
    mtp = {k for k in shapes if k.startswith("mtp.")}
    if not kind.endswith("_vl"):
        assert not mtp
        return
    assert shapes["mtp.fc.weight"] == (H, 2 * H)
    for name in ("mtp.pre_fc_norm_embedding.weight", "mtp.pre_fc_norm_hidden.weight", "mtp.norm.weight"):
        assert shapes[name] == (H,)
    full = "model.language_model.layers.3."
    assert {k[len("mtp.layers.0."):] for k in mtp if k.startswith("mtp.layers.0.")} == {
        k[len(full):] for k in shapes if k.startswith(full)}


def test_no_constant_parameters(tiny):
    """transformers' constant inits (norms, A_log, dt_bias, biases) were all redrawn."""
    for key, value in read_float32(tiny[1]).items():
        assert float(value.std()) > 1e-3, key


def test_tokenizer(tiny):
    from mlx_lm.tokenizer_utils import load as mlx_load
    from transformers import AutoTokenizer

    path = tiny[1]
    tok = AutoTokenizer.from_pretrained(path)
    text = "Hello world, café 你好 🙂\n\n  x = 42\tdone"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and max(ids) < make_tiny.BPE_VOCAB
    for content, special in make_tiny.SPECIAL_TOKENS:
        assert tok(content)["input_ids"] == [make_tiny.TOKEN_IDS[content]], content
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    wrapped = mlx_load(Path(path))
    assert wrapped.encode(text) == ids
    assert wrapped.encode("<|im_start|>user\n<think>") == tok("<|im_start|>user\n<think>")["input_ids"]


def test_chat_template(dense_vl_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dense_vl_path)

    def render(messages, **kw):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)

    parts = [{"type": "image"}, {"type": "text", "text": "What is this?"}, {"type": "video"}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]
    body = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>What is this?"
            "<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n")
    assert render(messages) == body + "<think>\n"
    assert render(messages, enable_thinking=False) == body + "<think>\n\n</think>\n\n"
    assert render([{"role": "user", "content": "hi"}], enable_thinking=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>\nr1\n</think>\n\na1"},
               {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "reasoning_content": "r2"}]
    assert tok.apply_chat_template(history, tokenize=False) == (
        "<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n<think>\nr2\n</think>\n\na2<|im_end|>\n")
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids.count(make_tiny.TOKEN_IDS["<|image_pad|>"]) == ids.count(make_tiny.TOKEN_IDS["<|video_pad|>"]) == 1


def test_greedy_not_degenerate(tiny, hf):
    """Logits are O(1)-O(10), neither saturated nor uniform; greedy decoding varies; the cached
    greedy path agrees with argmax over full recomputation."""
    from transformers import AutoTokenizer

    model = hf[0]
    ids = AutoTokenizer.from_pretrained(tiny[1])(PROMPT)["input_ids"]
    logits = hf_logits(model, ids)[0]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert 1.0 < logits.std(-1).mean() < 10.0
    assert 0.1 < probs.max(-1).mean() < 0.9
    tokens = hf_greedy(model, ids, 16)[0].tolist()
    assert len(set(tokens)) >= 8 and max(len(list(g)) for _, g in itertools.groupby(tokens)) <= 3, tokens
    seq = list(ids)
    for t in tokens[:4]:
        assert int(hf_logits(model, seq)[0, -1].argmax()) == t
        seq.append(t)


@pytest.mark.parametrize("kind", ["dense_vl", "moe_vl"])
def test_image_changes_logits(kind, request):
    """The vision tower is live: two different images give different logits after them."""
    from PIL import Image
    from transformers import AutoImageProcessor

    path = request.getfixturevalue(FIXTURES[kind])
    processor = AutoImageProcessor.from_pretrained(path)
    model = load_hf(path)
    rng = np.random.default_rng(0)
    ids = make_tiny.TOKEN_IDS
    outs = []
    for _ in range(2):
        image = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
        inputs = processor(images=[image], return_tensors="np")
        n = int(np.prod(inputs["image_grid_thw"][0])) // 4
        seq = [5, 6, ids["<|vision_start|>"]] + [ids["<|image_pad|>"]] * n + [ids["<|vision_end|>"], 7, 8]
        types = [0, 0, 0] + [1] * n + [0, 0, 0]
        outs.append(hf_logits(model, seq, pixel_values=inputs["pixel_values"],
                              image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=[types])[0, -1])
    assert np.isfinite(outs[0]).all()
    assert np.abs(outs[0] - outs[1]).max() > 1e-2


def test_build_is_deterministic(dense_vl_path, tmp_path):
    make_tiny.main(["dense_vl", str(tmp_path)])

    def digest(p):
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(p.iterdir())}

    assert digest(tmp_path) == digest(dense_vl_path)
