// Tile products, CUDA half (the Metal half: tiles_metal.h, same names); after portable_cuda.h.
// Tile products work on 16x8 = (16x8) x (8x8) fragments held as plain floats, so a body never touches a
// backend type:  frag_a (16 rows x 8 k, 4 per lane), frag_b (8 k x 8 cols, 2 per lane),
// frag_c (16x8 accumulator, 4 per lane). Metal: two simdgroup_float8x8 products (MLX's lane map).
// CUDA: one mma.sync m16n8k8 tf32 (PREC 1: three of them on a hi/lo split, about fp32 accurate; see mma).
// Two ways to fill fragments; a product uses one of them for both operands:
//  - element maps, k in natural order: element e of a lane sits at fa_row/fa_col (A), fb_row/fb_col (B),
//    fc_row/fc_col (C, always this way);
//  - permuted k, for A operands read from device memory with wide loads: over a group of KG k-steps a lane
//    holds, in each of its two rows, 2 KG consecutive columns (load_a, load_bt). The matching B element e of
//    k-step ks (within the group) sits at row kp_row<KG>(lane, ks, e), column fb_col(lane, e).
//    The permutation only reorders the sum over k.

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
