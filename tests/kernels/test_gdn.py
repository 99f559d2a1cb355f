"""Gated DeltaNet scan: every path against a float64 NumPy reference.

The Metal kernels (metal/gdn_*.metal) run through the CPU emulator (fixture `metal_on_cpu`, every launch
under the forward, reverse and random schedules, outputs bit-identical across them). The CUDA twin is the
same body: here it is only compiled (nvcc, when present); its parity runs on the GPU (benchmarks/bench_gdn.py).
Each kernel has planted-bug variants (a dropped barrier, an off-by-one) that must fail the same check.
"""

import shutil
import subprocess

import mlx.core as mx
import numpy as np
import pytest

from planted import assert_caught
from helpers import assert_rel_close
from qwen35_mlx.kernels import _metal, gdn, gdn_kernels

# Tolerances ~10x the measured error (relative L2 norm); measured values beside each.
TOL_STEP = 2e-6       # fp32 recurrent kernel: 1.3e-7 (y), 7e-8 (state)
TOL_CHUNK = 3e-5      # fp32 chunk kernels: 8e-7 (y), 2.4e-6 (state at D = 128)
TOL_BF16_Y = 2e-2     # bf16 outputs: 1.7e-3, the rounding of y itself
TOL_REF = 1e-5        # gdn_reference (MLX fp32) vs float64: 1e-7


def make_inputs(B, T, Hk, Hv, Dk, Dv, dtype=mx.float32, seed=0, state=True):
    """Random inputs, never zeros: q, k L2-normalised (q scaled), g from weak (-0.01) to strong (-5)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, Hk, Dk))
    k = rng.standard_normal((B, T, Hk, Dk))
    q *= Dk ** -0.5 / np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, Hv, Dv))
    g = -np.exp(rng.uniform(np.log(0.01), np.log(5.0), (B, T, Hv)))
    beta = rng.uniform(0.02, 0.98, (B, T, Hv))
    s = 0.3 * rng.standard_normal((B, Hv, Dv, Dk)) if state else None
    f = lambda x, dt=mx.float32: None if x is None else mx.array(x.astype(np.float32)).astype(dt)
    return f(q, dtype), f(k, dtype), f(v, dtype), f(g), f(beta), f(s)


def ref_np(q, k, v, g, beta, state=None, mask=None, keep_states=False):
    """The gated delta rule in float64; mask [B, T] (False = padding) zeroes g and beta, as gated_delta does."""
    f = lambda x: np.asarray(x.astype(mx.float32), np.float64)
    q, k, v, g, beta = map(f, (q, k, v, g, beta))
    B, T, Hk, Dk = q.shape
    Hv, Dv = v.shape[2:]
    if mask is not None:
        g, beta = g * mask[..., None], beta * mask[..., None]
    q, k = np.repeat(q, Hv // Hk, axis=2), np.repeat(k, Hv // Hk, axis=2)
    S = np.zeros((B, Hv, Dv, Dk)) if state is None else f(state)
    y, states = np.empty((B, T, Hv, Dv)), []
    for t in range(T):
        S = S * np.exp(g[:, t])[..., None, None]
        kv = np.einsum("bhvk,bhk->bhv", S, k[:, t])
        S = S + np.einsum("bhv,bhk->bhvk", (v[:, t] - kv) * beta[:, t][..., None], k[:, t])
        y[:, t] = np.einsum("bhvk,bhk->bhv", S, q[:, t])
        states.append(S)
    if mask is not None:
        y = y * mask[..., None, None]
    return (y, S, np.stack(states, axis=1)) if keep_states else (y, S)


def check(out, ref, dtype, tol, name):
    y, s = out
    assert y.dtype == dtype and s.dtype == mx.float32, name
    assert_rel_close(y.astype(mx.float32), ref[0], TOL_BF16_Y if dtype != mx.float32 else tol, f"{name} y")
    assert_rel_close(s, ref[1], tol, f"{name} state")


# ---- the definition ---------------------------------------------------------------------------------

def test_reference_matches_float64():
    args = make_inputs(2, 37, 2, 4, 32, 48, seed=1)
    y, s = gdn.gdn_reference(*args)
    check((y, s), ref_np(*args), mx.float32, TOL_REF, "gdn_reference")


def test_pick_without_gpu_backend():
    if mx.metal.is_available() or mx.cuda.is_available():
        pytest.skip("a GPU backend is present")
    assert gdn._pick(1) == "reference" and gdn._pick(15) == "reference" and gdn._pick(16) == "chunked"


# ---- Metal kernels on the emulator ------------------------------------------------------------------

STEP_CASES = {  # (B, T, Hk, Hv, Dk, Dv, dtype, initial state)
    "T1-h16/16-d32": (1, 1, 16, 16, 32, 32, mx.float32, True),
    "T7-h16/32-d32/16-b2": (2, 7, 16, 32, 32, 16, mx.float32, True),
    "T15-h2/4-d32/48-nostate": (1, 15, 2, 4, 32, 48, mx.float32, False),
    "T3-h1/2-d128-bf16": (1, 3, 1, 2, 128, 128, mx.bfloat16, True),
}

CHUNK_CASES = {
    "T16-h2/4-d32/48": (1, 16, 2, 4, 32, 48, mx.float32, True),
    "T63-h16/16-d32-nostate": (1, 63, 16, 16, 32, 32, mx.float32, False),
    "T64-h16/32-d32/16": (1, 64, 16, 32, 32, 16, mx.float32, True),
    "T65-h16/32-d32/16": (1, 65, 16, 32, 32, 16, mx.float32, True),
    "T200-h2/4-d32/48-b2": (2, 200, 2, 4, 32, 48, mx.float32, True),
    "T64-h16/16-d32-bf16": (1, 64, 16, 16, 32, 32, mx.bfloat16, True),
    "T65-h1/2-d128": (1, 65, 1, 2, 128, 128, mx.float32, True),
    "T130-h1/1-d64/32-fp16": (1, 130, 1, 1, 64, 32, mx.float16, True),
}


@pytest.mark.parametrize("case", list(STEP_CASES), ids=list(STEP_CASES))
def test_metal_step(metal_on_cpu, case):
    B, T, Hk, Hv, Dk, Dv, dt, st = STEP_CASES[case]
    args = make_inputs(B, T, Hk, Hv, Dk, Dv, dt, seed=T + Hv, state=st)
    check(gdn_kernels.gdn_step(*args, backend="metal"), ref_np(*args), dt, TOL_STEP, case)


def test_metal_step_states(metal_on_cpu):
    args = make_inputs(2, 5, 2, 4, 32, 48, seed=3)
    y, s, states = gdn_kernels.gdn_step(*args, backend="metal", return_states=True)
    ry, rs, rstates = ref_np(*args, keep_states=True)
    check((y, s), (ry, rs), mx.float32, TOL_STEP, "step")
    assert states.shape == (2, 5, 4, 48, 32)
    assert_rel_close(states, rstates, TOL_STEP, "per-step states")


@pytest.mark.parametrize("case", list(CHUNK_CASES), ids=list(CHUNK_CASES))
def test_metal_chunk(metal_on_cpu, case):
    B, T, Hk, Hv, Dk, Dv, dt, st = CHUNK_CASES[case]
    args = make_inputs(B, T, Hk, Hv, Dk, Dv, dt, seed=T + Hv, state=st)
    check(gdn_kernels.gdn_chunk(*args, backend="metal"), ref_np(*args), dt, TOL_CHUNK, case)


@pytest.mark.parametrize("bv,nt", [(8, 128), (32, 256)], ids=["bv8-nt128", "bv32-nt256"])
def test_metal_chunk_scan_geometries(metal_on_cpu, bv, nt):
    args = make_inputs(1, 100, 1, 2, 64, 32, seed=7)
    check(gdn_kernels.gdn_chunk(*args, backend="metal", bv=bv, nt_scan=nt), ref_np(*args),
          mx.float32, TOL_CHUNK, f"bv{bv} nt{nt}")


def test_metal_chunk_segments(metal_on_cpu):
    """Segments of the prep -> scan pipeline carry the state: same answer as one pass."""
    args = make_inputs(1, 200, 2, 4, 32, 48, seed=8)
    check(gdn_kernels.gdn_chunk(*args, backend="metal", segment=64), ref_np(*args), mx.float32, TOL_CHUNK, "seg64")


def test_gated_delta_dispatch_masks(metal_on_cpu):
    """impl=None picks the kernels; right padding (lengths) and left padding (mask) leave the state as if
    the padded steps were absent, and their outputs are zero."""
    assert gdn._pick(1) == "metal" and gdn._pick(1000) == "metal"
    B, T = 2, 70
    args = make_inputs(B, T, 2, 4, 32, 48, seed=9)
    mask = np.ones((B, T), bool)
    mask[0, :13] = False
    lengths = [T, 51]
    m = mask & (np.arange(T)[None] < np.array(lengths)[:, None])
    y, s = gdn.gated_delta(*args, mask=mx.array(mask), lengths=lengths)
    check((y, s), ref_np(*args, mask=m), mx.float32, TOL_CHUNK, "masked chunk")
    # sequence 1 alone, unpadded, gives the same state and outputs
    one = [a[1:2, :51] for a in args[:5]] + [args[5][1:2]]
    y1, s1 = gdn.gated_delta(*one)
    assert_rel_close(s[1:2], np.asarray(s1), TOL_CHUNK, "padded == unpadded state")
    assert_rel_close(y[1:2, :51], np.asarray(y1), TOL_CHUNK, "padded == unpadded y")
    # decode after prefill == one pass over all steps
    yd, sd = gdn.gated_delta(*(a[:, T - 1:] for a in args[:5]), state=gdn.gated_delta(
        *(a[:, :T - 1] for a in args[:5]), state=args[5])[1])
    ya, sa = gdn.gated_delta(*args)
    assert_rel_close(sd, np.asarray(sa), TOL_CHUNK, "prefill + decode == one pass")
    assert_rel_close(yd, np.asarray(ya[:, T - 1:]), TOL_CHUNK, "decode output")


def test_gated_delta_states_for_rollback(metal_on_cpu):
    """return_states through the entry point: every step's state (the recurrent kernel even at T >= STEP_MAX_T,
    masked steps keeping the state), and a rollback to n accepted steps is the state of a run over those n."""
    B, T = 2, gdn_kernels.STEP_MAX_T + 4
    args = make_inputs(B, T, 2, 4, 32, 48, seed=12)
    mask = np.ones((B, T), bool)
    mask[1, :3] = False                                                   # left padding
    ry, rs, rst = ref_np(*args, mask=mask, keep_states=True)
    for impl in (None, "reference"):
        y, s, st = gdn.gated_delta(*args, mask=mx.array(mask), impl=impl, return_states=True)
        check((y, s), (ry, rs), mx.float32, TOL_STEP, f"states {impl}")
        assert st.shape == (B, T, 4, 48, 32) and st.dtype == mx.float32
        assert_rel_close(st, rst, TOL_STEP, f"per-step states {impl}")
    n = 7
    _, s_n = gdn.gated_delta(*(a[:, :n] for a in args[:5]), state=args[5], mask=mx.array(mask[:, :n]))
    assert_rel_close(st[:, n - 1], np.asarray(s_n), TOL_STEP, "rollback state")
    with pytest.raises(ValueError, match="per-step states"):
        gdn.gated_delta(*args, impl="chunked", return_states=True)
    with pytest.raises(ValueError, match="impl must be one of"):
        gdn.gated_delta(*args, impl="fast")


def test_unsupported_shapes_fall_back(metal_on_cpu, monkeypatch):
    """Shapes the kernels do not take run the MLX-ops paths (slower, never wrong)."""
    def no_kernel(*a, **k):
        raise AssertionError("a kernel was built for an unsupported shape")

    monkeypatch.setattr(_metal, "kernel", no_kernel)
    args = make_inputs(1, 40, 1, 2, 24, 20, seed=10)                      # Dk % 32, Dv % 8
    check(gdn_kernels.gdn_kernel(*args, backend="metal"), ref_np(*args), mx.float32, TOL_CHUNK, "Dk=24")
    args = make_inputs(1, 3, 1, 1, 130, 8, seed=11)                       # 65 keys per lane
    check(gdn_kernels.gdn_kernel(*args, backend="metal"), ref_np(*args), mx.float32, TOL_STEP, "Dk=130")
    y, s, st = gdn_kernels.gdn_step(*args, backend="metal", return_states=True)
    assert_rel_close(st, ref_np(*args, keep_states=True)[2], TOL_STEP, "fallback states")


# ---- planted bugs: each must make the check above fail ------------------------------------------

PLANTED = {  # id: (kernel file, exact text, replacement, check)
    "step-off-by-one-steps": ("gdn_step.metal", "for (int t = 0; t < n_tok; ++t)",
                              "for (int t = 0; t < n_tok - 1; ++t)", "step128"),
    "step-half-reduction": ("gdn_step.metal", "UNROLL for (int m = 1; m < L; m <<= 1) kv +=",
                            "UNROLL for (int m = 1; m < L / 2; m <<= 1) kv +=", "step128"),
    "prep-dropped-barrier": ("gdn_chunk_prep.metal", "    x[i] = s;\n  }\n}\nBARRIER();\n",
                             "    x[i] = s;\n  }\n}\n", "chunk"),
    "prep-off-by-one-substitution": ("gdn_chunk_prep.metal", "for (int j = 0; j < i; ++j) s +=",
                                     "for (int j = 0; j < i - 1; ++j) s +=", "chunk"),
    "scan-dropped-barrier": ("gdn_chunk_scan.metal", "  if (n >= 0) BARRIER();\n\n  // B:",
                             "\n  // B:", "chunk"),
    "scan-G-prefetch-wrong-chunk": ("gdn_chunk_scan.metal", "gT = Gc[cidl * C + tid];",
                                    "gT = Gc[cid * C + tid];", "chunk"),
    "prep-slice-dropped-barrier": ("gdn_chunk_prep.metal", "X[j * LDV + c0 + i] = opnd<PREC>(val[i] * eg);\n      }\n    }\n    BARRIER();\n",
                                   "X[j * LDV + c0 + i] = opnd<PREC>(val[i] * eg);\n      }\n    }\n", "chunk"),
    "scan-off-by-one-triangle": ("gdn_chunk_scan.metal", "if (ks <= 2 * p + 1) {\n            frag_a a;",
                                 "if (ks <= 2 * p) {\n            frag_a a;", "chunk"),
}


def _run_check(which):
    if which == "step128":
        args = make_inputs(1, 3, 1, 2, 128, 48, seed=12)
        check(gdn_kernels.gdn_step(*args, backend="metal"), ref_np(*args), mx.float32, TOL_STEP, which)
    else:
        args = make_inputs(1, 70, 2, 4, 32, 48, seed=13)
        check(gdn_kernels.gdn_chunk(*args, backend="metal"), ref_np(*args), mx.float32, TOL_CHUNK, which)


@pytest.mark.parametrize("bug", list(PLANTED), ids=list(PLANTED))
def test_planted_bug_is_caught(metal_on_cpu, monkeypatch, bug):
    name, text, replacement, which = PLANTED[bug]
    assert_caught(monkeypatch, name, text, replacement, lambda: _run_check(which))


# ---- the CUDA twin compiles --------------------------------------------------------------------------

CUDA_TYPES = {mx.float32: "float", mx.bfloat16: "__nv_bfloat16", mx.float16: "__half", mx.int32: "int32_t"}


def cuda_text(name, in_types, out_types, template):
    """The kernel text MLX's cuda_kernel builds (mlx/backend/cuda/custom_kernel.cpp), with its default
    header (MLX's device utilities, not installed here) reduced to the CUDA headers it includes."""
    dynamic = dict(template).get("QS", False)                        # attn_flash's queries: past 48 KiB
    header, body = _metal.kernel_source(name, "cuda", dynamic)
    ins, outs = _metal.KERNELS[name]
    params = []
    for n, t in zip(ins, in_types):
        params.append(f"    const {CUDA_TYPES[t]}* {n}")
        if f"{n}_shape" in body:                                      # MLX passes shape and strides by value
            params.append(f"    const __grid_constant__ Shape {n}_shape")
        if f"{n}_strides" in body:
            params.append(f"    const __grid_constant__ Strides {n}_strides")
    params += [f"    {CUDA_TYPES[t]}* {n}" for n, t in zip(outs, out_types)]
    consts = "".join(f"  constexpr {'bool' if isinstance(v, bool) else 'int'} {k} = {str(v).lower()};\n"
                     if isinstance(v, (bool, int)) else f"  using {k} = {CUDA_TYPES[v]};\n" for k, v in template)
    return ("#include <cuda_bf16.h>\n#include <cuda_fp16.h>\n#include <cooperative_groups.h>\n#include <cstdint>\n"
            "#include <cuda/std/array>\nusing Shape = cuda::std::array<int32_t, 8>;\n"
            "using Strides = cuda::std::array<int64_t, 8>;\n"
            + header + "namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n"
            + f"__global__ void custom_kernel_{name}(\n" + ",\n".join(params) + ") {\n" + consts + "\n"
            + body + "\n}\n\n} // namespace mlx::core::cu\n")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("dt", [mx.bfloat16, mx.float32], ids=["bf16", "fp32"])
def test_cuda_twin_compiles(tmp_path, dt):
    f32, i32 = mx.float32, mx.int32
    h16 = mx.float16 if dt == f32 else dt
    eps = _metal.float_bits(1e-6)
    shape = [("InT", dt), ("Dk", 128), ("Dv", 128), ("Hk", 16), ("Hv", 32)]
    kernels = {
        "gdn_chunk_prep": ([dt] * 3 + [f32] * 2 + [i32], [f32] * 4, shape + [("C", 64), ("NT", 128), ("PREC", 1)]),
        "gdn_chunk_scan": ([dt] * 2 + [f32] * 5 + [i32], [dt, f32],
                           shape + [("C", 64), ("BV", 16), ("NT", 256), ("PREC", 0)]),
        "gdn_step": ([dt] * 3 + [f32] * 3 + [i32], [dt, f32, f32], shape + [("L", 4), ("NT", 64), ("SAVE", True)]),
        "gdn_decode": ([dt] * 3 + [f32] * 3, [dt, dt, f32], shape + [("K", 4), ("L", 4), ("NT", 64)]),
        "gdn_conv": ([dt] * 5 + [f32] * 2 + [i32], [dt] * 3 + [f32] * 2 + [dt],
                     shape + [("K", 4), ("TPG", 16), ("SPT", 2)]),
        "rms_norm": ([dt, dt, dt, f32, i32], [dt, dt],
                     [("InT", dt), ("H", 5120), ("WPR", 5), ("RPT", 1), ("ADD", True), ("GATE", True), ("EPS", eps)]),
        "norm_gemv": ([dt, dt, f32, dt], [dt, dt],
                      [("InT", dt), ("K", 1024), ("N", 3584), ("NT", 128), ("R", 2), ("ADD", True), ("GLU", True),
                       ("GATED", False), ("DV", 4), ("ZO", 0), ("HS", 1024), ("EPS", eps)]),
        "norm_gemv#gated": ([dt, dt, dt, dt], [dt, dt],       # the GDN norm's weight is in the model's dtype
                            [("InT", dt), ("K", 2048), ("N", 1024), ("NT", 128), ("R", 1), ("ADD", False),
                             ("GLU", False), ("GATED", True), ("DV", 128), ("ZO", 6144), ("HS", 8224),
                             ("EPS", eps)]),
        "attn_qk": ([dt, f32, f32, f32, i32], [dt, dt, dt],
                    [("InT", dt), ("D", 256), ("NQ", 8), ("NK", 2), ("ROT", 64), ("NT", 64), ("EPS", eps)]),
        "attn_flash": ([h16] * 3 + [i32], [h16],                       # 16-bit operands only; fp16 with QS
                       [("InT", h16), ("D", 256), ("Hq", 8), ("Hkv", 2), ("BK", 64 if dt == f32 else 32), ("NT", 128),
                        ("CAUSAL", True), ("QS", dt == f32), ("SCALE", _metal.float_bits(256 ** -0.5))]),
        "attn_decode": ([dt] * 5 + [i32, i32], [f32] * 3,
                        [("InT", dt), ("D", 128), ("Hq", 8), ("Hkv", 2), ("LMAX", 1024), ("NT", 128),
                         ("SCALE", _metal.float_bits(128 ** -0.5)), ("TAIL", True)]),
        "attn_decode_combine": ([f32] * 3 + [dt, i32, i32], [dt],
                                [("InT", dt), ("D", 128), ("Hq", 8), ("NT", 128), ("GATE", True)]),
    }
    for case, (ins, outs, template) in kernels.items():
        name = case.split("#")[0]                                    # "name#variant": another build of name
        assert len(ins) == len(_metal.KERNELS[name][0]), name
        src = tmp_path / f"{case.replace('#', '_')}.cu"
        src.write_text(cuda_text(name, ins, outs, template))
        r = subprocess.run(["nvcc", "-arch=sm_90a", "-c", str(src), "-o",
                            str(tmp_path / f"{case.replace('#', '_')}.o")], capture_output=True, text=True)
        assert r.returncode == 0, f"{case}:\n{r.stderr[-3000:]}"
