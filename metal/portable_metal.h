// Portability layer, Metal half: see portable_cuda.h.

#include <metal_simdgroup>
#include <metal_stdlib>
#if defined(__clang__)
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL
#endif

#define FN inline
#define THR thread  // address spaces in shared helpers (tiles.h)
#define DEV device
#define BARRIER() metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup)
#define BARRIER_DEVICE() \
  metal::threadgroup_barrier(metal::mem_flags::mem_device | metal::mem_flags::mem_threadgroup)

FN float bits_float(int b) { return as_type<float>(b); }  // a float constant passed as its bits
FN float fexp(float x) { return metal::exp(x); }
FN float fexp2(float x) { return metal::exp2(x); }
FN float flog(float x) { return metal::log(x); }
FN float frsqrt(float x) { return metal::rsqrt(x); }
FN float fcos(float x) { return metal::precise::cos(x); }  // rope angles reach ~1e5 rad
FN float fsin(float x) { return metal::precise::sin(x); }
FN float shfl_xor(float x, ushort m) { return metal::simd_shuffle_xor(x, m); }

// Words as loaded (rload), unpacked where used (runpack): see the CUDA half.
template <typename T> struct tag {};
FN void unpack_word(uint w, thread float* o, tag<float>) { o[0] = as_type<float>(w); }
template <typename T>
FN void unpack_word(uint w, thread float* o, tag<T>) {  // 16-bit types: half, bfloat16_t
  o[0] = float(as_type<T>(ushort(w & 0xffffu)));
  o[1] = float(as_type<T>(ushort(w >> 16)));
}
template <int N, typename T>
FN void rload(thread uint* w, const device T* p) {
  const device uint* pw = reinterpret_cast<const device uint*>(p);
  for (int i = 0; i < N * int(sizeof(T)) / 4; ++i) w[i] = pw[i];
}
template <int N, typename T>
FN void runpack(thread float* out, thread const uint* w) {
  for (int i = 0; i < N * int(sizeof(T)) / 4; ++i) unpack_word(w[i], out + (4 / int(sizeof(T))) * i, tag<T>());
}
template <int N, typename T>
FN void vload(thread float* out, const device T* p) {
  for (int i = 0; i < N; ++i) out[i] = float(p[i]);
}

FN void vstore2(device float* p, float a, float b) {
  p[0] = a;
  p[1] = b;
}
template <int N, typename T>
FN void vstore(device T* p, thread const float* v) {
  for (int i = 0; i < N; ++i) p[i] = static_cast<T>(v[i]);
}
