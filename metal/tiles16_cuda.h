// 16-bit tile products, CUDA half (the Metal half: tiles16_metal.h, same names); after tiles_cuda.h.
// Operands in the kernel's 16-bit type T (bfloat16 or half), accumulators float (frag_c, tiles_cuda.h):
//   frag_a16  16 rows x 16 k        frag_b16  16 k x 8 cols        mma16<T>(c, a, b): c += a b
// CUDA: one mma.sync m16n8k16 on the words as loaded (no conversion); Metal: two 8x8 float products.
// Fragments are filled only through the helpers below, so a body never sees their element maps:
//   load_a16     A from row-major device memory (rows >= nrows read as zeros)
//   load_a16s    A from row-major threadgroup memory
//   load_bt16x2  B = M^T for row-major M [n][k] in threadgroup memory: the B fragments of n-tiles n0, n0 + 8
//   load_b16x2   B = M   for row-major M [k][n] in threadgroup memory: likewise
//   c_to_a16     two 16x8 accumulators (columns 0-7, 8-15) as one A operand (16 rows x 16 k), rounded to T
// A frag_c row is shared by the lanes that row_max / row_sum reduce over.
// Threadgroup rows are staged with copy16_async (cp.async: the copy runs while the threads go on), waited for
// with copy_wait<N> (all but the N most recent copy_commit groups of this thread; a BARRIER() after it makes
// every thread's copies visible).

struct frag_a16 { uint x[4]; };
struct frag_b16 { uint x[2]; };

FN void mma16_raw(float* c, const uint* a, const uint* b, tag<__nv_bfloat16>) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
FN void mma16_raw(float* c, const uint* a, const uint* b, tag<__half>) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <typename T>
FN void mma16(frag_c& c, const frag_a16& a, const frag_b16& b) { mma16_raw(c.x, a.x, b.x, tag<T>()); }

// PTX ISA, mma.m16n8k16 with 16-bit operands (g = lane / 4, t = lane % 4): A word 0 holds (row g, k 2t, 2t + 1),
// word 1 row g + 8, words 2 and 3 the same at k + 8. B word 0 holds (k 2t, 2t + 1; col g), word 1 k + 8.
template <typename T>
FN void load_a16(frag_a16& a, const T* p, int ld, int nrows, uint lane) {
  const int g = int(lane >> 2), t = int(lane & 3);
  for (int w = 0; w < 4; ++w) {
    const int r = g + 8 * (w & 1);
    a.x[w] = r < nrows ? *reinterpret_cast<const uint*>(p + r * ld + 2 * t + 8 * (w >> 1)) : 0u;
  }
}

template <typename T>
FN void c_to_a16(frag_a16& a, const frag_c& c0, const frag_c& c1) {  // the C layout is the A layout's, per half
  a.x[0] = pack_word(c0.x, tag<T>());                                  // portable_cuda.h: two floats, rounded
  a.x[1] = pack_word(c0.x + 2, tag<T>());
  a.x[2] = pack_word(c1.x, tag<T>());
  a.x[3] = pack_word(c1.x + 2, tag<T>());
}

FN uint smem_addr(const void* p) { return uint(__cvta_generic_to_shared(p)); }

// ldmatrix .x4: lanes 8 m .. 8 m + 7 give the row addresses (16 bytes each) of 8x8 matrix m; word m of a lane is
// its part of matrix m: (row g, cols 2t, 2t + 1), or with TRANS the transpose's (rows 2t, 2t + 1; col g).
template <bool TRANS>
FN void ldsm_x4(uint* r, const void* row) {
  if (TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)));
  }
}
template <bool TRANS>
FN void ldsm_x4(frag_b16* b, const void* row) {
  uint r[4];
  ldsm_x4<TRANS>(r, row);
  b[0].x[0] = r[0]; b[0].x[1] = r[1]; b[1].x[0] = r[2]; b[1].x[1] = r[3];
}

template <typename T>
FN void load_a16s(frag_a16& a, const T* p, int ld, uint lane) {
  const int m = int(lane >> 3);       // matrices: (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), ...
  ldsm_x4<false>(a.x, p + (8 * (m & 1) + int(lane & 7)) * ld + 8 * (m >> 1));
}

template <typename T>
FN void load_bt16x2(frag_b16* b, const T* p, int ld, uint lane) {
  const int m = int(lane >> 3);       // matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), ...
  ldsm_x4<false>(b, p + (8 * (m >> 1) + int(lane & 7)) * ld + 8 * (m & 1));
}

template <typename T>
FN void load_b16x2(frag_b16* b, const T* p, int ld, uint lane) {
  const int m = int(lane >> 3);       // matrices: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), ...
  ldsm_x4<true>(b, p + (8 * (m & 1) + int(lane & 7)) * ld + 8 * (m >> 1));
}

// A frag_c row lives in the 4 lanes of a quad (tiles_cuda.h: fc_row).
FN float row_max(float x) {
  x = fmaxf(x, shfl_xor(x, 1));
  return fmaxf(x, shfl_xor(x, 2));
}
FN float row_sum(float x) {
  x += shfl_xor(x, 1);
  return x + shfl_xor(x, 2);
}

template <typename T>
FN void copy16_async(T* dst, const T* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
FN void copy_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
FN void copy_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
