// Portability layer: one kernel body runs as Metal (mx.fast.metal_kernel) and as CUDA (mx.fast.cuda_kernel).
// Bodies are written in Metal's dialect (device / threadgroup / thread address spaces). The driver
// (qwen35_mlx/kernels/_metal.py) passes this file as the kernel header and prepends a short backend prologue
// to each body that binds tid (thread in threadgroup), lane, sg (simdgroup / warp index) and tgid
// (threadgroup position in grid, uint3); on CUDA it also spells the address spaces (threadgroup ->
// __shared__, the others -> nothing), kept out of this file so that it reads as plain Metal too.
//
// Tile products work on 16x8 = (16x8) x (8x8) fragments held as plain floats, so a body never touches a
// backend type:  frag_a (16 rows x 8 k, 4 per lane), frag_b (8 k x 8 cols, 2 per lane),
// frag_c (16x8 accumulator, 4 per lane). Metal: two simdgroup_float8x8 products (MLX's lane map).
// CUDA: one mma.sync m16n8k8 tf32 (PREC 1: three of them on a hi/lo split, about fp32 accurate; see mma).
//
// Two ways to fill fragments; a product uses one of them for both operands:
//  - element maps, k in natural order: element e of a lane sits at fa_row/fa_col (A), fb_row/fb_col (B),
//    fc_row/fc_col (C, always this way);
//  - permuted k, for A operands read from device memory with wide loads: over a group of KG k-steps a lane
//    holds, in each of its two rows, 2 KG consecutive columns (load_a, load_bt). The matching B element e of
//    k-step ks (within the group) sits at row kp_row<KG>(lane, ks, e), column fb_col(lane, e).
//    The permutation only reorders the sum over k.
// Accumulator elements 2h and 2h + 1 (C layout) are neighbours in a row on both backends (vstore2).
#ifndef QWEN35_GDN_COMMON_H
#define QWEN35_GDN_COMMON_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)

#define GDN_CUDA 1
#define FN __device__ __forceinline__
#define BARRIER() __syncthreads()
#define BARRIER_DEVICE() __syncthreads()
#define UNROLL _Pragma("unroll")
typedef unsigned int uint;

FN float fexp(float x) { return expf(x); }
FN float flog(float x) { return logf(x); }
FN float frsqrt(float x) { return rsqrtf(x); }
FN float shfl_xor(float x, int m) { return __shfl_xor_sync(0xffffffffu, x, m); }

struct frag_a { float x[4]; };
struct frag_b { float x[2]; };
struct frag_c { float x[4]; };

// PTX ISA, mma.m16n8k8 .tf32: g = lane / 4, t = lane % 4.
FN int fa_row(uint lane, int e) { return int(lane >> 2) + 8 * (e & 1); }
FN int fa_col(uint lane, int e) { return int(lane & 3) + 4 * (e >> 1); }
FN int fb_row(uint lane, int e) { return int(lane & 3) + 4 * e; }
FN int fb_col(uint lane, int e) { return int(lane >> 2); }
FN int fc_row(uint lane, int e) { return int(lane >> 2) + 8 * (e >> 1); }
FN int fc_col(uint lane, int e) { return 2 * int(lane & 3) + (e & 1); }
// permuted k: lane quarter q = t; A element (half h, slot s) is e = h + 2 s; B element e is slot e.
FN int fa_r(uint lane, int h) { return int(lane >> 2) + 8 * h; }
FN int fa_q(uint lane) { return int(lane & 3); }
FN int fa_e(int h, int s) { return h + 2 * s; }
FN int fb_q(uint lane, int e) { return int(lane & 3); }
FN int fb_s(uint lane, int e) { return e; }

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

// A operand rows from row-major memory, KG k-steps: p at (row 0, first column of the group); rows >= nrows
// read as zeros. load_a_raw keeps the words (w[h]: the lane's row h), unpack_a makes the fragments.
template <int KG, typename T>
FN void load_a_raw(uint (*w)[2 * KG], const T* p, int ld, int nrows, uint lane) {
  for (int h = 0; h < 2; ++h) {
    if (fa_r(lane, h) < nrows) {
      rload<2 * KG>(w[h], p + fa_r(lane, h) * ld + 2 * KG * fa_q(lane));
    } else {
      for (int i = 0; i < 2 * KG; ++i) w[h][i] = 0u;
    }
  }
}
template <int KG, typename T>
FN void unpack_a(frag_a* a, const uint (*w)[2 * KG]) {
  for (int h = 0; h < 2; ++h) {
    float v[2 * KG];
    runpack<2 * KG, T>(v, w[h]);
    for (int j = 0; j < KG; ++j) {
      a[j].x[fa_e(h, 0)] = v[2 * j];
      a[j].x[fa_e(h, 1)] = v[2 * j + 1];
    }
  }
}
template <int KG, typename T>
FN void load_a(frag_a* a, const T* p, int ld, int nrows, uint lane) {
  uint w[2][2 * KG];
  load_a_raw<KG>(w, p, ld, nrows, lane);
  unpack_a<KG, T>(a, w);
}

// B operand = M^T for row-major M [n][k] in memory, KG k-steps: p at (n 0, first k of the group); n >= nn
// reads as zeros.
template <int KG, typename T>
FN void load_bt(frag_b* b, const T* p, int ld, int nn, uint lane) {
  float v[2 * KG];
  if (fb_col(lane, 0) < nn) {
    vload<2 * KG>(v, p + fb_col(lane, 0) * ld + 2 * KG * fb_q(lane, 0));
  } else {
    for (int i = 0; i < 2 * KG; ++i) v[i] = 0.0f;
  }
  for (int j = 0; j < KG; ++j) {
    b[j].x[0] = v[2 * j];
    b[j].x[1] = v[2 * j + 1];
  }
}

// Round to tf32 (10-bit mantissa), half away from zero; two integer ops (cvt.rna.tf32.f32 costs ~4 with its
// NaN handling, and our operands are finite).
FN uint tf32_bits(float x) { return (__float_as_uint(x) + 0x1000u) & 0xffffe000u; }

FN void mma_tf32(float* c, const uint* a, const uint* b) {
  asm(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// c += a b.  PREC 0: operands rounded to tf32 (~5e-4 relative).  PREC 1: 3xTF32 (a_hi b_hi + a_hi b_lo +
// a_lo b_hi, about fp32).  PREC 2: operands passed as they are, the tensor core truncates them (~1e-3).
template <int PREC>
FN void mma(frag_c& c, const frag_a& a, const frag_b& b) {
  uint ah[4], bh[2];
  for (int e = 0; e < 4; ++e) ah[e] = PREC == 2 ? __float_as_uint(a.x[e]) : tf32_bits(a.x[e]);
  for (int e = 0; e < 2; ++e) bh[e] = PREC == 2 ? __float_as_uint(b.x[e]) : tf32_bits(b.x[e]);
  if (PREC == 1) {
    uint al[4], bl[2];
    for (int e = 0; e < 4; ++e) al[e] = tf32_bits(a.x[e] - __uint_as_float(ah[e]));
    for (int e = 0; e < 2; ++e) bl[e] = tf32_bits(b.x[e] - __uint_as_float(bh[e]));
    mma_tf32(c.x, al, bh);
    mma_tf32(c.x, ah, bl);
  }
  mma_tf32(c.x, ah, bh);
}

// An operand rounded once where it is made (PREC 0), so that the products take it as it is (mma<2> for PREC 0):
// the same numbers as mma<0>, without rounding each operand again in every product that reads it.
template <int PREC> FN float opnd(float x) { return PREC == 0 ? __uint_as_float(tf32_bits(x)) : x; }

#else  // Metal

#include <metal_simdgroup>
#include <metal_simdgroup_matrix>
#include <metal_stdlib>
#if defined(__clang__)
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL
#endif

#define FN inline
#define BARRIER() metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup)
#define BARRIER_DEVICE() \
  metal::threadgroup_barrier(metal::mem_flags::mem_device | metal::mem_flags::mem_threadgroup)

FN float fexp(float x) { return metal::exp(x); }
FN float flog(float x) { return metal::log(x); }
FN float frsqrt(float x) { return metal::rsqrt(x); }
FN float shfl_xor(float x, ushort m) { return metal::simd_shuffle_xor(x, m); }

struct frag_a { float x[4]; };
struct frag_b { float x[2]; };
struct frag_c { float x[4]; };

// MLX's simdgroup_matrix lane map: lane holds (fm, fn) and (fm, fn + 1) of each 8x8 matrix.
FN int sg_fm(uint lane) { return int(((lane >> 2) & 4) + ((lane >> 1) & 3)); }
FN int sg_fn(uint lane) { return int((((lane >> 2) & 2) << 1) + ((lane & 1) << 1)); }
FN int fa_row(uint lane, int e) { return sg_fm(lane) + 8 * (e >> 1); }
FN int fa_col(uint lane, int e) { return sg_fn(lane) + (e & 1); }
FN int fb_row(uint lane, int e) { return sg_fm(lane); }
FN int fb_col(uint lane, int e) { return sg_fn(lane) + e; }
FN int fc_row(uint lane, int e) { return fa_row(lane, e); }
FN int fc_col(uint lane, int e) { return fa_col(lane, e); }
// permuted k: a lane's k columns fn, fn + 1 are quarter q = fn / 2, slots 0, 1; B's k row fm likewise.
FN int fa_r(uint lane, int h) { return sg_fm(lane) + 8 * h; }
FN int fa_q(uint lane) { return sg_fn(lane) >> 1; }
FN int fa_e(int h, int s) { return 2 * h + s; }
FN int fb_q(uint lane, int e) { return sg_fm(lane) >> 1; }
FN int fb_s(uint lane, int e) { return sg_fm(lane) & 1; }

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

template <int KG, typename T>
FN void load_a_raw(thread uint (*w)[2 * KG], const device T* p, int ld, int nrows, uint lane) {
  for (int h = 0; h < 2; ++h) {
    if (fa_r(lane, h) < nrows) {
      rload<2 * KG>(w[h], p + fa_r(lane, h) * ld + 2 * KG * fa_q(lane));
    } else {
      for (int i = 0; i < 2 * KG; ++i) w[h][i] = 0u;
    }
  }
}

template <int KG, typename T>
FN void unpack_a(thread frag_a* a, thread const uint (*w)[2 * KG]) {
  for (int h = 0; h < 2; ++h) {
    float v[2 * KG];
    runpack<2 * KG, T>(v, w[h]);
    for (int j = 0; j < KG; ++j) {
      a[j].x[fa_e(h, 0)] = v[2 * j];
      a[j].x[fa_e(h, 1)] = v[2 * j + 1];
    }
  }
}

template <int KG, typename T>
FN void load_a(thread frag_a* a, const device T* p, int ld, int nrows, uint lane) {
  uint w[2][2 * KG];
  load_a_raw<KG>(w, p, ld, nrows, lane);
  unpack_a<KG, T>(a, w);
}

template <int KG, typename T>
FN void load_bt(thread frag_b* b, const device T* p, int ld, int nn, uint lane) {
  for (int j = 0; j < KG; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int n = fb_col(lane, e);
      b[j].x[e] = n < nn ? float(p[n * ld + 2 * KG * fb_q(lane, e) + 2 * j + fb_s(lane, e)]) : 0.0f;
    }
  }
}

template <int PREC> FN float opnd(float x) { return x; }  // Metal multiplies in fp32

template <int PREC>
FN void mma(thread frag_c& c, thread const frag_a& a, thread const frag_b& b) {
  metal::simdgroup_float8x8 A0, A1, Bm, C0, C1;
  A0.thread_elements()[0] = a.x[0];
  A0.thread_elements()[1] = a.x[1];
  A1.thread_elements()[0] = a.x[2];
  A1.thread_elements()[1] = a.x[3];
  Bm.thread_elements()[0] = b.x[0];
  Bm.thread_elements()[1] = b.x[1];
  C0.thread_elements()[0] = c.x[0];
  C0.thread_elements()[1] = c.x[1];
  C1.thread_elements()[0] = c.x[2];
  C1.thread_elements()[1] = c.x[3];
  metal::simdgroup_multiply_accumulate(C0, A0, Bm, C0);
  metal::simdgroup_multiply_accumulate(C1, A1, Bm, C1);
  c.x[0] = C0.thread_elements()[0];
  c.x[1] = C0.thread_elements()[1];
  c.x[2] = C1.thread_elements()[0];
  c.x[3] = C1.thread_elements()[1];
}

#endif

// Rows of a 16-row tile in permuted order: a lane's two rows r and r + 8 (halves h = 0, 1) become the
// neighbours 2 r and 2 r + 1, so one load fetches both when the rows are contiguous in memory.
FN int row_perm(int r) { return r < 8 ? 2 * r : 2 * r - 15; }

// Row of the B element e of k-step ks within a permuted group of KG k-steps (add 8 KG x group index).
template <int KG>
FN int kp_row(uint lane, int ks, int e) { return 2 * KG * fb_q(lane, e) + 2 * ks + fb_s(lane, e); }

#endif  // QWEN35_GDN_COMMON_H
