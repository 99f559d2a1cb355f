"""Gated DeltaNet layer: projections, short causal conv, L2-normed q/k, decay and beta gates, the scan,
gated RMSNorm. The scan itself lives in kernels.gdn."""

import mlx.core as mx
import mlx.nn as nn

from ..config import TextConfig
from ..kernels import gdn_kernels
from ..kernels.gdn import gated_delta
from ..kernels.norm import gemv_backend, norm_gemv
from .fused import DecodeFusion, plain_weight
from .norms import GatedRMSNorm


class DepthwiseConv(nn.Module):
    """Causal depthwise conv without bias. `weight` is [C, K, 1] (MLX Conv1d layout; HF stores [C, 1, K]).

    A K-tap shifted sum instead of nn.Conv1d: a few fused elementwise ops, fast on every backend.
    """

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.weight = mx.zeros((channels, kernel, 1))

    def __call__(self, x):
        """x: [B, K-1+T, C] (history rows first) -> silu(conv(x)) [B, T, C]."""
        return _conv_silu(x, self.weight[:, :, 0].T.astype(x.dtype))


# The elementwise stretches of the layer, each compiled into one fused kernel (uncompiled they are ~4x
# slower on a GPU: every op a launch and a pass over memory).
@mx.compile
def _conv_silu(x, w):
    K = w.shape[0]
    T = x.shape[1] - (K - 1)
    out = x[:, 0:T] * w[0]
    for j in range(1, K):
        out = out + x[:, j:j + T] * w[j]
    return nn.silu(out)


def l2norm(x, eps=1e-6):
    """x * rsqrt(sum(x^2) + eps), in float32 (eps inside, on the sum, as the reference does)."""
    x = x.astype(mx.float32)
    return x * mx.rsqrt((x * x).sum(-1, keepdims=True) + eps)


@mx.compile
def _qk(q, k, scale):
    """L2-normalised q (scaled) and k, in fp32, returned in the activation dtype: a bf16 model feeds the scan
    bf16 q/k (as flash-linear-attention does), halving their bytes; the scan accumulates in fp32."""
    return (l2norm(q) * scale).astype(q.dtype), l2norm(k).astype(k.dtype)


@mx.compile
def _gates(a, b, A_log, dt_bias):
    """beta = sigmoid(b); log decay g = -exp(A_log) * softplus(a + dt_bias), all float32."""
    g = -mx.exp(A_log.astype(mx.float32)) * nn.softplus(a.astype(mx.float32) + dt_bias.astype(mx.float32))
    return g, mx.sigmoid(b.astype(mx.float32))


class GatedDeltaNet(DecodeFusion, nn.Module):
    FUSE = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")   # decode: one matmul
    ROW = ("out_proj",)

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.Hk, self.Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        self.Dk, self.Dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        self.K = cfg.linear_conv_kernel_dim
        H = cfg.hidden_size
        self.key_dim, self.value_dim = self.Hk * self.Dk, self.Hv * self.Dv
        conv_dim = 2 * self.key_dim + self.value_dim
        self.in_proj_qkv = nn.Linear(H, conv_dim, bias=False)        # flat [q | k | v]
        self.in_proj_z = nn.Linear(H, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(H, self.Hv, bias=False)
        self.in_proj_a = nn.Linear(H, self.Hv, bias=False)
        self.conv1d = DepthwiseConv(conv_dim, self.K)
        self.dt_bias = mx.ones((self.Hv,))
        self.A_log = mx.zeros((self.Hv,))
        self.norm = GatedRMSNorm(self.Dv, cfg.rms_norm_eps)
        self.out_proj = nn.Linear(self.value_dim, H, bias=False)

    def __call__(self, x, mask=None, cache=None):
        """x: [B, T, H]; mask: [B, T] bool (False = padding) or None; cache: GDNCache or None."""
        conv = cache.conv if cache is not None else None
        state = cache.state if cache is not None else None
        out, conv, state = self.mix(x, conv, state, mask)
        if cache is not None:
            cache.conv, cache.state = conv, state
        return out

    def mix(self, x, conv, state, mask=None):
        """The layer as a function of its inputs and state: (x, conv history, recurrent state) ->
        (output, new conv history, new state). conv/state None mean zeros."""
        B, T, _ = x.shape
        if mask is not None:
            x = mx.where(mask[..., None], x, 0)                       # padding contributes nothing
        if mask is None and self.row_kernel(T, conv, state):
            # decode on a GPU: the projections as one row [qkv | z | b | a], the rest in one kernel
            proj = self._fused.joined(x) if self._fused is not None else mx.concatenate(
                [self.in_proj_qkv(x), self.in_proj_z(x), self.in_proj_b(x), self.in_proj_a(x)], axis=-1)
            return self.mix_row(proj, conv, state)
        if T == 1 and self._fused is not None:
            qkv, z, b, a = self._fused(x)
        else:
            qkv, z, b, a = self.in_proj_qkv(x), self.in_proj_z(x), self.in_proj_b(x), self.in_proj_a(x)
        z = z.reshape(B, T, self.Hv, self.Dv)
        if conv is None:
            conv = mx.zeros((B, self.K - 1, qkv.shape[-1]), qkv.dtype)
        backend = gdn_kernels.conv_backend(self.Dk, self.Dv, self.K)
        if backend:                                      # on a GPU: conv, norms and gates in one kernel
            q, k, v, g, beta, conv = gdn_kernels.gdn_conv(
                qkv, conv, self.conv1d.weight[:, :, 0], a, b, self.A_log, self.dt_bias, Hk=self.Hk, Hv=self.Hv,
                Dk=self.Dk, Dv=self.Dv, backend=backend)
        else:
            q, k, v, g, beta, conv = self.conv_gates(qkv, conv, a, b)
        y, state = gated_delta(q, k, v, g, beta, state, mask=mask)
        y = self.norm(y.astype(x.dtype), z)
        return self.out_proj(y.reshape(B, T, -1)), conv, state

    def row_kernel(self, T, conv, state) -> bool:
        """Whether mix_row runs here: one token, with a state, gdn_decode on a GPU."""
        return T == 1 and conv is not None and state is not None and \
            gdn_kernels.decode_backend(self.Dk, self.K) is not None

    def mix_row(self, proj, conv, state):
        """mix (see above) of one token from its projection row [B, 1, P] = [qkv | z | b | a]: up to the gated norm
        in one gdn_decode launch, the norm and out_proj in one more (out_row)."""
        y, conv, state = gdn_kernels.gdn_decode(
            proj, conv, self.conv1d.weight, self.A_log, self.dt_bias, state, Hk=self.Hk, Hv=self.Hv, Dk=self.Dk,
            Dv=self.Dv, backend=gdn_kernels.decode_backend(self.Dk, self.K))
        return self.out_row(y, proj), conv, state

    def out_row(self, y, proj):
        """out_proj(norm(y, z)) of one token, y [B, 1, Hv Dv] before the gated norm and z read from the projection
        row: one norm_gemv launch where it runs (a plain weight of y's dtype), else the norm then the matmul."""
        C = 2 * self.key_dim + self.value_dim
        w = plain_weight(self.out_proj)
        backend = gemv_backend(y, w, proj, self.Dv)
        if backend:
            return norm_gemv(y, self.norm.weight, self.norm.eps, w, gate=proj, gate_at=C, head=self.Dv,
                             backend=backend)
        heads = (*y.shape[:-1], self.Hv, self.Dv)
        yn = self.norm(y.reshape(heads), proj[..., C:C + self.value_dim].reshape(heads))
        return self.row("out_proj", yn.reshape(y.shape))

    def conv_gates(self, qkv, conv, a, b):
        """The conv, q/k norms and gates in MLX ops (gdn_conv's reference): -> q, k, v, g, beta, new history."""
        B, T, _ = qkv.shape
        conv_in = mx.concatenate([conv.astype(qkv.dtype), qkv], axis=1)
        mixed = self.conv1d(conv_in)
        q, k, v = mx.split(mixed, [self.key_dim, 2 * self.key_dim], axis=-1)
        q, k = _qk(q.reshape(B, T, self.Hk, self.Dk), k.reshape(B, T, self.Hk, self.Dk), self.Dk ** -0.5)
        g, beta = _gates(a, b, self.A_log, self.dt_bias)
        return q, k, v.reshape(B, T, self.Hv, self.Dv), g, beta, conv_in[:, -(self.K - 1):]
