"""Vision tower: patch embed, learned + rotary positions, ViT blocks, 2x2 patch merger; and the scatter of its
features into the text embeddings. Parameter names are transformers' `Qwen3_5VisionModel` ones, so the
checkpoint map is the identity under `model.visual.`.

Canonical layout: `patch_embed.proj` is a Linear `[hidden, C*T*P*P]` over the processor's flat pixel rows
(the Conv3d has kernel = stride, so it is one matmul). `sanitize` brings the other layouts to it.

Attention is block-diagonal (one block per image and per video frame). Rows are reordered once so that
segments of equal length sit together; each group is then one batched SDPA call, so a video costs one call
per layer whatever its length.
"""

from __future__ import annotations

from collections import Counter

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..config import VisionConfig
from ..errors import ConfigError, MediaError, PromptError, WeightsError
from .rope import rotate_half

# nn.gelu_approx is the tanh form, i.e. torch gelu(approximate="tanh"); nn.gelu is the erf form
ACTIVATIONS = {"gelu_pytorch_tanh": nn.gelu_approx, "gelu_new": nn.gelu_approx, "gelu": nn.gelu}


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2, cfg.hidden_size)

    def __call__(self, x):
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dims // heads) ** -0.5
        self.qkv = nn.Linear(dims, 3 * dims)
        self.proj = nn.Linear(dims, dims)

    def __call__(self, x, cos, sin, runs):
        """x [N, D]; cos, sin [N, hd] float32; runs: (L, n) = n consecutive segments of L rows each."""
        N, H = x.shape[0], self.heads
        qkv = self.qkv(x).reshape(N, 3, H, -1)
        q, k, v = _rotate(qkv[:, 0], cos, sin), _rotate(qkv[:, 1], cos, sin), qkv[:, 2]
        outs, start = [], 0
        for L, n in runs:
            q_, k_, v_ = (t[start:start + n * L].reshape(n, L, H, -1).transpose(0, 2, 1, 3) for t in (q, k, v))
            o = mx.fast.scaled_dot_product_attention(q_, k_, v_, scale=self.scale)      # [n, H, L, hd]
            outs.append(o.transpose(0, 2, 1, 3).reshape(n * L, -1))
            start += n * L
        return self.proj(mx.concatenate(outs) if len(outs) > 1 else outs[0])


def _rotate(x, cos, sin):
    """2-D rope in float32 as transformers does; x [N, H, hd], cos/sin [N, hd]."""
    xf = x.astype(mx.float32)
    return (xf * cos[:, None] + rotate_half(xf) * sin[:, None]).astype(x.dtype)


class MLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"vision_config.hidden_act: {cfg.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.linear_fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.linear_fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def __call__(self, x):
        return self.linear_fc2(self.act(self.linear_fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.attn = Attention(cfg.hidden_size, cfg.num_heads)
        self.mlp = MLP(cfg)

    def __call__(self, x, cos, sin, runs):
        x = x + self.attn(self.norm1(x), cos, sin, runs)
        return x + self.mlp(self.norm2(x))


class Merger(nn.Module):
    """LayerNorm per patch, then each 2x2 merge block (4 consecutive rows) -> fc1, exact GELU, fc2."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.dims = dims = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.linear_fc1 = nn.Linear(dims, dims)
        self.linear_fc2 = nn.Linear(dims, cfg.out_hidden_size)

    def __call__(self, x):
        x = self.norm(x).reshape(-1, self.dims)
        return self.linear_fc2(nn.gelu(self.linear_fc1(x)))


class VisionModel(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.side = int(round(cfg.num_position_embeddings ** 0.5))
        hd = cfg.head_dim // 2                      # rope: hd/4 freqs per axis, (row, col) halves
        theta = (cfg.extra.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        self.inv_freq = (1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd)).astype(np.float32)
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Embedding(cfg.num_position_embeddings, cfg.hidden_size)
        self.blocks = [Block(cfg) for _ in range(cfg.depth)]
        self.merger = Merger(cfg)

    def __call__(self, pixel_values, grid_thw):
        """pixel_values [N, C*T*P*P] in merge-block order; grid_thw [n, 3] -> [N / merge^2, out_hidden_size]."""
        m = self.config.spatial_merge_size
        grids = [tuple(int(v) for v in row) for row in np.asarray(grid_thw).reshape(-1, 3)]
        if any(h % m or w % m for _, h, w in grids) or sum(t * h * w for t, h, w in grids) != pixel_values.shape[0]:
            raise MediaError(f"pixel_values has {pixel_values.shape[0]} patch rows but grid_thw {grids} needs "
                             f"{sum(t * h * w for t, h, w in grids)} (h and w multiples of {m})")
        dtype = self.merger.norm.weight.dtype          # the weights' dtype (norms are never quantized)
        x = self.patch_embed(mx.array(pixel_values).astype(dtype))
        pos, angles = [], []
        for t, h, w in grids:                          # per image / video; frames share their (h, w) tables
            row, col = _merge_order(h, w, m)
            pe = self._interpolated_pos(row, col, h, w)
            pos.append(mx.broadcast_to(pe, (t, *pe.shape)).reshape(t * h * w, -1))
            f = np.concatenate([np.outer(row, self.inv_freq), np.outer(col, self.inv_freq)], axis=1, dtype=np.float32)
            angles.append(np.tile(np.concatenate([f, f], axis=1), (t, 1)))
        x = x + mx.concatenate(pos).astype(dtype)
        angles = np.concatenate(angles)

        lengths = [h * w for t, h, w in grids for _ in range(t)]
        perm, runs = _group_segments(lengths)
        if perm is not None:
            x, angles = x[mx.array(perm)], angles[perm]
        cos, sin = mx.array(np.cos(angles)), mx.array(np.sin(angles))
        for block in self.blocks:
            x = block(x, cos, sin, runs)
        if perm is not None:
            x = x[mx.array(np.argsort(perm))]
        return self.merger(x)

    def _interpolated_pos(self, row, col, h, w):
        """Learned side x side grid resampled bilinearly (align_corners=True) at the patch (row, col)s: [h*w, D]
        float32, with transformers' float32 index and weight arithmetic."""
        (r0, r1), (wr0, wr1) = _taps(row, h, self.side)
        (c0, c1), (wc0, wc1) = _taps(col, w, self.side)
        idx = np.stack([r0 * self.side + c0, r0 * self.side + c1, r1 * self.side + c0, r1 * self.side + c1], 1)
        wts = np.stack([wr0 * wc0, wr0 * wc1, wr1 * wc0, wr1 * wc1], 1)
        rows = self.pos_embed(mx.array(idx)).astype(mx.float32)            # module call: quantized tables too
        return (rows * mx.array(wts)[..., None]).sum(axis=1)

    def sanitize(self, weights: dict) -> dict:
        return sanitize(weights, self.config)


def _merge_order(h, w, m):
    """Row and column of each patch of an (h, w) grid, in merge-block order (h/m, w/m, m, m)."""
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    order = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).ravel()  # noqa: E731
    return order(r), order(c)


def _taps(index, size, side):
    """Two bilinear taps (clamped to the border) and their weights on one axis, float32 like transformers."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    lo = floor.astype(np.int64)
    taps = (np.clip(lo, 0, side - 1), np.clip(lo + 1, 0, side - 1))
    wts = tuple(np.maximum(np.float32(1) - np.abs(src - floor - np.float32(o)), np.float32(0)) for o in (0, 1))
    return taps, wts


def _group_segments(lengths):
    """Stable reorder of attention segments so equal lengths are adjacent (first-seen order).

    Returns (row permutation or None when it is the identity, runs [(L, n), ...] in the new order)."""
    counts = Counter(lengths)                           # keeps first-seen order
    rank = {L: i for i, L in enumerate(counts)}
    order = sorted(range(len(lengths)), key=lambda i: rank[lengths[i]])
    runs = list(counts.items())
    if order == sorted(order):
        return None, runs
    starts = np.cumsum([0] + lengths[:-1])
    return np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in order]), runs


def sanitize(weights: dict, config: VisionConfig) -> dict:
    """Tower weights (keys without `model.visual.`) in any known layout -> the canonical one.

    Accepted for `patch_embed.proj.weight`, told apart by shape alone:
      transformers Conv3d [O, C, T, P, P]; mlx-vlm's converted Conv3d [O, T, P, P, C]; canonical [O, C*T*P*P].
    A quantized patch embed (one with `.scales`) is passed through. Other keys already have canonical names
    and layouts in both sources (mlx-vlm only renames the prefix `model.visual` -> `vision_tower`).
    """
    C, T, P = config.in_channels, config.temporal_patch_size, config.patch_size
    hf, vlm = (C, T, P, P), (T, P, P, C)
    out = dict(weights)
    w = weights.get("patch_embed.proj.weight")
    if w is None or "patch_embed.proj.scales" in weights:
        return out
    if w.ndim == 5 and hf == vlm and w.shape[1:] == hf:
        raise WeightsError(f"patch_embed.proj.weight: shape {tuple(w.shape)} fits both the transformers "
                           "[O, C, T, P, P] and the mlx-vlm [O, T, P, P, C] layout; convert it to [O, C*T*P*P]")
    if w.ndim == 5 and w.shape[1:] == hf:
        out["patch_embed.proj.weight"] = w.reshape(w.shape[0], -1)
    elif w.ndim == 5 and w.shape[1:] == vlm:
        out["patch_embed.proj.weight"] = w.transpose(0, 4, 1, 2, 3).reshape(w.shape[0], -1)
    elif w.shape[1:] != (C * T * P * P,) or w.ndim != 2:
        raise WeightsError(f"patch_embed.proj.weight: shape {tuple(w.shape)} is none of [O, {C}, {T}, {P}, {P}] "
                           f"(transformers), [O, {T}, {P}, {P}, {C}] (mlx-vlm) or [O, {C * T * P * P}]")
    return out


def scatter_features(input_ids, embeds, feats, token_id, kind: str = "image"):
    """Put feats [n, D] rows, in order, at the positions of input_ids [B, L] equal to token_id in embeds
    [B, L, D]. Only the ids visit NumPy; the embeddings stay in MLX."""
    pos = np.flatnonzero(np.asarray(input_ids).reshape(-1) == token_id)
    if len(pos) != feats.shape[0]:
        raise PromptError(f"the prompt has {len(pos)} {kind} placeholder tokens but the {kind}s give "
                          f"{feats.shape[0]} features")
    if not len(pos):
        return embeds
    flat = embeds.reshape(-1, embeds.shape[-1])
    flat[mx.array(pos)] = feats.astype(embeds.dtype)
    return flat.reshape(embeds.shape)
