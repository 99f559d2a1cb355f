// The scheduler of the Metal emulator: runs a grid threadgroup by threadgroup, every Metal thread
// as a fiber, with lockstep semantics at SIMD-group collectives and threadgroup barriers.
//
// Within a threadgroup, between two barriers:
//   - a SIMD group steps: its runnable lanes run, in the schedule's order, until each blocks at a
//     collective or barrier or returns; then its pending collectives are resolved (lanes at the
//     same call site take part, the others are inactive for it) and the lanes run on;
//   - SIMD groups progress independently, as on the GPU: forward runs group 0 up to the barrier,
//     then group 1, ...; reverse runs the last group first; random interleaves single steps.
// When every SIMD group is stuck, all live threads must wait at the same threadgroup barrier,
// which is then released. Results that change with the schedule reveal a missing barrier.
//
// Built once per machine (see build.py) and loaded with RTLD_GLOBAL: kernel libraries link to
// emu_current, emu_grid, emu_wait, emu_fail and emu_tg_declare at load time.
#include "emu/runtime.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

using emu::Thread;

emu::Thread* emu_current = nullptr;
const emu::Grid* emu_grid = nullptr;

namespace {

enum Schedule : int { kForward = 0, kReverse = 1, kRandom = 2 };

Thread g_threads[emu::kMaxThreads];
emu::Snapshot g_snap[emu::kMaxThreads / emu::kSimdWidth];
emu::Grid g_grid;
void (*g_entry)(void* const*) = nullptr;
void* const* g_args = nullptr;
const char* g_name = "";
int g_schedule = kForward;
uint64_t g_rng = 1;
bool g_failed = false;
char g_err[4096];

struct TgArray { void* addr; size_t bytes; uint64_t epoch; };
TgArray g_tg_arrays[256];
int g_tg_count = 0;
uint64_t g_epoch = 0;      // one per threadgroup run
size_t g_tg_bytes = 0;     // threadgroup memory declared in this threadgroup
size_t g_tg_limit = 32768;

// ---- fibers --------------------------------------------------------------------------------
size_t g_stack_bytes = 0;
void* g_stacks[emu::kMaxThreads];

char* stack_of(uint32_t i) {  // lazily mapped, reused; a PROT_NONE page below catches overflow
  if (!g_stack_bytes) {
    const char* kb = getenv("METAL_EMU_STACK_KB");
    g_stack_bytes = (kb ? strtoul(kb, nullptr, 10) : 256) * 1024;
    if (g_stack_bytes < 65536) g_stack_bytes = 65536;
  }
  if (!g_stacks[i]) {
    void* p = mmap(nullptr, g_stack_bytes + 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, 4096, PROT_NONE);
    g_stacks[i] = p;
  }
  return static_cast<char*>(g_stacks[i]) + 4096;
}

void fiber_main(Thread* t);

#if defined(__x86_64__) && !defined(EMU_PORTABLE_FIBERS)
// A context switch saves the callee-saved registers and the FP control words on the old stack,
// stores its stack pointer, and pops the same from the new one (SysV ABI; no syscall, unlike
// swapcontext). A new fiber's stack is laid out as if it had switched out just before
// emu_ctx_start, which calls fiber_main(r12 = thread).
extern "C" void emu_ctx_switch(void** save_sp, void* load_sp);
extern "C" void emu_ctx_start();
asm(R"(
  .text
  .p2align 4
  .globl emu_ctx_switch
  .hidden emu_ctx_switch
  .type emu_ctx_switch, @function
emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_ctx_switch, .-emu_ctx_switch
  .globl emu_ctx_start
  .hidden emu_ctx_start
  .type emu_ctx_start, @function
emu_ctx_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size emu_ctx_start, .-emu_ctx_start
)");

void* g_sched_sp = nullptr;

bool fiber_init(Thread* t, uint32_t i) {
  char* base = stack_of(i);
  if (!base) return false;
  uintptr_t top = (reinterpret_cast<uintptr_t>(base) + g_stack_bytes) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 128);
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  sp[0] = uint64_t(mxcsr) | (uint64_t(fpcw) << 32);
  sp[1] = 0;                                                  // r15
  sp[2] = 0;                                                  // r14
  sp[3] = reinterpret_cast<uint64_t>(&fiber_main);            // r13
  sp[4] = reinterpret_cast<uint64_t>(t);                      // r12
  sp[5] = 0;                                                  // rbx
  sp[6] = 0;                                                  // rbp
  sp[7] = reinterpret_cast<uint64_t>(&emu_ctx_start);         // return address
  t->sp = sp;
  return true;
}
inline void to_fiber(Thread* t) { emu_ctx_switch(&g_sched_sp, t->sp); }
inline void to_scheduler(Thread* t) { emu_ctx_switch(&t->sp, g_sched_sp); }

#else  // portable fallback: correct, ~15x slower per switch
#include <ucontext.h>
ucontext_t g_sched_uc;
ucontext_t g_uc[emu::kMaxThreads];

void fiber_trampoline(int i) { fiber_main(&g_threads[i]); }

bool fiber_init(Thread* t, uint32_t i) {
  char* base = stack_of(i);
  if (!base) return false;
  getcontext(&g_uc[i]);
  g_uc[i].uc_stack.ss_sp = base;
  g_uc[i].uc_stack.ss_size = g_stack_bytes;
  g_uc[i].uc_link = nullptr;
  makecontext(&g_uc[i], reinterpret_cast<void (*)()>(&fiber_trampoline), 1, int(i));
  (void)t;
  return true;
}
inline void to_fiber(Thread* t) { swapcontext(&g_sched_uc, &g_uc[t->index]); }
inline void to_scheduler(Thread* t) { swapcontext(&g_uc[t->index], &g_sched_uc); }
#endif

void fiber_main(Thread* t) {
  g_entry(g_args);
  t->state = emu::kDone;
  to_scheduler(t);
  __builtin_trap();  // a finished fiber is never resumed
}

// ---- messages --------------------------------------------------------------------------------
void append(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void append(const char* fmt, ...) {
  size_t used = strlen(g_err);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err + used, sizeof g_err - used, fmt, ap);
  va_end(ap);
}

void begin_error(const Thread* t) {
  g_failed = true;
  const emu::Grid& g = g_grid;
  snprintf(g_err, sizeof g_err, "kernel '%s', threadgroup (%u,%u,%u)", g_name, g.tg_pos[0],
           g.tg_pos[1], g.tg_pos[2]);
  if (t) append(", thread (%u,%u,%u) [simdgroup %u lane %u]", t->tid[0], t->tid[1], t->tid[2],
                t->simdgroup, t->lane);
  append(": ");
}

bool same_site(const Thread& a, const Thread& b) {
  return a.loc.line == b.loc.line && a.loc.col == b.loc.col && a.what == b.what &&
         (a.loc.file == b.loc.file || strcmp(a.loc.file, b.loc.file) == 0);
}

uint64_t next_random() {  // xorshift64*
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return g_rng * 0x2545F4914F6CDD1DULL;
}

void make_order(uint32_t* order, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) order[i] = g_schedule == kReverse ? n - 1 - i : i;
  if (g_schedule == kRandom)
    for (uint32_t i = n; i > 1; --i) {
      uint32_t j = uint32_t(next_random() % i);
      uint32_t tmp = order[i - 1];
      order[i - 1] = order[j];
      order[j] = tmp;
    }
}

// ---- resolution ----------------------------------------------------------------------------
// Resolves the pending collectives of the SIMD group of lanes [base, base + lanes): lanes at the
// same call site form one collective (the others are inactive for it). Returns whether any was.
bool resolve_collectives(uint32_t base, uint32_t lanes) {
  uint32_t pending = 0;
  for (uint32_t l = 0; l < lanes; ++l)
    if (g_threads[base + l].state == emu::kSimdWait) pending |= 1u << l;
  bool any = false;
  while (pending) {
    const Thread& first = g_threads[base + __builtin_ctz(pending)];
    uint32_t mask = 0;
    for (uint32_t l = 0; l < lanes; ++l)
      if ((pending >> l & 1) && same_site(g_threads[base + l], first)) mask |= 1u << l;
    pending &= ~mask;
    if ((first.flags & emu::kAllLanes) && mask != 0xffffffffu) {
      begin_error(&first);
      append("%s at %s line %u needs all 32 lanes of a full simdgroup in uniform control flow, "
             "but only lanes mask 0x%08x (of a simdgroup of %u threads) reached it",
             first.what, first.loc.file, first.loc.line, mask, lanes);
      return false;
    }
    emu::Snapshot& snap = g_snap[base / emu::kSimdWidth];
    for (uint32_t l = 0; l < lanes; ++l) {
      if (!(mask >> l & 1)) continue;
      Thread& t = g_threads[base + l];
      if ((first.flags & emu::kUniformArgs) && memcmp(t.slot, first.slot, emu::kSlotBytes)) {
        begin_error(&t);
        append("%s at %s line %u: lanes %u and %u pass different arguments (pointer, stride, "
               "origin and transpose must be uniform across the simdgroup)",
               first.what, first.loc.file, first.loc.line, first.lane, t.lane);
        return false;
      }
      memcpy(snap.lane[l], t.slot, emu::kSlotBytes);
      t.mask = mask;
      t.snap = &snap;
      t.state = emu::kRunnable;
    }
    any = true;
  }
  return any;
}

// Releases the threadgroup barrier every live thread waits at: 1 released, 0 all done, -1 error.
int resolve_barrier(uint32_t n) {
  const Thread* waiting = nullptr;
  const Thread* done = nullptr;
  uint32_t n_waiting = 0, n_done = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const Thread& t = g_threads[i];
    if (t.state == emu::kDone) {
      if (!done) done = &t;
      ++n_done;
    } else {
      if (!waiting) waiting = &t;
      ++n_waiting;
    }
  }
  if (!waiting) return 0;
  if (done) {
    begin_error(done);
    append("returned while %u thread(s) of its threadgroup wait at %s at %s line %u "
           "(%u of %u threads returned): every thread must reach every barrier "
           "(an early return before a barrier?)",
           n_waiting, waiting->what, waiting->loc.file, waiting->loc.line, n_done, n);
    return -1;
  }
  for (uint32_t i = 0; i < n; ++i) {
    const Thread& t = g_threads[i];
    if (!same_site(t, *waiting)) {
      begin_error(&t);
      append("waits at %s at %s line %u while thread (%u,%u,%u) waits at %s at %s line %u: "
             "threads of a threadgroup must meet at the same barrier",
             t.what, t.loc.file, t.loc.line, waiting->tid[0], waiting->tid[1], waiting->tid[2],
             waiting->what, waiting->loc.file, waiting->loc.line);
      return -1;
    }
  }
  for (uint32_t i = 0; i < n; ++i) g_threads[i].state = emu::kRunnable;
  return 1;
}

// One step of a SIMD group: run its runnable lanes (in the schedule's order) until each blocks
// or returns, then resolve its collectives. Returns whether it can go on before the barrier.
bool step_simdgroup(uint32_t sg, uint32_t n, int* rc) {
  uint32_t base = sg * emu::kSimdWidth;
  uint32_t lanes = n - base < uint32_t(emu::kSimdWidth) ? n - base : emu::kSimdWidth;
  uint32_t order[emu::kSimdWidth];
  make_order(order, lanes);
  for (uint32_t k = 0; k < lanes; ++k) {
    Thread* t = &g_threads[base + order[k]];
    if (t->state != emu::kRunnable) continue;
    emu_current = t;
    to_fiber(t);
    emu_current = nullptr;
    if (g_failed) return *rc = -1, false;
  }
  bool resolved = resolve_collectives(base, lanes);
  if (g_failed) return *rc = -1, false;
  return resolved;
}

// Runs a threadgroup. SIMD groups progress independently between barriers, as on the GPU:
// forward runs SIMD group 0 up to the barrier, then group 1, ...; reverse the other way round;
// random interleaves them step by step. Then the barrier is checked and released.
int run_threadgroup(uint32_t n) {
  const emu::Grid& g = g_grid;
  for (uint32_t i = 0; i < n; ++i) {
    Thread& t = g_threads[i];
    t.index = i;
    t.lane = i % emu::kSimdWidth;
    t.simdgroup = i / emu::kSimdWidth;
    t.tid[0] = i % g.tg[0];
    t.tid[1] = i / g.tg[0] % g.tg[1];
    t.tid[2] = i / (g.tg[0] * g.tg[1]);
    t.state = emu::kRunnable;
    t.mask = 0;
    t.snap = nullptr;
    if (!fiber_init(&t, i)) {
      begin_error(nullptr);
      append("cannot map a fiber stack");
      return -1;
    }
  }
  uint32_t groups = (n + emu::kSimdWidth - 1) / emu::kSimdWidth;
  uint32_t order[emu::kMaxThreads / emu::kSimdWidth];
  int rc = 0;
  for (;;) {
    if (g_schedule != kRandom) {
      make_order(order, groups);
      for (uint32_t k = 0; k < groups && !rc; ++k)
        while (step_simdgroup(order[k], n, &rc)) {
        }
    } else {
      uint32_t live[emu::kMaxThreads / emu::kSimdWidth], n_live = groups;
      for (uint32_t k = 0; k < groups; ++k) live[k] = k;
      while (n_live && !rc) {
        uint32_t k = uint32_t(next_random() % n_live);
        if (!step_simdgroup(live[k], n, &rc)) live[k] = live[--n_live];
      }
    }
    if (rc) return rc;
    rc = resolve_barrier(n);
    if (rc <= 0) return rc;
    rc = 0;
  }
}

}  // namespace

extern "C" void emu_wait(Thread* t) { to_scheduler(t); }

extern "C" void emu_fail(const char* fmt, ...) {
  Thread* t = emu_current;
  begin_error(t);
  size_t used = strlen(g_err);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err + used, sizeof g_err - used, fmt, ap);
  va_end(ap);
  t->state = emu::kDone;
  to_scheduler(t);
  __builtin_trap();
}

extern "C" void emu_tg_declare(void* addr, size_t bytes, emu::Loc loc) {
  TgArray* a = nullptr;
  for (int i = 0; i < g_tg_count; ++i)
    if (g_tg_arrays[i].addr == addr) a = &g_tg_arrays[i];
  if (!a) {
    if (g_tg_count == int(sizeof g_tg_arrays / sizeof g_tg_arrays[0]))
      emu_fail("too many threadgroup arrays");
    a = &g_tg_arrays[g_tg_count++];
    *a = TgArray{addr, bytes, 0};
  }
  if (a->epoch == g_epoch) return;
  a->epoch = g_epoch;
  uint16_t* p = static_cast<uint16_t*>(addr);  // 0x7FA5: a NaN as float, half and bfloat
  for (size_t i = 0; i < bytes / 2; ++i) p[i] = 0x7FA5;
  if (bytes & 1) static_cast<unsigned char*>(addr)[bytes - 1] = 0xA5;
  g_tg_bytes += bytes;
  if (g_tg_bytes > g_tg_limit)
    emu_fail("threadgroup memory: the array declared at %s line %u (%zu bytes) brings the "
             "threadgroup's total to %zu bytes, over the %zu-byte limit",
             loc.file, loc.line, bytes, g_tg_bytes, g_tg_limit);
}

// Runs a grid; returns 0, or 1 with a message in err.
extern "C" int emu_launch(const char* name, void (*entry)(void* const*), void* const* args,
                          const uint32_t* grid, const uint32_t* tg, int schedule, uint64_t seed,
                          uint64_t tg_mem_limit, char* err, size_t errlen) {
  g_name = name;
  g_entry = entry;
  g_args = args;
  g_schedule = schedule;
  g_rng = seed * 0x9E3779B97F4A7C15ULL + 1;
  g_failed = false;
  g_err[0] = 0;
  g_tg_limit = tg_mem_limit;
  g_tg_count = 0;  // arrays re-register (and are poisoned) on first use in each launch
  emu::Grid& g = g_grid;
  uint64_t total = 1;
  for (int d = 0; d < 3; ++d) {
    g.grid[d] = grid[d];
    g.dispatch_tg[d] = tg[d];
    g.tg_count[d] = tg[d] ? (grid[d] + tg[d] - 1) / tg[d] : 0;
    total *= g.tg_count[d];
  }
  g.dispatch_tg_threads = tg[0] * tg[1] * tg[2];
  emu_grid = &g;
  uint64_t* tg_order = total ? static_cast<uint64_t*>(malloc(total * sizeof(uint64_t))) : nullptr;
  for (uint64_t i = 0; i < total; ++i) tg_order[i] = schedule == kReverse ? total - 1 - i : i;
  if (schedule == kRandom)
    for (uint64_t i = total; i > 1; --i) {
      uint64_t j = next_random() % i, tmp = tg_order[i - 1];
      tg_order[i - 1] = tg_order[j];
      tg_order[j] = tmp;
    }
  int rc = 0;
  for (uint64_t k = 0; k < total && rc == 0; ++k) {
    uint64_t id = tg_order[k];
    g.tg_pos[0] = uint32_t(id % g.tg_count[0]);
    g.tg_pos[1] = uint32_t(id / g.tg_count[0] % g.tg_count[1]);
    g.tg_pos[2] = uint32_t(id / (uint64_t(g.tg_count[0]) * g.tg_count[1]));
    for (int d = 0; d < 3; ++d) {
      uint32_t start = g.tg_pos[d] * tg[d];
      g.tg[d] = grid[d] - start < tg[d] ? grid[d] - start : tg[d];
    }
    g.tg_threads = g.tg[0] * g.tg[1] * g.tg[2];
    ++g_epoch;
    g_tg_bytes = 0;
    if (run_threadgroup(g.tg_threads) < 0) rc = 1;
  }
  free(tg_order);
  emu_grid = nullptr;
  if (rc) snprintf(err, errlen, "%s", g_err);
  return rc;
}
