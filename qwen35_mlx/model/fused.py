"""Projections of one input as one matmul, for decode: a GPU pays per operation there, not per byte, so
GDN's four input projections (or two groups of two when the recipe keeps in_proj_a/b unquantized) and the
MLP's gate and up projections each become one launch.

The fused arrays are the concatenated weights; the original layers keep row views of them, so no memory is
added and the module tree, checkpoints and conversion see the layers as they were. If a layer's weights are
replaced (load_weights, quantization), `valid()` turns False and the owner re-fuses.
"""

from __future__ import annotations

import itertools

import mlx.core as mx
import mlx.nn as nn

_QUANT = ("group_size", "bits", "mode")


def _key(m):
    """What must agree for layers to share one matmul (None: this layer cannot be fused)."""
    if "bias" in m or not isinstance(m, nn.Linear | nn.QuantizedLinear):
        return None
    q = tuple(getattr(m, a, None) for a in _QUANT) if isinstance(m, nn.QuantizedLinear) else None
    return type(m), m.weight.dtype, m.weight.shape[1:], q, tuple(k for k in ("scales", "biases") if k in m)


class FusedLinear:
    def __init__(self, modules):
        self.quant = {a: getattr(modules[0], a, None) for a in _QUANT} \
            if isinstance(modules[0], nn.QuantizedLinear) else None
        names = ["weight"] + [k for k in ("scales", "biases") if k in modules[0]]
        self.arrays = {n: mx.concatenate([m[n] for m in modules]) for n in names}
        mx.eval(self.arrays)
        self.splits = list(itertools.accumulate(m.weight.shape[0] for m in modules))[:-1]
        for m, lo, hi in zip(modules, [0, *self.splits], [*self.splits, None]):
            for n, a in self.arrays.items():
                m[n] = a[lo:hi]
        mx.eval([m.parameters() for m in modules])

    def __call__(self, x) -> list:
        a = self.arrays
        if self.quant is None:
            y = x @ a["weight"].T
        else:
            y = mx.quantized_matmul(x, a["weight"], a["scales"], a.get("biases"), transpose=True, **self.quant)
        return mx.split(y, self.splits, axis=-1)


class Projections:
    """Layers reading the same input, run as few matmuls as their types allow (consecutive layers of the same
    kind, dtype and quantization share one). `__call__(x)` returns their outputs in order."""

    def __init__(self, modules):
        self.modules = list(modules)
        self.parts = []
        for key, run in itertools.groupby(modules, _key):
            run = list(run)
            if key is not None and len(run) > 1:
                self.parts.append(FusedLinear(run))
            else:
                self.parts.extend(run)
        self.weights = [m.weight for m in self.modules]

    def valid(self, modules) -> bool:
        """Still these layers (not replaced, e.g. by quantization) with these weights (not reloaded)."""
        return len(modules) == len(self.modules) and all(
            m is o and m.weight is w for m, o, w in zip(modules, self.modules, self.weights))

    def __call__(self, x) -> list:
        out = []
        for p in self.parts:
            r = p(x)
            out.extend(r if isinstance(p, FusedLinear) else [r])
        return out
