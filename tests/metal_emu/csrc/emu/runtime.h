// The contract between the scheduler (runtime.cpp, built once) and kernel code (built per kernel).
//
// Every Metal thread of a threadgroup runs as a fiber. A fiber runs until it blocks: at a
// SIMD-group collective (it publishes its value in `slot` first) or at a threadgroup barrier.
// When every thread of the threadgroup is blocked, the scheduler resolves the collectives of
// each SIMD group (copying the participants' slots into the group's snapshot, from which each
// lane computes its own result), then the barrier; see runtime.cpp.
#pragma once
#include <stddef.h>
#include <stdint.h>

namespace emu {

constexpr int kSimdWidth = 32;
constexpr int kSlotBytes = 64;      // largest value a collective exchanges (e.g. 3 matrix fragments)
constexpr int kMaxThreads = 1024;   // per threadgroup, as on Apple GPUs

struct Loc {                        // a kernel source position (file is "source", "header", ...)
  const char* file;
  unsigned line;
  unsigned col;
};

enum State : int { kRunnable = 0, kSimdWait, kBarrierWait, kDone };

enum CollectiveFlags : int {
  kAllLanes = 1,     // every lane of a full SIMD group must take part (simdgroup_matrix ops)
  kUniformArgs = 2,  // the published bytes must be identical in all lanes (pointer, stride, ...)
};

struct Snapshot {                   // per SIMD group: the slots of the lanes of the last collective
  alignas(16) unsigned char lane[kSimdWidth][kSlotBytes];
};

struct Thread {
  alignas(16) unsigned char slot[kSlotBytes];  // value published for the pending collective
  uint32_t mask;                    // after a collective: the lanes that took part
  int state;
  int flags;                        // CollectiveFlags, or the barrier's mem_flags
  const char* what;                 // the collective's or barrier's name, for messages
  Loc loc;
  uint32_t index;                   // thread_index_in_threadgroup
  uint32_t lane;                    // thread_index_in_simdgroup
  uint32_t simdgroup;               // simdgroup_index_in_threadgroup
  uint32_t tid[3];                  // thread_position_in_threadgroup
  const Snapshot* snap;
  void* sp;                         // saved stack pointer while switched out
};

struct Grid {                       // the launch as the thread attributes see it
  uint32_t grid[3];                 // threads_per_grid
  uint32_t dispatch_tg[3];          // dispatch_threads_per_threadgroup
  uint32_t tg[3];                   // threads_per_threadgroup: smaller at the grid's far edges
  uint32_t tg_pos[3];               // threadgroup_position_in_grid
  uint32_t tg_count[3];             // threadgroups_per_grid
  uint32_t tg_threads;              // threads in this threadgroup
  uint32_t dispatch_tg_threads;
};

}  // namespace emu

extern "C" {
extern emu::Thread* emu_current;
extern const emu::Grid* emu_grid;
// Block the current thread (its state, what, loc, flags and slot already set) until released.
void emu_wait(emu::Thread* t);
// Stop the launch with an error; never returns to the kernel.
[[noreturn]] void emu_fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// A threadgroup array declaration was reached: poison it once per threadgroup and count its bytes.
void emu_tg_declare(void* addr, size_t bytes, emu::Loc loc);
}
