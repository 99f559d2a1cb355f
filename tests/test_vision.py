"""Vision tower parity with transformers' Qwen3_5VisionModel (float32, every parameter random)."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

from qwen35_mlx.config import VisionConfig
from qwen35_mlx.errors import PromptError, WeightsError
from qwen35_mlx.model.vision import VisionModel, sanitize, scatter_features

TINY = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=16, temporal_patch_size=2,
            spatial_merge_size=2, out_hidden_size=64, num_position_embeddings=64, in_channels=3)


def assert_rel_close(out, ref, tol, name):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert np.isfinite(out).all(), f"{name}: non-finite values"
    err = np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)
    assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


@pytest.fixture(scope="module")
def towers():
    torch.manual_seed(0)
    hf = Qwen3_5VisionModel(Qwen3_5VisionConfig(**TINY)).eval()
    with torch.no_grad():
        for p in hf.parameters():   # norms and biases ~ N(0, 0.5); matrices ~ N(0, 1/fan_in)
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim == 1 else p[0].numel() ** -0.5))
    weights = {k: mx.array(v.numpy()) for k, v in hf.state_dict().items()}
    cfg = VisionConfig.from_dict(TINY)
    ours = VisionModel(cfg)
    ours.load_weights(list(sanitize(weights, cfg).items()))
    return hf, ours, weights, cfg


def pixels(grids, seed=0):
    n = sum(t * h * w for t, h, w in grids)
    return np.random.default_rng(seed).standard_normal((n, 3 * 2 * 16 * 16), dtype=np.float32)


def reference(hf, px, grids):
    with torch.no_grad():
        return hf(torch.from_numpy(px), grid_thw=torch.tensor(grids)).pooler_output.numpy()


CASES = {
    "image_1x4x6": [(1, 4, 6)],
    "two_images": [(1, 4, 6), (1, 6, 2)],
    "regrouped_same_sizes": [(1, 4, 4), (1, 2, 2), (1, 4, 4)],   # segments reordered for batched SDPA
    "video_3x4x4": [(3, 4, 4)],
    "image_and_video": [(1, 2, 4), (2, 4, 2)],
    "grid_larger_than_learned": [(1, 12, 10)],                  # learned grid is 8 x 8
    "grid_smaller_non_square": [(1, 2, 6)],
}


@pytest.mark.parametrize("grids", CASES.values(), ids=CASES.keys())
def test_matches_transformers(towers, grids):
    hf, ours, _, _ = towers
    px = pixels(grids)
    out = ours(mx.array(px), grids)
    ref = reference(hf, px, grids)
    assert out.shape == ref.shape
    assert_rel_close(out, ref, 3e-6, "vision fp32")   # measured <= 3e-7


def test_video_frames_do_not_attend_to_each_other(towers):
    _, ours, _, _ = towers
    grids = [(3, 4, 4)]
    px = pixels(grids)
    base = np.array(ours(mx.array(px), grids))
    px[16:32] = pixels([(1, 4, 4)], seed=1)          # change frame 1 only (16 patches -> 4 merged rows)
    out = np.array(ours(mx.array(px), grids))
    assert_rel_close(out[:4], base[:4], 1e-6, "frame 0")
    assert_rel_close(out[8:], base[8:], 1e-6, "frame 2")
    assert np.linalg.norm(out[4:8] - base[4:8]) > 0.1 * np.linalg.norm(base[4:8])


def test_mlx_vlm_layout(towers):
    hf, _, weights, cfg = towers
    w = dict(weights)
    w["patch_embed.proj.weight"] = weights["patch_embed.proj.weight"].transpose(0, 2, 3, 4, 1)  # [O, T, P, P, C]
    ours = VisionModel(cfg)
    ours.load_weights(list(sanitize(w, cfg).items()))
    grids = [(1, 4, 6)]
    px = pixels(grids)
    assert_rel_close(ours(mx.array(px), grids), reference(hf, px, grids), 3e-6, "mlx-vlm layout")
    assert sanitize(sanitize(w, cfg), cfg)["patch_embed.proj.weight"].shape == (32, 1536)   # idempotent
    w["patch_embed.proj.weight"] = mx.zeros((32, 2, 16, 3, 16))
    with pytest.raises(WeightsError, match="patch_embed.proj.weight"):
        sanitize(w, cfg)


def test_bfloat16_close_to_float32(towers):
    _, ours, weights, cfg = towers
    low = VisionModel(cfg)
    low.load_weights(list(sanitize(weights, cfg).items()))
    low.set_dtype(mx.bfloat16)
    grids = [(1, 4, 6), (2, 4, 4)]
    px = mx.array(pixels(grids))
    out = low(px, grids)
    assert out.dtype == mx.bfloat16
    assert_rel_close(out.astype(mx.float32), ours(px, grids), 2e-2, "vision bf16")   # measured ~4e-3


def test_scatter_features():
    ids = mx.array([[5, 9, 9, 1], [9, 2, 9, 3]])
    embeds = mx.zeros((2, 4, 3))
    feats = mx.arange(12, dtype=mx.float32).reshape(4, 3) + 1
    out = np.array(scatter_features(ids, embeds, feats, 9))
    np.testing.assert_array_equal(out[[0, 0, 1, 1], [1, 2, 0, 2]], np.array(feats))
    np.testing.assert_array_equal(out[[0, 0, 1, 1], [0, 3, 1, 3]], 0)
    with pytest.raises(PromptError, match="has 4 image placeholder tokens but the images give 3 features"):
        scatter_features(ids, embeds, feats[:3], 9)
