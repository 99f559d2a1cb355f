"""What a context costs: weights, attention KV, GDN state and the prefill working set. Used by --verbose,
the README table and the check that a requested context fits in the memory the device reports.

The estimates count resident arrays only: the MTP head's tensors are loaded lazily and never touched by
plain decoding, so they cost disk, not memory.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from .config import Qwen35Config, TextConfig
from .errors import GenerationError
from .loading import ZERO_CENTRED_NORMS

GB = 1e9
IN_FLIGHT_LAYERS = 3       # layers whose intermediates a GPU holds at once in prefill (measured on an H100;
                           # with two segments in flight, 0.8B bf16 at 32K: ~2.9 layers' worth at 8192-token steps)
IN_FLIGHT_SEGMENTS = 2     # prefill segments (attention layer to attention layer) queued at once (Qwen35Model)
SCORE_COPIES = 1           # copies of a block's scores alive at once (mask and softmax reuse the buffer; measured)


class ContextMemoryError(GenerationError):
    """The requested context does not fit in the memory the device reports."""


def weight_bytes(model) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def _dtype_bytes(model) -> int:
    """Bytes per activation / KV element: the dtype the embedding hands to the layers."""
    emb = model.model.language_model.embed_tokens
    w = emb.get("scales") if "scales" in emb else emb.weight
    return w.dtype.size if mx.issubdtype(w.dtype, mx.floating) else 2


def kv_bytes_per_token(cfg: TextConfig, kv_bits: int | None = None, group_size: int = 64,
                       dtype_bytes: int = 2) -> float:
    """Keys + values of every full-attention layer for one token. Quantized KV stores bits/8 bytes per
    element plus a scale and a bias (activation dtype) per group."""
    n_attn = sum(k == "full_attention" for k in cfg.layer_types)
    elems = 2 * cfg.num_key_value_heads * cfg.head_dim * n_attn
    per_elem = dtype_bytes if not kv_bits else kv_bits / 8 + 2 * dtype_bytes / group_size
    return elems * per_elem


def gdn_state_bytes(cfg: TextConfig, dtype_bytes: int = 2) -> int:
    """Recurrent state (float32) and conv history (activation dtype) of every GDN layer, for one sequence."""
    n_gdn = sum(k == "linear_attention" for k in cfg.layer_types)
    conv_dim = 2 * cfg.linear_num_key_heads * cfg.linear_key_head_dim + \
        cfg.linear_num_value_heads * cfg.linear_value_head_dim
    state = cfg.linear_num_value_heads * cfg.linear_value_head_dim * cfg.linear_key_head_dim * 4
    return n_gdn * (state + (cfg.linear_conv_kernel_dim - 1) * conv_dim * dtype_bytes)


def prefill_bytes(cfg: TextConfig, chunk: int, context: int, kv_bits: int | None = None, group_size: int = 64,
                  dtype_bytes: int = 2) -> float:
    """Transient memory of the last prefill chunk at `context` tokens: the attention scores (MLX's unfused
    attention for head dim 256 materialises [B, Hq, rows, context] in the activation dtype, where attention
    goes in query blocks bounded by attention.SCORE_BYTES), the keys and values of one layer per segment in
    flight dequantized when the cache is quantized, the copy one attention layer's KV buffer makes when it
    grows, and the chunk's activations."""
    from .model.attention import block_rows  # noqa: PLC0415
    chunk = min(chunk, context)
    rows = min(chunk, block_rows(1, cfg.num_attention_heads, context))
    scores = SCORE_COPIES * cfg.num_attention_heads * rows * context * dtype_bytes
    if kv_bits:                                                 # each segment in flight: one layer dequantized
        scores += IN_FLIGHT_SEGMENTS * 2 * cfg.num_key_value_heads * cfg.head_dim * context * dtype_bytes
    n_attn = max(1, sum(k == "full_attention" for k in cfg.layer_types))
    kv_grow = kv_bytes_per_token(cfg, kv_bits, group_size, dtype_bytes) * context / n_attn
    conv_dim = 2 * cfg.linear_num_key_heads * cfg.linear_key_head_dim + \
        cfg.linear_num_value_heads * cfg.linear_value_head_dim
    width = max(cfg.intermediate_size or 0, 2 * conv_dim, 2 * cfg.num_attention_heads * cfg.head_dim)
    activations = IN_FLIGHT_LAYERS * chunk * (8 * cfg.hidden_size + 4 * width) * 4
    return scores + kv_grow + activations


def estimate(cfg: TextConfig, context: int, weights: int, kv_bits: int | None = None, group_size: int = 64,
             prefill_chunk: int | None = None, dtype_bytes: int = 2) -> dict:
    kv = kv_bytes_per_token(cfg, kv_bits, group_size, dtype_bytes) * context
    gdn = gdn_state_bytes(cfg, dtype_bytes)
    pre = prefill_bytes(cfg, prefill_chunk, context, kv_bits, group_size, dtype_bytes) if prefill_chunk else 0
    return {"weights": weights, "kv": kv, "gdn": gdn, "prefill": pre, "total": weights + kv + gdn + pre}


def checkpoint_weight_bytes(cfg: Qwen35Config, spec=None, dtype_bytes: int = 2, predicate=None) -> dict:
    """Resident weight bytes of a checkpoint with this config: stored at `dtype_bytes` per element, or
    quantized with `spec` by the recipe. Shapes come from the model itself, built lazily (nothing is
    allocated). Norms count as float32. Returns {"text", "vision", "total"} in bytes."""
    from .model.qwen35 import Qwen35Model  # noqa: PLC0415
    from .quantize import experts_decision, quantized_bytes, recipe  # noqa: PLC0415
    predicate = predicate or recipe
    params = dict(tree_flatten(Qwen35Model(cfg).parameters()))
    out = {"text": 0.0, "vision": 0.0}
    for name, v in params.items():
        shape, path = tuple(v.shape), name.rsplit(".", 1)[0]         # `<module>.weight`, `<experts>.gate_up_proj`
        if ZERO_CENTRED_NORMS.search(name):
            nbytes = 4 * shape[0]                                       # 1 + w, kept float32
        else:
            q = None
            if spec is not None and path.endswith(".experts"):
                q = experts_decision(path, [params[f"{path}.gate_up_proj"].shape, params[f"{path}.down_proj"].shape],
                                     spec, predicate)
            elif spec is not None and len(shape) >= 2:
                q = predicate(path, shape, spec)
            nbytes = quantized_bytes(shape, q, dtype_bytes)
        out["vision" if name.startswith("model.visual.") else "text"] += nbytes
    out["total"] = out["text"] + out["vision"]
    return out


def device_memory() -> int | None:
    """Bytes the device will let us keep resident (Metal's recommended working set, CUDA's total memory),
    or None when the device reports no limit (the CPU backend)."""
    try:
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    except Exception:  # noqa: BLE001  (no GPU backend: nothing reported)
        return None
    return info.get("max_recommended_working_set_size") or info.get("memory_size") or info.get("total_memory")


def prefill_chunk(model, tokens: int, kv_bits: int | None, kv_group_size: int, chunk: int, floor: int,
                  limit: int | None = None) -> int:
    """`chunk` halved while a context of `tokens` would not fit in `limit` bytes with it (default: what the device
    reports), but not below `floor` (check_fits then says what else to change)."""
    limit = device_memory() if limit is None else limit
    if not limit:
        return chunk
    cfg, dbytes = model.config.text, _dtype_bytes(model)
    rest = estimate(cfg, tokens, weight_bytes(model), kv_bits, kv_group_size, None, dbytes)["total"]
    return max(floor, _halved_to_fit(cfg, chunk, floor, rest, limit, tokens, kv_bits, kv_group_size, dbytes))


def _halved_to_fit(cfg, chunk, floor, rest, limit, tokens, kv_bits, kv_group_size, dbytes) -> int:
    """`chunk` halved while `rest` bytes plus its prefill working set exceed `limit`, until it is <= floor."""
    while chunk > floor and rest + prefill_bytes(cfg, chunk, tokens, kv_bits, kv_group_size, dbytes) > limit:
        chunk //= 2
    return chunk


def check_fits(model, tokens: int, kv_bits: int | None = None, kv_group_size: int = 64,
               prefill_chunk: int = 2048, limit: int | None = None) -> dict | None:
    """Raise ContextMemoryError, naming what to change, when `tokens` of context (prompt + generation)
    cannot fit in `limit` bytes (default: what the device reports; no check when it reports nothing)."""
    limit = device_memory() if limit is None else limit
    if not limit:
        return None
    cfg, dbytes = model.config.text, _dtype_bytes(model)
    weights = weight_bytes(model)
    e = estimate(cfg, tokens, weights, kv_bits, kv_group_size, prefill_chunk, dbytes)
    if e["total"] <= limit:
        return e
    gb = lambda b: f"{b / GB:.2f} GB"  # noqa: E731
    fixes = []
    rest = e["total"] - e["kv"]
    for bits in (8, 4):
        if not kv_bits or bits < kv_bits:
            kv = kv_bytes_per_token(cfg, bits, kv_group_size, dbytes) * tokens
            kv_pre = prefill_bytes(cfg, prefill_chunk, tokens, bits, kv_group_size, dbytes)
            total = rest - e["prefill"] + kv + kv_pre
            fixes.append(f"--kv-bits {bits} (KV cache {gb(kv)}, total {gb(total)})")
    chunk = _halved_to_fit(cfg, prefill_chunk, 64, e["total"] - e["prefill"], limit, tokens, kv_bits, kv_group_size,
                           dbytes)
    if chunk < prefill_chunk:
        pre = prefill_bytes(cfg, chunk, tokens, kv_bits, kv_group_size, dbytes)
        fixes.append(f"--prefill-chunk {chunk} (prefill working set {gb(pre)}, total "
                     f"{gb(e['total'] - e['prefill'] + pre)})")
    if not any(type(m).__name__.startswith("Quantized") for _, m in model.named_modules()):
        from .quantize import QuantSpec  # noqa: PLC0415
        w4 = checkpoint_weight_bytes(model.config, QuantSpec(4, 64), dbytes)["total"]
        fixes.append(f"a 4-bit checkpoint (python -m qwen35_mlx.convert -q; weights {gb(w4)})")
    raise ContextMemoryError(
        f"a context of {tokens} tokens needs about {gb(e['total'])}: weights {gb(weights)}, KV cache "
        f"{gb(e['kv'])}{f' ({kv_bits}-bit)' if kv_bits else ''}, GDN state {gb(e['gdn'])}, prefill working set "
        f"{gb(e['prefill'])} (--prefill-chunk {prefill_chunk}); the device reports {gb(limit)}. "
        "To reduce it: " + "; ".join(fixes) + ", or a shorter prompt / --max-tokens.")


def report(model, tokens: int, kv_bits: int | None = None, kv_group_size: int = 64, cache=None) -> str:
    """Weights, KV cache and GDN state at `tokens` of context (the cache's own arrays when given, else the
    estimate), and the process's peak."""
    dbytes = _dtype_bytes(model)
    e = estimate(model.config.text, tokens, weight_bytes(model), kv_bits, kv_group_size, dtype_bytes=dbytes)
    if cache is not None:
        e.update(cache.nbytes)
        e["total"] = e["weights"] + e["kv"] + e["gdn"]
    gb = lambda b: f"{b / GB:.3f} GB"  # noqa: E731
    return (f"Memory at {tokens} tokens: weights {gb(e['weights'])}, KV cache {gb(e['kv'])}"
            f"{f' ({kv_bits}-bit)' if kv_bits else ''}, GDN state {gb(e['gdn'])}, "
            f"total {gb(e['total'])}; peak {gb(mx.get_peak_memory())}")
