// Synchronisation and SIMD-group functions: barriers, simd_* and quad_* collectives, atomics.
//
// A collective publishes the lane's value, blocks, and once the scheduler has resolved the call
// site for the SIMD group (all lanes that reached it are "active"), computes its own result from
// the snapshot of the active lanes' values. Reading an inactive lane yields poison (NaN bits).
// Reductions combine active lanes pairwise in lane order, the same order in every lane.
#pragma once
#include "math.h"
#include "runtime.h"

#include <source_location>

// Every collective records its caller's position, so that errors name the kernel source line.
#define EMU_LOC_PARAMS std::source_location emu_sl_ = std::source_location::current()
#define EMU_LOC (emu::Loc{emu_sl_.file_name(), emu_sl_.line(), emu_sl_.column()})

namespace emu {

template <class T> inline T poison() {
  T v;
  __builtin_memset(static_cast<void*>(&v), 0xff, sizeof v);
  return v;
}

template <class P> inline Thread* publish(const char* what, int flags, const P& payload, Loc loc) {
  static_assert(sizeof(P) <= kSlotBytes, "value too large for a SIMD-group collective");
  Thread* t = emu_current;
  if (flags & kUniformArgs) __builtin_memset(t->slot, 0, kSlotBytes);
  __builtin_memcpy(t->slot, static_cast<const void*>(&payload), sizeof(P));
  t->what = what;
  t->flags = flags;
  t->loc = loc;
  t->state = kSimdWait;
  emu_wait(t);
  return t;
}

inline bool active(const Thread* t, uint32_t lane) { return lane < 32 && (t->mask >> lane & 1); }

template <class P> inline P peer(const Thread* t, uint32_t lane) {
  P p;
  __builtin_memcpy(static_cast<void*>(&p), t->snap->lane[lane], sizeof(P));
  return p;
}
template <class T> inline T peer_or_poison(const Thread* t, uint32_t lane) {
  return active(t, lane) ? peer<T>(t, lane) : poison<T>();
}

// Pairwise reduction over the active lanes of [base, base + width).
template <class T, class F> inline T reduce(const Thread* t, uint32_t base, uint32_t width, F f) {
  T v[32];
  int n = 0;
  for (uint32_t l = base; l < base + width; ++l)
    if (active(t, l)) v[n++] = peer<T>(t, l);
  while (n > 1) {
    int m = 0;
    for (int i = 0; i + 1 < n; i += 2) v[m++] = f(v[i], v[i + 1]);
    if (n & 1) v[m++] = v[n - 1];
    n = m;
  }
  return v[0];
}

// Prefix over active lanes of [base, lane) or [base, lane]; `empty` when there is none.
template <class T, class F>
inline T prefix(const Thread* t, uint32_t base, bool inclusive, T empty, F f) {
  T acc = empty;
  bool first = true;
  uint32_t end = inclusive ? t->lane + 1 : t->lane;
  for (uint32_t l = base; l < end; ++l)
    if (active(t, l)) {
      acc = first ? peer<T>(t, l) : f(acc, peer<T>(t, l));
      first = false;
    }
  return acc;
}

template <class T> struct fill_payload { T data; T filling; };

}  // namespace emu

namespace metal {

enum class mem_flags : uint {
  mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4,
  mem_threadgroup_imageblock = 8, mem_object_data = 16,
};
constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(uint(a) | uint(b)); }
constexpr mem_flags operator&(mem_flags a, mem_flags b) { return mem_flags(uint(a) & uint(b)); }

inline void threadgroup_barrier(mem_flags flags, EMU_LOC_PARAMS) {
  emu::Thread* t = emu_current;
  t->what = "threadgroup_barrier";
  t->flags = int(flags);
  t->loc = EMU_LOC;
  t->state = emu::kBarrierWait;
  emu_wait(t);
}
inline void simdgroup_barrier(mem_flags, EMU_LOC_PARAMS) {
  emu::publish("simdgroup_barrier", 0, 0, EMU_LOC);
}

// Reductions and scans; Q is the group width (32: simd_*, 4: quad_*).
#define EMU_REDUCE(prefix_, Q, name, expr)                                                   \
  template <class T> inline T prefix_##name(T x, EMU_LOC_PARAMS) {                          \
    const emu::Thread* t = emu::publish(#prefix_ #name, 0, x, EMU_LOC);                      \
    return emu::reduce<T>(t, t->lane & ~(Q - 1u), Q, [](T a, T b) { return T(expr); });      \
  }
#define EMU_SCAN(prefix_, Q, name, inclusive, empty, expr)                                   \
  template <class T> inline T prefix_##name(T x, EMU_LOC_PARAMS) {                          \
    const emu::Thread* t = emu::publish(#prefix_ #name, 0, x, EMU_LOC);                      \
    return emu::prefix<T>(t, t->lane & ~(Q - 1u), inclusive, T(empty),                       \
                          [](T a, T b) { return T(expr); });                                 \
  }
#define EMU_GROUP_FUNCS(prefix_, Q)                                                          \
  EMU_REDUCE(prefix_, Q, sum, a + b)                                                         \
  EMU_REDUCE(prefix_, Q, product, a * b)                                                     \
  EMU_REDUCE(prefix_, Q, max, max(a, b))                                                     \
  EMU_REDUCE(prefix_, Q, min, min(a, b))                                                     \
  EMU_REDUCE(prefix_, Q, and, a & b)                                                         \
  EMU_REDUCE(prefix_, Q, or, a | b)                                                          \
  EMU_REDUCE(prefix_, Q, xor, a ^ b)                                                         \
  EMU_SCAN(prefix_, Q, prefix_inclusive_sum, true, 0, a + b)                                 \
  EMU_SCAN(prefix_, Q, prefix_exclusive_sum, false, 0, a + b)                                \
  EMU_SCAN(prefix_, Q, prefix_inclusive_product, true, 1, a * b)                             \
  EMU_SCAN(prefix_, Q, prefix_exclusive_product, false, 1, a * b)                            \
  /* Shuffles: an inactive or out-of-range source lane yields poison. */                     \
  template <class T> inline T prefix_##shuffle(T x, ushort src, EMU_LOC_PARAMS) {           \
    const emu::Thread* t = emu::publish(#prefix_ "shuffle", 0, x, EMU_LOC);                  \
    return src < Q ? emu::peer_or_poison<T>(t, (t->lane & ~(Q - 1u)) + src) : emu::poison<T>(); \
  }                                                                                          \
  template <class T> inline T prefix_##broadcast(T x, ushort src, EMU_LOC_PARAMS) {         \
    const emu::Thread* t = emu::publish(#prefix_ "broadcast", 0, x, EMU_LOC);                \
    return src < Q ? emu::peer_or_poison<T>(t, (t->lane & ~(Q - 1u)) + src) : emu::poison<T>(); \
  }                                                                                          \
  template <class T> inline T prefix_##shuffle_xor(T x, ushort mask, EMU_LOC_PARAMS) {      \
    const emu::Thread* t = emu::publish(#prefix_ "shuffle_xor", 0, x, EMU_LOC);              \
    uint32_t i = (t->lane % Q) ^ mask;                                                       \
    return i < Q ? emu::peer_or_poison<T>(t, (t->lane & ~(Q - 1u)) + i) : emu::poison<T>();  \
  }                                                                                          \
  /* up/down: lanes whose source is outside the group keep their own value. */               \
  template <class T> inline T prefix_##shuffle_up(T x, ushort delta, EMU_LOC_PARAMS) {      \
    const emu::Thread* t = emu::publish(#prefix_ "shuffle_up", 0, x, EMU_LOC);               \
    uint32_t i = t->lane % Q;                                                                \
    return i < delta ? x : emu::peer_or_poison<T>(t, t->lane - delta);                       \
  }                                                                                          \
  template <class T> inline T prefix_##shuffle_down(T x, ushort delta, EMU_LOC_PARAMS) {    \
    const emu::Thread* t = emu::publish(#prefix_ "shuffle_down", 0, x, EMU_LOC);             \
    uint32_t i = t->lane % Q;                                                                \
    return i + delta >= Q ? x : emu::peer_or_poison<T>(t, t->lane + delta);                  \
  }                                                                                          \
  template <class T> inline T prefix_##shuffle_rotate_up(T x, ushort delta, EMU_LOC_PARAMS) { \
    const emu::Thread* t = emu::publish(#prefix_ "shuffle_rotate_up", 0, x, EMU_LOC);        \
    uint32_t i = t->lane % Q;                                                                \
    return emu::peer_or_poison<T>(t, t->lane - i + (i + Q - delta % Q) % Q);                 \
  }                                                                                          \
  template <class T> inline T prefix_##shuffle_rotate_down(T x, ushort delta, EMU_LOC_PARAMS) { \
    const emu::Thread* t = emu::publish(#prefix_ "shuffle_rotate_down", 0, x, EMU_LOC);      \
    uint32_t i = t->lane % Q;                                                                \
    return emu::peer_or_poison<T>(t, t->lane - i + (i + delta) % Q);                         \
  }                                                                                          \
  template <class T> inline T prefix_##shuffle_and_fill_up(T x, T fill, ushort delta,       \
                                                           ushort modulo = Q, EMU_LOC_PARAMS) { \
    const emu::Thread* t = emu::publish(#prefix_ "shuffle_and_fill_up", 0,                   \
                                        emu::fill_payload<T>{x, fill}, EMU_LOC);             \
    uint32_t w = modulo ? modulo : Q, i = t->lane % w, base = t->lane - i;                   \
    if (!emu::active(t, i >= delta ? base + i - delta : base + w - delta + i)) return emu::poison<T>(); \
    return i >= delta ? emu::peer<emu::fill_payload<T>>(t, base + i - delta).data           \
                      : emu::peer<emu::fill_payload<T>>(t, base + w - delta + i).filling;   \
  }                                                                                          \
  template <class T> inline T prefix_##shuffle_and_fill_down(T x, T fill, ushort delta,     \
                                                             ushort modulo = Q, EMU_LOC_PARAMS) { \
    const emu::Thread* t = emu::publish(#prefix_ "shuffle_and_fill_down", 0,                 \
                                        emu::fill_payload<T>{x, fill}, EMU_LOC);             \
    uint32_t w = modulo ? modulo : Q, i = t->lane % w, base = t->lane - i;                   \
    if (!emu::active(t, i + delta < w ? base + i + delta : base + i + delta - w)) return emu::poison<T>(); \
    return i + delta < w ? emu::peer<emu::fill_payload<T>>(t, base + i + delta).data        \
                         : emu::peer<emu::fill_payload<T>>(t, base + i + delta - w).filling; \
  }                                                                                          \
  template <class T> inline T prefix_##broadcast_first(T x, EMU_LOC_PARAMS) {               \
    const emu::Thread* t = emu::publish(#prefix_ "broadcast_first", 0, x, EMU_LOC);          \
    uint32_t base = t->lane & ~(Q - 1u);                                                     \
    for (uint32_t l = base; l < base + Q; ++l) if (emu::active(t, l)) return emu::peer<T>(t, l); \
    return x;                                                                                \
  }                                                                                          \
  inline bool prefix_##all(bool x, EMU_LOC_PARAMS) {                                         \
    const emu::Thread* t = emu::publish(#prefix_ "all", 0, x, EMU_LOC);                      \
    return emu::reduce<bool>(t, t->lane & ~(Q - 1u), Q, [](bool a, bool b) { return a && b; }); \
  }                                                                                          \
  inline bool prefix_##any(bool x, EMU_LOC_PARAMS) {                                         \
    const emu::Thread* t = emu::publish(#prefix_ "any", 0, x, EMU_LOC);                      \
    return emu::reduce<bool>(t, t->lane & ~(Q - 1u), Q, [](bool a, bool b) { return a || b; }); \
  }                                                                                          \
  inline bool prefix_##is_first(EMU_LOC_PARAMS) {                                            \
    const emu::Thread* t = emu::publish(#prefix_ "is_first", 0, 0, EMU_LOC);                 \
    uint32_t base = t->lane & ~(Q - 1u);                                                     \
    for (uint32_t l = base; l < base + Q; ++l) if (emu::active(t, l)) return l == t->lane;   \
    return false;                                                                            \
  }                                                                                          \
  inline bool prefix_##is_helper_thread() { return false; }

EMU_GROUP_FUNCS(simd_, 32)
EMU_GROUP_FUNCS(quad_, 4)
#undef EMU_GROUP_FUNCS
#undef EMU_REDUCE
#undef EMU_SCAN

// simd_ballot / simd_active_threads_mask: a bit per lane; all() and any() over active lanes.
struct simd_vote {
  typedef uint64_t vote_t;
  vote_t v_ = 0, lanes_ = 0xffffffffu;
  constexpr simd_vote() = default;
  explicit constexpr simd_vote(vote_t v, vote_t lanes = 0xffffffffu) : v_(v), lanes_(lanes) {}
  explicit constexpr operator vote_t() const { return v_; }
  constexpr bool all() const { return (v_ & lanes_) == lanes_; }
  constexpr bool any() const { return v_ != 0; }
};
inline simd_vote simd_ballot(bool x, EMU_LOC_PARAMS) {
  const emu::Thread* t = emu::publish("simd_ballot", 0, x, EMU_LOC);
  uint64_t bits = 0;
  for (uint32_t l = 0; l < 32; ++l)
    if (emu::active(t, l) && emu::peer<bool>(t, l)) bits |= uint64_t(1) << l;
  return simd_vote(bits, t->mask);
}
inline simd_vote simd_active_threads_mask(EMU_LOC_PARAMS) {
  const emu::Thread* t = emu::publish("simd_active_threads_mask", 0, 0, EMU_LOC);
  return simd_vote(t->mask, t->mask);
}

// Atomics: fibers switch only at barriers and collectives, so plain read-modify-write is atomic.
enum memory_order { memory_order_relaxed, memory_order_acquire, memory_order_release,
                    memory_order_acq_rel, memory_order_seq_cst };
template <class T> struct atomic { T v_; };
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<bool> atomic_bool;
typedef atomic<float> atomic_float;

template <class T> inline T atomic_load_explicit(const volatile atomic<T>* o, memory_order) { return o->v_; }
template <class T>
inline void atomic_store_explicit(volatile atomic<T>* o, std::type_identity_t<T> v, memory_order) { o->v_ = v; }
template <class T>
inline T atomic_exchange_explicit(volatile atomic<T>* o, std::type_identity_t<T> v, memory_order) {
  T old = o->v_; o->v_ = v; return old;
}
template <class T>
inline bool atomic_compare_exchange_weak_explicit(volatile atomic<T>* o, T* expected,
                                                  std::type_identity_t<T> desired, memory_order,
                                                  memory_order) {
  T cur = o->v_;
  if (cur == *expected) { o->v_ = desired; return true; }
  *expected = cur;
  return false;
}
#define EMU_ATOMIC_RMW(name, expr)                                                           \
  template <class T>                                                                         \
  inline T atomic_fetch_##name##_explicit(volatile atomic<T>* o, std::type_identity_t<T> b,  \
                                          memory_order) {                                    \
    T a = o->v_; o->v_ = T(expr); return a;                                                  \
  }
EMU_ATOMIC_RMW(add, a + b)
EMU_ATOMIC_RMW(sub, a - b)
EMU_ATOMIC_RMW(and, a & b)
EMU_ATOMIC_RMW(or, a | b)
EMU_ATOMIC_RMW(xor, a ^ b)
EMU_ATOMIC_RMW(min, b < a ? b : a)
EMU_ATOMIC_RMW(max, a < b ? b : a)
#undef EMU_ATOMIC_RMW

}  // namespace metal

namespace emu {
// Threadgroup arrays become function-scope statics (one instance, shared by the fibers); the
// rewritten declaration calls this, which poisons the array once per threadgroup.
template <class A> inline void tg_declare(A& a, EMU_LOC_PARAMS) {
  emu_tg_declare(static_cast<void*>(&a), sizeof(A), EMU_LOC);
}
}  // namespace emu
