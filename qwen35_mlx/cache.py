"""Per-sequence cache: KV for the attention layers, conv + recurrent state for the GDN layers.

GDN state cannot be trimmed back to an earlier position, so reuse of a shared prompt prefix works by
snapshots (`snapshot` / `restore`) taken at chunk boundaries, not by trimming.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import KVCache, QuantizedKVCache


class GDNCache:
    """conv: the last K-1 pre-conv rows [B, K-1, C]; state: [B, Hv, Dv, Dk] float32."""

    def __init__(self):
        self.conv = None
        self.state = None

    @property
    def state_arrays(self):
        return [a for a in (self.conv, self.state) if a is not None]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state_arrays)

    def copy(self) -> "GDNCache":
        c = GDNCache()
        c.conv, c.state = self.conv, self.state                  # arrays are immutable: sharing is a copy
        return c


def _kv_copy(c):
    new = type(c).__new__(type(c))
    new.__dict__.update(c.__dict__)
    return new


class ModelCache(list):
    """One entry per decoder layer, plus the tokens seen (`offset`) and the mrope delta of the prompt."""

    def __init__(self, layer_types, kv_bits: int | None = None, kv_group_size: int = 64):
        super().__init__(
            GDNCache() if kind == "linear_attention"
            else (QuantizedKVCache(group_size=kv_group_size, bits=kv_bits) if kv_bits else KVCache())
            for kind in layer_types)
        self.offset = 0
        self.rope_delta = 0
        self.kv_bits = kv_bits

    @property
    def nbytes(self) -> dict:
        kv = sum(c.nbytes for c in self if not isinstance(c, GDNCache) and c.keys is not None)
        gdn = sum(c.nbytes for c in self if isinstance(c, GDNCache))
        return {"kv": kv, "gdn": gdn}

    def state_arrays(self):
        out = []
        for c in self:
            if isinstance(c, GDNCache):
                out += c.state_arrays
            elif c.keys is not None:
                out += [c.keys, c.values] if not isinstance(c.keys, tuple) else [*c.keys, *c.values]
        return out

    def snapshot(self) -> "ModelCache":
        """A cheap copy of the cache at this point: later updates to either side do not touch the other.

        KV caches write into preallocated buffers in place, so their arrays are sliced to the used length.
        """
        snap = ModelCache.__new__(ModelCache)
        list.__init__(snap, [c.copy() if isinstance(c, GDNCache) else _kv_snapshot(c) for c in self])
        snap.offset, snap.rope_delta, snap.kv_bits = self.offset, self.rope_delta, self.kv_bits
        return snap


def _kv_snapshot(c):
    new = _kv_copy(c)
    if c.keys is not None:
        n = c.offset
        cut = (lambda a: tuple(x[..., :n, :] for x in a)) if isinstance(c.keys, tuple) else (lambda a: a[..., :n, :])
        new.keys, new.values = cut(c.keys), cut(c.values)
    return new
