"""Fused decode projections (qwen35_mlx/model/fused.py): same logits as the separate layers, no added memory,
and rebuilt (with fresh compiled steps) when the weights are replaced after a decode."""

import mlx.core as mx
import numpy as np

from helpers import assert_rel_close, graph_nodes
from qwen35_mlx import load
from qwen35_mlx.memory import weight_bytes
from qwen35_mlx.model.fused import FusedLinear
from qwen35_mlx.model.qwen35 import Qwen35Model
from qwen35_mlx.quantize import quantize_model


def decode_logits(model, n=3, seed=0, masked=False):
    """Logits of n greedy decode steps after a 40-token prompt. masked: each step passes an all-ones
    attention_mask, which takes the general layer-by-layer path instead of the compiled decode segments."""
    ids = mx.array(np.random.default_rng(seed).integers(0, 400, (1, 40)))
    cache = model.make_cache()
    logits = model(ids, cache=cache)[:, -1]
    out = []
    for _ in range(n):
        tok = mx.argmax(logits, axis=-1)[:, None]
        mask = mx.ones((1, 1), mx.int32) if masked else None
        logits = model(tok, cache=cache, attention_mask=mask)[:, -1]
        out.append(logits)
    return mx.concatenate(out)


def test_fused_equals_separate_and_adds_no_memory(dense_text_path, monkeypatch):
    model, _ = load(dense_text_path, dtype="float32")
    before = weight_bytes(model)
    fused = decode_logits(model)
    gdn = model.layers[0].linear_attn._fused
    assert [type(p) for p in gdn.parts] == [FusedLinear]                 # four projections, one matmul
    assert weight_bytes(model) == before
    monkeypatch.setattr(Qwen35Model, "ensure_fused", lambda self: None)
    separate, _ = load(dense_text_path, dtype="float32")
    assert_rel_close(fused, decode_logits(separate), 1e-5, "fused vs separate projections")


def test_quantized_groups_and_refuse_after_quantizing(dense_text_path):
    """Decode, then quantize in place: the next decode runs the quantized weights (no stale fused arrays or
    compiled steps), exactly as a model quantized before its first decode."""
    model, _ = load(dense_text_path, dtype="float32")
    decode_logits(model)
    quantize_model(model, bits=8, group_size=32)
    after = decode_logits(model)
    gdn = model.layers[0].linear_attn._fused
    assert [type(p).__name__ for p in gdn.parts] == ["FusedLinear", "FusedLinear"]   # (qkv, z), (b, a): recipe
    fresh, _ = load(dense_text_path, dtype="float32")
    quantize_model(fresh, bits=8, group_size=32)
    np.testing.assert_array_equal(np.array(after), np.array(decode_logits(fresh)))


def test_reloaded_weights_are_refused(dense_text_path):
    """Decode, then load other weights into the same model: the next decode runs the new weights (the one-pass
    identity check per step notices), exactly as a model loaded with them."""
    from mlx.utils import tree_flatten
    model, _ = load(dense_text_path, dtype="float32")
    decode_logits(model)
    other, _ = load(dense_text_path, dtype="float32")
    rng = np.random.default_rng(7)
    new = [(k, v + mx.array(rng.standard_normal(v.shape).astype(np.float32)) * 0.02)
           for k, v in tree_flatten(other.parameters())]
    other.load_weights(new)
    model.load_weights(new)
    np.testing.assert_array_equal(np.array(decode_logits(model)), np.array(decode_logits(other)))


def test_segmented_decode_equals_layer_by_layer(dense_text_path, monkeypatch):
    """Decode in compiled segments between the attention layers' KV caches (Qwen35Model._decode_step) computes
    what the layer-by-layer path does, and is what an unmasked decode step runs."""
    model, _ = load(dense_text_path, dtype="float32")
    calls = []
    real = Qwen35Model._decode_step
    monkeypatch.setattr(Qwen35Model, "_decode_step", lambda *a: calls.append(1) or real(*a))
    segmented = decode_logits(model, n=4)
    assert len(calls) == 4
    layered = decode_logits(model, n=4, masked=True)
    assert len(calls) == 4
    assert_rel_close(segmented, layered, 1e-6, "segmented vs layer-by-layer decode")


def step_nodes(model):
    """Primitive nodes of one decode step's graph, by name."""
    cache = model.make_cache()
    mx.eval(model(mx.array([[5, 6, 7]]), cache=cache))
    model(mx.array([[8]]), cache=cache)                    # the first decode step builds the fused projections
    mx.eval(cache.state_arrays())
    return graph_nodes(model(mx.array([[9]]), cache=cache))


def test_row_projections_hold_transposed_weights(dense_text_path, monkeypatch):
    """Decode multiplies down_proj and o_proj (out_proj on the GDN kernel path) by their weights' transposed views,
    made once: the step's graph has no Transpose node for them, nor the Flatten and Unflatten around a row's
    matmul (each node costs host time per token), and the views share the weights' memory."""
    from qwen35_mlx.model.attention import Attention
    from qwen35_mlx.model.gated_deltanet import GatedDeltaNet
    from qwen35_mlx.model.mlp import MLP
    model, _ = load(dense_text_path, dtype="float32")
    held = step_nodes(model)
    mlp = model.layers[0].mlp
    assert mlp._rows["down_proj"][0].shape == mlp.down_proj.weight.shape[::-1]
    before = weight_bytes(model)
    for cls in (MLP, Attention, GatedDeltaNet):
        monkeypatch.setattr(cls, "ROW", ())
    plain, _ = load(dense_text_path, dtype="float32")
    nodes = step_nodes(plain)
    n_attn = sum(not layer.is_linear for layer in model.layers)
    rows = len(model.layers) + n_attn                                                 # down_proj each, o_proj
    assert nodes["Transpose"] - held["Transpose"] == rows
    assert nodes["Flatten"] - held["Flatten"] == rows and nodes["Unflatten"] - held["Unflatten"] == rows
    assert held["Matmul"] == nodes["Matmul"]
    assert weight_bytes(model) == before
