// Portability layer, CUDA half (the Metal half: portable_metal.h, same names). One kernel body runs as Metal
// (mx.fast.metal_kernel) and as CUDA (mx.fast.cuda_kernel). Bodies are written in Metal's dialect (device /
// threadgroup / thread address spaces). The driver (qwen35_mlx/kernels/_metal.py) passes this file (plus, for
// kernels that multiply tiles, tiles_cuda.h and tiles.h) as the kernel header and prepends a short backend
// prologue to each body that binds tid (thread in threadgroup), lane, sg (simdgroup / warp index) and tgid
// (threadgroup position in grid, uint3); on CUDA it also spells Metal's address spaces (threadgroup ->
// __shared__, the others -> nothing), so that bodies read as plain Metal.
// Each backend gets only its own half: MLX hashes a custom kernel's whole source on every launch, and decode
// is bound by per-launch host cost (benchmarks/bench_launch.py).

#define GDN_CUDA 1
#define FN __device__ __forceinline__
#define BARRIER() __syncthreads()
#define BARRIER_DEVICE() __syncthreads()
#define UNROLL _Pragma("unroll")
// Threadgroup arrays that together may pass CUDA's 48 KiB of static shared memory: where they do, carved,
// 16-byte aligned, from the launch's dynamic shared memory (the driver passes their total: _metal.kernel's
// tg_arrays); otherwise (and on Metal) the driver writes them as plain `threadgroup T name[n];` (_metal._body).
#define TG_ARRAYS_BEGIN extern __shared__ __align__(16) unsigned char tg_dyn_[]; int tg_off_ = 0;
#define TG_ARRAY(T, name, n) \
  T* const name = reinterpret_cast<T*>(tg_dyn_ + tg_off_); tg_off_ += (int(sizeof(T)) * (n) + 15) / 16 * 16;
typedef unsigned int uint;
// Address spaces in shared helpers (tiles.h): Metal's thread / device, nothing on CUDA. (Metal's own words are
// defined away in the body's prologue, after the CUDA headers, whose __device__ is __location__(device).)
#define THR
#define DEV
#ifndef INFINITY  // NVRTC need not have <math.h>'s
#define INFINITY __int_as_float(0x7f800000)
#endif

FN float bits_float(int b) { return __int_as_float(b); }  // a float constant passed as its bits
FN float fexp(float x) { return expf(x); }
FN float fexp2(float x) { return exp2f(x); }
FN float flog(float x) { return logf(x); }
FN float frsqrt(float x) { return rsqrtf(x); }
FN float fcos(float x) { return cosf(x); }
FN float fsin(float x) { return sinf(x); }
FN float shfl_xor(float x, int m) { return __shfl_xor_sync(0xffffffffu, x, m); }

// Loads keep their 32-bit words as loaded (rload) and unpack them to floats where they are used (runpack):
// a load issued ahead (a prefetch) then does not wait for its data where it is issued, as a conversion there
// would make it. N consecutive elements of T, N * sizeof(T) a multiple of 4 bytes, aligned to min(16, that).
template <typename T> struct tag {};
FN void unpack_word(uint w, float* o, tag<float>) { o[0] = __uint_as_float(w); }
FN void unpack_word(uint w, float* o, tag<__nv_bfloat16>) {
  o[0] = __uint_as_float(w << 16);
  o[1] = __uint_as_float(w & 0xffff0000u);
}
FN void unpack_word(uint w, float* o, tag<__half>) {
  o[0] = __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
  o[1] = __half2float(__ushort_as_half((unsigned short)(w >> 16)));
}
template <int N, typename T>
FN void rload(uint* w, const T* p) {
  constexpr int WORDS = N * int(sizeof(T)) / 4;
  if (WORDS % 4 == 0) {
    for (int i = 0; i < WORDS / 4; ++i) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[i];
      w[4 * i] = v.x; w[4 * i + 1] = v.y; w[4 * i + 2] = v.z; w[4 * i + 3] = v.w;
    }
  } else if (WORDS % 2 == 0) {
    for (int i = 0; i < WORDS / 2; ++i) {
      const uint2 v = reinterpret_cast<const uint2*>(p)[i];
      w[2 * i] = v.x; w[2 * i + 1] = v.y;
    }
  } else {
    for (int i = 0; i < WORDS; ++i) w[i] = reinterpret_cast<const uint*>(p)[i];
  }
}
template <int N, typename T>
FN void runpack(float* out, const uint* w) {
  for (int i = 0; i < N * int(sizeof(T)) / 4; ++i) unpack_word(w[i], out + (4 / int(sizeof(T))) * i, tag<T>());
}
template <int N, typename T>
FN void vload(float* out, const T* p) {
  uint w[N * int(sizeof(T)) / 4];
  rload<N>(w, p);
  runpack<N, T>(out, w);
}

FN void vstore2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }

// N floats rounded to T and stored as words (16-byte stores where N * sizeof(T) allows); aligned as vload.
FN uint pack_word(const float* v, tag<float>) { return __float_as_uint(v[0]); }
FN uint pack_word(const float* v, tag<__nv_bfloat16>) {
  const __nv_bfloat162 b = __floats2bfloat162_rn(v[0], v[1]);
  return *reinterpret_cast<const uint*>(&b);
}
FN uint pack_word(const float* v, tag<__half>) {
  const __half2 b = __floats2half2_rn(v[0], v[1]);
  return *reinterpret_cast<const uint*>(&b);
}
template <int N, typename T>
FN void vstore(T* p, const float* v) {
  constexpr int WORDS = N * int(sizeof(T)) / 4;
  uint w[WORDS];
  for (int i = 0; i < WORDS; ++i) w[i] = pack_word(v + (4 / int(sizeof(T))) * i, tag<T>());
  if (WORDS % 4 == 0) {
    for (int i = 0; i < WORDS / 4; ++i) reinterpret_cast<uint4*>(p)[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
  } else if (WORDS % 2 == 0) {
    for (int i = 0; i < WORDS / 2; ++i) reinterpret_cast<uint2*>(p)[i] = make_uint2(w[2 * i], w[2 * i + 1]);
  } else {
    for (int i = 0; i < WORDS; ++i) reinterpret_cast<uint*>(p)[i] = w[i];
  }
}
