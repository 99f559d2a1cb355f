// simdgroup_matrix<T, 8, 8>: each lane holds two elements, at MLX's lane map
//   qid = lane / 4, row = (qid & 4) + (lane / 2) % 4, col = (qid & 2) * 2 + (lane % 2) * 2 (+0, +1).
// load, store, multiply and multiply_accumulate are collectives of the full SIMD group (all 32
// lanes, uniform pointer/stride/origin/transpose); products accumulate in float in k order.
#pragma once
#include "simd.h"

namespace emu {
inline uint32_t frag_row(uint32_t lane) { return ((lane / 4) & 4) + (lane / 2) % 4; }
inline uint32_t frag_col(uint32_t lane) { return ((lane / 4) & 2) * 2 + (lane % 2) * 2; }
struct matrix_io { uint64_t ptr, elements_per_row, origin_x, origin_y, transpose; };
template <class A, class B, class C> struct mma_payload { vec<A, 2> a; vec<B, 2> b; vec<C, 2> c; };
}  // namespace emu

namespace metal {

template <class T, int Cols, int Rows> struct simdgroup_matrix {
  static_assert(Cols == 8 && Rows == 8, "the emulator models 8x8 simdgroup matrices only");
  vec<T, 2> e_;
  simdgroup_matrix() : e_(emu::poison<vec<T, 2>>()) {}
  explicit simdgroup_matrix(T diagonal) {  // like Metal: a diagonal matrix
    uint32_t lane = emu_current->lane, r = emu::frag_row(lane), c = emu::frag_col(lane);
    for (int i = 0; i < 2; ++i) e_[i] = r == c + i ? diagonal : T(0);
  }
  vec<T, 2>& thread_elements() { return e_; }
  const vec<T, 2>& thread_elements() const { return e_; }
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;

template <class T, int Cols, int Rows>
inline simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(std::type_identity_t<T> value) {
  simdgroup_matrix<T, Cols, Rows> m;
  m.e_ = vec<T, 2>(value);
  return m;
}

// matrix_origin is (column, row) of the block's first element in the source's layout; with
// transpose the 8x8 block read from there is transposed.
template <class T, int Cols, int Rows>
inline void simdgroup_load(simdgroup_matrix<T, Cols, Rows>& d, const T* src,
                           ulong elements_per_row = Cols, ulong2 matrix_origin = ulong2(0),
                           bool transpose_matrix = false, EMU_LOC_PARAMS) {
  emu::matrix_io io{uint64_t(src), elements_per_row, matrix_origin.x, matrix_origin.y,
                    transpose_matrix};
  const emu::Thread* t = emu::publish("simdgroup_load", emu::kAllLanes | emu::kUniformArgs, io, EMU_LOC);
  uint32_t r = emu::frag_row(t->lane), c = emu::frag_col(t->lane);
  for (uint32_t i = 0; i < 2; ++i) {
    ulong row = transpose_matrix ? c + i : r, col = transpose_matrix ? r : c + i;
    d.e_[i] = src[(matrix_origin.y + row) * elements_per_row + matrix_origin.x + col];
  }
}

template <class T, int Cols, int Rows>
inline void simdgroup_store(const simdgroup_matrix<T, Cols, Rows>& a, T* dst,
                            ulong elements_per_row = Cols, ulong2 matrix_origin = ulong2(0),
                            bool transpose_matrix = false, EMU_LOC_PARAMS) {
  emu::matrix_io io{uint64_t(dst), elements_per_row, matrix_origin.x, matrix_origin.y,
                    transpose_matrix};
  vec<T, 2> e = a.e_;
  const emu::Thread* t = emu::publish("simdgroup_store", emu::kAllLanes | emu::kUniformArgs, io, EMU_LOC);
  uint32_t r = emu::frag_row(t->lane), c = emu::frag_col(t->lane);
  for (uint32_t i = 0; i < 2; ++i) {
    ulong row = transpose_matrix ? c + i : r, col = transpose_matrix ? r : c + i;
    dst[(matrix_origin.y + row) * elements_per_row + matrix_origin.x + col] = e[i];
  }
}

template <class TD, class TA, class TB, class TC>
inline void simdgroup_multiply_accumulate(simdgroup_matrix<TD, 8, 8>& d,
                                          const simdgroup_matrix<TA, 8, 8>& a,
                                          const simdgroup_matrix<TB, 8, 8>& b,
                                          const simdgroup_matrix<TC, 8, 8>& c, EMU_LOC_PARAMS) {
  using P = emu::mma_payload<TA, TB, TC>;
  const emu::Thread* t =
      emu::publish("simdgroup_multiply_accumulate", emu::kAllLanes, P{a.e_, b.e_, c.e_}, EMU_LOC);
  float A[8][8], B[8][8], C[8][8];
  for (uint32_t l = 0; l < 32; ++l) {
    P p = emu::peer<P>(t, l);
    uint32_t r = emu::frag_row(l), k = emu::frag_col(l);
    for (int i = 0; i < 2; ++i) {
      A[r][k + i] = float(p.a[i]);
      B[r][k + i] = float(p.b[i]);
      C[r][k + i] = float(p.c[i]);
    }
  }
  uint32_t r = emu::frag_row(t->lane), col = emu::frag_col(t->lane);
  for (uint32_t i = 0; i < 2; ++i) {
    float s = 0.0f;
    for (int k = 0; k < 8; ++k) s += A[r][k] * B[k][col + i];
    d.e_[i] = TD(s + C[r][col + i]);
  }
}

template <class TD, class TA, class TB>
inline void simdgroup_multiply(simdgroup_matrix<TD, 8, 8>& d, const simdgroup_matrix<TA, 8, 8>& a,
                               const simdgroup_matrix<TB, 8, 8>& b, EMU_LOC_PARAMS) {
  simdgroup_multiply_accumulate(d, a, b, make_filled_simdgroup_matrix<TD, 8, 8>(TD(0)), emu_sl_);
}

}  // namespace metal
