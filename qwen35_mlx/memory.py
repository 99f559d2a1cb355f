"""What a context costs: weights, attention KV, GDN state. Used by --verbose, the README table and the
check that a requested context fits in the memory the device reports."""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from .config import TextConfig


def weight_bytes(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def kv_bytes_per_token(cfg: TextConfig, kv_bits: int | None = None, group_size: int = 64, dtype_bytes: int = 2) -> float:
    """Keys + values of every full-attention layer for one token. Quantized KV stores bits/8 bytes per
    element plus a float16 scale and bias per group."""
    n_attn = sum(k == "full_attention" for k in cfg.layer_types)
    elems = 2 * cfg.num_key_value_heads * cfg.head_dim * n_attn
    per_elem = dtype_bytes if not kv_bits else kv_bits / 8 + 2 * 2 / group_size
    return elems * per_elem


def gdn_state_bytes(cfg: TextConfig, dtype_bytes: int = 2) -> int:
    """Recurrent state (float32) and conv history of every GDN layer, for one sequence."""
    n_gdn = sum(k == "linear_attention" for k in cfg.layer_types)
    conv_dim = 2 * cfg.linear_num_key_heads * cfg.linear_key_head_dim + \
        cfg.linear_num_value_heads * cfg.linear_value_head_dim
    state = cfg.linear_num_value_heads * cfg.linear_value_head_dim * cfg.linear_key_head_dim * 4
    return n_gdn * (state + (cfg.linear_conv_kernel_dim - 1) * conv_dim * dtype_bytes)


def estimate(cfg: TextConfig, context: int, weights: int, kv_bits: int | None = None, group_size: int = 64) -> dict:
    kv = kv_bytes_per_token(cfg, kv_bits, group_size) * context
    gdn = gdn_state_bytes(cfg)
    return {"weights": weights, "kv": kv, "gdn": gdn, "total": weights + kv + gdn}


def device_memory() -> int | None:
    """Bytes the device will let us keep resident (Metal's recommended working set), or None if unknown."""
    try:
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    except Exception:  # noqa: BLE001  (no GPU backend: nothing reported)
        return None
    return info.get("max_recommended_working_set_size") or info.get("memory_size")


def report(model, tokens: int, kv_bits: int | None = None) -> str:
    e = estimate(model.config.text, tokens, weight_bytes(model), kv_bits)
    gb = lambda b: f"{b / 1e9:.3f} GB"
    return (f"Memory at {tokens} tokens: weights {gb(e['weights'])}, KV cache {gb(e['kv'])}"
            f"{f' ({kv_bits}-bit)' if kv_bits else ''}, GDN state {gb(e['gdn'])}, "
            f"total {gb(e['total'])}; peak {gb(mx.get_peak_memory())}")
