"""SwiGLU MLP: down(silu(gate(x)) * up(x))."""

import mlx.nn as nn

from .fused import DecodeFusion


class MLP(DecodeFusion, nn.Module):
    FUSE = ("gate_proj", "up_proj")   # decode: one matmul
    ROW = ("down_proj",)

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def __call__(self, x):
        if x.shape[-2] == 1 and self._fused is not None:
            gate, up = self._fused(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(nn.silu(gate) * up)
