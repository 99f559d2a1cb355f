// The part of MLX's metal::utils() (prepended to every custom kernel by MLX) that kernels use:
// bfloat16_t, float16_t, ceildiv, elem_to_loc, Limits, WorkPerThread.
#pragma once

typedef half float16_t;
typedef bfloat bfloat16_t;

#define METAL_FUNC inline
#define MTL_CONST constant
#define MLX_MTL_PRAGMA_UNROLL _Pragma("GCC unroll 8")

inline uint16_t bfloat16_to_uint16(const bfloat16_t x) { return as_type<uint16_t>(x); }
inline bfloat16_t uint16_to_bfloat16(const uint16_t x) { return as_type<bfloat16_t>(x); }

template <typename U> struct WorkPerThread {
  static_assert(sizeof(U) <= 8, "Type too large");
  static constexpr int n = 8 / sizeof(U);
};

template <typename U> struct Limits {
  static constexpr U max = metal::numeric_limits<U>::max();
  static constexpr U min = metal::numeric_limits<U>::min();
  static constexpr U finite_max = metal::numeric_limits<U>::max();
  static constexpr U finite_min = metal::numeric_limits<U>::min();
};
#define EMU_FLOAT_LIMITS(T)                                                                  \
  template <> struct Limits<T> {                                                             \
    static constexpr T max = metal::numeric_limits<T>::infinity();                           \
    static constexpr T min = -metal::numeric_limits<T>::infinity();                          \
    static constexpr T finite_max = metal::numeric_limits<T>::max();                         \
    static constexpr T finite_min = -metal::numeric_limits<T>::max();                        \
  };
EMU_FLOAT_LIMITS(half)
EMU_FLOAT_LIMITS(float)
EMU_FLOAT_LIMITS(bfloat16_t)
#undef EMU_FLOAT_LIMITS

template <typename T, typename U> inline T ceildiv(T N, U M) { return (N + M - 1) / M; }

template <typename IdxT = int64_t>
inline IdxT elem_to_loc(IdxT elem, constant const int* shape, constant const int64_t* strides,
                        int ndim) {
  IdxT loc = 0;
  for (int i = ndim - 1; i >= 0 && elem > 0; --i) {
    loc += (elem % shape[i]) * IdxT(strides[i]);
    elem /= shape[i];
  }
  return loc;
}
template <typename IdxT = int64_t>
inline IdxT elem_to_loc(uint3 elem, constant const int* shape, constant const int64_t* strides,
                        int ndim) {
  IdxT loc = elem.x * IdxT(strides[ndim - 1]) + elem.y * IdxT(strides[ndim - 2]);
  for (int d = ndim - 3; d >= 0; --d) {
    loc += (elem.z % shape[d]) * IdxT(strides[d]);
    elem.z /= shape[d];
  }
  return loc;
}
template <typename IdxT = int64_t>
inline IdxT elem_to_loc_1(uint elem, constant const int64_t& stride) { return elem * IdxT(stride); }
template <typename IdxT = int64_t>
inline IdxT elem_to_loc_2(uint2 elem, constant const int64_t strides[2]) {
  return elem.x * IdxT(strides[1]) + elem.y * IdxT(strides[0]);
}
template <typename IdxT = int64_t>
inline IdxT elem_to_loc_3(uint3 elem, constant const int64_t strides[3]) {
  return elem.x * IdxT(strides[2]) + elem.y * IdxT(strides[1]) + elem.z * IdxT(strides[0]);
}
