// Tile products, Metal half: see tiles_cuda.h; after portable_metal.h.

#include <metal_simdgroup_matrix>

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
