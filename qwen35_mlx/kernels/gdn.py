"""The gated delta rule scan: the definition, a chunk-wise form in MLX ops, and the one entry point.

Every path takes the same arguments and state layout:
    q, k:  [B, T, Hk, Dk]   (already L2-normalised; q already scaled by Dk**-0.5)
    v:     [B, T, Hv, Dv]   value head h reads key head h // (Hv // Hk)  (repeat_interleave)
    g:     [B, T, Hv] float32 log-space decay (the state is multiplied by exp(g))
    beta:  [B, T, Hv]
    state: [B, Hv, Dv, Dk] float32, or None for zeros
Returns y [B, T, Hv, Dv] in q's dtype and the final state [B, Hv, Dv, Dk] float32.

Per token, with S mapping keys to values (v ~ S k):
    S = exp(g) S;  S += beta (v - S k) k^T;  y = S q
"""

from __future__ import annotations

import types

import mlx.core as mx
import numpy as np

IMPLS = ("reference", "chunked", "metal", "cuda")

# The array namespace gdn_chunked computes in: MLX, or NumPy on the CPU, where its BLAS runs the chunk walk's
# small batched matmuls far faster than MLX's CPU backend (Linux wheel, reference BLAS: a [16, 64, 128] x
# [16, 128, 128] float32 product 0.3 ms vs 8.3 ms on the CI host).
_NP = types.SimpleNamespace(cumsum=np.cumsum, exp=np.exp, where=np.where, arange=np.arange, stack=np.stack,
                            concatenate=np.concatenate, broadcast_to=np.broadcast_to, pad=np.pad,
                            contiguous=np.ascontiguousarray, inf=np.inf, float32=np.float32)


def _check(q, k, v, g, beta, state):
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[2], v.shape[3]
    if k.shape != q.shape or v.shape[:2] != (B, T) or g.shape != (B, T, Hv) or beta.shape != (B, T, Hv):
        raise ValueError(f"gated_delta: shapes do not agree: q {q.shape} k {k.shape} v {v.shape} "
                         f"g {g.shape} beta {beta.shape}")
    if Hv % Hk:
        raise ValueError(f"gated_delta: Hk={Hk} must divide Hv={Hv}")
    if state is not None and state.shape != (B, Hv, Dv, Dk):
        raise ValueError(f"gated_delta: state {state.shape} != {(B, Hv, Dv, Dk)} = [B, Hv, Dv, Dk]")


def _zeros_state(q, v):
    B, _, _, Dk = q.shape
    return mx.zeros((B, v.shape[2], v.shape[3], Dk), mx.float32)


def _expand_heads(x, r):
    """[B, T, Hk, D] -> [B, T, Hk*r, D], key head j serving value heads j*r .. j*r+r-1."""
    return x if r == 1 else mx.repeat(x, r, axis=2)


@mx.compile
def _step(q, k, v, g, beta, state):
    """One token. q, k: [B, Hv, Dk]; v: [B, Hv, Dv]; g, beta: [B, Hv]; state [B, Hv, Dv, Dk] float32."""
    state = state * mx.exp(g)[..., None, None]
    kv = (state * k[..., None, :]).sum(-1)                       # S k: [B, Hv, Dv]
    delta = (v - kv) * beta[..., None]
    state = state + delta[..., :, None] * k[..., None, :]
    y = (state * q[..., None, :]).sum(-1)
    return y, state


def gdn_reference(q, k, v, g, beta, state=None, return_states=False):
    """Sequential gated delta rule in float32, token by token: the definition every other path must match.
    return_states: also return the state after each step, [B, T, Hv, Dv, Dk] float32."""
    _check(q, k, v, g, beta, state)
    B, T, _, Dk = q.shape
    Hv, Dv = v.shape[2], v.shape[3]
    r = Hv // q.shape[2]
    out_dtype = q.dtype
    q, k = (_expand_heads(x, r).astype(mx.float32) for x in (q, k))
    v, g, beta = v.astype(mx.float32), g.astype(mx.float32), beta.astype(mx.float32)
    state = _zeros_state(q, v) if state is None else state.astype(mx.float32)
    ys, states = [], []
    for t in range(T):
        y, state = _step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], state)
        ys.append(y)
        states.append(state)
    y = mx.stack(ys, axis=1).astype(out_dtype) if T else mx.zeros((B, 0, Hv, Dv), out_dtype)
    if not return_states:
        return y, state
    return y, state, mx.stack(states, axis=1) if T else mx.zeros((B, 0, Hv, Dv, Dk), mx.float32)


def _solve_unit_lower(A, rhs):
    """x with (I - A) x = rhs, for strictly lower-triangular A [..., C, C], by forward substitution.

    x_i = rhs_i + sum_{j<i} A_ij x_j, one row at a time, all chunks and heads at once: C small batched
    matmuls. Backward stable, unlike forming (I - A)^-1 by repeated squaring, which loses ~1e-5 when
    neighbouring keys are nearly parallel (e.g. image tokens). NumPy fills x in place; MLX arrays are
    immutable, so its rows are concatenated.
    """
    C = A.shape[-1]
    if isinstance(A, np.ndarray):
        x = np.empty_like(rhs)
        x[..., 0, :] = rhs[..., 0, :]
        for i in range(1, C):
            x[..., i:i + 1, :] = rhs[..., i:i + 1, :] + A[..., i:i + 1, :i] @ x[..., :i, :]
        return x
    rows = [rhs[..., :1, :]]
    for i in range(1, C):
        prev = mx.concatenate(rows, axis=-2) if i > 1 else rows[0]
        rows.append(rhs[..., i:i + 1, :] + A[..., i:i + 1, :i] @ prev)
    return mx.concatenate(rows, axis=-2)


def _chunked_segment(q, k, v, g, beta, state, C, xp):
    """One segment whose length is a multiple of C, in float32, in namespace xp (mx or _NP); see
    `gdn_chunked` for the algebra.

    q, k: [B, Hk, 1, N, C, Dk]; v: [B, Hk, r, N, C, Dv]; g, beta: [B, Hk, r, N, C];
    state: [B, Hk, r, Dk, Dv] (keys x values here: every product below is then a plain A @ B,
    which MLX's CPU BLAS runs 2x faster than A @ B^T).
    """
    N = q.shape[3]
    G = xp.cumsum(g, axis=-1)                                    # decay from chunk start, log space
    diff = G[..., :, None] - G[..., None, :]                     # G_i - G_j
    row = xp.arange(C)
    strict = row[:, None] > row[None, :]
    incl = row[:, None] >= row[None, :]
    # mask before exp: above the diagonal G_i - G_j > 0 and may overflow
    decay_strict = xp.exp(xp.where(strict, diff, -xp.inf))
    decay_incl = xp.exp(xp.where(incl, diff, -xp.inf))
    kT = xp.contiguous(k.swapaxes(-1, -2))
    kk = k @ kT                                                  # [B, Hk, 1, N, C, C]
    qk = q @ kT
    A = -beta[..., :, None] * kk * decay_strict
    eG = xp.exp(G)
    Dv = v.shape[-1]
    rhs = xp.concatenate([v * beta[..., None], xp.broadcast_to(k, (*v.shape[:-1], k.shape[-1]))
                          * (beta * eG)[..., None]], axis=-1)
    UW = _solve_unit_lower(A, rhs)
    U, W = UW[..., :Dv], UW[..., Dv:]                            # [.., N, C, Dv], [.., N, C, Dk]
    WQ = xp.concatenate([W, q * eG[..., None]], axis=-2)         # both read the chunk's initial state
    intra = qk * decay_incl
    G_last = G[..., -1:]
    KdT = xp.contiguous((k * xp.exp(G_last - G)[..., None]).swapaxes(-1, -2))  # [.., N, Dk, C]
    d_last = xp.exp(G_last)[..., None]                           # [.., N, 1, 1]

    ys = []
    for n in range(N):
        ws = WQ[..., n, :, :] @ state                            # [.., 2C, Dv]: W S0, (q e^G) S0
        u = U[..., n, :, :] - ws[..., :C, :]
        ys.append(ws[..., C:, :] + intra[..., n, :, :] @ u)
        state = state * d_last[..., n, :, :] + KdT[..., n, :, :] @ u
    return xp.stack(ys, axis=-3), state


def gdn_chunked(q, k, v, g, beta, state=None, chunk=None, segment=2048, numpy=None):
    """Chunk-wise gated delta rule (WY / UT form) in array ops: the prefill path wherever no kernel runs.

    Within a chunk of C tokens, with G_i the cumulative log decay from the chunk start and S0 the state
    before it, unrolling the recurrence gives the corrections u_i = beta_i (v_i - exp(g_i) S_{i-1} k_i):
        (I - A) u = beta v - (beta exp(G) k) S0^T,   A_ij = -beta_i exp(G_i - G_j) k_i.k_j  (i > j)
    so u = U - W S0^T with U = (I-A)^-1 beta v and W = (I-A)^-1 (beta exp(G) k), found together by
    forward substitution (C steps, every chunk at once); the rest are batched matmuls.
    Then  y_i = exp(G_i) S0 q_i + sum_{j<=i} exp(G_i - G_j) (q_i.k_j) u_j
    and   S_C = exp(G_C) S0 + sum_j exp(G_C - G_j) u_j k_j^T.
    Only the last line is sequential over chunks. Decays stay in log space and enter only as exp of
    non-positive differences, so nothing overflows. Padding to a multiple of C uses g = 0, beta = 0,
    which leaves the state untouched. `segment` tokens are processed at a time to bound memory.
    numpy: compute in NumPy (default: when MLX's default device is the CPU; see _NP) or in MLX ops (the
    GPU fallback for shapes the kernels do not take). Either way MLX arrays in, MLX arrays out; the NumPy
    route evaluates its inputs, so it is for inference, not inside mx.compile or a gradient.
    """
    _check(q, k, v, g, beta, state)
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[2], v.shape[3]
    if numpy is None:
        numpy = mx.default_device() == mx.cpu
    xp = _NP if numpy else mx
    # NumPy (T=4096, 16 heads, D=128, CI host): C=16 1.17 s, 32 1.00 s, 64 1.42 s; GPUs: the usual 64
    C = chunk or (32 if numpy else 64)
    r = Hv // Hk
    out_dtype = q.dtype
    state = _zeros_state(q, v) if state is None else state.astype(mx.float32)
    if T == 0:
        return mx.zeros((B, 0, Hv, Dv), out_dtype), state
    q, k, v, g, beta = (x.astype(mx.float32) for x in (q, k, v, g, beta))
    if numpy:
        q, k, v, g, beta, state = (np.asarray(x) for x in (q, k, v, g, beta, state))
    pad = (-T) % C
    if pad:
        zpad = lambda x: xp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        q, k, v, g, beta = map(zpad, (q, k, v, g, beta))
    Tp = T + pad
    N = Tp // C
    # [B, T, H, D] -> [B, Hk, r|1, N, C, D]; [B, T, Hv] -> [B, Hk, r, N, C]
    kq = lambda x: xp.contiguous(x.reshape(B, N, C, Hk, 1, Dk).transpose(0, 3, 4, 1, 2, 5))
    q, k = kq(q), kq(k)
    v = xp.contiguous(v.reshape(B, N, C, Hk, r, Dv).transpose(0, 3, 4, 1, 2, 5))
    gate = lambda x: xp.contiguous(x.reshape(B, N, C, Hk, r).transpose(0, 3, 4, 1, 2))
    g, beta = gate(g), gate(beta)
    state = xp.contiguous(state.reshape(B, Hk, r, Dv, Dk).swapaxes(-1, -2))

    per = max(1, segment // C)
    ys = []
    for s in range(0, N, per):
        sl = slice(s, s + per)
        y, state = _chunked_segment(q[..., sl, :, :], k[..., sl, :, :], v[..., sl, :, :],
                                    g[..., sl, :], beta[..., sl, :], state, C, xp)
        ys.append(y)
        if N > per and not numpy:
            mx.eval(y, state)                                    # bound the graph and memory per segment
    y = xp.concatenate(ys, axis=3) if len(ys) > 1 else ys[0]     # [B, Hk, r, N, C, Dv]
    y = y.transpose(0, 3, 4, 1, 2, 5).reshape(B, Tp, Hv, Dv)[:, :T]
    state = state.swapaxes(-1, -2).reshape(B, Hv, Dv, Dk)
    if numpy:
        y, state = mx.array(np.ascontiguousarray(y)), mx.array(np.ascontiguousarray(state))
    return y.astype(out_dtype), state


def _step_mask(mask, lengths, B, T):
    """A [B, T] float mask from an explicit mask or right-padded lengths; None when nothing is masked."""
    m = None
    if lengths is not None:
        lengths = mx.array(lengths).reshape(B, 1)
        m = mx.arange(T)[None, :] < lengths
    if mask is not None:
        mask = mx.array(mask).astype(mx.bool_).reshape(B, T)
        m = mask if m is None else (m & mask)
    return None if m is None else m.astype(mx.float32)


def gpu_backend() -> str | None:
    """The backend the custom kernels run on here: Metal; CUDA when the default device is the GPU; else None."""
    if mx.metal.is_available():
        return "metal"
    if mx.cuda.is_available() and mx.default_device() == mx.gpu:
        return "cuda"
    return None


def _pick(T):
    """The custom kernels where a GPU backend runs them; else a few tokens (decode, speculative
    verification) scan token by token, longer inputs chunk-wise."""
    return gpu_backend() or ("reference" if T < 16 else "chunked")


def gated_delta(q, k, v, g, beta, state=None, lengths=None, mask=None, impl=None, return_states=False):
    """The one entry point layers call. Returns (y, final_state), or with return_states (y, final_state, states).

    lengths: [B] ints, sequence b's valid steps are t < lengths[b] (right padding).
    mask:    [B, T] bools, any pattern (left padding, holes). Masked steps leave the state untouched
             (they run with g = 0, beta = 0) and their outputs are zero.
    impl:    "reference" | "chunked" | "metal" | "cuda" forces a path; None picks the best one for the
             device and T.
    return_states: also the state after every step, [B, T, Hv, Dv, Dk] float32, for rollback after speculative
             verification (n drafted tokens accepted: continue from states[:, n - 1]). Runs the recurrent path
             (the gdn_step kernel, or the token loop) whatever T; the chunk-wise path keeps no per-step states.
    """
    B, T = q.shape[:2]
    m = _step_mask(mask, lengths, B, T)
    if m is not None:
        g = g * m[..., None]
        beta = beta * m[..., None].astype(beta.dtype)
    if impl is None:
        impl = (gpu_backend() or "reference") if return_states else _pick(T)
    if impl not in IMPLS:
        raise ValueError(f"gated_delta: impl must be one of {IMPLS} or None, got {impl!r}")
    if return_states and impl == "chunked":
        raise ValueError("gated_delta: the chunked path keeps no per-step states (return_states); use "
                         "impl='reference' or a kernel backend")
    if impl == "reference":
        out = gdn_reference(q, k, v, g, beta, state, return_states)
    elif impl == "chunked":
        out = gdn_chunked(q, k, v, g, beta, state)
    else:
        from .gdn_kernels import gdn_kernel  # imports this module

        out = gdn_kernel(q, k, v, g, beta, state, backend=impl, return_states=return_states)
    if m is not None:
        out = (out[0] * m[..., None, None].astype(out[0].dtype), *out[1:])
    return out
