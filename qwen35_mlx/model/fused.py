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

    def joined(self, x):
        """The outputs side by side, as the one matmul makes them."""
        a = self.arrays
        if self.quant is None:
            return x @ a["weight"].T
        return mx.quantized_matmul(x, a["weight"], a["scales"], a.get("biases"), transpose=True, **self.quant)

    def __call__(self, x) -> list:
        return mx.split(self.joined(x), self.splits, axis=-1)


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
            m is o and dict.get(m, "weight") is w for m, o, w in zip(modules, self.modules, self.weights))

    def dense_weight(self):
        """The weight of the one matmul all layers share, if it is a plain (unquantized) one, else None."""
        if len(self.parts) == 1 and isinstance(self.parts[0], FusedLinear) and self.parts[0].quant is None:
            return self.parts[0].arrays["weight"]
        return None

    def joined(self, x):
        """The outputs concatenated on the last axis (no copy when all layers share one matmul)."""
        if len(self.parts) == 1 and isinstance(self.parts[0], FusedLinear):
            return self.parts[0].joined(x)
        return mx.concatenate(self(x), axis=-1)

    def __call__(self, x) -> list:
        out = []
        for p in self.parts:
            r = p(x)
            out.extend(r if isinstance(p, FusedLinear) else [r])
        return out


class DecodeFusion:
    """Mixin for a layer whose decode (one token) runs the projections named in FUSE through Projections,
    held in `_fused` (None until the first decode step builds it), and those named in ROW through `row`."""

    FUSE: tuple = ()
    ROW: tuple = ()     # plain projections of one token: decode multiplies by their weights' transposed views, kept
    _fused = None
    _rows = None        # {name: transposed(layer)} for the ROW layers (None for those that are not plain Linears)

    def ensure_fused(self) -> bool:
        """Build the fused decode projections, or rebuild them if the weights were replaced; True if built. The ROW
        layers' transposed views are made again either way (this runs only when something changed)."""
        self.__dict__["_rows"] = {n: transposed(dict.get(self, n)) for n in self.ROW}    # a dict: not in the tree
        modules = [dict.get(self, n) for n in self.FUSE]
        if self._fused is not None and self._fused.valid(modules):
            return False
        self._fused = Projections(modules)
        return True

    def fused_checks(self) -> list:
        """(owner, name, module, weight) for each fused or ROW layer: the fusion is current while every owner still
        holds that module under that name and the module that weight (see Qwen35Model.ensure_fused)."""
        rows = [(n, dict.get(self, n)) for n in self.ROW]
        return [(self, n, m, m.weight) for n, m in [*zip(self.FUSE, self._fused.modules), *rows]]

    def row(self, name: str, x):
        """self[name](x) for one token. For a plain Linear: x @ its weight's transposed view as ensure_fused made
        it, so a compiled decode segment holds the view as a constant instead of a Transpose node replayed on every
        token (graph nodes cost host time per token). A row x [B, 1, K] is multiplied by the view as [1, K, N]:
        MLX wraps a 3-D by 2-D matmul in Flatten and Unflatten nodes, not a 3-D by 3-D one (one batch: the same
        matrix-vector kernel)."""
        wt = self._rows.get(name) if self._rows else None
        if wt is None:
            return self[name](x)
        return x @ (wt[1] if x.ndim == 3 else wt[0])


def plain_weight(m):
    """The weight of a plain bias-free Linear (what a kernel can multiply by as it is), else None."""
    return m.weight if type(m) is nn.Linear and "bias" not in m else None


def transposed(m):
    """(the transposed view of a plain bias-free Linear's weight, the same as [1, K, N]), both evaluated (no copy:
    they share the weight's buffer); None for other layers."""
    w = plain_weight(m)
    if w is None:
        return None
    wt = w.T
    views = (wt, wt[None])
    mx.eval(views)
    return views
