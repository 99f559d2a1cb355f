"""metal_emu: run the package's Metal kernels on a Linux CPU, in the tests.

`metal_kernel` has the signature of `mlx.core.fast.metal_kernel` (MLX 0.32.4). It writes the kernel
text exactly as MLX does (`verbose=True` prints it), compiles it with g++ against a shim of the
Metal Shading Language subset below, and runs every Metal thread as a fiber with lockstep
semantics at SIMD-group collectives and barriers. `tests/kernels/conftest.py` swaps it in for
`mx.fast.metal_kernel` (fixture `metal_on_cpu`), so kernel drivers are tested unchanged.

Modelled
- Grid semantics of MLX's dispatch: grid in threads (dispatchThreads), threadgroup clamped to the
  grid, partial threadgroups at the far edges, <= 1024 threads per threadgroup, SIMD width 32.
- Lockstep: a thread runs until it blocks at a collective or barrier or returns. A SIMD group's
  collectives are resolved once all its lanes are blocked, over the lanes that reached the same
  call site (divergent lanes are inactive for it); SIMD groups progress independently between
  barriers, as on the GPU; when all are stuck, every live thread must wait at the same
  threadgroup barrier. An early return before a barrier others wait at, threads at different
  barriers, and simdgroup-matrix ops without all 32 lanes (or with non-uniform
  pointer/stride/origin/transpose) are errors naming the kernel source line.
- Poison: threadgroup arrays start as NaN bits (0x7FA5 words; a large value for ints) in every
  threadgroup, and their total is checked against 32 KiB; outputs start as NaN bits unless
  `init_value`; inputs sit between NaN guards (out-of-bounds reads give NaN), outputs between
  guards that are checked after the run (out-of-bounds writes are errors naming the output);
  inactive lanes read by shuffles give NaN bits.
- Schedules: forward runs SIMD group 0 up to the barrier, then group 1, ... (lanes in order),
  reverse the opposite, random interleaves SIMD-group steps and lanes with a seeded generator;
  threadgroups run in the same order. Each launch runs under `default_schedules()`
  (METAL_EMU_SCHEDULE, default "all") and the outputs must agree bit for bit, else
  MetalEmuRaceError: a missing barrier shows up here. Lanes of one SIMD group that exchange data
  through threadgroup memory need a simdgroup_barrier (or a collective) in between, as Metal's
  memory model says, even though Apple GPUs usually forgive it.

Not modelled
- Races inside one sync interval beyond what the three orders expose, memory visibility and
  mem_flags (all writes are visible at once), inter-threadgroup ordering or concurrency
  (threadgroups run one after another), forward-progress or deadlock behaviour of real GPUs.
- Numerics: no fast-math (`math_mode` is accepted and ignored), half arithmetic may keep float
  precision within an expression, simd reductions add pairwise in lane order and
  simdgroup_multiply_accumulate accumulates in float in k order; compare with tolerances.
- Metal-only compile errors: address spaces are no-ops, so a `device` pointer passed where a
  `threadgroup` one is expected compiles here. `double` and `std::` are rejected.
- `mx.compile`: the emulator evaluates eagerly, so it cannot run inside a compiled function.

Supported MSL subset (grow it in csrc/ when a kernel needs more)
- Types: half, bfloat (MLX: bfloat16_t, float16_t), vec<T,2|3|4> for float/half/bfloat/int/uint/
  short/ushort/char/uchar/long/ulong/bool with .xyzw/.rgba, [i], common swizzles (xy, zw, xyz, ...),
  arithmetic/comparison operators, packed_* types, metal::array, as_type, numeric_limits.
- Address spaces device/constant/thread/threadgroup; `threadgroup T name[dims];` declarations.
- Math (metal::, fast::, precise::): exp exp2 exp10 expm1 log log2 log10 log1p sqrt rsqrt pow powr
  sin cos tan asin acos atan atan2 sinh cosh tanh asinh acosh atanh erf floor ceil round rint trunc
  fract fmod fabs abs min max fmin fmax clamp saturate sign step smoothstep mix fma copysign divide
  select isnan isinf isfinite signbit all any dot length normalize cross popcount clz ctz mulhi.
  No sigmoid/softplus: Metal has none, define them in the kernel's header.
- threadgroup_barrier / simdgroup_barrier (mem_flags::mem_none|mem_device|mem_threadgroup).
- simd_ and quad_: sum product max min and or xor, prefix_{inclusive,exclusive}_{sum,product},
  shuffle shuffle_xor shuffle_up shuffle_down shuffle_rotate_{up,down} shuffle_and_fill_{up,down},
  broadcast broadcast_first all any is_first; simd_ballot, simd_active_threads_mask.
- simdgroup_matrix<T,8,8> (simdgroup_float8x8 / half8x8 / bfloat8x8): make_filled_simdgroup_matrix,
  diagonal constructor, simdgroup_load / simdgroup_store (elements_per_row, origin, transpose),
  simdgroup_multiply, simdgroup_multiply_accumulate, thread_elements() with MLX's lane map.
- Atomics: atomic<T>, atomic_int/uint/float, atomic_{load,store,exchange}_explicit,
  atomic_compare_exchange_weak_explicit, atomic_fetch_{add,sub,and,or,xor,min,max}_explicit;
  `atomic_outputs=True` (float atomics are compared with a tolerance across schedules).
- From MLX's utils (prepended by MLX): ceildiv, elem_to_loc(_1/_2/_3), Limits, WorkPerThread.
- Thread attributes: those MLX declares when their names occur in the source
  (thread_position_in_grid, thread_index_in_simdgroup, simdgroup_index_in_threadgroup, ...).
  MLX declares no `simd_lane_id` / `simd_group_id`: use the attribute names.
- `__METAL__` and `__METAL_VERSION__` (310) are defined, so portability headers take the Metal path.

Cost (2 shared cores, g++ 12): runtime and precompiled shim build in ~0.5 s each, once per cache;
a kernel compiles in ~0.1-0.3 s (cached by text); a small launch takes about a millisecond per
schedule. tests/kernels/test_metal_emu.py (39 cases) runs in ~6 s cold, under 1 s warm.

Environment: METAL_EMU_SCHEDULE (forward|reverse|random|all), METAL_EMU_CACHE (build cache,
default tests/.cache/metal_emu), METAL_EMU_CXX (g++), METAL_EMU_STACK_KB (fiber stack, 256).
"""

from .build import MetalEmuCompileError, MetalEmuError
from .kernel import (SCHEDULES, MetalEmuRaceError, assert_schedule_independent, default_schedules,
                     metal_kernel, schedules)

__all__ = ["metal_kernel", "schedules", "default_schedules", "assert_schedule_independent",
           "SCHEDULES", "MetalEmuError", "MetalEmuCompileError", "MetalEmuRaceError"]
