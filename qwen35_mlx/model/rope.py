"""Partial rotary embedding with interleaved mrope, and the 3-D position ids of mixed prompts.

Only the first `rotary_dim` channels of a head rotate, NeoX style (pairs i, i + rotary_dim/2). For text the
three position axes (t, h, w) are equal and this is 1-D rope; vision tokens get distinct h/w positions,
and each frequency i reads its position from H if i % 3 == 1 and i < 3*sec[1], from W if i % 3 == 2 and
i < 3*sec[2], else from T.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np


class Rope:
    def __init__(self, rotary_dim: int, theta: float, mrope_section):
        self.dims = rotary_dim
        self.theta = theta
        self.inv_freq = mx.array(1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim),
                                 mx.float32)
        i = np.arange(rotary_dim // 2)
        axis = np.zeros(rotary_dim // 2, np.int32)                  # 0 = t, 1 = h, 2 = w
        axis[(i % 3 == 1) & (i < 3 * mrope_section[1])] = 1
        axis[(i % 3 == 2) & (i < 3 * mrope_section[2])] = 2
        self.axis = mx.array(axis)

    def __call__(self, x, positions):
        """x: [B, heads, T, D]. positions: an offset (int or scalar array: 1-D rope, all axes equal) or an
        int array [3, B, T]."""
        if not isinstance(positions, mx.array) or positions.ndim == 0:
            return mx.fast.rope(x, self.dims, traditional=False, base=self.theta, scale=1.0, offset=positions)
        cos, sin = self.cos_sin(positions)
        return apply_rotary(x, cos[:, None], sin[:, None], self.dims)

    def cos_sin(self, positions):
        """positions [3, B, T] -> cos, sin [B, T, rotary_dim] (float32)."""
        pos = positions.astype(mx.float32)                           # [3, B, T]
        per_freq = mx.take(pos, self.axis, axis=0)                   # [F, B, T]: the axis each freq reads
        freqs = per_freq.transpose(1, 2, 0) * self.inv_freq          # [B, T, F]
        emb = mx.concatenate([freqs, freqs], axis=-1)
        return mx.cos(emb), mx.sin(emb)


def rotate_half(x):
    h = x.shape[-1] // 2
    return mx.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rotary(x, cos, sin, dims):
    """Rotate the first `dims` channels of x by (cos, sin) broadcast over x's leading axes."""
    rot, rest = x[..., :dims], x[..., dims:]
    out = (rot * cos + rotate_half(rot) * sin).astype(x.dtype)
    return mx.concatenate([out, rest], axis=-1) if rest.shape[-1] else out


def rope_index(input_ids, image_grid_thw=None, video_grid_thw=None, *, image_token_id, video_token_id,
               spatial_merge_size=2, attention_mask=None):
    """3-D positions [3, B, T] and per-sequence rope deltas [B] for a prompt with images and videos.

    Text tokens run 0, 1, 2, ... on all axes. A run of image tokens (or one temporal patch of a video:
    the video grid is split into t grids of (1, h, w)) starting at position s gets t = s, h = s + row,
    w = s + col over the merged grid; the next text continues at s + max(h, w) / merge. The delta
    max(position) + 1 - length carries the offset into cached decode. Padding (attention_mask 0) gets
    position 0 and is skipped.
    """
    ids = np.asarray(input_ids)
    B, T = ids.shape
    mask = np.ones((B, T), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    grids = {1: _grid_list(image_grid_thw), 2: _split_video_grids(video_grid_thw)}
    cursor = {1: 0, 2: 0}
    positions = np.zeros((3, B, T), np.int64)
    deltas = np.zeros(B, np.int64)
    for b in range(B):
        kinds = np.where(ids[b] == image_token_id, 1, np.where(ids[b] == video_token_id, 2, 0))[mask[b]]
        out, p, i = [], 0, 0
        while i < len(kinds):
            j = i
            while j < len(kinds) and kinds[j] == kinds[i]:
                j += 1
            kind = int(kinds[i])
            if kind == 0:
                out.append(np.broadcast_to(np.arange(p, p + j - i), (3, j - i)))
                p += j - i
                i = j
                continue
            # a media run can hold several consecutive grids (e.g. frames without separators)
            while i < j:
                t, h, w = grids[kind][cursor[kind]]
                cursor[kind] += 1
                gh, gw = h // spatial_merge_size, w // spatial_merge_size
                n = t * gh * gw
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
                out.append(np.stack([tt.ravel() + p, hh.ravel() + p, ww.ravel() + p]))
                p += max(gh, gw)
                i += n
        pos = np.concatenate(out, axis=1) if out else np.zeros((3, 0), np.int64)
        positions[:, b, mask[b]] = pos
        deltas[b] = (pos.max() + 1 - mask[b].sum()) if pos.size else 0
    return mx.array(positions), mx.array(deltas)


def _grid_list(grid):
    return [] if grid is None else [tuple(int(v) for v in row) for row in np.asarray(grid).reshape(-1, 3)]


def _split_video_grids(grid):
    """A video grid (t, h, w) becomes t grids (1, h, w): each temporal patch is its own run."""
    return [(1, h, w) for t, h, w in _grid_list(grid) for _ in range(t)]
