"""The decoder stack, the vision merge and the logits. Module names mirror transformers'
`Qwen3_5ForConditionalGeneration` (model.language_model.*, model.visual.*, lm_head), so the weight map
from a checkpoint is short."""

from __future__ import annotations

import operator

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..cache import KVCache, ModelCache, tail_for_step
from ..config import Qwen35Config, TextConfig
from ..errors import PromptError
from ..kernels._metal import ints
from ..kernels.norm import gemv_backend, norm_gemv
from .attention import Attention
from .fused import DecodeFusion
from .gated_deltanet import GatedDeltaNet
from .mlp import MLP
from .moe import SparseMoe
from .norms import RMSNorm
from .rope import Rope, rope_index


EVAL_LAYERS_T = 256     # from this many tokens a forward pass evaluates after every full-attention layer
# A decode step runs as one compiled graph (_step_in_graph) up to this many cached tokens: the whole context now.
# Measured on an H100 (benchmarks/RESULTS.md, 2026-12-07): at 4885ce4 one graph was +6.7% at 1K and -29% at 32K
# against the segmented step; at 26e903c (scatter KV write, finer capacity split) level; at 7ae4a20 (the step's
# ints on the device) +12% at 8K and +13% at 32K, neither step's peak rising more than 30 MB over what is held.
# (A knob for benchmarks/ab_step.py and the tests of the hand-over.)
GRAPH_STEP_MAX_ROWS = 1 << 30
# Buffers over twice max(the rows filled, this) are a cache trimmed back from a long prompt: segmented there, as the
# one graph splits attn_decode's keys for the buffers' capacity, and most of its splits would idle.
TRIMMED_MIN_ROWS = 8192


def step_ints(cache, position, n0=None):
    """A decode step's ints on the device, int32 [position, row, offset + 1, first], position the 1-D rope offset
    (0 where positions are an array): with the KV caches' tails beginning at row n0 (the one-graph step), the
    tail row it writes (offset - n0) and n0; else (segmented) offset and 0 (every row in the big buffers). An
    array made from host values each step would be written by the CPU and migrated to the GPU by the step's first
    read of it (MLX on CUDA keeps such arrays in managed memory): the step before computes them (hold_step_ints),
    used here when its host values match, as they do from one step to the next."""
    key = (position, cache.offset, n0)
    held = cache.step_ints
    if held is not None and held[0] == key:
        return held[1]
    n = cache.offset
    return mx.array([position or 0, n if n0 is None else n - n0, n + 1, n0 or 0], dtype=mx.int32)


def hold_step_ints(cache, position, n0, ints_next):
    """The next step's ints, computed on the device (the step's ints + STEP_INTS), kept for step_ints."""
    cache.step_ints = ((None if position is None else position + 1, cache.offset + 1, n0), ints_next)


STEP_INTS = ints(1, 1, 1, 0)        # step_ints' change from one token to the next (the same tails)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, kind: str):
        super().__init__()
        self.is_linear = kind == "linear_attention"
        if self.is_linear:
            self.linear_attn = GatedDeltaNet(cfg)
        else:
            self.self_attn = Attention(cfg)
        self.mlp = SparseMoe(cfg) if cfg.is_moe else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    # The residual stream travels between layers as a pair (x, h) whose sum is the stream: each layer's
    # first norm makes the sum (one launch for add + norm on a GPU) and its MLP output h is left for the next
    # layer (the final norm) to add. h is None before the first layer. Same roundings as x + h then norm.

    def project_step(self, x, h, rope, off):
        """decode, attention layer, up to its KV cache: (stream pair, position) -> (stream, q, k, v, gate)."""
        at = self.self_attn
        if at.row_kernel(1, rope, off):
            row, x = self._norm_row(x, h, self.input_layernorm, at._fused)
            return x, *at.project_row(row, rope, off)
        n, x = self._norm_in(x, h)
        return x, *at.project(n, rope, off)

    def finish_step(self, x, out):
        """decode, attention layer, after attending (out: attend's, gated): -> the stream pair."""
        return self._mlp_block(x, self.self_attn.row("o_proj", out))

    def _norm_in(self, x, h):
        """(input norm of the stream, the stream) for the stream x + h (h None: x)."""
        if h is None:
            return self.input_layernorm(x), x
        return self.input_layernorm.residual(x, h)

    def _norm_row(self, x, h, norm, fused, glu=False):
        """decode: (the fused projections `fused` of norm(x + h) as one row, the stream x + h). One norm_gemv
        launch where it runs (add, norm and matrix-vector product), else the norm then the matmul (with glu:
        silu(gate) * up of the [gate; up] row)."""
        w = fused.dense_weight()
        backend = gemv_backend(x, w)
        if backend:
            if h is None:
                return norm_gemv(x, norm.weight, norm.eps, w, glu=glu, backend=backend), x
            return norm_gemv(h, norm.weight, norm.eps, w, residual=x, glu=glu, backend=backend)
        n, x = (norm(x), x) if h is None else norm.residual(x, h)
        if glu:
            gate, up = fused(n)
            return nn.silu(gate) * up, x
        return fused.joined(n), x

    def _mlp_block(self, x, out):
        """The residual add of the mixer output, then the MLP: -> (stream, MLP output), the pair the next
        layer adds."""
        fused = self._decode_mlp(x)
        if fused is not None:                                                     # decode: fused gate/up
            act, x = self._norm_row(x, out, self.post_attention_layernorm, fused, glu=True)
            return x, self.mlp.row("down_proj", act)
        n, x = self.post_attention_layernorm.residual(x, out)
        return x, self.mlp(n)

    def _decode_mlp(self, x):
        """The MLP's fused gate/up projections where x is one token and the MLP a dense one with them built, else
        None."""
        mlp = self.mlp
        return mlp._fused if x.shape[-2] == 1 and isinstance(mlp, MLP) else None

    def linear_step(self, x, h, conv, state):
        """decode, one GDN layer: (x, h, conv history, state) -> (x, h, new conv history, new state)."""
        a = self.linear_attn
        if a.row_kernel(1, conv, state) and a._fused is not None:
            row, x = self._norm_row(x, h, self.input_layernorm, a._fused)
            out, conv, state = a.mix_row(row, conv, state)
        else:
            n, x = self._norm_in(x, h)
            out, conv, state = a.mix(n, conv, state)
        return *self._mlp_block(x, out), conv, state

    def ensure_fused(self) -> list:
        """Fused decode projections, built on the first decode step, rebuilt where weights were replaced since.
        Returns the identity checks that say this is still current (DecodeFusion.fused_checks, plus the mixer and
        MLP themselves)."""
        checks = []
        for name in ("linear_attn" if self.is_linear else "self_attn", "mlp"):
            part = dict.get(self, name)
            checks.append((self, name, part, None))
            if isinstance(part, DecodeFusion):                                      # not SparseMoe
                part.ensure_fused()
                checks += part.fused_checks()
        return checks

    def __call__(self, x, h, rope, positions, attn_mask, gdn_mask, cache):
        """The stream as the pair (x, h) (see above) in and out. (A model's unmasked decode step runs the
        layers through Qwen35Model._decode_step instead, compiled.)"""
        n, x = self._norm_in(x, h)
        if self.is_linear:
            out = self.linear_attn(n, gdn_mask, cache)
        else:
            out = self.self_attn(n, rope, positions, attn_mask, cache)
        return self._mlp_block(x, out)


class TextModel(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [DecoderLayer(cfg, kind) for kind in cfg.layer_types]
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Inner(nn.Module):
    def __init__(self, cfg: Qwen35Config):
        super().__init__()
        self.language_model = TextModel(cfg.text)
        if cfg.vision is not None:
            from .vision import VisionModel  # noqa: PLC0415  (only VL checkpoints carry a tower)
            self.visual = VisionModel(cfg.vision)


class Qwen35Model(nn.Module):
    """`model(input_ids, ..., cache=cache) -> logits [B, T, vocab]`, multimodal inputs as transformers takes them.

    Inference only: from EVAL_LAYERS_T tokens (and in long-context attention) the forward pass evaluates as
    it goes to bound memory, so it is not meant for mx.compile or mx.grad."""

    def __init__(self, cfg: Qwen35Config):
        super().__init__()
        self.config = cfg
        self.model = Inner(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False)
        t = cfg.text
        self.rope = Rope(t.rotary_dim, t.rope_theta, t.mrope_section)

    @property
    def layers(self):
        return self.model.language_model.layers

    @property
    def has_vision(self) -> bool:
        return "visual" in self.model

    def make_cache(self, kv_bits: int | None = None, kv_group_size: int = 64) -> ModelCache:
        return ModelCache(self.config.text.layer_types, kv_bits=kv_bits, kv_group_size=kv_group_size)

    def __call__(self, input_ids=None, *, cache: ModelCache | None = None, pixel_values=None, image_grid_thw=None,
                 pixel_values_videos=None, video_grid_thw=None, attention_mask=None, inputs_embeds=None,
                 position_ids=None, last_only: bool = False, **unused):
        hidden = self.hidden_states(input_ids, cache=cache, pixel_values=pixel_values,
                                    image_grid_thw=image_grid_thw, pixel_values_videos=pixel_values_videos,
                                    video_grid_thw=video_grid_thw, attention_mask=attention_mask,
                                    inputs_embeds=inputs_embeds, position_ids=position_ids)
        if last_only:
            hidden = hidden[:, -1:]
        return self.logits(hidden)

    def logits(self, hidden):
        if self.config.tie_word_embeddings:
            return self.model.language_model.embed_tokens.as_linear(hidden)
        return self.lm_head(hidden)

    def embed(self, input_ids, *, pixel_values=None, image_grid_thw=None, pixel_values_videos=None,
              video_grid_thw=None, attention_mask=None, offset: int = 0):
        """Token embeddings with vision features merged in, and the 3-D positions [3, B, T] plus per-row
        rope deltas when the prompt holds media (else None, None: positions follow the cache offset)."""
        input_ids = mx.array(input_ids)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        embeds = self.model.language_model.embed_tokens(input_ids)
        has_media = image_grid_thw is not None or video_grid_thw is not None
        if pixel_values is not None or pixel_values_videos is not None:
            embeds = self.merge_vision(input_ids, embeds, pixel_values, image_grid_thw,
                                       pixel_values_videos, video_grid_thw)
        if not has_media:
            return embeds, None, None
        if offset:
            raise PromptError("images and videos must come in the first call of a prompt (their 3-D positions "
                              "are computed over the whole prompt)")
        cfg = self.config
        full = self._full_mask(attention_mask, *input_ids.shape, 0)
        positions, deltas = rope_index(input_ids, image_grid_thw, video_grid_thw,
                                       image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                                       spatial_merge_size=cfg.vision.spatial_merge_size,
                                       attention_mask=None if full is None else np.array(full))
        return embeds, positions, [int(d) for d in deltas.tolist()]

    def hidden_states(self, input_ids=None, *, cache=None, pixel_values=None, image_grid_thw=None,
                      pixel_values_videos=None, video_grid_thw=None, attention_mask=None, inputs_embeds=None,
                      position_ids=None):
        lm = self.model.language_model
        offset = cache.offset if cache is not None else 0
        if inputs_embeds is None:
            inputs_embeds, media_pos, deltas = self.embed(
                input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw,
                attention_mask=attention_mask, offset=offset)
            if media_pos is not None:
                position_ids = media_pos if position_ids is None else position_ids
                if cache is not None:
                    cache.rope_delta = deltas[0] if len(deltas) == 1 else deltas
        B, T, _ = inputs_embeds.shape
        if offset + T > self.config.text.max_position_embeddings:
            raise PromptError(f"{offset + T} tokens exceed the model's context of "
                              f"{self.config.text.max_position_embeddings} tokens (max_position_embeddings)")
        full = self._full_mask(attention_mask, B, T, offset)
        positions = position_ids if position_ids is not None else self.positions(full, cache, T)
        attn_mask = self._attention_mask(full, T, offset)
        gdn_mask = None if full is None else full[:, -T:]
        if T == 1:
            self.ensure_fused()
            if cache is not None and full is None:
                x, h = self._decode_step(inputs_embeds, cache, positions)
                cache.offset += T
                return lm.norm.residual(x, h)[0]
        x, h = inputs_embeds, None
        caches = cache if cache is not None else [None] * len(lm.layers)
        running = None
        for layer, c in zip(lm.layers, caches):
            x, h = layer(x, h, self.rope, positions, attn_mask, gdn_mask, c)
            if T >= EVAL_LAYERS_T and not layer.is_linear:
                # A GPU frees a graph's buffers when the graph completes: bound what is in flight to two
                # segments (one running, one queued) by waiting for the one before, never for this one, so
                # the GPU does not idle while the next segment's graph is built.
                mx.async_eval(x, h)
                if running is not None:
                    mx.eval(running)
                running = (x, h)
        if cache is not None:
            cache.offset += T
        return lm.norm.residual(x, h)[0]

    def _decode_step(self, x, cache, positions):
        """One token through the stack: the whole step as one compiled call where the KV caches can be written and
        read inside the graph (_step_in_graph), else in segments split at the attention layers' KV caches: a
        segment is one compiled call running the previous attention layer's output and MLP, the GDN layers in
        between and the next attention layer's projections (7 compiled calls per token for Qwen3.5's 3:1 layout
        instead of ~60 layer calls: host time per call is what decode on a GPU pays). positions: the int offset,
        or [3, B, 1]."""
        pos = None if isinstance(positions, mx.array) else positions
        whole = self._step_in_graph(x, cache, positions, pos)
        if whole is not None:
            return whole
        ints_now = step_ints(cache, pos)
        # a 1-D offset as a view of the step's ints (attn_qk reads it in every threadgroup: see kernels/_metal.ints)
        off = positions if pos is None else ints_now[:1].reshape(())
        S = ints_now[2:3]                                        # the rows filled after this step's write

        def attend(i, q, k, v, gate):
            k, v = cache[i].update_and_fetch(k, v)
            return self.layers[i].self_attn.attend(q, k, v, None, cache[i], gate, n_keys=S)
        x, h, new = self._run_segments(self._segments(), x, off, lambda i: (cache[i].conv, cache[i].state), attend)
        for i, (conv, state) in new.items():
            cache[i].conv, cache[i].state = conv, state
        hold_step_ints(cache, pos, None, ints_now + STEP_INTS)
        return x, h

    def _run_segments(self, segments, x, off, pair, attend):
        """The decode step through `segments` (_segments'), each attention layer's cache write and attention
        between them by attend(layer index, q, k, v, gate) -> its output. pair(i): GDN layer i's (conv, state).
        -> (x, h, {GDN layer index: its new (conv, state)})."""
        h = out = None
        new = {}
        for gdn, proj, fn in segments:
            res = fn(x, h, out, off, *[a for i in gdn for a in pair(i)])
            new.update((i, res[1 + 2 * j:3 + 2 * j]) for j, i in enumerate(gdn))
            x, rest = res[0], res[1 + 2 * len(gdn):]
            if proj is None:
                h = rest[0]
            else:
                h = None                                             # consumed by the projection's norm
                out = attend(proj, *rest)
        return x, h, new

    def _step_in_graph(self, x, cache, positions, pos):
        """The decode step as one compiled call: one call's host time per token. Each attention layer writes its row
        into its cache's tail (see cache.KVCache) at a row given as data, and attn_decode reads the big buffers
        and the tail in place; the tails pass in and out of the graph, the big buffers in only. Runs where every
        attention layer's cache is a KVCache of this package already holding rows (fewer than
        GRAPH_STEP_MAX_ROWS) in x's dtype and attn_decode runs here; returns None elsewhere. The graph is traced
        again when the buffers grow (in steps of a quarter of their size: a few times over a long generation).
        positions: the int offset (pos) or [3, B, 1] (pos None). -> (x, h) or None."""
        layers = self.layers
        kv = [cache[i] for i, layer in enumerate(layers) if not layer.is_linear]
        if not kv:
            return None
        attn = next(layer.self_attn for layer in layers if not layer.is_linear)    # all built from one config
        if attn.decode_backend(x.dtype) is None or any(
                type(c) is not KVCache or c.empty() or c._keys.dtype != x.dtype or c.offset != cache.offset
                for c in kv):
            return None
        n = kv[0].offset
        # (a cache trimmed back from a long prompt keeps its long buffers: segmented there)
        if n >= GRAPH_STEP_MAX_ROWS or kv[0]._keys.shape[2] > 2 * max(n + 1, TRIMMED_MIN_ROWS):
            return None
        n0 = tail_for_step(kv, n)
        ints_now = step_ints(cache, pos, n0)
        off = positions if pos is None else ints_now[:1].reshape(())
        shapes = tuple(c._keys.shape for c in kv) + (x.shape, x.dtype, off.shape)
        fn = self.__dict__.get("_step_fn")
        if fn is None or fn[0] != shapes:                            # one trace kept: the buffers' current size
            fn = self.__dict__["_step_fn"] = (shapes, mx.compile(self._whole_step))
        arrays = [a for i, layer in enumerate(layers)
                  for a in ((cache[i].conv, cache[i].state) if layer.is_linear else cache[i].tail[0])]
        res = fn[1](x, off, ints_now, *arrays, *[a for c in kv for a in (c._keys, c._values)])
        del arrays                                                   # the old states and tails: the graph's alone
        for i, layer in enumerate(layers):
            c = cache[i]
            if layer.is_linear:
                c.conv, c.state = res[3 + 2 * i], res[4 + 2 * i]
            else:
                c.tail = ((res[3 + 2 * i], res[4 + 2 * i]), n0)
                c.offset += 1
        hold_step_ints(cache, pos, n0, res[2])
        return res[0], res[1]

    def _whole_step(self, x, off, ints_now, *arrays):
        """_step_in_graph's traced function. arrays: per layer in order, (conv, state) or its tail (keys, values);
        then each attention layer's big (keys, values). -> (x, h, the next step's ints, *the layers' new pairs in
        that order)."""
        n_layers = len(self.layers)
        pair = lambda i: arrays[2 * i:2 * i + 2]                          # noqa: E731
        attn_layers = [i for i, layer in enumerate(self.layers) if not layer.is_linear]
        big = {i: arrays[2 * n_layers + 2 * j:2 * n_layers + 2 * j + 2] for j, i in enumerate(attn_layers)}
        kv = {}
        attn = self.layers[attn_layers[0]].self_attn
        # the tail row to write, as put_along_axis indices; the rows filled after the write and the tail's first
        at = mx.broadcast_to(ints_now[1:2].reshape(1, 1, 1, 1), (x.shape[0], attn.n_kv, 1, attn.head_dim))
        S = ints_now[2:4]

        def attend(i, q, k, v, gate):
            out, *kv[i] = self.layers[i].self_attn.attend_in_graph(q, k, v, gate, *pair(i), *big[i], at, S)
            return out
        x, h, new = self._run_segments(self._segments(compiled=False), x, off, pair, attend)
        new.update(kv)
        return x, h, ints_now + STEP_INTS, *[a for i in range(n_layers) for a in new[i]]

    def _segments(self, compiled: bool = True) -> list:
        """[(GDN layers, attention layer projected at the end or None, segment)] covering the stack in order
        (compiled, or as the plain functions _whole_step traces); built on first use and after re-fusing
        (compiled graphs keep the weights they were traced with)."""
        segs = self.__dict__.get("_segment_fns")                  # outside the module tree
        if segs is None:
            bounds, fin, gdn = [], None, []
            for i, layer in enumerate(self.layers):
                if layer.is_linear:
                    gdn.append(i)
                else:
                    bounds.append((fin, gdn, i))
                    fin, gdn = i, []
            bounds.append((fin, gdn, None))
            plain = [(g, p, self._segment_fn(f, g, p)) for f, g, p in bounds]
            segs = self.__dict__["_segment_fns"] = (plain, [(g, p, mx.compile(fn)) for g, p, fn in plain])
        return segs[1] if compiled else segs[0]

    def _segment_fn(self, fin, gdn, proj):
        layers, rope = self.layers, self.rope

        def segment(x, h, out, off, *states):
            if fin is not None:
                x, h = layers[fin].finish_step(x, out)
            new = []
            for j, i in enumerate(gdn):
                x, h, conv, state = layers[i].linear_step(x, h, states[2 * j], states[2 * j + 1])
                new += [conv, state]
            if proj is None:
                return x, *new, h
            x, q, k, v, g = layers[proj].project_step(x, h, rope, off)
            return x, *new, q, k, v, g
        return segment

    def ensure_fused(self):
        """Every layer's fused decode projections current, checked on each decode step (weights reloaded or layers
        quantized since the last step: the layers rebuild what changed). The check is identities only, run in C
        (map over dict.get and operator.is_): it is on the host's critical path of every token."""
        state = self.__dict__.get("_fused_state")                 # (layers, owners, names, held), outside the tree
        layers = self.layers
        if state is not None and len(state[0]) == len(layers) and all(map(operator.is_, state[0], layers)) \
                and all(map(operator.is_, map(dict.get, state[1], state[2]), state[3])):
            return
        checks = []                                               # (owner, name, what it must hold)
        for o, n, m, w in (c for layer in layers for c in layer.ensure_fused()):
            checks.append((o, n, m))
            if w is not None:                                     # and that module still holds that weight
                checks.append((m, "weight", w))
        owners, names, held = (list(t) for t in zip(*checks)) if checks else ([], [], [])
        self.__dict__["_fused_state"] = (list(layers), owners, names, held)
        self.__dict__["_segment_fns"] = None                        # they captured the weights they were traced with
        self.__dict__["_step_fn"] = None

    @staticmethod
    def _full_mask(attention_mask, B, T, offset):
        """attention_mask covers the current tokens [B, T] or, as transformers passes it, past and current
        [B, offset + T]; returns the latter as bools (True = a real token), or None."""
        if attention_mask is None:
            return None
        m = mx.array(attention_mask).astype(mx.bool_)
        if m.shape == (B, T) and offset:
            m = mx.concatenate([mx.ones((B, offset), mx.bool_), m], axis=1)
        if m.shape != (B, offset + T):
            raise PromptError(f"attention_mask has shape {tuple(m.shape)}; expected {(B, T)} or {(B, offset + T)}")
        return m

    def positions(self, full_mask, cache, T):
        """Text positions continue from the cache: an int offset (1-D rope, the fast path), or [3, B, T]
        when rows are padded or carry different rope deltas."""
        offset = cache.offset if cache is not None else 0
        delta = cache.rope_delta if cache is not None else 0
        padded = full_mask is not None and not bool(full_mask.all())
        if not padded and isinstance(delta, int):
            return offset + delta
        if padded:                                                      # each row counts its real tokens
            pos = mx.maximum(mx.cumsum(full_mask.astype(mx.int32), axis=1) - 1, 0)[:, -T:]
        else:
            pos = mx.broadcast_to(mx.arange(offset, offset + T)[None], (len(delta), T))
        pos = pos + (delta if isinstance(delta, int) else mx.array(delta)[:, None])
        return mx.broadcast_to(pos[None], (3, *pos.shape))

    @staticmethod
    def _attention_mask(full, T, offset):
        """'causal' when nothing is padded, else a boolean [B, 1, T, S] mask. Every query may see itself,
        so a padding row never has all keys masked (which would make NaNs that leak through values)."""
        if full is None:
            return "causal" if T > 1 else None
        S = offset + T
        qpos, kpos = mx.arange(offset, S)[:, None], mx.arange(S)[None, :]
        return (qpos >= kpos)[None, None] & (full[:, None, None, :] | (qpos == kpos)[None, None])

    def merge_vision(self, input_ids, embeds, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw):
        from .vision import scatter_features  # noqa: PLC0415
        if not self.has_vision:
            raise PromptError("this checkpoint has no vision tower: it cannot take images or videos")
        visual = self.model.visual
        cfg = self.config
        for pixels, grid, token, kind in ((pixel_values, image_grid_thw, cfg.image_token_id, "image"),
                                          (pixel_values_videos, video_grid_thw, cfg.video_token_id, "video")):
            if pixels is not None:
                feats = visual(mx.array(pixels), grid).astype(embeds.dtype)
                embeds = scatter_features(input_ids, embeds, feats, token, kind=kind)
        return embeds
