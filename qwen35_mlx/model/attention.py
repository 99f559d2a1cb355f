"""Gated full attention: GQA with q/k RMSNorm, partial mrope and a sigmoid output gate from q_proj."""

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention

from ..config import TextConfig
from .norms import RMSNorm


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scale = self.head_dim ** -0.5
        H, D = cfg.hidden_size, self.head_dim
        self.q_proj = nn.Linear(H, self.n_heads * D * 2, bias=False)   # per head: [query | gate]
        self.k_proj = nn.Linear(H, self.n_kv * D, bias=False)
        self.v_proj = nn.Linear(H, self.n_kv * D, bias=False)
        self.o_proj = nn.Linear(self.n_heads * D, H, bias=False)
        self.q_norm = RMSNorm(D, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(D, cfg.rms_norm_eps)

    def __call__(self, x, rope, positions, mask=None, cache=None):
        q, k, v, gate = self.project(x, rope, positions)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        return self.finish(self.attend(q, k, v, mask, cache), gate)

    def project(self, x, rope, positions):
        """x [B, T, H] -> q [B, heads, T, D], k and v [B, kv_heads, T, D] (normed, rotated), gate."""
        B, T, _ = x.shape
        D = self.head_dim
        q, gate = mx.split(self.q_proj(x).reshape(B, T, self.n_heads, 2 * D), 2, axis=-1)
        q = self.q_norm(q).transpose(0, 2, 1, 3)
        k = self.k_norm(self.k_proj(x).reshape(B, T, self.n_kv, D)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, T, self.n_kv, D).transpose(0, 2, 1, 3)
        return rope(q, positions), rope(k, positions), v, gate.reshape(B, T, -1)

    def attend(self, q, k, v, mask, cache):
        out = scaled_dot_product_attention(q, k, v, cache=cache, scale=self.scale, mask=mask)
        B, _, T, _ = out.shape
        return out.transpose(0, 2, 1, 3).reshape(B, T, -1)

    def finish(self, out, gate):
        return self.o_proj(out * mx.sigmoid(gate))
