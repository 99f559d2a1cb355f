// 16-bit tile products, Metal half: see tiles16_cuda.h; after tiles_metal.h. Operands are held as floats
// (two 8x8 halves along k), so products and probabilities stay float32 here.

struct frag_a16 { frag_a lo, hi; };   // k 0-7, 8-15
struct frag_b16 { frag_b lo, hi; };

template <typename T>
FN void mma16(thread frag_c& c, thread const frag_a16& a, thread const frag_b16& b) {
  mma<0>(c, a.lo, b.lo);
  mma<0>(c, a.hi, b.hi);
}

template <typename T>
FN void load_a16(thread frag_a16& a, const device T* p, int ld, int nrows, uint lane) {
  for (int e = 0; e < 4; ++e) {
    const int r = fa_row(lane, e);
    a.lo.x[e] = r < nrows ? float(p[r * ld + fa_col(lane, e)]) : 0.0f;
    a.hi.x[e] = r < nrows ? float(p[r * ld + 8 + fa_col(lane, e)]) : 0.0f;
  }
}

template <typename T>
FN void load_a16s(thread frag_a16& a, const threadgroup T* p, int ld, uint lane) {
  for (int e = 0; e < 4; ++e) {
    a.lo.x[e] = float(p[fa_row(lane, e) * ld + fa_col(lane, e)]);
    a.hi.x[e] = float(p[fa_row(lane, e) * ld + 8 + fa_col(lane, e)]);
  }
}

template <typename T>
FN void c_to_a16(thread frag_a16& a, thread const frag_c& c0, thread const frag_c& c1) {  // same lane maps
  for (int e = 0; e < 4; ++e) {
    a.lo.x[e] = c0.x[e];
    a.hi.x[e] = c1.x[e];
  }
}

template <typename T>
FN void load_bt16x2(thread frag_b16* b, const threadgroup T* p, int ld, uint lane) {
  for (int j = 0; j < 2; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int n = 8 * j + fb_col(lane, e);
      b[j].lo.x[e] = float(p[n * ld + fb_row(lane, e)]);
      b[j].hi.x[e] = float(p[n * ld + 8 + fb_row(lane, e)]);
    }
  }
}

template <typename T>
FN void load_b16x2(thread frag_b16* b, const threadgroup T* p, int ld, uint lane) {
  for (int j = 0; j < 2; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int n = 8 * j + fb_col(lane, e);
      b[j].lo.x[e] = float(p[fb_row(lane, e) * ld + n]);
      b[j].hi.x[e] = float(p[(8 + fb_row(lane, e)) * ld + n]);
    }
  }
}

// A frag_c row lives in the lanes that differ in bits 0 and 3 (tiles_metal.h: sg_fm).
FN float row_max(float x) {
  x = metal::max(x, shfl_xor(x, 1));
  return metal::max(x, shfl_xor(x, 8));
}
FN float row_sum(float x) {
  x += shfl_xor(x, 1);
  return x + shfl_xor(x, 8);
}

// Copies are plain (and done when they return); the barrier after copy_wait makes them visible.
template <typename T>
FN void copy16_async(threadgroup T* dst, const device T* src) {
  for (int i = 0; i < 16 / int(sizeof(T)); ++i) dst[i] = src[i];
}
FN void copy_commit() {}
template <int N>
FN void copy_wait() {}
