"""Attention kernels (one body each, Metal or CUDA) and their drivers:
  attn_qk     a gated-attention layer's query/key heads in one launch (metal/attn_qk.metal): per-head RMSNorm and
              rope, from the fused projection row to the head-major layout attention reads. Used for decode on a
              GPU, where each operation costs a launch; the MLX-ops branch of Attention.project is its reference.
  attn_flash  prefill attention of a chunk of queries over the cache in one pass (metal/attn_flash.metal): MLX
              has no fused kernel for head dim 256 and materialises the scores.
  attn_decode one query per head over the cache buffers in place, the keys split over threadgroups (a decode step
              has too little work per head for one threadgroup), merged by attn_decode_combine.
The MLX-ops path of Attention.attend is the reference of both."""

from __future__ import annotations

import mlx.core as mx

from . import _metal
from .gdn import gpu_backend


def threads(D: int) -> int:
    """attn_qk's threads per head row: one group of 4 channels each, up to 256 (at least one simdgroup)."""
    n = 32
    while n < 256 and n * 4 < D:
        n *= 2
    return n


def qk_backend(D: int, rot: int) -> str | None:
    """The backend attn_qk runs on here, or None (no GPU kernel backend, switched off, or a shape it does not
    take: D a multiple of 4 up to 1024 channels, an even rotary part within the head)."""
    if D % 4 or D > 1024 or rot % 2 or not 0 < rot <= D or not _metal.enabled("attn_qk"):
        return None
    return gpu_backend()


def attn_qk(proj, qw, kw, inv_freq, pos, eps: float, *, NQ: int, NK: int, D: int, rot: int, backend: str):
    """proj [B, T, P]: [NQ heads of (query | gate) | NK key heads | values], P = 2 NQ D + 2 NK D; qw, kw [D]
    float32 norm weights; inv_freq [rot / 2] float32; pos: int32 scalar array, the first token's position.
    Returns q [B, NQ, T, D] and k [B, NK, T, D] in proj's dtype, normed, then rotated on the first rot channels, and
    the values v [B, NK, T, D] as they are."""
    B, T, P = proj.shape
    if P != 2 * NQ * D + 2 * NK * D:
        raise ValueError(f"attn_qk: projection row of {P} values; expected {2 * NQ * D + 2 * NK * D}")
    NT = threads(D)
    q, k, v = _metal.kernel("attn_qk", backend)(
        inputs=[proj, qw, kw, inv_freq, pos.reshape(1)],                  # [1]: a pointer on both
        template=[("InT", proj.dtype), ("D", D), ("NQ", NQ), ("NK", NK), ("ROT", rot), ("NT", NT),
                  ("EPS", _metal.float_bits(eps))],
        grid=(NT * T, NQ + NK, B),
        threadgroup=(NT, 1, 1),
        output_shapes=[(B, NQ, T, D), (B, NK, T, D), (B, NK, T, D)],
        output_dtypes=[proj.dtype] * 3,
    )
    return q, k, v


# attn_flash launch, per backend: threads (NT / 2 queries per threadgroup), keys per block, queries from
# threadgroup memory (CUDA: dynamic shared memory; Metal's 32 KiB cannot hold them beside K and V at head dim 256).
# CUDA, H100, head dim 256 (benchmarks/RESULTS.md, 21:51 UTC): 256:32:QS within 3% of the best variant at every
# shape timed, 16-22% faster than 128:32 with queries in registers at 32K.
FLASH_NT = {"cuda": 256, "metal": 128}
FLASH_BK = {"cuda": 32, "metal": 16}    # K and V blocks in 33 KiB / 17 KiB
FLASH_QS = {"cuda": True, "metal": False}


def flash_backend(q, k, mask) -> str | None:
    """The backend attn_flash runs on here for attention of q [B, Hq, T, D] over k [B, Hkv, S, D] under `mask`,
    or None: no GPU kernel backend, switched off, or what it does not take (float32, array masks, head dims
    that are not a multiple of 16 up to 256, query heads not a multiple of the key heads)."""
    D, Hq, Hkv = q.shape[-1], q.shape[1], k.shape[1]
    if (q.dtype not in (mx.bfloat16, mx.float16) or D % 16 or D > 256 or Hkv == 0 or Hq % Hkv
            or not (mask is None or (isinstance(mask, str) and mask == "causal")) or not _metal.enabled("attn_flash")):
        return None
    return gpu_backend()


def attn_flash(q, k, v, scale: float, *, causal: bool, backend: str, nt: int | None = None, bk: int | None = None,
               qs: bool | None = None):
    """Softmax attention of q [B, Hq, T, D] over k, v [B, Hkv, S, D] (16-bit), causal with the queries at the end
    of the keys (query i at position S - T + i), or over every key. Returns [B, T, Hq, D] in q's dtype.
    nt, bk, qs: threads, keys per block, queries in threadgroup memory (defaults per backend above)."""
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if causal and S < T:
        raise ValueError(f"attn_flash: {T} causal queries at the end of {S} keys")
    nt, bk = nt or FLASH_NT[backend], bk or FLASH_BK[backend]
    qs = FLASH_QS[backend] if qs is None else qs
    row = (D + 8) * q.dtype.size                                   # the body's LD
    arrays = ((nt // 2) * row if qs else 8 * q.dtype.size, bk * row, bk * row)   # Qs, Ks, Vs
    (out,) = _metal.kernel("attn_flash", backend, arrays)(
        inputs=[q, k.astype(q.dtype), v.astype(q.dtype), _metal.ints(T, S)],
        template=[("InT", q.dtype), ("D", D), ("Hq", Hq), ("Hkv", Hkv), ("BK", bk), ("NT", nt),
                  ("CAUSAL", causal), ("QS", qs), ("SCALE", _metal.float_bits(scale))],
        grid=(nt * -(-T // (nt // 2)), Hq, B),
        threadgroup=(nt, 1, 1),
        output_shapes=[(B, T, Hq, D)],
        output_dtypes=[q.dtype],
    )
    return out


DECODE_NT = 128                         # attn_decode: 4 simdgroups
DECODE_SPLITS = 128                     # aim: keys split over about this many threadgroups per key head
DECODE_NSMAX = 1024                     # bound on the splits (attn_decode_combine walks them in a loop)
DECODE_MAX_G = 8                        # query heads per key head the kernel keeps in registers
COMBINE_NT = 128                        # attn_decode_combine: 4 simdgroups per 32 columns of a query head


def decode_backend(q, k) -> str | None:
    """The backend attn_decode runs on here for one query per head q [B, Hq, 1, D] (16-bit or float32) over
    k [B, Hkv, S, D], or None (decode_backend_for)."""
    return decode_backend_for(q.shape[-1], q.shape[1], k.shape[1], q.dtype)


def decode_backend_for(D: int, Hq: int, Hkv: int, dtype) -> str | None:
    """decode_backend by shapes: a key row must be read by a power-of-2 number of lanes, up to 32, in 16-byte
    pieces, and at most DECODE_MAX_G query heads share a key head."""
    lanes = D * dtype.size // 16
    if (dtype not in (mx.bfloat16, mx.float16, mx.float32) or D * dtype.size % 16 or 32 % max(lanes, 1)
            or Hkv == 0 or Hq % Hkv or Hq // Hkv > DECODE_MAX_G
            or not (_metal.enabled("attn_decode") and _metal.enabled("attn_decode_combine"))):
        return None
    return gpu_backend()


def decode_split(S: int, G: int, splits: int | None = None) -> tuple[int, int]:
    """(keys per threadgroup L, its bound LMAX): a power of 2, about S / splits (default DECODE_SPLITS), at least
    64; the scores of L keys for G heads take at most 16 KiB of threadgroup memory."""
    splits = splits or DECODE_SPLITS
    lmax = 1 << (max(64, min(1024, 4096 // G)).bit_length() - 1)
    L = 64
    while L < lmax and (L * splits < S or -(-S // L) > DECODE_NSMAX):
        L *= 2
    return L, lmax


def attn_decode(q, kc, vc, S, scale: float, *, backend: str, gate=None, nt: int = DECODE_NT, tail=None):
    """One query per head q [B, Hq, 1, D] over the first S rows of the cache buffers kc, vc [B, Hkv, SC, D] (read in
    place). Returns [B, 1, Hq * D] in q's dtype, times sigmoid(gate) where a gate [B, 1, Hq, D] is given (any
    strides: read in place). S: an int, or an int32 array whose first element it is, where it is data (a compiled
    decode step, whose graph must not change shape as the cache fills): the keys are then split for the capacity
    SC, and the splits past S stay idle. tail: (kt, vt) [B, Hkv, TR, D] holding the rows from N0 on (row r at
    r - N0), N0 the second element of S (then an array), the rest in kc, vc; S <= SC still."""
    B, Hq, _, D = q.shape
    Hkv, SC = kc.shape[1], kc.shape[2]
    G = Hq // Hkv
    data = isinstance(S, mx.array)
    keys = SC if data else S
    if Hq % Hkv or G > DECODE_MAX_G or not 0 < keys <= SC:
        raise ValueError(f"attn_decode: {Hq} query heads over {Hkv} key heads, {S} of {SC} cache rows")
    if gate is not None and gate.shape != (B, 1, Hq, D):
        raise ValueError(f"attn_decode: gate of shape {tuple(gate.shape)}; expected {(B, 1, Hq, D)}")
    if tail is not None and (not data or S.size < 2 or tail[0].shape[:2] != kc.shape[:2]
                             or tail[0].shape[3] != D or tail[1].shape != tail[0].shape):
        raise ValueError("attn_decode: a tail takes S as data [S, N0] and buffers [B, Hkv, TR, D] like the cache's")
    kt, vt = tail if tail is not None else (kc, vc)             # no tail: the slots are never read
    # Split for the capacity, twice as finely: the filled rows, from 4/5 of it (reserve_rows), get as many splits
    # as S would get on its own.
    L, lmax = decode_split(keys, G, 2 * DECODE_SPLITS if data else None)
    NS = -(-keys // L)
    if NS > DECODE_NSMAX:
        raise ValueError(f"attn_decode: {keys} keys need {NS} splits, more than {DECODE_NSMAX}")
    n_keys = S if data else _metal.ints(S)
    meta = _metal.ints(L, SC, NS, kt.shape[2])
    o, m, l = _metal.kernel("attn_decode", backend)(
        inputs=[q, kc.astype(q.dtype), vc.astype(q.dtype), kt.astype(q.dtype), vt.astype(q.dtype), n_keys, meta],
        template=[("InT", q.dtype), ("D", D), ("Hq", Hq), ("Hkv", Hkv), ("LMAX", lmax), ("NT", nt),
                  ("SCALE", _metal.float_bits(scale)), ("TAIL", tail is not None)],
        grid=(nt * NS, Hkv, B),
        threadgroup=(nt, 1, 1),
        output_shapes=[(B, Hq, NS, D), (B, Hq, NS), (B, Hq, NS)],
        output_dtypes=[mx.float32] * 3,
    )
    return decode_combine(o, m, l, n_keys, meta, q.dtype, gate, backend)


def decode_combine(o, m, l, n_keys, meta, dtype, gate, backend: str):
    """attn_decode's splits o [B, Hq, NS, D], m and l [B, Hq, NS] merged into [B, 1, Hq * D] (gated if a gate)."""
    B, Hq, _, D = o.shape
    (out,) = _metal.kernel("attn_decode_combine", backend)(
        inputs=[o, m, l, m if gate is None else gate, n_keys, meta],   # no gate: the kernel never reads that slot
        template=[("InT", dtype), ("D", D), ("Hq", Hq), ("NT", COMBINE_NT), ("GATE", gate is not None)],
        grid=(COMBINE_NT * -(-D // 32), Hq, B),
        threadgroup=(COMBINE_NT, 1, 1),
        output_shapes=[(B, 1, Hq * D)],
        output_dtypes=[dtype],
    )
    return out
