"""Per-sequence cache: KV for the attention layers, conv + recurrent state for the GDN layers.

GDN state cannot be trimmed back to an earlier position, so reuse of a shared prompt prefix works by
snapshots (`snapshot` / `restore`) taken at chunk boundaries; KV caches are simply trimmed.
`PromptCache` keeps one live cache and its snapshots across calls (multi-turn chat).
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import KVCache as _KVCache
from mlx_lm.models.cache import QuantizedKVCache

TAIL_ROWS = 256         # rows of a KVCache's tail (below)


class KVCache(_KVCache):
    """mlx-lm's KVCache, plus a tail: the newest rows that the compiled decode step (Qwen35Model._step_in_graph)
    writes into a small buffer beside the big ones, attn_decode reading both. A row written into the big buffers
    copies them whole whenever the step before still reads them on the GPU (MLX writes in place only into a buffer
    nothing else holds): the whole cache moved every token, wherever the GPU is the slower side. The tail is
    merged into the big buffers when full (after the steps reading them are done: in place) and before anything
    else reads `keys` or `values`, so the rest of the package, and mlx-lm's own functions, see mlx-lm's cache."""

    def __init__(self):
        self.tail = None        # (keys, values) [B, heads, TAIL_ROWS, D], the rows n0 .. offset; and n0
        super().__init__()

    def _merged(name):                              # noqa: N805 (a property factory, run in the class body)
        def get(self):
            self.merge_tail()
            return self.__dict__[name]

        def put(self, v):
            self.merge_tail()
            self.__dict__[name] = v
        return property(get, put)

    keys, values = _merged("_keys"), _merged("_values")
    del _merged

    def merge_tail(self):
        """The tail's rows written into the big buffers (which the tail's owner made long enough)."""
        if self.tail is None:
            return
        (tk, tv), n0 = self.tail
        self.tail = None
        n = self.offset - n0                    # (fewer than it holds after a trim)
        if n > 0:
            self._keys[..., n0:self.offset, :] = tk[..., :n, :]
            self._values[..., n0:self.offset, :] = tv[..., :n, :]

    def empty(self):
        return self._keys is None

    @property
    def nbytes(self):
        tail = sum(a.nbytes for a in self.tail[0]) if self.tail is not None else 0
        return 0 if self._keys is None else self._keys.nbytes + self._values.nbytes + tail


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



def reserve_rows(c: KVCache, rows: int) -> None:
    """c's big buffers (holding rows already; its tail left as it is) made to hold at least `rows` rows. They
    grow by a quarter of their size, at least mlx-lm's step, not by its step alone: a compiled decode step over
    the buffers is traced again for each new size."""
    cap = c._keys.shape[2]
    if rows <= cap:
        return
    extra = -(-max(c.step, cap // 4, rows - cap) // c.step) * c.step

    def grow(a):
        return mx.concatenate([a, mx.zeros((*a.shape[:2], extra, a.shape[3]), a.dtype)], axis=2)
    c._keys, c._values = grow(c._keys), grow(c._values)


def tail_for_step(caches: list, n: int) -> int:
    """The KV caches' tails (see KVCache) ready for a compiled decode step writing row n: begun at row n where there
    is none or the caches moved since (a trim), merged and begun again when full; the big buffers made long
    enough to take a full tail. A full tail is merged after waiting for the step before (the last to read the big
    buffers), so the merge writes in place: once per TAIL_ROWS tokens the GPU idles while a step is built.
    -> n0, the tails' first row."""
    first = caches[0].tail
    if first is not None and first[1] <= n < first[1] + TAIL_ROWS and all(
            c.tail is not None and c.tail[1] == first[1] for c in caches):
        return first[1]                                         # (every step but one in TAIL_ROWS)
    held = [c.tail for c in caches]
    if all(t is not None and n == t[1] + TAIL_ROWS for t in held):
        mx.eval([a for t in held for a in t[0]])                # done with the big buffers
    for c in caches:
        c.merge_tail()
        reserve_rows(c, n + TAIL_ROWS)
        B, H, _, D = c._keys.shape
        c.tail = ((mx.zeros((B, H, TAIL_ROWS, D), c._keys.dtype), mx.zeros((B, H, TAIL_ROWS, D), c._values.dtype)), n)
    return n


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
        self.step_ints = None       # (host values, device array) of the next decode step's ints: model's step_ints

    @property
    def nbytes(self) -> dict:
        kv = sum(c.nbytes for c in self if not isinstance(c, GDNCache) and not c.empty())
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

    def snapshot(self) -> "Snapshot":
        """The state after `offset` tokens. Only the GDN layers need copying (their state cannot be
        rewound; arrays are immutable, so holding them is the copy); KV caches are rewound by trimming."""
        return Snapshot(self.offset, self.rope_delta,
                        [(c.conv, c.state) if isinstance(c, GDNCache) else None for c in self])

    def restore(self, snap: "Snapshot") -> None:
        """Go back to a snapshot of this cache taken at an earlier (or the same) offset."""
        if snap.offset > self.offset:
            raise ValueError(f"cannot restore a snapshot at {snap.offset} tokens into a cache at {self.offset}")
        for c, gdn in zip(self, snap.gdn):
            if isinstance(c, GDNCache):
                c.conv, c.state = gdn
            else:
                c.trim(c.offset - snap.offset)
        self.offset, self.rope_delta = snap.offset, snap.rope_delta


class Snapshot:
    """A restorable point of a ModelCache: token count, rope delta, and the GDN layers' states."""

    def __init__(self, offset: int, rope_delta, gdn: list):
        self.offset, self.rope_delta, self.gdn = offset, rope_delta, gdn

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for pair in self.gdn if pair for a in pair if a is not None)


class PromptCache:
    """Reuse across `stream_generate` calls: the tokens the live cache holds, and snapshots of it at
    prefill chunk boundaries and at the end of each turn. A new prompt sharing a prefix restores the
    latest snapshot inside that prefix and prefills only the rest. Prompts with images or videos are
    prefilled whole (their 3-D positions span the whole prompt)."""

    def __init__(self, model, max_snapshots: int = 8, kv_bits: int | None = None, kv_group_size: int = 64):
        self.model = model
        self.max_snapshots = max_snapshots
        self.kv = (kv_bits, kv_group_size)
        self.reset()

    def reset(self):
        self.cache = self.model.make_cache(kv_bits=self.kv[0], kv_group_size=self.kv[1])
        self.tokens: list[int] = []
        self.snapshots: list[Snapshot] = []

    def take_snapshot(self):
        if self.snapshots and self.snapshots[-1].offset == self.cache.offset:
            return
        self.snapshots.append(self.cache.snapshot())
        if len(self.snapshots) > self.max_snapshots:
            self.snapshots.pop(0)

    def reuse(self, prompt: list[int], media: bool) -> int:
        """Rewind the live cache to the longest snapshotted prefix of `prompt` (at least one prompt token is
        always left to run). Returns how many prompt tokens are already in the cache."""
        if media:
            self.reset()
            return 0
        common = 0
        for a, b in zip(self.tokens, prompt):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt) - 1)
        usable = [s for s in self.snapshots if s.offset <= common]
        if not usable:
            self.reset()
            return 0
        snap = usable[-1]
        self.cache.restore(snap)
        self.snapshots = usable
        self.tokens = self.tokens[:snap.offset]
        return snap.offset
