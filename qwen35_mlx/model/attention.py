"""Gated full attention: GQA with q/k RMSNorm, partial mrope and a sigmoid output gate from q_proj."""

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention
from mlx_lm.models.cache import KVCache

from ..config import TextConfig
from ..kernels.attn import (attn_decode, attn_flash, attn_qk, decode_backend, decode_backend_for, flash_backend,
                            qk_backend)
from .fused import DecodeFusion
from .norms import RMSNorm


SCORE_BYTES = 1 << 31     # bound on one layer's attention scores, counted as float32 (2 GiB; bf16 holds half)
DEQUANT_MIN_T = 16        # queries from which attention reads a quantized cache dequantized (prefill)


def block_rows(batch: int, heads: int, keys: int) -> int:
    """Queries per attention block: their scores against `keys` keys stay within SCORE_BYTES."""
    return max(16, SCORE_BYTES // (batch * heads * keys * 4))


class Attention(DecodeFusion, nn.Module):
    FUSE = ("q_proj", "k_proj", "v_proj")   # decode: one matmul
    ROW = ("o_proj",)

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
        return self.o_proj(self.attend(q, k, v, mask, cache, gate))

    def project(self, x, rope, positions):
        """x [B, T, H] -> q [B, heads, T, D], k and v [B, kv_heads, T, D] (normed, rotated), gate [B, T, heads, D]
        (a strided view of the projection, read in place, no copy)."""
        B, T, _ = x.shape
        D = self.head_dim
        if self.row_kernel(T, rope, positions):   # decode on a GPU: the projections as one row, then attn_qk
            return self.project_row(self._fused.joined(x), rope, positions)
        if T == 1 and self._fused is not None:
            q, k, v = self._fused(x)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, gate = mx.split(q.reshape(B, T, self.n_heads, 2 * D), 2, axis=-1)
        q = self.q_norm(q).transpose(0, 2, 1, 3)
        k = self.k_norm(k.reshape(B, T, self.n_kv, D)).transpose(0, 2, 1, 3)
        v = v.reshape(B, T, self.n_kv, D).transpose(0, 2, 1, 3)
        return rope(q, positions), rope(k, positions), v, gate

    def row_kernel(self, T, rope, positions) -> bool:
        """Whether project_row runs here: one token, a 1-D position, projections fused, attn_qk on a GPU."""
        scalar = not isinstance(positions, mx.array) or positions.ndim == 0       # 1-D rope from an offset
        return T == 1 and self._fused is not None and scalar and qk_backend(self.head_dim, rope.dims) is not None

    def project_row(self, row, rope, positions):
        """project (see above) from the fused projection row [B, 1, P] = [q and gate | k | v]: both norms and
        ropes, and v copied out as it is, in one attn_qk launch."""
        B, T, _ = row.shape
        D = self.head_dim
        pos = positions.astype(mx.int32) if isinstance(positions, mx.array) else mx.array(positions, mx.int32)
        q, k, v = attn_qk(row, self.q_norm.weight, self.k_norm.weight, rope.inv_freq, pos, self.q_norm.eps,
                          NQ=self.n_heads, NK=self.n_kv, D=D, rot=rope.dims, backend=qk_backend(D, rope.dims))
        gate = row[..., :2 * self.n_heads * D].reshape(B, T, self.n_heads, 2 * D)[..., D:]
        return q, k, v, gate

    def attend(self, q, k, v, mask, cache, gate=None, n_keys=None):
        """Attention of q [B, heads, T, D] over the whole cache, times sigmoid(gate) if given (gate [B, T, heads, D],
        as project returns it): [B, T, heads * D], what o_proj reads. Where a GPU backend runs our kernels, a decode
        step goes through attn_decode (the keys split over the GPU, read in place from the cache buffers) and a
        chunk of queries through our flash kernel (metal/attn_flash.metal): MLX has no fused kernel for head
        dim 256 on a chunk of queries, and materialises the scores of all T queries against all S keys. Without the
        kernel, long contexts go in query blocks of bounded score memory. A chunk against a quantized cache
        attends over its dequantized keys and values (1.7x faster than the quantized SDPA on an H100, without
        the kernel; see benchmarks/bench_attention.py). n_keys: for attn_decode, the cache's filled rows as device
        data (the decode step's ints) rather than k's rows made into an array each step."""
        T = q.shape[2]
        quantized = isinstance(k, (tuple, list))
        if quantized and T >= DEQUANT_MIN_T:
            k, v = (mx.dequantize(*x, group_size=cache.group_size, bits=cache.bits).astype(q.dtype) for x in (k, v))
            cache, quantized = None, False
        if T == 1 and mask is None and isinstance(cache, KVCache) and not quantized:
            backend = decode_backend(q, k)
            if backend:         # over the cache buffers in place (k, v are views of their filled rows), gated
                return attn_decode(q, cache.keys, cache.values, k.shape[2] if n_keys is None else n_keys,
                                   self.scale, gate=gate, backend=backend)
        out = self._attend(q, k, v, mask, cache, quantized)
        return out if gate is None else _gated(out, gate)

    def decode_backend(self, dtype) -> str | None:
        """Where attn_decode runs for this layer's heads in `dtype` (None: not here)."""
        return decode_backend_for(self.head_dim, self.n_heads, self.n_kv, dtype)

    def attend_in_graph(self, q, k, v, gate, tail_k, tail_v, keys, values, at, S):
        """A decode step's attention inside a compiled graph (project's q, k, v, gate in): k and v written into
        the KV cache's tail buffers tail_k, tail_v [B, kv_heads, TR, D] at the row that `at` ([B, kv_heads, 1, D]
        int32, all that row) names, then attn_decode over the first S[0] rows of the big buffers keys, values
        [B, kv_heads, SC, D] up to S[1] and the tail after (S int32). Both are data, so the graph keeps its shapes
        as the cache fills; a scatter along the rows is one launch where a dynamic slice update is two.
        -> (attend's output, tail_k, tail_v)."""
        tail_k = mx.put_along_axis(tail_k, at, k, axis=2)
        tail_v = mx.put_along_axis(tail_v, at, v, axis=2)
        out = attn_decode(q, keys, values, S, self.scale, gate=gate, backend=self.decode_backend(q.dtype),
                          tail=(tail_k, tail_v))
        return out, tail_k, tail_v

    def _attend(self, q, k, v, mask, cache, quantized):
        """attend without the gate (every path but attn_decode's)."""
        B, H, T, _ = q.shape
        backend = flash_backend(q, k, mask) if T > 1 and not quantized else None
        if backend:
            return attn_flash(q, k, v, self.scale, causal=mask is not None, backend=backend).reshape(B, T, -1)
        S = (k[0] if quantized else k).shape[-2]
        block = block_rows(B, H, S)
        if T <= block:
            out = scaled_dot_product_attention(q, k, v, cache=cache, scale=self.scale, mask=mask)
        else:
            parts = []
            for t0 in range(0, T, block):
                t1 = min(T, t0 + block)
                if isinstance(mask, str):                           # causal, aligned to the last key
                    m = mx.arange(S - T + t0, S - T + t1)[:, None] >= mx.arange(S)[None, :]
                else:
                    m = None if mask is None else mask[..., t0:t1, :]
                parts.append(scaled_dot_product_attention(q[:, :, t0:t1], k, v, cache=cache, scale=self.scale,
                                                          mask=m))
                mx.eval(parts[-1])                # one block's scores alive at a time, not all of them
            out = mx.concatenate(parts, axis=2)
        return out.transpose(0, 2, 1, 3).reshape(B, T, -1)


@mx.compile
def _gated(out, gate):
    """out [B, T, heads * D] times sigmoid(gate [B, T, heads, D]): one fused launch."""
    return (out.reshape(gate.shape) * mx.sigmoid(gate)).reshape(out.shape)
