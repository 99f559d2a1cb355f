"""The fused GDN decode step (metal/gdn_decode.metal) through the CPU emulator: against the mixer in MLX ops
(float32, same weights and inputs), with planted bugs, and inside the whole model against `transformers`.

Measured relative errors (this machine, 2026-12-07; y is the layer's output, after norm_gemv's gated norm and
out_proj): float32 y 3.3e-7 .. 4.9e-7, state 0.9e-7 .. 1.5e-7, conv history exact; bfloat16 activations (kernel in
bf16 vs the float32 path) y 2.9e-3 .. 3.8e-3 (the bf16 rounding of y and of the projections), state 1.2e-3 ..
1.9e-3. Whole tiny model on the kernel path, 70-token prompt then 4 decode steps: 4.3e-6 against transformers
(measured before the row-block split).
"""

from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from planted import assert_caught
from helpers import assert_rel_close, hf_logits, load_hf
from qwen35_mlx import load
from qwen35_mlx.kernels import _metal, gdn, gdn_kernels
from qwen35_mlx.model.gated_deltanet import GatedDeltaNet

TOL = {mx.float32: (5e-6, 3e-6), mx.bfloat16: (2e-2, 1e-2)}   # (y, state), ~5-10x the measured


def make_layer(Hk, Hv, Dk, Dv, dtype, seed=0, H=64, K=4):
    cfg = SimpleNamespace(linear_num_key_heads=Hk, linear_num_value_heads=Hv, linear_key_head_dim=Dk,
                          linear_value_head_dim=Dv, linear_conv_kernel_dim=K, hidden_size=H, rms_norm_eps=1e-6)
    layer = GatedDeltaNet(cfg)
    layer.cfg = cfg
    rng = np.random.default_rng(seed)
    params = {}
    for name, p in tree_flatten(layer.parameters()):
        if name == "A_log":
            w = np.log(rng.uniform(1, 16, p.shape))
        elif name == "norm.weight":
            w = 1 + 0.2 * rng.standard_normal(p.shape)
        else:
            w = rng.standard_normal(p.shape) * (0.5 if name in ("dt_bias", "conv1d.weight") else H ** -0.5)
        params[name] = mx.array(w.astype(np.float32)).astype(mx.float32 if name in ("A_log", "dt_bias") else dtype)
    layer.update(tree_unflatten(list(params.items())))
    return layer


def make_step(layer, B, dtype, seed=1):
    """x [B, 1, H], a conv history and a state, random (never zeros)."""
    rng = np.random.default_rng(seed)
    C = 2 * layer.key_dim + layer.value_dim
    f = lambda *s: mx.array(rng.standard_normal(s).astype(np.float32))
    return f(B, 1, layer.in_proj_qkv.weight.shape[1]).astype(dtype), f(B, layer.K - 1, C).astype(dtype), \
        0.3 * f(B, layer.Hv, layer.Dv, layer.Dk)


def reference_mix(monkeypatch, layer, x, conv, state):
    """The mixer in MLX ops (the decode kernel switched off, the token step in MLX ops too)."""
    with monkeypatch.context() as m:
        m.setattr(gdn_kernels, "decode_backend", lambda *a: None)
        m.setattr(gdn, "_pick", lambda T: "reference")
        out = layer.mix(x, conv, state)
        mx.eval(out)
        return out


def as_float32(layer):
    """The same layer (same, possibly bf16-rounded, weights) computing in float32."""
    ref = GatedDeltaNet(layer.cfg)
    ref.update(tree_map(lambda p: p.astype(mx.float32), layer.parameters()))
    return ref


def check(layer, x, conv, state, monkeypatch, dtype, name):
    """The kernel against the MLX-ops mixer in float32 on the same weights and inputs (for bf16 that is the
    truth the bf16 kernel approximates; the bf16 MLX path itself is 1e-2 away from it)."""
    assert gdn_kernels.decode_backend(layer.Dk, layer.K) == "metal"
    ref_out, ref_conv, ref_state = reference_mix(monkeypatch, as_float32(layer), x.astype(mx.float32),
                                                 conv.astype(mx.float32), state)
    out, new_conv, new_state = layer.mix(x, conv, state)
    ty, ts = TOL[dtype]
    assert out.dtype == dtype and new_conv.dtype == dtype and new_state.dtype == mx.float32, name
    assert_rel_close(out.astype(mx.float32), ref_out, ty, f"{name} output")
    assert_rel_close(new_state, ref_state, ts, f"{name} state")
    np.testing.assert_array_equal(np.array(ref_conv[:, :-1]), np.array(conv[:, 1:].astype(mx.float32)))
    history = mx.concatenate([conv[:, 1:], layer.in_proj_qkv(x)], axis=1)       # shifted by this token, exactly
    np.testing.assert_array_equal(np.array(new_conv.astype(mx.float32)), np.array(history.astype(mx.float32)),
                                  err_msg=f"{name} conv history")


SHAPES = {  # id: (B, Hk, Hv, Dk, Dv)
    "tiny-2x4-32x48": (2, 2, 4, 32, 48),
    "published-dims-1x2-128": (1, 1, 2, 128, 128),
    "dk64-dv40": (2, 2, 2, 64, 40),
    "ratio3-dv200-partial-pass": (1, 1, 3, 32, 200),
}


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_decode_kernel_matches_mlx_ops(metal_on_cpu, monkeypatch, shape, dtype):
    B, Hk, Hv, Dk, Dv = SHAPES[shape]
    layer = make_layer(Hk, Hv, Dk, Dv, dtype, seed=list(SHAPES).index(shape))
    check(layer, *make_step(layer, B, dtype), monkeypatch, dtype, shape)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["fp32", "bf16"])
def test_decode_kernel_on_fused_projections(metal_on_cpu, monkeypatch, dtype):
    """With the decode projections fused (one matmul), the kernel reads its row of [qkv | z | b | a] as made."""
    layer = make_layer(2, 4, 32, 48, dtype, seed=11)
    assert layer.ensure_fused() and len(layer._fused.parts) == 1
    check(layer, *make_step(layer, 2, dtype, seed=12), monkeypatch, dtype, "fused projections")


def test_without_norm_gemv(metal_on_cpu, monkeypatch):
    """norm_gemv switched off (or a quantized out_proj): the gated norm (rms_norm) and out_proj run apart after
    gdn_decode, same numbers."""
    monkeypatch.setattr(_metal, "DISABLED", frozenset({"norm_gemv"}))
    layer = make_layer(1, 3, 32, 200, mx.float32, seed=15)
    check(layer, *make_step(layer, 2, mx.float32, seed=16), monkeypatch, mx.float32, "norm_gemv off")


def test_row_and_weight_taken_as_the_layer_holds_them(metal_on_cpu):
    """gdn_decode takes the projection row [B, 1, P] and Conv1d's [C, K, 1] weight as they are (no view nodes in a
    decode step's graph): bit for bit what it makes of [B, P] and [C, K], y shaped [B, 1, Hv Dv]; other shapes are
    refused."""
    layer = make_layer(2, 4, 32, 48, mx.float32, seed=13)
    x, conv, state = make_step(layer, 2, mx.float32, seed=14)
    layer.ensure_fused()
    row = layer._fused.joined(x)
    run = lambda r, w: gdn_kernels.gdn_decode(r, conv, w, layer.A_log, layer.dt_bias, state, Hk=2, Hv=4, Dk=32,
                                             Dv=48, backend="metal")
    flat, held = run(row[:, 0], layer.conv1d.weight[:, :, 0]), run(row, layer.conv1d.weight)
    assert held[0].shape == (2, 1, 4 * 48) and flat[0].shape == (2, 4 * 48)
    for a, b in zip(flat, held):
        assert mx.array_equal(a.reshape(b.shape), b).item()
    with pytest.raises(ValueError, match="projection row"):
        run(mx.concatenate([row, row], axis=1), layer.conv1d.weight)
    with pytest.raises(ValueError, match="conv weight"):
        run(row, mx.concatenate([layer.conv1d.weight] * 2, axis=2))


def test_unsupported_shape_runs_mlx_ops(metal_on_cpu):
    """A key head dim the kernel cannot hold in registers: the mixer runs in MLX ops, not the kernel."""
    assert gdn_kernels.decode_backend(8 * 64 + 8, 4) is None
    assert gdn_kernels.decode_backend(128, 1) is None


# ---- planted bugs: each must make the check above fail ------------------------------------------

PLANTED = {  # id: (exact text in gdn_decode.metal, replacement, (Hk, Hv, Dk, Dv))
    # at Dk = 32 < NT the norms read q/k channels other threads convolved
    "dropped-barrier-after-conv": ("  }\n}\nBARRIER();\n\n// 2.", "  }\n}\n\n// 2.", (2, 4, 32, 48)),
    "dropped-barrier-before-norms": ("  red[NSG + sg] = pk;\n}\nBARRIER();", "  red[NSG + sg] = pk;\n}", (1, 2, 128, 128)),
    "history-not-shifted": ("hout[j * CONV_DIM + c] = hin[(j + 1) * CONV_DIM + c]",
                            "hout[j * CONV_DIM + c] = hin[j * CONV_DIM + c]", (1, 2, 128, 128)),
    "half-row-reduction": ("UNROLL for (int m = 1; m < L; m <<= 1) kv +=",
                           "UNROLL for (int m = 1; m < L / 2; m <<= 1) kv +=", (1, 2, 128, 128)),
    "v-of-the-first-block": ("2 * KEY_DIM + hv * Dv + r0 + i - 2 * Dk", "2 * KEY_DIM + hv * Dv + i - 2 * Dk",
                             (1, 2, 128, 128)),
    "last-block-rows-dropped": ("const bool row = dv < Dv;", "const bool row = dv < Dv && dv < SPLIT * RB - RB;",
                                (1, 3, 32, 200)),
}


@pytest.mark.parametrize("bug", list(PLANTED), ids=list(PLANTED))
def test_planted_bug_is_caught(metal_on_cpu, monkeypatch, bug):
    text, replacement, shape = PLANTED[bug]
    layer = make_layer(*shape, mx.float32, seed=5)
    args = make_step(layer, 2, mx.float32, seed=6)
    assert_caught(monkeypatch, "gdn_decode.metal", text, replacement,
                  lambda: check(layer, *args, monkeypatch, mx.float32, bug))


# ---- the whole model on the kernel path ------------------------------------------------------------

def test_model_on_kernel_path_matches_transformers(metal_on_cpu, dense_text_path, launched):
    """Prefill through the chunk kernels, decode through norm_gemv (norms with the input projections after them),
    gdn_decode and attn_qk, the other norms through rms_norm (Metal source on the emulator)."""
    model, _ = load(dense_text_path, dtype="float32")
    hf = load_hf(dense_text_path)
    mx.disable_compile()                  # the emulator runs kernels eagerly, not inside compiled graphs
    try:
        _decode_against_transformers(model, hf)
    finally:
        mx.enable_compile()
    assert launched == {"gdn_chunk_prep", "gdn_chunk_scan", "gdn_conv", "gdn_decode", "rms_norm", "attn_qk",
                        "attn_decode", "attn_decode_combine", "norm_gemv"}, launched
    norms = {(t["ADD"], t["GATE"]) for n, t in launched.templates if n == "rms_norm"}
    assert {(False, True), (True, False)} <= norms, norms        # the GDN output norm (prefill); residual add + norm
    gemv = {(t["ADD"], t["GLU"], t["GATED"]) for n, t in launched.templates if n == "norm_gemv"}
    assert gemv >= {(True, False, False), (True, True, False), (False, False, True)}, gemv   # decode: in, MLP, out


def test_model_without_norm_gemv(metal_on_cpu, dense_text_path, monkeypatch, launched):
    """With norm_gemv switched off the decode step runs the norms (rms_norm) and projections apart and still
    matches transformers."""
    monkeypatch.setattr(_metal, "DISABLED", frozenset({"norm_gemv"}))
    model, _ = load(dense_text_path, dtype="float32")
    mx.disable_compile()
    try:
        _decode_against_transformers(model, load_hf(dense_text_path))
    finally:
        mx.enable_compile()
    assert "gdn_decode" in launched and "norm_gemv" not in launched, launched



def test_bf16_model_on_kernel_path(metal_on_cpu, dense_text_path, monkeypatch, launched):
    """bf16 (what users run) through every kernel, attn_flash included (it takes 16-bit operands only): prompt,
    then decode steps on fixed tokens. bf16 itself is 3-8% off float32 on this tiny random model, so the kernel
    path is held to the MLX-ops bf16 path's distance from the float32 model, not to the bf16 path itself."""
    ids = mx.array(np.random.default_rng(7).integers(0, 400, (1, 70)))

    def run(dtype):
        model, _ = load(dense_text_path, dtype=dtype)
        cache = model.make_cache()
        out = [model(ids, cache=cache)[:, -1]]
        out += [model(mx.array([[t]]), cache=cache)[:, -1] for t in (5, 17, 230)]
        return np.stack([np.array(o.astype(mx.float32)[0]) for o in out])

    mx.disable_compile()
    try:
        fast = run("bfloat16")
        assert {"attn_flash", "attn_decode", "attn_decode_combine", "attn_qk", "gdn_decode", "norm_gemv"} <= launched, \
            launched
        monkeypatch.setattr(_metal, "DISABLED", frozenset(_metal.KERNELS))
        slow, ref = run("bfloat16"), run("float32")
    finally:
        mx.enable_compile()
    err = lambda a: np.linalg.norm(a - ref, axis=-1) / np.linalg.norm(ref, axis=-1)   # noqa: E731
    assert (err(fast) < np.maximum(1.5 * err(slow), 1e-2)).all(), (err(fast), err(slow))


def _decode_against_transformers(model, hf):
    ids = np.random.default_rng(4).integers(0, 400, (1, 70))
    cache = model.make_cache()
    logits = model(mx.array(ids), cache=cache)[:, -1]
    toks, steps = [], []
    for _ in range(4):
        toks.append(int(mx.argmax(logits, axis=-1).item()))
        logits = model(mx.array([[toks[-1]]]), cache=cache)[:, -1]
        steps.append(np.array(logits[0]))
    ref = hf_logits(hf, np.concatenate([ids, [toks]], axis=1))[0, ids.shape[1]:]
    assert_rel_close(np.stack(steps), ref, 1e-4, "decode logits on the kernel path")


def test_decode_step_as_one_graph(metal_on_cpu, dense_text_path, monkeypatch):
    """The decode step as one graph (the KV buffers written at a row given as data and read in place by
    attn_decode) against the segmented step (mlx-lm's cache update, then attend), through the buffers' growth
    from 256 rows: the same logits at every step; the buffers grow by a step (256 rows), not one row at a time.
    Past GRAPH_STEP_MAX_ROWS the segmented step takes over the grown buffers."""
    from qwen35_mlx.model import qwen35
    from qwen35_mlx.model.qwen35 import Qwen35Model
    model, _ = load(dense_text_path, dtype="float32")
    ids = mx.array(np.random.default_rng(11).integers(0, 400, (1, 250)))

    def run():
        cache = model.make_cache()
        with monkeypatch.context() as m:                      # the prompt through MLX ops: the emulator is slow
            m.setattr(_metal, "DISABLED", frozenset(_metal.KERNELS))
            out = [model(ids, cache=cache)[:, -1]]
        out += [model(mx.array([[t]]), cache=cache)[:, -1] for t in range(3, 3 + 9)]
        return np.stack([np.array(o[0]) for o in out]), cache

    mx.disable_compile()
    try:
        whole, cache = run()
        assert model.__dict__.get("_step_fn") is not None                    # the one-graph step ran
        kv = [c for c in cache if hasattr(c, "keys")]
        assert {c.keys.shape[2] for c in kv} == {512} and {c.offset for c in kv} == {259}
        monkeypatch.setattr(qwen35, "GRAPH_STEP_MAX_ROWS", 254)          # one graph for 4 steps, then segmented
        switched, _ = run()
        monkeypatch.setattr(Qwen35Model, "_step_in_graph", lambda *a: None)
        segmented, _ = run()
    finally:
        mx.enable_compile()
    assert_rel_close(whole, segmented, 1e-5, "one-graph decode vs segmented")
    assert_rel_close(switched, segmented, 1e-5, "one graph, then segmented past GRAPH_STEP_MAX_ROWS")


def test_decode_step_as_one_graph_after_an_image(metal_on_cpu, dense_vl_path, monkeypatch):
    """After an image the rope position (cache offset + the prompt's negative rope delta) and the KV row (the
    offset) differ: the one-graph step rotates by one and writes at the other. Greedy tokens as transformers', and
    logits as the segmented step's."""
    from helpers import hf_greedy
    from qwen35_mlx.model.qwen35 import Qwen35Model
    model, proc = load(dense_vl_path, dtype="float32")
    inputs = proc("Describe it.", images=[np.random.default_rng(6).integers(0, 256, (96, 64, 3), dtype=np.uint8)])
    n = 6

    def run():
        cache = model.make_cache()
        with monkeypatch.context() as m:                      # the prompt through MLX ops: the emulator is slow
            m.setattr(_metal, "DISABLED", frozenset(_metal.KERNELS))
            logits = model(**inputs, cache=cache)[:, -1]
        assert cache.rope_delta < 0
        toks, steps = [], []
        for _ in range(n):
            toks.append(int(mx.argmax(logits, axis=-1).item()))
            logits = model(mx.array([[toks[-1]]]), cache=cache)[:, -1]
            steps.append(np.array(logits[0]))
        return toks, np.stack(steps)

    mx.disable_compile()
    try:
        toks, whole = run()
        assert model.__dict__.get("_step_fn") is not None                    # the one-graph step ran
        monkeypatch.setattr(Qwen35Model, "_step_in_graph", lambda *a: None)
        _, segmented = run()
    finally:
        mx.enable_compile()
    assert_rel_close(whole, segmented, 1e-5, "one-graph decode after an image vs segmented")
    hf_kwargs = {k: np.array(v) for k, v in inputs.items() if k != "input_ids"}
    assert toks == hf_greedy(load_hf(dense_vl_path), np.array(inputs["input_ids"]), n, **hf_kwargs)[0].tolist()


def test_one_graph_step_limits(metal_on_cpu, dense_text_path, monkeypatch):
    """The one-graph step declines GRAPH_STEP_MAX_ROWS cached rows or more, and buffers longer than twice
    max(the rows filled, TRIMMED_MIN_ROWS) (a cache trimmed back from a long prompt), and runs otherwise."""
    from qwen35_mlx.model import qwen35
    model, _ = load(dense_text_path, dtype="float32")
    cache = model.make_cache()
    with monkeypatch.context() as m:
        m.setattr(_metal, "DISABLED", frozenset(_metal.KERNELS))
        model(mx.array(np.random.default_rng(12).integers(0, 400, (1, 250))), cache=cache)
    x = model.model.language_model.embed_tokens(mx.array([[3]]))
    kv = [c for c in cache if hasattr(c, "trim")]
    monkeypatch.setattr(qwen35, "GRAPH_STEP_MAX_ROWS", 120)
    monkeypatch.setattr(qwen35, "TRIMMED_MIN_ROWS", 64)

    def step():
        return model._step_in_graph(x, cache, cache.offset, cache.offset)
    assert step() is None                                                               # 250 rows cached
    for c in kv:
        c.trim(150)                                                                     # 100 rows in 256-row buffers
    cache.offset = 100
    monkeypatch.setattr(qwen35, "GRAPH_STEP_MAX_ROWS", 200)
    assert step() is None                                                               # 256 > 2 * max(101, 64)
    monkeypatch.setattr(qwen35, "TRIMMED_MIN_ROWS", 128)
    mx.disable_compile()
    try:
        res = step()
    finally:
        mx.enable_compile()
    assert res is not None and cache.step_ints[1].tolist() == [101, 1, 102, 100]       # the next step's ints
    assert {c.offset for c in kv} == {101}


def test_quantized_model_on_kernel_path(metal_on_cpu, dense_text_path, monkeypatch, launched):
    """8-bit weights (what community MLX checkpoints hold): gdn_decode runs, and the gated norm and the quantized
    out_proj run apart after it (norm_gemv takes plain weights only); the logits equal the same quantized model's
    with every kernel off."""
    from qwen35_mlx.quantize import quantize_model
    model, _ = load(dense_text_path, dtype="float32")
    quantize_model(model, bits=8, group_size=32)
    assert type(model.layers[0].linear_attn.out_proj).__name__ == "QuantizedLinear"
    ids = mx.array(np.random.default_rng(9).integers(0, 400, (1, 20)))

    def run():
        cache = model.make_cache()
        out = [model(ids, cache=cache)[:, -1]]
        out += [model(mx.array([[t]]), cache=cache)[:, -1] for t in (5, 17)]
        return np.stack([np.array(o[0]) for o in out])

    mx.disable_compile()
    try:
        fast = run()
        assert "gdn_decode" in launched and "norm_gemv" not in launched, launched
        assert any(t["GATE"] for n, t in launched.templates if n == "rms_norm")     # the GDN output norm
        monkeypatch.setattr(_metal, "DISABLED", frozenset(_metal.KERNELS))
        slow = run()
    finally:
        mx.enable_compile()
    assert_rel_close(fast, slow, 1e-4, "quantized model, kernel path vs MLX ops")


@pytest.mark.parametrize("one_graph", [True, False])
def test_step_ints_come_from_the_step_before(metal_on_cpu, dense_text_path, monkeypatch, one_graph):
    """A decode step's ints [rope offset, KV row, rows filled after it, 0] are the array the step before computed
    on the device, not one made from host values each token; on both steps, and with the right values."""
    from qwen35_mlx.model import qwen35
    model, _ = load(dense_text_path, dtype="float32")
    if not one_graph:
        monkeypatch.setattr(qwen35.Qwen35Model, "_step_in_graph", lambda *a: None)
    cache = model.make_cache()
    with monkeypatch.context() as m:
        m.setattr(_metal, "DISABLED", frozenset(_metal.KERNELS))
        model(mx.array(np.random.default_rng(13).integers(0, 400, (1, 40))), cache=cache)
    mx.disable_compile()
    try:
        for t in (5, 6):
            model(mx.array([[t]]), cache=cache)
            key, held = cache.step_ints
            n, n0 = cache.offset, key[2]
            assert qwen35.step_ints(cache, n, n0) is held
            assert held.tolist() == ([n, n - 40, n + 1, 40] if one_graph else [n, n, n + 1, 0])
    finally:
        mx.enable_compile()
    n = cache.offset
    assert qwen35.step_ints(cache, n + 3).tolist() == [n + 3, n, n + 1, 0]
    assert qwen35.step_ints(cache, n + 3, n - 2).tolist() == [n + 3, 2, n + 1, n - 2]


def test_kv_tail_merges_and_rewinds(metal_on_cpu, dense_text_path, monkeypatch):
    """The one-graph step writes each KV row into its cache's tail (4 rows here), merged into the big buffers when
    full and whenever keys are read: over 11 steps (two merges, a partial tail), then a rewind to a snapshot
    taken inside a tail and 5 more steps (through the next merge), logits as the segmented step's every step, and
    the caches' keys and values (merged on reading) equal to its."""
    from qwen35_mlx import cache as cache_mod
    from qwen35_mlx.model.qwen35 import Qwen35Model
    monkeypatch.setattr(cache_mod, "TAIL_ROWS", 4)
    model, _ = load(dense_text_path, dtype="float32")
    ids = mx.array(np.random.default_rng(14).integers(0, 400, (1, 30)))

    def run():
        cache = model.make_cache()
        with monkeypatch.context() as m:
            m.setattr(_metal, "DISABLED", frozenset(_metal.KERNELS))
            model(ids, cache=cache)
        out, snap = [], None
        for t in range(11):
            out.append(model(mx.array([[t + 3]]), cache=cache)[:, -1])
            if t == 5:
                snap = cache.snapshot()                          # offset 36: the tail holds rows 34, 35
        cache.restore(snap)
        out += [model(mx.array([[t + 50]]), cache=cache)[:, -1] for t in range(5)]
        kv = [c for c in cache if hasattr(c, "keys")]
        return np.stack([np.array(o[0]) for o in out]), [np.array(a[..., :c.offset, :]) for c in kv
                                                          for a in (c.keys, c.values)]

    mx.disable_compile()
    try:
        whole, whole_kv = run()
        assert model.__dict__.get("_step_fn") is not None
        monkeypatch.setattr(Qwen35Model, "_step_in_graph", lambda *a: None)
        segmented, seg_kv = run()
    finally:
        mx.enable_compile()
    assert_rel_close(whole, segmented, 1e-5, "one-graph decode with KV tails vs segmented")
    for a, b in zip(whole_kv, seg_kv):
        assert_rel_close(a, b, 1e-6, "KV cache after tails merged")


def test_kv_cache_reads_merge_the_tail():
    """A KVCache with rows in its tail: keys, values, state and update_and_fetch see every row; nbytes counts the
    tail without merging it."""
    from qwen35_mlx.cache import KVCache, tail_for_step
    rng = np.random.default_rng(15)
    c = KVCache()
    c.update_and_fetch(*(mx.array(rng.standard_normal((1, 2, 10, 8)), mx.float32) for _ in range(2)))
    n0 = tail_for_step([c], 10)
    rows = [mx.array(rng.standard_normal((1, 2, 3, 8)), mx.float32) for _ in range(2)]
    tk, tv = c.tail[0]
    c.tail = ((mx.concatenate([rows[0], tk[:, :, 3:]], axis=2), mx.concatenate([rows[1], tv[:, :, 3:]], axis=2)), n0)
    c.offset = 13
    assert c.nbytes == c._keys.nbytes * 2 + sum(a.nbytes for a in c.tail[0]) and c.tail is not None
    k, v, offset = c.state
    assert c.tail is None and offset == 13
    np.testing.assert_array_equal(np.array(k[:, :, 10:13]), np.array(rows[0]))
    np.testing.assert_array_equal(np.array(v[:, :, 10:13]), np.array(rows[1]))
