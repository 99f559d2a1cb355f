"""A gated-attention layer's query/key heads in one launch (metal/attn_qk.metal): per-head RMSNorm and rope,
from the fused projection row to the head-major layout attention reads. Used for decode on a GPU, where each
operation costs a launch; the MLX-ops branch (Attention.project) is its reference."""

from __future__ import annotations

from . import _metal
from .gdn import gpu_backend
from .norm import threads


def qk_backend(D: int, rot: int) -> str | None:
    """The backend attn_qk runs on here, or None (no GPU kernel backend, switched off, or a shape it does not
    take: D a multiple of 4 up to 1024 channels, an even rotary part within the head)."""
    if D % 4 or D > 1024 or rot % 2 or not 0 < rot <= D or not _metal.enabled("attn_qk"):
        return None
    return gpu_backend()


def attn_qk(proj, qw, kw, inv_freq, pos, eps: float, *, NQ: int, NK: int, D: int, rot: int, backend: str):
    """proj [B, T, P]: [NQ heads of (query | gate) | NK key heads | values], P = 2 NQ D + 2 NK D; qw, kw [D]
    float32 norm weights; inv_freq [rot / 2] float32; pos: int32 scalar array, the first token's position.
    Returns q [B, NQ, T, D] and k [B, NK, T, D] in proj's dtype: normed, then rotated on the first rot channels."""
    B, T, P = proj.shape
    if P != 2 * NQ * D + 2 * NK * D:
        raise ValueError(f"attn_qk: projection row of {P} values; expected {2 * NQ * D + 2 * NK * D}")
    NT = threads(D)
    q, k = _metal.kernel("attn_qk", backend)(
        inputs=[proj, qw, kw, inv_freq, pos.reshape(1), _metal.f32_scalar(float(eps))],   # [1]: a pointer on both
        template=[("InT", proj.dtype), ("D", D), ("NQ", NQ), ("NK", NK), ("ROT", rot), ("NT", NT)],
        grid=(NT * T, NQ + NK, B),
        threadgroup=(NT, 1, 1),
        output_shapes=[(B, NQ, T, D), (B, NK, T, D)],
        output_dtypes=[proj.dtype, proj.dtype],
    )
    return q, k
