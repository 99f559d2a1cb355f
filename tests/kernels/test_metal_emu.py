"""The CPU emulator of Metal kernels (tests/metal_emu): fidelity to MLX, semantics, planted bugs."""

import mlx.core as mx
import numpy as np
import pytest

import metal_emu
from metal_emu import MetalEmuCompileError, MetalEmuError, MetalEmuRaceError

RNG = np.random.default_rng(0)


def assert_rel_close(out, ref, tol, name):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert np.isfinite(out).all(), f"{name}: non-finite values"
    err = np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)
    assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


def run(source, inputs, outputs, grid, threadgroup, template=None, header="", **kw):
    """Run a kernel on the emulator. outputs: {name: (shape, dtype)}. Returns numpy arrays."""
    kernel = metal_emu.metal_kernel(
        name=kw.pop("name", "k"), input_names=list(inputs), output_names=list(outputs),
        source=source, header=header, ensure_row_contiguous=kw.pop("ensure_row_contiguous", True),
        atomic_outputs=kw.pop("atomic_outputs", False))
    outs = kernel(inputs=list(inputs.values()), template=template, grid=grid,
                  threadgroup=threadgroup, output_shapes=[s for s, _ in outputs.values()],
                  output_dtypes=[d for _, d in outputs.values()], **kw)
    return [np.asarray(o.astype(mx.float32) if o.dtype == mx.bfloat16 else o) for o in outs]


# ---- the generated text is MLX's -----------------------------------------------------------

TEXT_CASES = {
    "template-shapes-scalars-attrs": dict(
        input_names=["inp", "alpha", "bias"], output_names=["out", "out2"],
        header="// helpers\n",
        source="uint i = thread_position_in_grid.x; uint l = thread_index_in_simdgroup;\n"
               "out[i] = inp[i] * alpha + bias[0] + inp_shape[0] + inp_strides[0] + inp_ndim + N + B;\n"
               "out2[i] = out[i] + l;",
        make_inputs=lambda a: [a, 2.0, mx.array([1.0, 2.0, 3.0])],
        call=dict(template=[("T", mx.float32), ("N", 4), ("B", True)],
                  output_shapes=[(64,), (64,)], output_dtypes=[mx.float32, mx.bfloat16])),
    "plain": dict(
        input_names=["x"], output_names=["y"],
        source="uint i = thread_position_in_grid.x; y[i] = x[i];",
        make_inputs=lambda a: [a], call=dict(output_shapes=[(64,)], output_dtypes=[mx.float32])),
    "atomic-header-without-newline": dict(
        input_names=["x"], output_names=["y"], header="constant float kScale = 2.0f;", atomic_outputs=True,
        source="uint i = thread_position_in_grid.x;\n"
               "atomic_fetch_add_explicit(&y[0], kScale * x[i], memory_order_relaxed);",
        make_inputs=lambda a: [a], call=dict(output_shapes=[(1,)], output_dtypes=[mx.float32],
                                              init_value=0.0)),
}


def mlx_generated_text(case, capfd, tmp_path):
    """MLX's own text, printed while exporting (export traces the kernel without Metal)."""
    k = mx.fast.metal_kernel(name="probe", input_names=case["input_names"],
                             output_names=case["output_names"], source=case["source"],
                             header=case.get("header", ""),
                             atomic_outputs=case.get("atomic_outputs", False))

    def f(a):
        return k(inputs=case["make_inputs"](a), grid=(64, 1, 1), threadgroup=(32, 1, 1),
                 verbose=True, **case["call"])

    capfd.readouterr()
    mx.export_function(str(tmp_path / "probe.mlxfn"), f, mx.zeros((64,)))
    return capfd.readouterr().out


@pytest.mark.parametrize("case", list(TEXT_CASES), ids=list(TEXT_CASES))
def test_generated_text_matches_mlx(case, capfd, tmp_path):
    c = TEXT_CASES[case]
    expected = mlx_generated_text(c, capfd, tmp_path)
    k = metal_emu.metal_kernel(name="probe", input_names=c["input_names"],
                               output_names=c["output_names"], source=c["source"],
                               header=c.get("header", ""),
                               atomic_outputs=c.get("atomic_outputs", False))
    k(inputs=c["make_inputs"](mx.zeros((64,))), grid=(64, 1, 1), threadgroup=(32, 1, 1),
      verbose=True, **c["call"])
    assert capfd.readouterr().out == expected


def test_mlx_signature_quirk_is_mirrored():
    """MLX closes the parameter list early with _shape and two outputs and no attribute."""
    k = metal_emu.metal_kernel(name="q", input_names=["a"], output_names=["o1", "o2"],
                               source="o1[0] = a_shape[0]; o2[0] = 1;")
    with pytest.raises(MetalEmuCompileError, match="broken signature"):
        k(inputs=[mx.zeros((8,))], grid=(1, 1, 1), threadgroup=(1, 1, 1),
          output_shapes=[(1,), (1,)], output_dtypes=[mx.float32] * 2)


# ---- semantics -----------------------------------------------------------------------------

STRIDED = """
    uint2 pos = thread_position_in_grid.xy;
    uint elem = pos.y * inp_shape[1] + pos.x;
    int64_t loc = elem_to_loc(int64_t(elem), inp_shape, inp_strides, inp_ndim);
    out[elem] = T(inp[loc] * alpha + N) + (B ? bias[pos.x % 3] : 0.0f);
"""


@pytest.mark.parametrize("contiguous", [True, False], ids=["row-contiguous", "strided"])
def test_elementwise_template_shapes_strides(contiguous):
    x = mx.array(RNG.standard_normal((6, 5)).astype(np.float32)).T  # strides (1, 5)
    bias = mx.array([1.0, 2.0, 3.0])
    (out,) = run(STRIDED, {"inp": x, "alpha": 0.5, "bias": bias}, {"out": ((5, 6), mx.float32)},
                 grid=(6, 5, 1), threadgroup=(4, 2, 1), ensure_row_contiguous=contiguous,
                 template=[("T", mx.float32), ("N", 3), ("B", True)])
    ref = np.asarray(x) * 0.5 + 3 + np.asarray(bias)[np.arange(6) % 3]
    np.testing.assert_array_equal(out, ref.astype(np.float32))


ATTRS = """
    uint3 g = thread_position_in_grid;
    uint row = (g.z * threads_per_grid.y + g.y) * threads_per_grid.x + g.x;
    device uint* o = out + row * 20;
    uint3 vals[6] = {thread_position_in_grid, thread_position_in_threadgroup,
                     threadgroup_position_in_grid, threads_per_threadgroup, threads_per_grid,
                     threadgroups_per_grid};
    for (int k = 0; k < 6; ++k) { o[3 * k] = vals[k].x; o[3 * k + 1] = vals[k].y; o[3 * k + 2] = vals[k].z; }
    o[18] = thread_index_in_threadgroup;
    o[19] = simdgroup_index_in_threadgroup * 32 + thread_index_in_simdgroup;
"""


def test_thread_attributes_with_partial_threadgroups():
    grid, tg = (10, 3, 2), (4, 2, 2)
    (out,) = run(ATTRS, {"dummy": mx.zeros((1,))}, {"out": ((60, 20), mx.uint32)}, grid, tg)
    for z in range(2):
        for y in range(3):
            for x in range(10):
                pos, tgp = (x, y, z), (x // 4, y // 2, z // 2)
                size = tuple(min(t, g - p * t) for t, g, p in zip(tg, grid, tgp))
                local = (x % 4, y % 2, z % 2)
                index = local[0] + size[0] * (local[1] + size[1] * local[2])
                row = out[(z * 3 + y) * 10 + x]
                expect = [*pos, *local, *tgp, *size, *grid, 3, 2, 1, index, index]
                assert row.tolist() == expect, (pos, row.tolist(), expect)


REDUCE = """
    threadgroup float partial[256];
    uint lid = thread_position_in_threadgroup.x;
    uint n = threads_per_threadgroup.x;
    partial[lid] = inp[thread_position_in_grid.x];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = 128; s > 0; s >>= 1) {
        if (lid < s && lid + s < n) partial[lid] += partial[lid + s];
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (lid == 0) out[threadgroup_position_in_grid.x] = partial[0];
"""


def test_threadgroup_reduction_with_barriers():
    x = RNG.standard_normal(700).astype(np.float32)  # 3 threadgroups, the last one partial
    (out,) = run(REDUCE, {"inp": mx.array(x)}, {"out": ((3,), mx.float32)}, (700, 1, 1),
                 (256, 1, 1))
    ref = [x[i:i + 256].sum(dtype=np.float64) for i in range(0, 700, 256)]
    assert_rel_close(out, ref, 1e-6, "threadgroup reduction")  # fp32 sums: measured 6e-8


SIMD = """
    uint i = thread_position_in_grid.x;
    float x = inp[i];
    sum[i] = simd_sum(x);
    mx[i] = simd_max(x);
    incl[i] = simd_prefix_inclusive_sum(x);
    excl[i] = simd_prefix_exclusive_sum(x);
    xor3[i] = simd_shuffle_xor(x, 3);
    down[i] = simd_shuffle_down(x, 5);
    up[i] = simd_shuffle_up(x, 5);
    bcast[i] = simd_broadcast(x, 7);
    ballot[i] = uint(static_cast<uint64_t>(simd_ballot(x > 0.0f)));
    qsum[i] = quad_sum(x);
"""
SIMD_OUTS = ["sum", "mx", "incl", "excl", "xor3", "down", "up", "bcast", "ballot", "qsum"]


def simd_reference(x):
    """Metal's results per SIMD group of 32 lanes (the last one may be partial); NaN = undefined."""
    ref = {k: np.full(len(x), np.nan) for k in SIMD_OUTS}
    for base in range(0, len(x), 32):
        v = x[base:base + 32]
        n = len(v)
        get = lambda src: v[src] if 0 <= src < n else np.nan  # noqa: E731  absent lane: undefined
        for lane in range(n):
            i = base + lane
            ref["sum"][i], ref["mx"][i] = v.sum(), v.max()
            ref["incl"][i], ref["excl"][i] = v[:lane + 1].sum(), v[:lane].sum()
            ref["xor3"][i] = get(lane ^ 3)
            ref["down"][i] = v[lane] if lane + 5 >= 32 else get(lane + 5)
            ref["up"][i] = v[lane] if lane < 5 else get(lane - 5)
            ref["bcast"][i] = get(7)
            ref["ballot"][i] = sum(1 << j for j in range(n) if v[j] > 0)
            ref["qsum"][i] = v[lane & ~3:min((lane & ~3) + 4, n)].sum()
    return ref


@pytest.mark.parametrize("threads", [64, 48], ids=["full-simdgroups", "partial-simdgroup"])
def test_simd_functions_vs_numpy(threads):
    x = RNG.standard_normal(64).astype(np.float32)
    outs = {k: ((64,), mx.uint32 if k == "ballot" else mx.float32) for k in SIMD_OUTS}
    got = dict(zip(SIMD_OUTS, run(SIMD, {"inp": mx.array(x)}, outs, (threads, 1, 1), (64, 1, 1),
                                  init_value=0.0)))
    ref = simd_reference(x[:threads])
    for k in SIMD_OUTS:
        r, g = ref[k], got[k][:threads].astype(np.float64)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(r), err_msg=k)
        m = ~np.isnan(r)
        np.testing.assert_allclose(g[m], r[m], rtol=1e-5, atol=1e-5, err_msg=k)


SCAN = """
    uint lane = thread_index_in_simdgroup;
    float x = inp[thread_position_in_grid.x];
    for (ushort d = 1; d < 32; d <<= 1) {
        float y = simd_shuffle_up(x, d);
        if (lane >= d) x += y;
    }
    out[thread_position_in_grid.x] = x;
"""


def scan(source):
    x = RNG.standard_normal(64).astype(np.float32)
    (out,) = run(source, {"inp": mx.array(x)}, {"out": ((64,), mx.float32)}, (64, 1, 1), (64, 1, 1))
    return out, np.concatenate([np.cumsum(x[:32]), np.cumsum(x[32:])])


def test_shuffle_scan_vs_numpy():
    out, ref = scan(SCAN)
    assert_rel_close(out, ref, 1e-6, "shuffle scan")  # measured 9e-8


MMA = """
    threadgroup T As[8 * 16];
    uint lane = thread_index_in_simdgroup;
    for (uint k = lane; k < 8 * 16; k += 32) As[k] = A[k];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    simdgroup_matrix<T, 8, 8> a, b;
    simdgroup_matrix<float, 8, 8> acc;
    simdgroup_load(acc, C, 8);
    for (uint k = 0; k < 16; k += 8) {
        // A is [8, 16] (or [16, 8] holding A^T); B is [16, 8] (or [8, 16] holding B^T)
        simdgroup_load(a, As, TA ? 8 : 16, TA ? ulong2(0, k) : ulong2(k, 0), TA);
        simdgroup_load(b, B, TB ? 16 : 8, TB ? ulong2(k, 0) : ulong2(0, k), TB);
        simdgroup_multiply_accumulate(acc, a, b, acc);
    }
    simdgroup_store(acc, D, 8);
"""


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16], ids=["float", "half"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)],
                         ids=["nn", "tn", "nt"])
def test_simdgroup_multiply_accumulate_vs_numpy(dtype, ta, tb):
    a = RNG.standard_normal((8, 16)).astype(np.float32)
    b = RNG.standard_normal((16, 8)).astype(np.float32)
    c = RNG.standard_normal((8, 8)).astype(np.float32)
    a_mem, b_mem = (a.T if ta else a), (b.T if tb else b)
    (d,) = run(MMA, {"A": mx.array(np.ascontiguousarray(a_mem)).astype(dtype),
                     "B": mx.array(np.ascontiguousarray(b_mem)).astype(dtype), "C": mx.array(c)},
               {"D": ((8, 8), mx.float32)}, (32, 1, 1), (32, 1, 1),
               template=[("T", dtype), ("TA", ta), ("TB", tb)])
    cast = (lambda m: m.astype(np.float16).astype(np.float64)) if dtype == mx.float16 else np.float64
    ref = cast(a) @ cast(b) + c
    assert_rel_close(d, ref, 1e-6, "simdgroup mma")  # fp32 products of the inputs: measured 7e-8


LANE_MAP = """
    simdgroup_float8x8 m;
    simdgroup_load(m, M, 8);
    uint lane = thread_index_in_simdgroup;
    out[2 * lane] = m.thread_elements()[0];
    out[2 * lane + 1] = m.thread_elements()[1];
"""


def test_thread_elements_lane_map_is_mlx():
    (out,) = run(LANE_MAP, {"M": mx.arange(64).astype(mx.float32)}, {"out": ((64,), mx.float32)},
                 (32, 1, 1), (32, 1, 1))
    for lane in range(32):
        qid = lane // 4
        fm, fn = (qid & 4) + (lane // 2) % 4, (qid & 2) * 2 + (lane % 2) * 2
        assert out[2 * lane:2 * lane + 2].tolist() == [fm * 8 + fn, fm * 8 + fn + 1], lane


BF16 = """
    uint i = thread_position_in_grid.x;
    T x = inp[i];
    out[i] = x * T(2.0f) + T(1.0f);
    wide[i] = float(x);
"""


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bfloat", "half"])
def test_reduced_precision_in_and_out(dtype):
    x = mx.array(RNG.standard_normal(40).astype(np.float32)).astype(dtype)
    kernel = metal_emu.metal_kernel("rp", ["inp"], ["out", "wide"], BF16)
    out, wide = kernel(inputs=[x], template=[("T", dtype)], grid=(40, 1, 1), threadgroup=(32, 1, 1),
                       output_shapes=[(40,), (40,)], output_dtypes=[dtype, mx.float32])
    assert out.dtype == dtype
    ref = x * mx.array(2.0, dtype) + mx.array(1.0, dtype)  # rounded per op, like the kernel
    np.testing.assert_array_equal(np.asarray(out.view(mx.uint16)), np.asarray(ref.view(mx.uint16)))
    np.testing.assert_array_equal(np.asarray(wide), np.asarray(x.astype(mx.float32)))


def test_out_of_bounds_read_is_nan_and_unwritten_output_is_nan():
    src = "uint i = thread_position_in_grid.x; if (i < 8) out[i] = inp[i + 16];"
    (out,) = run(src, {"inp": mx.ones((16,))}, {"out": ((16,), mx.float32)}, (16, 1, 1), (16, 1, 1))
    assert np.isnan(out).all()


def test_fixture_runs_driver_code_unchanged(metal_on_cpu):
    def driver(x):  # what a kernel driver does
        if not mx.metal.is_available():
            raise RuntimeError("no Metal")
        k = mx.fast.metal_kernel(name="twice", input_names=["x"], output_names=["y"],
                                 source="uint i = thread_position_in_grid.x; y[i] = 2 * x[i];")
        return k(inputs=[x], grid=(x.size, 1, 1), threadgroup=(32, 1, 1),
                 output_shapes=[x.shape], output_dtypes=[x.dtype])[0]

    x = mx.array(RNG.standard_normal((3, 7)).astype(np.float32))
    y = metal_on_cpu.assert_schedule_independent(driver, x)
    np.testing.assert_array_equal(np.asarray(y), 2 * np.asarray(x))


ATOMIC = """
    uint i = thread_position_in_grid.x;
    atomic_fetch_add_explicit(&total[0], inp[i], memory_order_relaxed);
    atomic_fetch_add_explicit(&count[i % 4], 1u, memory_order_relaxed);
"""


def test_atomic_outputs():
    x = RNG.standard_normal(300).astype(np.float32)
    total, count = run(ATOMIC, {"inp": mx.array(x)}, {"total": ((1,), mx.float32),
                                                      "count": ((4,), mx.uint32)},
                       (300, 1, 1), (128, 1, 1), atomic_outputs=True, init_value=0)
    assert_rel_close(total, [x.sum(dtype=np.float64)], 1e-5, "atomic sum")
    assert count.tolist() == [75, 75, 75, 75]


# A recurrent gated delta rule step, written like a decode kernel: simdgroup `row` owns state row
# S[row, :], 32 lanes split Dk; k and q of each token are staged in threadgroup memory.
GDN_HEADER = """
template <int N>
METAL_FUNC float lane_dot(thread const float (&s)[N], const threadgroup float* x) {
  float acc = 0.0f;
  for (int j = 0; j < N; ++j) acc = fma(s[j], x[j], acc);
  return acc;
}
"""
GDN_STEP = """
    constexpr int NK = Dk / 32;
    static_assert(Dk % 32 == 0, "Dk must be a multiple of 32");
    threadgroup float kq[2][Dk];
    uint lane = thread_index_in_simdgroup;
    uint row = simdgroup_index_in_threadgroup;
    uint tid = thread_index_in_threadgroup;
    float s[NK];
    for (int j = 0; j < NK; ++j) s[j] = state[row * Dk + lane * NK + j];
    for (int t = 0; t < q_shape[0]; ++t) {
        for (uint j = tid; j < Dk; j += threads_per_threadgroup.x) {
            kq[0][j] = float(k[t * Dk + j]);
            kq[1][j] = float(q[t * Dk + j]);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        float decay = metal::exp(g[t]);
        for (int j = 0; j < NK; ++j) s[j] *= decay;
        float kv = simd_sum(lane_dot(s, &kq[0][lane * NK]));
        float delta = (float(v[t * Dv + row]) - kv) * beta[t];
        for (int j = 0; j < NK; ++j) s[j] += delta * kq[0][lane * NK + j];
        float yv = simd_sum(lane_dot(s, &kq[1][lane * NK]));
        if (lane == 0) y[t * Dv + row] = static_cast<T>(yv);
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    for (int j = 0; j < NK; ++j) state_out[row * Dk + lane * NK + j] = s[j];
"""


def gdn_inputs(T=5, Dk=64, Dv=8, dtype=mx.bfloat16):
    q, k = (RNG.standard_normal((T, Dk)).astype(np.float32) / 8 for _ in range(2))
    v = RNG.standard_normal((T, Dv)).astype(np.float32)
    g = -RNG.uniform(0.01, 2.0, T).astype(np.float32)  # weak to strong decay
    beta = RNG.uniform(0.1, 0.9, T).astype(np.float32)
    state = RNG.standard_normal((Dv, Dk)).astype(np.float32)
    return {"q": mx.array(q).astype(dtype), "k": mx.array(k).astype(dtype),
            "v": mx.array(v).astype(dtype), "g": mx.array(g), "beta": mx.array(beta),
            "state": mx.array(state)}


def gdn_reference(inp):
    f = {n: np.asarray(a.astype(mx.float32), np.float64) for n, a in inp.items()}
    S, ys = f["state"].copy(), []
    for t in range(f["q"].shape[0]):
        S *= np.exp(f["g"][t])
        S += f["beta"][t] * np.outer(f["v"][t] - S @ f["k"][t], f["k"][t])
        ys.append(S @ f["q"][t])
    return np.stack(ys), S


def gdn_step(source, inp, Dk=64, Dv=8):
    T = inp["q"].shape[0]
    return run(source, inp, {"y": ((T, Dv), inp["q"].dtype), "state_out": ((Dv, Dk), mx.float32)},
               (32 * Dv, 1, 1), (32 * Dv, 1, 1), header=GDN_HEADER, name="gdn_step",
               template=[("T", inp["q"].dtype), ("Dk", Dk), ("Dv", Dv)])


def test_gated_delta_step_kernel_vs_numpy():
    inp = gdn_inputs()
    y, state = gdn_step(GDN_STEP, inp)
    y_ref, s_ref = gdn_reference(inp)
    assert_rel_close(state, s_ref, 1e-6, "state")  # fp32 state: measured 6e-8
    assert_rel_close(y, y_ref, 2e-2, "y")          # bf16 inputs and output: measured 2e-3


LANE_EXCHANGE = """
    threadgroup float buf[64];
    uint i = thread_index_in_threadgroup;
    buf[i] = inp[i];
    simdgroup_barrier(mem_flags::mem_threadgroup);
    out[i] = buf[i ^ 1];
"""


def test_simdgroup_barrier_orders_lanes_and_its_absence_is_a_race():
    x = mx.array(RNG.standard_normal(64).astype(np.float32))
    (out,) = run(LANE_EXCHANGE, {"inp": x}, {"out": ((64,), mx.float32)}, (64, 1, 1), (64, 1, 1))
    np.testing.assert_array_equal(out, np.asarray(x)[np.arange(64) ^ 1])
    racy = LANE_EXCHANGE.replace("    simdgroup_barrier(mem_flags::mem_threadgroup);\n", "")
    with pytest.raises(MetalEmuRaceError):
        run(racy, {"inp": x}, {"out": ((64,), mx.float32)}, (64, 1, 1), (64, 1, 1))


# Most of the supported subset in one kernel: it must compile and be schedule-independent.
SINK_HEADER = """#include <metal_stdlib>
#include <metal_simdgroup>
using namespace metal;
constant constexpr int kN = 4;
METAL_FUNC float softplus(float x) { return x > 20.0f ? x : metal::log1p(metal::exp(x)); }
template <typename T> METAL_FUNC T sigmoid(T x) { return T(1) / (T(1) + metal::exp(-x)); }
"""
SINK_SRC = """
    uint i = thread_position_in_grid.x;
    uint lane = thread_index_in_simdgroup;
    threadgroup atomic_uint counter;
    threadgroup float4 tile4[32];
    if (i == 0) atomic_store_explicit(&counter, 0u, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float4 v = float4(x[i], 1.0f, 2.0f, 3.0f);
    v.xy = v.yx;
    float2 w = v.zw * 0.5f + float2(v.x);
    half4 h = half4(v) * 1.5h;
    bfloat2 b = bfloat2(w);
    float s = dot(v, float4(1.0f)) + length(w) + float(h.w) + float(b.y);
    s += metal::precise::sqrt(fabs(s)) + fast::exp2(-1.0f) + rsqrt(4.0f) + fma(1.0f, 2.0f, 3.0f);
    s += select(1.0f, 2.0f, s > 0.0f) + clamp(s, -1.0f, 1.0f) + metal::max(0.5h, h.x) + min(2, 3);
    s += as_type<float>(as_type<uint>(1.0f)) + float(metal::numeric_limits<half>::max() > 1.0h);
    s += Limits<float>::finite_max > 0 ? 1.0f : 0.0f;
    s += softplus(s * 0.0f) + sigmoid(0.0f) + float(sigmoid(bfloat(0.0f)));
    float4 r4 = simd_sum(v) + quad_shuffle_xor(v, 1) + simd_shuffle_down(v, 1u);
    int pc = popcount(int(lane)) + clz(1u) + ctz(8u);
    metal::array<float, kN> arr;
    #pragma unroll
    for (int k = 0; k < kN; ++k) arr[k] = float(k);
    packed_float3 p3 = float3(1.0f, 2.0f, 3.0f);
    float3 f3 = p3;
    tile4[lane] = r4;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float4 t4 = tile4[(lane + 1) % 32];
    bool any_pos = simd_any(x[i] > 0.0f), all_fin = simd_all(isfinite(x[i]));
    uint prev = atomic_fetch_add_explicit(&counter, 1u, memory_order_relaxed);
    static_assert(sizeof(float3) == 16 && sizeof(half4) == 8 && sizeof(packed_float3) == 12, "layout");
    int64_t loc = elem_to_loc(int64_t(i), x_shape, x_strides, x_ndim);
    y[i] = s + t4.w + pc + arr[3] + f3.z + float(any_pos) + float(all_fin) + float(prev < 64u) + float(loc) * 0.0f
           + float(ceildiv(7, 2)) + float(all(v == v)) + float(simd_is_first());
"""


def test_supported_subset_compiles_and_runs():
    x = mx.array(np.linspace(-1, 1, 64).astype(np.float32))
    (y,) = run(SINK_SRC, {"x": x}, {"y": ((64,), mx.float32)}, (64, 1, 1), (64, 1, 1),
               header=SINK_HEADER, name="sink")
    assert np.isfinite(y).all()


# ---- planted bugs: each must be reported -----------------------------------------------------

def test_planted_dropped_barrier_is_a_race():
    racy = REDUCE.replace("    threadgroup_barrier(mem_flags::mem_threadgroup);\n    for", "    for")
    assert racy != REDUCE
    x = mx.array(RNG.standard_normal(256).astype(np.float32))
    with pytest.raises(MetalEmuRaceError, match="differs between the forward and reverse"):
        run(racy, {"inp": x}, {"out": ((1,), mx.float32)}, (256, 1, 1), (256, 1, 1),
            schedule="all")


def test_planted_dropped_barrier_via_helper(metal_on_cpu):
    racy = REDUCE.replace("    threadgroup_barrier(mem_flags::mem_threadgroup);\n    for", "    for")
    x = mx.array(RNG.standard_normal(256).astype(np.float32))

    def driver():
        k = mx.fast.metal_kernel(name="reduce", input_names=["inp"], output_names=["out"],
                                 source=racy)
        return k(inputs=[x], grid=(256, 1, 1), threadgroup=(256, 1, 1), output_shapes=[(1,)],
                 output_dtypes=[mx.float32])

    with pytest.raises(MetalEmuRaceError):
        metal_on_cpu.assert_schedule_independent(driver)


def test_planted_gdn_missing_barrier_before_next_token():
    racy = GDN_STEP.replace("        threadgroup_barrier(mem_flags::mem_threadgroup);\n    }", "    }")
    assert racy != GDN_STEP
    with pytest.raises(MetalEmuRaceError):
        gdn_step(racy, gdn_inputs(), )


def test_planted_off_by_one_write_is_out_of_bounds():
    src = "uint i = thread_position_in_grid.x;\nout[i + 1] = inp[i];"
    with pytest.raises(MetalEmuError, match=r"output 'out': out-of-bounds write at flat element "
                                            r"index 16 \(1 element\(s\) past the end"):
        run(src, {"inp": mx.ones((16,))}, {"out": ((16,), mx.float32)}, (16, 1, 1), (16, 1, 1))


EARLY_RETURN = """threadgroup float tile[64];
uint lid = thread_position_in_threadgroup.x;
if (lid >= 40) return;
tile[lid] = inp[lid];
threadgroup_barrier(mem_flags::mem_threadgroup);
out[lid] = tile[39 - lid];
"""


def test_planted_early_return_before_barrier():
    with pytest.raises(MetalEmuError, match=r"returned while 40 thread\(s\) .* wait at "
                                            r"threadgroup_barrier at source line 5"):
        run(EARLY_RETURN, {"inp": mx.ones((64,))}, {"out": ((64,), mx.float32)}, (64, 1, 1),
            (64, 1, 1))


def test_planted_wrong_shuffle_distance_fails_vs_numpy():
    buggy = SCAN.replace("simd_shuffle_up(x, d)", "simd_shuffle_up(x, d + 1)")
    out, ref = scan(buggy)
    with pytest.raises(AssertionError, match="relative error"):
        assert_rel_close(out, ref, 1e-6, "shuffle scan")


UNINIT = """threadgroup float tile[32];
uint lid = thread_position_in_threadgroup.x;
if (lid < 31) tile[lid] = inp[thread_position_in_grid.x];
threadgroup_barrier(mem_flags::mem_threadgroup);
out[thread_position_in_grid.x] = tile[(lid + 1) % 32];
"""


def test_planted_uninitialised_threadgroup_read_is_nan():
    (out,) = run(UNINIT, {"inp": mx.ones((64,))}, {"out": ((64,), mx.float32)}, (64, 1, 1),
                 (32, 1, 1))
    nan = np.flatnonzero(np.isnan(out)).tolist()
    assert nan == [30, 62], nan  # in both threadgroups: poisoned afresh per threadgroup


def test_planted_threadgroup_memory_over_32k():
    src = """threadgroup float a[8192];
threadgroup float b[2];
uint i = thread_position_in_threadgroup.x;
a[i] = 0; b[i % 2] = 0;
threadgroup_barrier(mem_flags::mem_threadgroup);
out[i] = a[i] + b[0];
"""
    with pytest.raises(MetalEmuError, match=r"declared at source line 2 \(8 bytes\) brings the "
                                            r"threadgroup's total to 32776 bytes"):
        run(src, {"inp": mx.ones((4,))}, {"out": ((32,), mx.float32)}, (32, 1, 1), (32, 1, 1))


def test_planted_threads_at_different_barriers():
    src = """uint i = thread_position_in_threadgroup.x;
if (i < 16) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
} else {
    threadgroup_barrier(mem_flags::mem_threadgroup);
}
out[i] = 1;
"""
    with pytest.raises(MetalEmuError, match=r"source line 5 while thread .* source line 3"):
        run(src, {"inp": mx.ones((4,))}, {"out": ((32,), mx.float32)}, (32, 1, 1), (32, 1, 1))


def test_planted_divergent_simdgroup_matrix_op():
    src = """simdgroup_float8x8 m = make_filled_simdgroup_matrix<float, 8, 8>(1.0f);
if (thread_index_in_simdgroup < 16) {
    simdgroup_store(m, out, 8);
}
"""
    with pytest.raises(MetalEmuError, match=r"simdgroup_store at source line 3 needs all 32 lanes"):
        run(src, {"inp": mx.ones((4,))}, {"out": ((64,), mx.float32)}, (32, 1, 1), (32, 1, 1))


@pytest.mark.parametrize("code,word", [("std::vector<float> v;", "std"),
                                       ("double d = inp[0];", "double")], ids=["std", "double"])
def test_host_only_code_does_not_compile(code, word):
    src = code + "\nout[0] = inp[0];"
    with pytest.raises(MetalEmuCompileError, match=word):
        run(src, {"inp": mx.ones((4,))}, {"out": ((1,), mx.float32)}, (1, 1, 1), (1, 1, 1))


def test_threadgroup_too_large():
    with pytest.raises(ValueError, match="greater than"):
        run("out[0] = inp[0];", {"inp": mx.ones((4,))}, {"out": ((1,), mx.float32)},
            (2048, 1, 1), (1025, 1, 1))
