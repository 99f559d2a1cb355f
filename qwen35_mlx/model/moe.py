"""Sparse MoE block: fp32 softmax router over all experts, top-k, renormalised; SwiGLU experts run as
gathered batched matmuls; a shared expert scaled by a sigmoid gate."""

import mlx.core as mx
import mlx.nn as nn

from ..config import TextConfig
from .mlp import MLP


def _gather_linear(x, weight, idx, sorted_idx, q=None):
    """x [..., 1, K] times weight[idx] [E, N, K] (transposed), as one gathered matmul."""
    if q is None:
        return mx.gather_mm(x, weight.swapaxes(-1, -2), rhs_indices=idx, sorted_indices=sorted_idx)
    return mx.gather_qmm(x, weight, q["scales"], q.get("biases"), rhs_indices=idx, transpose=True,
                         group_size=q["group_size"], bits=q["bits"], mode=q["mode"],
                         sorted_indices=sorted_idx)


class Experts(nn.Module):
    """E SwiGLU experts stored as on the hub: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I].

    Quantized, the weights are packed along H / I with `<name>_scales` (and `_biases`) beside them.
    """

    def __init__(self, n_experts: int, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = mx.zeros((n_experts, 2 * intermediate, hidden))
        self.down_proj = mx.zeros((n_experts, hidden, intermediate))
        self.quant = None                                           # {"group_size", "bits", "mode"} once quantized

    def _q(self, name):
        if self.quant is None:
            return None
        return {**self.quant, "scales": self[f"{name}_scales"], "biases": self.get(f"{name}_biases")}

    def __call__(self, x, idx):
        """x: [N, H]; idx: [N, k] expert ids -> [N, k, H]."""
        N, k = idx.shape
        x = mx.expand_dims(x, (-2, -3))                             # [N, 1, 1, H]
        sort = idx.size >= 64                                       # group tokens by expert for long inputs
        if sort:
            flat = idx.flatten()
            order = mx.argsort(flat)
            inv = mx.argsort(order)
            x = x.flatten(0, -3)[order // k]                        # [N*k, 1, H]
            idx = flat[order]
        h = _gather_linear(x, self.gate_up_proj, idx, sort, self._q("gate_up_proj"))
        gate, up = mx.split(h, 2, axis=-1)
        h = _gather_linear(nn.silu(gate) * up, self.down_proj, idx, sort, self._q("down_proj"))
        if sort:
            h = h[inv].reshape(N, k, 1, -1)
        return h.squeeze(-2)

    def quantize(self, group_size: int, bits: int, mode: str = "affine"):
        for name in ("gate_up_proj", "down_proj"):
            packed = mx.quantize(self[name], group_size=group_size, bits=bits, mode=mode)
            self[name] = packed[0]
            self[f"{name}_scales"] = packed[1]
            if len(packed) > 2 and packed[2] is not None:
                self[f"{name}_biases"] = packed[2]
        self.quant = {"group_size": group_size, "bits": bits, "mode": mode}


class SparseMoe(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = Experts(cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        self.shared_expert = MLP(cfg.hidden_size, cfg.shared_expert_intermediate_size)
        self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)

    def __call__(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = mx.softmax(self.gate(x).astype(mx.float32), axis=-1)
        idx = mx.argpartition(-probs, kth=self.top_k - 1, axis=-1)[:, :self.top_k]
        w = mx.take_along_axis(probs, idx, axis=-1)
        w = w / w.sum(-1, keepdims=True)
        y = (self.experts(x, idx) * w[..., None].astype(x.dtype)).sum(-2)
        y = y + self.shared_expert(x) * mx.sigmoid(self.shared_expert_gate(x))
        return y.reshape(shape)
