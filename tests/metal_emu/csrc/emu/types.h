// MSL scalar and vector types: half, bfloat, vec<T, N> with .x/.y/.z/.w, swizzles, operators.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <type_traits>

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef _Float16 half;

// bfloat: 16-bit storage; arithmetic in float, rounded to nearest even like Metal's bfloat.
struct bfloat {
  uint16_t bits_;
  bfloat() = default;
  constexpr bfloat(float f) : bits_(round(f)) {}
  constexpr operator float() const { return __builtin_bit_cast(float, uint32_t(bits_) << 16); }
  static constexpr uint16_t round(float f) {
    uint32_t u = __builtin_bit_cast(uint32_t, f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
    return uint16_t((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
  }
  constexpr bfloat operator-() const { return from_bits(bits_ ^ 0x8000); }
  constexpr bfloat operator+() const { return *this; }
  static constexpr bfloat from_bits(uint16_t b) { bfloat r{}; r.bits_ = b; return r; }
  template <class U> constexpr bfloat& operator+=(U o) { return *this = bfloat(float(*this) + float(o)); }
  template <class U> constexpr bfloat& operator-=(U o) { return *this = bfloat(float(*this) - float(o)); }
  template <class U> constexpr bfloat& operator*=(U o) { return *this = bfloat(float(*this) * float(o)); }
  template <class U> constexpr bfloat& operator/=(U o) { return *this = bfloat(float(*this) / float(o)); }
  bfloat& operator++() { return *this += 1.0f; }
  bfloat& operator--() { return *this -= 1.0f; }
};

namespace emu {
typedef signed char schar;
typedef long long llong;
typedef unsigned long long ullong;
template <class T> inline constexpr bool is_float = std::is_floating_point_v<T> ||
    std::is_same_v<T, half> || std::is_same_v<T, bfloat>;
template <class T> inline constexpr bool is_scalar = std::is_arithmetic_v<T> || is_float<T>;
// bfloat op U: bfloat with integers, otherwise the wider float type (float).
template <class U> using bf_result = std::conditional_t<std::is_integral_v<U>, bfloat, float>;
}  // namespace emu

#define EMU_BF_OP(op)                                                                        \
  constexpr bfloat operator op(bfloat a, bfloat b) { return bfloat(float(a) op float(b)); }  \
  template <class U, class = std::enable_if_t<std::is_arithmetic_v<U> || std::is_same_v<U, half>>> \
  constexpr emu::bf_result<U> operator op(bfloat a, U b) {                                   \
    return emu::bf_result<U>(float(a) op float(b));                                          \
  }                                                                                          \
  template <class U, class = std::enable_if_t<std::is_arithmetic_v<U> || std::is_same_v<U, half>>> \
  constexpr emu::bf_result<U> operator op(U a, bfloat b) {                                   \
    return emu::bf_result<U>(float(a) op float(b));                                          \
  }
EMU_BF_OP(+)
EMU_BF_OP(-)
EMU_BF_OP(*)
EMU_BF_OP(/)
#undef EMU_BF_OP
#define EMU_BF_CMP(op)                                                                       \
  constexpr bool operator op(bfloat a, bfloat b) { return float(a) op float(b); }           \
  template <class U, class = std::enable_if_t<std::is_arithmetic_v<U> || std::is_same_v<U, half>>> \
  constexpr bool operator op(bfloat a, U b) { return float(a) op float(b); }                 \
  template <class U, class = std::enable_if_t<std::is_arithmetic_v<U> || std::is_same_v<U, half>>> \
  constexpr bool operator op(U a, bfloat b) { return float(a) op float(b); }
EMU_BF_CMP(==)
EMU_BF_CMP(!=)
EMU_BF_CMP(<)
EMU_BF_CMP(<=)
EMU_BF_CMP(>)
EMU_BF_CMP(>=)
#undef EMU_BF_CMP

// ---- vectors -------------------------------------------------------------------------------
template <class T, int N> struct vec;

namespace emu {
// A swizzle (v.xy, v.xyz, ...) shares the vector's storage; it reads as and assigns from vec<T, K>.
// V (the result type) is a template argument so that argument-dependent lookup finds its operators.
template <class V, class T, int N, int... I> struct swizzle {
  T v_[N];
  operator V() const { return V(v_[I]...); }
  swizzle& operator=(const V& o) {
    int k = 0;
    ((v_[I] = o[k++]), ...);
    return *this;
  }
};
}  // namespace emu

#define EMU_SWZ2(N) emu::swizzle<vec<T, 2>, T, N
#define EMU_SWZ3(N) emu::swizzle<vec<T, 3>, T, N

// Operators are hidden friends so that scalars and swizzles convert implicitly (v * 2, v.xy + w).
#define EMU_VEC_COMMON(N)                                                                    \
  vec() = default;                                                                           \
  constexpr vec(T s) { for (int i = 0; i < N; ++i) v_[i] = s; }                              \
  template <class U, class = std::enable_if_t<!std::is_same_v<U, T>>>                       \
  explicit constexpr vec(const vec<U, N>& o) { for (int i = 0; i < N; ++i) v_[i] = T(o[i]); } \
  constexpr T& operator[](int i) { return v_[i]; }                                           \
  constexpr const T& operator[](int i) const { return v_[i]; }                               \
  EMU_VEC_BINOP(N, +) EMU_VEC_BINOP(N, -) EMU_VEC_BINOP(N, *) EMU_VEC_BINOP(N, /)            \
  EMU_VEC_BINOP(N, %) EMU_VEC_BINOP(N, &) EMU_VEC_BINOP(N, |) EMU_VEC_BINOP(N, ^)            \
  EMU_VEC_BINOP(N, <<) EMU_VEC_BINOP(N, >>)                                                  \
  EMU_VEC_CMP(N, ==) EMU_VEC_CMP(N, !=) EMU_VEC_CMP(N, <) EMU_VEC_CMP(N, <=)                 \
  EMU_VEC_CMP(N, >) EMU_VEC_CMP(N, >=) EMU_VEC_CMP(N, &&) EMU_VEC_CMP(N, ||)                 \
  friend constexpr vec operator-(const vec& a) { vec r; for (int i = 0; i < N; ++i) r[i] = -a[i]; return r; } \
  friend constexpr vec operator+(const vec& a) { return a; }                                 \
  friend constexpr vec operator~(const vec& a) { vec r; for (int i = 0; i < N; ++i) r[i] = ~a[i]; return r; } \
  friend constexpr vec<bool, N> operator!(const vec& a) {                                    \
    vec<bool, N> r; for (int i = 0; i < N; ++i) r[i] = !a[i]; return r;                      \
  }

#define EMU_VEC_BINOP(N, op)                                                                 \
  friend constexpr vec operator op(const vec& a, const vec& b) {                             \
    vec r; for (int i = 0; i < N; ++i) r[i] = T(a[i] op b[i]); return r;                     \
  }                                                                                          \
  constexpr vec& operator op##=(const vec& b) { return *this = *this op b; }

#define EMU_VEC_CMP(N, op)                                                                   \
  friend constexpr vec<bool, N> operator op(const vec& a, const vec& b) {                    \
    vec<bool, N> r; for (int i = 0; i < N; ++i) r[i] = a[i] op b[i]; return r;               \
  }

template <class T> struct alignas(2 * sizeof(T)) vec<T, 2> {
  union {
    T v_[2];
    struct { T x, y; };
    struct { T r, g; };
    EMU_SWZ2(2), 0, 1> xy; EMU_SWZ2(2), 1, 0> yx;
  };
  EMU_VEC_COMMON(2)
  constexpr vec(T a, T b) : v_{a, b} {}
};

template <class T> struct alignas(4 * sizeof(T)) vec<T, 3> {  // like MSL: sized as 4 elements
  union {
    T v_[3];
    struct { T x, y, z; };
    struct { T r, g, b; };
    EMU_SWZ2(3), 0, 1> xy; EMU_SWZ2(3), 1, 2> yz; EMU_SWZ2(3), 0, 2> xz;
    EMU_SWZ2(3), 1, 0> yx; EMU_SWZ2(3), 2, 1> zy; EMU_SWZ2(3), 2, 0> zx;
    EMU_SWZ3(3), 2, 1, 0> zyx;
  };
  EMU_VEC_COMMON(3)
  constexpr vec(T a, T b, T c) : v_{a, b, c} {}
  constexpr vec(vec<T, 2> a, T c) : v_{a[0], a[1], c} {}
  constexpr vec(T a, vec<T, 2> b) : v_{a, b[0], b[1]} {}
};

template <class T> struct alignas(4 * sizeof(T)) vec<T, 4> {
  union {
    T v_[4];
    struct { T x, y, z, w; };
    struct { T r, g, b, a; };
    EMU_SWZ2(4), 0, 1> xy; EMU_SWZ2(4), 1, 2> yz; EMU_SWZ2(4), 2, 3> zw; EMU_SWZ2(4), 0, 2> xz;
    EMU_SWZ2(4), 1, 3> yw; EMU_SWZ2(4), 0, 3> xw; EMU_SWZ2(4), 1, 0> yx; EMU_SWZ2(4), 3, 2> wz;
    EMU_SWZ3(4), 0, 1, 2> xyz; EMU_SWZ3(4), 1, 2, 3> yzw; EMU_SWZ3(4), 3, 2, 1> wzy;
    emu::swizzle<vec<T, 4>, T, 4, 3, 2, 1, 0> wzyx;
  };
  EMU_VEC_COMMON(4)
  constexpr vec(T a, T b, T c, T d) : v_{a, b, c, d} {}
  constexpr vec(vec<T, 2> a, vec<T, 2> b) : v_{a[0], a[1], b[0], b[1]} {}
  constexpr vec(vec<T, 2> a, T c, T d) : v_{a[0], a[1], c, d} {}
  constexpr vec(T a, T b, vec<T, 2> c) : v_{a, b, c[0], c[1]} {}
  constexpr vec(T a, vec<T, 2> b, T d) : v_{a, b[0], b[1], d} {}
  constexpr vec(vec<T, 3> a, T d) : v_{a[0], a[1], a[2], d} {}
  constexpr vec(T a, vec<T, 3> b) : v_{a, b[0], b[1], b[2]} {}
};

#undef EMU_SWZ2
#undef EMU_SWZ3

// packed_float3 and friends: element-aligned, no padding; convert to and from vec.
template <class T, int N> struct packed_vec {
  T v_[N];
  packed_vec() = default;
  constexpr packed_vec(const vec<T, N>& o) { for (int i = 0; i < N; ++i) v_[i] = o[i]; }
  constexpr operator vec<T, N>() const { vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = v_[i]; return r; }
  constexpr T& operator[](int i) { return v_[i]; }
  constexpr const T& operator[](int i) const { return v_[i]; }
};

#define EMU_VEC_NAMES(T, name)                                                               \
  typedef vec<T, 2> name##2; typedef vec<T, 3> name##3; typedef vec<T, 4> name##4;         \
  typedef packed_vec<T, 2> packed_##name##2; typedef packed_vec<T, 3> packed_##name##3;     \
  typedef packed_vec<T, 4> packed_##name##4;
EMU_VEC_NAMES(float, float)
EMU_VEC_NAMES(half, half)
EMU_VEC_NAMES(bfloat, bfloat)
EMU_VEC_NAMES(int, int)
EMU_VEC_NAMES(uint, uint)
EMU_VEC_NAMES(short, short)
EMU_VEC_NAMES(ushort, ushort)
EMU_VEC_NAMES(emu::schar, char)
EMU_VEC_NAMES(uchar, uchar)
EMU_VEC_NAMES(long, long)
EMU_VEC_NAMES(ulong, ulong)
EMU_VEC_NAMES(bool, bool)
#undef EMU_VEC_NAMES

namespace emu {
template <class T> struct elem { using type = T; };
template <class T, int N> struct elem<vec<T, N>> { using type = T; };
template <class T> struct width { static constexpr int value = 1; };
template <class T, int N> struct width<vec<T, N>> { static constexpr int value = N; };
}  // namespace emu

namespace metal {
// metal::array: a fixed-size array with size().
template <class T, size_t N> struct array {
  T _elems[N];
  constexpr T& operator[](size_t i) { return _elems[i]; }
  constexpr const T& operator[](size_t i) const { return _elems[i]; }
  static constexpr size_t size() { return N; }
};

template <class T, class U> inline T as_type(const U& u) {
  static_assert(sizeof(T) == sizeof(U), "as_type: the types must have the same size");
  return __builtin_bit_cast(T, u);
}
}  // namespace metal
