"""SwiGLU MLP: down(silu(gate(x)) * up(x))."""

import mlx.nn as nn

from .fused import Projections


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self._fused = None                         # decode: gate and up as one matmul

    def ensure_fused(self) -> bool:
        """Build the fused decode projections, or rebuild them if the weights were replaced; True if built."""
        modules = [self.gate_proj, self.up_proj]
        if self._fused is not None and self._fused.valid(modules):
            return False
        self._fused = Projections(modules)
        return True

    def __call__(self, x):
        if x.shape[-2] == 1 and self._fused is not None:
            gate, up = self._fused(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(nn.silu(gate) * up)
