// The Metal Shading Language subset the emulator compiles kernels against (with g++, as C++20).
// Included first in every kernel translation unit (precompiled; see build.py).
#pragma once
#include "emu/types.h"
#include "emu/math.h"
#include "emu/simd.h"
#include "emu/matrix.h"

// Address spaces are no-ops: every pointer is a host pointer. Threadgroup *declarations* are
// rewritten by source.py into shared statics before compiling; `threadgroup` elsewhere qualifies
// pointers and references only.
#define device
#define constant
#define thread
#define threadgroup

#define __METAL__ 1
#define __METAL_VERSION__ 310
#define __METAL_EMU__ 1

using namespace metal;
#include "emu/mlx.h"

// Thread attributes, as the generated trampoline passes them to the kernel.
namespace emu::attr {
inline const emu::Thread& t() { return *emu_current; }
inline const emu::Grid& g() { return *emu_grid; }
inline uint3 thread_position_in_grid() {
  return uint3(g().tg_pos[0] * g().dispatch_tg[0] + t().tid[0],
               g().tg_pos[1] * g().dispatch_tg[1] + t().tid[1],
               g().tg_pos[2] * g().dispatch_tg[2] + t().tid[2]);
}
inline uint3 thread_position_in_threadgroup() { return uint3(t().tid[0], t().tid[1], t().tid[2]); }
inline uint3 threadgroup_position_in_grid() { return uint3(g().tg_pos[0], g().tg_pos[1], g().tg_pos[2]); }
inline uint3 threads_per_threadgroup() { return uint3(g().tg[0], g().tg[1], g().tg[2]); }
inline uint3 dispatch_threads_per_threadgroup() {
  return uint3(g().dispatch_tg[0], g().dispatch_tg[1], g().dispatch_tg[2]);
}
inline uint3 threads_per_grid() { return uint3(g().grid[0], g().grid[1], g().grid[2]); }
inline uint3 grid_size() { return threads_per_grid(); }
inline uint3 grid_origin() { return uint3(0u); }
inline uint3 threadgroups_per_grid() { return uint3(g().tg_count[0], g().tg_count[1], g().tg_count[2]); }
inline uint thread_index_in_threadgroup() { return t().index; }
inline uint thread_index_in_simdgroup() { return t().lane; }
inline uint simdgroup_index_in_threadgroup() { return t().simdgroup; }
inline uint threads_per_simdgroup() { return 32; }
inline uint thread_execution_width() { return 32; }
inline uint simdgroups_per_threadgroup() { return (g().tg_threads + 31) / 32; }
inline uint dispatch_simdgroups_per_threadgroup() { return (g().dispatch_tg_threads + 31) / 32; }
inline uint thread_index_in_quadgroup() { return t().index % 4; }
inline uint quadgroup_index_in_threadgroup() { return t().index / 4; }
inline uint quadgroups_per_threadgroup() { return (g().tg_threads + 3) / 4; }
inline uint dispatch_quadgroups_per_threadgroup() { return (g().dispatch_tg_threads + 3) / 4; }
}  // namespace emu::attr

// Host-only C++ must not sneak into kernels: Metal has neither the std library nor double.
#define std metal_emu_error__std_is_not_available_in_metal
#define double metal_emu_error__double_is_not_supported_in_metal
