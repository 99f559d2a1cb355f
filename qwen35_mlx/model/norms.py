"""RMS norms. Qwen3.5's decoder norms are zero-centred (y = rmsnorm(x) * (1 + w)); the loader folds the
+1 into the weight in float32 and keeps these weights in float32 (bf16 would round 1 + w to 2^-7)."""

import mlx.core as mx
import mlx.nn as nn

from ..kernels.norm import rms_norm


class RMSNorm(nn.Module):
    """`weight` holds the effective multiplier (1 + w of the checkpoint), float32."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.ones((dims,), mx.float32)
        self.eps = eps

    def __call__(self, x):
        # fp32 weight -> fp32 result, cast once: the rounding transformers applies
        return rms_norm(x, self.weight, self.eps)

    def residual(self, x, h):
        """(norm(x + h), x + h): the residual add and this norm in one launch on a GPU."""
        return rms_norm(h, self.weight, self.eps, residual=x)


class GatedRMSNorm(nn.Module):
    """GDN output norm: w * rmsnorm(x) * silu(z) over the head dim; plain (not zero-centred) weight."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x, z):
        return rms_norm(x, self.weight, self.eps, gate=z)
