"""Drivers for the GDN kernels in metal/ (one body, Metal or CUDA): shapes, launch geometry, fallbacks.

Prefill runs two launches per segment of tokens:
  gdn_chunk_prep  grid (NT*N, Hv, B): per chunk of C steps, the WY/UT factors W, U, Aqk, G (float32)
  gdn_chunk_scan  grid (NT*Dv/BV, Hv, B): walks the chunks with a [Dk, BV] slice of the state on chip,
                  writing y and the final state
Decode and short runs (T < STEP_MAX_T) use gdn_step, which keeps the state in registers across the steps.
A model's decode step (T = 1) runs gdn_decode instead: the mixer between its input projections and its gated norm
(conv, q/k norms, gates, the step) in one launch; the norm and out_proj follow in one norm_gemv. Its prefill runs
gdn_conv before the scan: the conv, q/k norms and gates in one launch.
Shapes a kernel cannot take go to gdn_chunked (prefill) or the token loop (decode): slower, never wrong.
"""

from __future__ import annotations

import math

import mlx.core as mx

from . import _metal
from .gdn import _check, _zeros_state, gdn_chunked, gdn_reference, gpu_backend

C = 64              # chunk length of the prefill kernels
NT_PREP = 128       # threads per threadgroup: gdn_chunk_prep
NT_SCAN = 256       # gdn_chunk_scan: 8 simdgroups, one phase-A task and one state row pair each at Dk=128
NT_STEP = 64        # gdn_step
NT_DECODE = 64      # gdn_decode: NT / step_lanes(Dk) state rows per threadgroup (16 at Dk = 128)
CONV_TPG = 16       # gdn_conv: tokens per run (one simdgroup per run of tokens and head)
CONV_SPT = 1        # gdn_conv: simdgroups (head slots) per threadgroup (H100: 2 and 4 were slower)
STEP_MAX_T = 16     # below this many steps the recurrent kernel beats the two chunk launches
SEGMENT_BYTES = 1 << 30  # bound on the prep -> scan intermediates of one launch pair
BACKENDS = ("metal", "cuda")


def chunk_supported(Dk: int, Dv: int) -> bool:
    """Tiles are 16 key rows x 8 value columns, keys read 32 at a time; the scan keeps [Dk, BV] + [C, BV]
    float32 on chip (<= 32 KiB threadgroup memory on Metal)."""
    return Dk % 32 == 0 and Dv % 8 == 0 and 32 <= Dk <= 256


def step_lanes(Dk: int) -> int:
    """Lanes sharing one state row in gdn_step: enough that each holds at most 32 keys (a power of 2
    dividing Dk, at most 32)."""
    L = 1
    while Dk // L > 32 and Dk % (2 * L) == 0 and L < 32:
        L *= 2
    return L


def step_supported(Dk: int) -> bool:
    return Dk // step_lanes(Dk) <= 64


def scan_bv(Dv: int) -> int:
    """Value columns per scan threadgroup: 16 gives 8 threadgroups per head at Dv = 128."""
    return 16 if Dv % 16 == 0 else 8


def default_prec(dtype, backend: str) -> int:
    """CUDA tile products: 3xTF32 (about fp32 accurate) for float32 inputs; tf32 for bf16/fp16 inputs, whose
    error (~5e-4 relative) stays under the rounding of their own output. Metal multiplies in fp32 anyway."""
    return 1 if dtype == mx.float32 else 0


def segment_len(B: int, Hv: int, Dk: int, Dv: int) -> int:
    per_token = B * Hv * 4 * (Dk + Dv + C + 1)
    n = max(1, SEGMENT_BYTES // (per_token * C))
    return C * (1 << int(math.log2(n)))


def _prep_inputs(q, k, v, g, beta, state):
    dt = q.dtype
    state = _zeros_state(q, v) if state is None else state.astype(mx.float32)
    return q, k.astype(dt), v.astype(dt), g.astype(mx.float32), beta.astype(mx.float32), state


def gdn_chunk(q, k, v, g, beta, state=None, *, backend="metal", bv=None, prec=None, nt_scan=NT_SCAN,
              segment=None):
    """Chunk-wise prefill through gdn_chunk_prep + gdn_chunk_scan. Same contract as gdn_reference."""
    _check(q, k, v, g, beta, state)
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[2], v.shape[3]
    if not chunk_supported(Dk, Dv):
        return gdn_chunked(q, k, v, g, beta, state)
    q, k, v, g, beta, state = _prep_inputs(q, k, v, g, beta, state)
    if T == 0:
        return mx.zeros((B, 0, Hv, Dv), q.dtype), state
    bv = bv or scan_bv(Dv)
    prec = default_prec(q.dtype, backend) if prec is None else prec
    seg = segment or segment_len(B, Hv, Dk, Dv)
    ys = []
    for s in range(0, T, seg):
        sl = slice(s, min(T, s + seg))
        qs, ks = q[:, sl], k[:, sl]
        inter = _prep_launch(qs, ks, v[:, sl], g[:, sl], beta[:, sl], backend, prec)
        y, state = _scan_launch(qs, ks, inter, state, v.shape, backend, bv, prec, nt_scan)
        ys.append(y)
    return (ys[0] if len(ys) == 1 else mx.concatenate(ys, axis=1)), state


def _prep_launch(q, k, v, g, beta, backend, prec):
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[2], v.shape[3]
    N = -(-T // C)
    return _metal.kernel("gdn_chunk_prep", backend)(
        inputs=[q, k, v, g, beta, _metal.ints(T, N)],
        template=[("InT", q.dtype), ("Dk", Dk), ("Dv", Dv), ("Hk", Hk), ("Hv", Hv), ("C", C),
                  ("NT", NT_PREP), ("PREC", prec)],
        grid=(NT_PREP * N, Hv, B),
        threadgroup=(NT_PREP, 1, 1),
        output_shapes=[(B, Hv, N, C, Dk), (B, Hv, N, C, Dv), (B, Hv, N, C, C), (B, Hv, N, C)],
        output_dtypes=[mx.float32] * 4,
    )


def _scan_launch(q, k, inter, state, v_shape, backend, bv, prec, nt):
    B, T, Hk, Dk = k.shape
    Hv, Dv = v_shape[2], v_shape[3]
    N = -(-T // C)
    W, U, Aqk, Gc = inter
    y, state = _metal.kernel("gdn_chunk_scan", backend)(
        inputs=[q, k, W, U, Aqk, Gc, state, _metal.ints(T, N)],
        template=[("InT", k.dtype), ("Dk", Dk), ("Dv", Dv), ("Hk", Hk), ("Hv", Hv), ("C", C), ("BV", bv),
                  ("NT", nt), ("PREC", prec)],
        grid=(nt * (Dv // bv), Hv, B),
        threadgroup=(nt, 1, 1),
        output_shapes=[(B, T, Hv, Dv), (B, Hv, Dv, Dk)],
        output_dtypes=[k.dtype, mx.float32],
    )
    return y, state


def chunk_parts(q, k, v, g, beta, state, *, backend="metal", bv=None, prec=None, nt_scan=NT_SCAN):
    """The two launches of gdn_chunk as separate callables (benchmarks): {"prep": () -> intermediates,
    "scan": intermediates -> (y, state)}. One segment: T must fit segment_len."""
    q, k, v, g, beta, state = _prep_inputs(q, k, v, g, beta, state)
    bv = bv or scan_bv(v.shape[3])
    prec = default_prec(q.dtype, backend) if prec is None else prec
    return {"prep": lambda: _prep_launch(q, k, v, g, beta, backend, prec),
            "scan": lambda inter: _scan_launch(q, k, inter, state, v.shape, backend, bv, prec, nt_scan)}


def gdn_step(q, k, v, g, beta, state=None, *, backend="metal", return_states=False):
    """The recurrent kernel: returns (y, final state) or, with return_states, (y, final state, states)
    where states [B, T, Hv, Dv, Dk] float32 holds the state after each step (rollback)."""
    _check(q, k, v, g, beta, state)
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[2], v.shape[3]
    if not step_supported(Dk) or T == 0:
        return gdn_reference(q, k, v, g, beta, state, return_states)
    q, k, v, g, beta, state = _prep_inputs(q, k, v, g, beta, state)
    L = step_lanes(Dk)
    rows = NT_STEP // L
    out = _metal.kernel("gdn_step", backend)(
        inputs=[q, k, v, g, beta, state, _metal.ints(T)],
        template=[("InT", q.dtype), ("Dk", Dk), ("Dv", Dv), ("Hk", Hk), ("Hv", Hv), ("L", L),
                  ("NT", NT_STEP), ("SAVE", bool(return_states))],
        grid=(NT_STEP * -(-Dv // rows), Hv, B),
        threadgroup=(NT_STEP, 1, 1),
        output_shapes=[(B, T, Hv, Dv), (B, Hv, Dv, Dk), (B, T, Hv, Dv, Dk) if return_states else (1,)],
        output_dtypes=[q.dtype, mx.float32, mx.float32],
    )
    return tuple(out) if return_states else (out[0], out[1])


def gdn_kernel(q, k, v, g, beta, state=None, *, backend="metal", return_states=False):
    """The kernel path of gated_delta: the recurrent kernel for a few steps (or for every step's state), the chunk
    kernels beyond."""
    if backend not in BACKENDS:
        raise ValueError(f"gdn_kernel: backend must be one of {BACKENDS}, got {backend!r}")
    if q.shape[1] < STEP_MAX_T or return_states:
        if not _metal.enabled("gdn_step"):
            return gdn_reference(q, k, v, g, beta, state, return_states)
        return gdn_step(q, k, v, g, beta, state, backend=backend, return_states=return_states)
    if not (_metal.enabled("gdn_chunk_prep") and _metal.enabled("gdn_chunk_scan")):
        return gdn_chunked(q, k, v, g, beta, state)
    return gdn_chunk(q, k, v, g, beta, state, backend=backend)


def decode_backend(Dk: int, conv_kernel: int) -> str | None:
    """The backend gdn_decode runs on here ("metal" | "cuda"), or None (no GPU kernel backend, or a shape
    it does not take): the caller then runs the mixer in MLX ops."""
    if not step_supported(Dk) or conv_kernel < 2 or NT_DECODE % step_lanes(Dk) or not _metal.enabled("gdn_decode"):
        return None
    return gpu_backend()


def gdn_decode(proj, conv, conv_w, A_log, dt_bias, state, *, Hk: int, Hv: int, Dk: int, Dv: int, backend: str):
    """One decode step of a GDN mixer after its projections, up to its gated norm, fused (metal/gdn_decode.metal).

    proj [B, P] or [B, 1, P]: the input projections side by side, [qkv | z | b | a] with qkv the flat [q | k | v]
    (2 Hk Dk + Hv Dv), z (Hv Dv), b and a (Hv each); conv [B, K-1, 2 Hk Dk + Hv Dv] history, conv_w [same, K] or
    Conv1d's own [same, K, 1], A_log and dt_bias [Hv], state [B, Hv, Dv, Dk] float32. (Both shapes are the same
    buffers: the kernel reads them flat, and a decode step's graph gets no view nodes to take them, each of which
    costs host time on every token.)
    Returns (y [B, Hv Dv] in proj's dtype, [B, 1, Hv Dv] for a [B, 1, P] proj: the rule's output before the gated
    norm; new conv history; new state)."""
    B, P = proj.shape[0], proj.shape[-1]
    C = 2 * Hk * Dk + Hv * Dv
    if proj.ndim not in (2, 3) or proj.size != B * P or P != C + Hv * Dv + 2 * Hv:
        raise ValueError(f"gdn_decode: projection row {tuple(proj.shape)}; expected [B, (1,) {C + Hv * Dv + 2 * Hv}]")
    if conv_w.ndim not in (2, 3) or conv_w.shape[0] != C or conv_w.shape[2:] not in ((), (1,)):
        raise ValueError(f"gdn_decode: conv weight {tuple(conv_w.shape)}; expected [{C}, K] or [{C}, K, 1]")
    K = conv_w.shape[1]
    L = step_lanes(Dk)
    split = -(-Dv // (NT_DECODE // L))                       # threadgroups per value head
    out = _metal.kernel("gdn_decode", backend)(
        inputs=[proj, conv.astype(proj.dtype), conv_w, A_log, dt_bias, state.astype(mx.float32)],
        template=[("InT", proj.dtype), ("Dk", Dk), ("Dv", Dv), ("Hk", Hk), ("Hv", Hv), ("K", K), ("L", L),
                  ("NT", NT_DECODE)],
        grid=(NT_DECODE, Hv * split, B),
        threadgroup=(NT_DECODE, 1, 1),
        output_shapes=[(*proj.shape[:-1], Hv * Dv), (B, K - 1, C), (B, Hv, Dv, Dk)],
        output_dtypes=[proj.dtype, proj.dtype, mx.float32],
    )
    return out[0], out[1], out[2]


def conv_backend(Dk: int, Dv: int, conv_kernel: int) -> str | None:
    """The backend gdn_conv runs on here, or None (no GPU kernel backend, or a shape it does not take)."""
    if Dk % 4 or Dv % 4 or max(Dk, Dv) > 512 or conv_kernel < 2 or not _metal.enabled("gdn_conv"):
        return None
    return gpu_backend()


def gdn_conv(qkv, conv, conv_w, a, b, A_log, dt_bias, *, Hk: int, Hv: int, Dk: int, Dv: int, backend: str,
             spt: int = CONV_SPT):
    """A GDN mixer's conv, q/k norms and gates for a run of tokens, fused (metal/gdn_conv.metal).

    qkv [B, T, 2 Hk Dk + Hv Dv] (the flat [q | k | v] projection), conv [B, K-1, same] history, conv_w [same, K],
    a and b [B, T, Hv], A_log and dt_bias [Hv]. Returns q, k [B, T, Hk, Dk] (L2-normed, q scaled by Dk^-1/2) and
    v [B, T, Hv, Dv] in qkv's dtype, g (log decay) and beta [B, T, Hv] float32, and the new history."""
    B, T, CD = qkv.shape
    K = conv_w.shape[1]
    dt = qkv.dtype
    f32 = mx.float32
    out = _metal.kernel("gdn_conv", backend)(
        inputs=[qkv, conv.astype(dt), conv_w, a, b, A_log, dt_bias, _metal.ints(T)],
        template=[("InT", dt), ("Dk", Dk), ("Dv", Dv), ("Hk", Hk), ("Hv", Hv), ("K", K), ("TPG", CONV_TPG),
                  ("SPT", spt)],
        grid=(32 * spt * -(-T // CONV_TPG), -(-(2 * Hk + Hv) // spt), B),
        threadgroup=(32 * spt, 1, 1),
        output_shapes=[(B, T, Hk, Dk), (B, T, Hk, Dk), (B, T, Hv, Dv), (B, T, Hv), (B, T, Hv), (B, K - 1, CD)],
        output_dtypes=[dt, dt, dt, f32, f32, dt],
    )
    return tuple(out)
