// MSL math in namespace metal (also as metal::fast and metal::precise): float, half, bfloat and
// their vectors, computed in float with the host libm (so fast-math differences are not modelled).
#pragma once
#include "types.h"

#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define HUGE_VALF __builtin_huge_valf()
#define MAXFLOAT __FLT_MAX__
#define FLT_MAX __FLT_MAX__
#define FLT_MIN __FLT_MIN__
#define FLT_EPSILON __FLT_EPSILON__
#define HALF_MAX ((half)65504.0f)
#define HALF_MIN ((half)6.103515625e-05f)
#define HALF_EPSILON ((half)0.0009765625f)
#define M_E_F 2.71828182845904523536f
#define M_LOG2E_F 1.44269504088896340736f
#define M_LOG10E_F 0.434294481903251827651f
#define M_LN2_F 0.693147180559945309417f
#define M_LN10_F 2.30258509299404568402f
#define M_PI_F 3.14159265358979323846f
#define M_PI_2_F 1.57079632679489661923f
#define M_PI_4_F 0.785398163397448309616f
#define M_1_PI_F 0.318309886183790671538f
#define M_2_PI_F 0.636619772367581343076f
#define M_2_SQRTPI_F 1.12837916709551257390f
#define M_SQRT2_F 1.41421356237309504880f
#define M_SQRT1_2_F 0.707106781186547524401f

namespace metal {

template <class T> struct numeric_limits;
#define EMU_LIMITS(T, lo, hi, low, eps, inf, nan)                                            \
  template <> struct numeric_limits<T> {                                                     \
    static constexpr bool is_specialized = true;                                             \
    static constexpr T min() { return lo; }                                                  \
    static constexpr T max() { return hi; }                                                  \
    static constexpr T lowest() { return low; }                                              \
    static constexpr T epsilon() { return eps; }                                             \
    static constexpr T infinity() { return inf; }                                            \
    static constexpr T quiet_NaN() { return nan; }                                           \
  };
EMU_LIMITS(float, __FLT_MIN__, __FLT_MAX__, -__FLT_MAX__, __FLT_EPSILON__, __builtin_inff(),
           __builtin_nanf(""))
EMU_LIMITS(half, half(6.103515625e-05f), half(65504.0f), half(-65504.0f), half(0.0009765625f),
           half(__builtin_inff()), half(__builtin_nanf("")))
EMU_LIMITS(bfloat, bfloat::from_bits(0x0080), bfloat::from_bits(0x7f7f),
           bfloat::from_bits(0xff7f), bfloat::from_bits(0x3c00), bfloat::from_bits(0x7f80),
           bfloat::from_bits(0x7fc0))
#define EMU_INT_LIMITS(T, lo, hi) EMU_LIMITS(T, lo, hi, lo, T(0), T(0), T(0))
EMU_INT_LIMITS(bool, false, true)
EMU_INT_LIMITS(emu::schar, -128, 127)
EMU_INT_LIMITS(char, char(-128), char(127))
EMU_INT_LIMITS(uchar, 0, 255)
EMU_INT_LIMITS(short, -32768, 32767)
EMU_INT_LIMITS(ushort, 0, 65535)
EMU_INT_LIMITS(int, -2147483647 - 1, 2147483647)
EMU_INT_LIMITS(uint, 0u, 4294967295u)
EMU_INT_LIMITS(long, -9223372036854775807L - 1, 9223372036854775807L)
EMU_INT_LIMITS(ulong, 0ul, 18446744073709551615ul)
EMU_INT_LIMITS(emu::llong, -9223372036854775807LL - 1, 9223372036854775807LL)
EMU_INT_LIMITS(emu::ullong, 0ull, 18446744073709551615ull)
#undef EMU_INT_LIMITS
#undef EMU_LIMITS

// Elementwise over vectors.
#define EMU_VEC_MAP1(name)                                                                   \
  template <class T, int N> inline vec<T, N> name(vec<T, N> a) {                             \
    vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = name(a[i]); return r;                    \
  }
#define EMU_VEC_MAP2(name)                                                                   \
  template <class T, int N> inline vec<T, N> name(vec<T, N> a, vec<T, N> b) {                \
    vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = name(a[i], b[i]); return r;              \
  }                                                                                          \
  template <class T, int N> inline vec<T, N> name(vec<T, N> a, std::type_identity_t<T> b) {  \
    return name(a, vec<T, N>(b));                                                            \
  }
#define EMU_VEC_MAP3(name)                                                                   \
  template <class T, int N> inline vec<T, N> name(vec<T, N> a, vec<T, N> b, vec<T, N> c) {   \
    vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = name(a[i], b[i], c[i]); return r;        \
  }                                                                                          \
  template <class T, int N>                                                                  \
  inline vec<T, N> name(vec<T, N> a, std::type_identity_t<T> b, std::type_identity_t<T> c) { \
    return name(a, vec<T, N>(b), vec<T, N>(c));                                              \
  }
#define EMU_VEC_PRED(name)                                                                   \
  template <class T, int N> inline vec<bool, N> name(vec<T, N> a) {                          \
    vec<bool, N> r; for (int i = 0; i < N; ++i) r[i] = name(a[i]); return r;                 \
  }

// f(float) with half and bfloat computed in float and rounded back.
#define EMU_UNARY(name, expr)                                                                \
  inline float name(float x) { return expr; }                                                \
  inline half name(half x) { return half(name(float(x))); }                                  \
  inline bfloat name(bfloat x) { return bfloat(name(float(x))); }                            \
  EMU_VEC_MAP1(name)
#define EMU_BINARY(name, expr)                                                               \
  inline float name(float x, float y) { return expr; }                                       \
  inline half name(half x, half y) { return half(name(float(x), float(y))); }                \
  inline bfloat name(bfloat x, bfloat y) { return bfloat(name(float(x), float(y))); }        \
  EMU_VEC_MAP2(name)
#define EMU_PRED(name, expr)                                                                 \
  inline bool name(float x) { return expr; }                                                 \
  inline bool name(half x) { return name(float(x)); }                                        \
  inline bool name(bfloat x) { return name(float(x)); }                                      \
  EMU_VEC_PRED(name)

EMU_UNARY(exp, __builtin_expf(x))
EMU_UNARY(exp2, __builtin_exp2f(x))
EMU_UNARY(exp10, __builtin_powf(10.0f, x))
EMU_UNARY(expm1, __builtin_expm1f(x))
EMU_UNARY(log, __builtin_logf(x))
EMU_UNARY(log2, __builtin_log2f(x))
EMU_UNARY(log10, __builtin_log10f(x))
EMU_UNARY(log1p, __builtin_log1pf(x))
EMU_UNARY(sqrt, __builtin_sqrtf(x))
EMU_UNARY(rsqrt, 1.0f / __builtin_sqrtf(x))
EMU_UNARY(cbrt, __builtin_cbrtf(x))
EMU_UNARY(sin, __builtin_sinf(x))
EMU_UNARY(cos, __builtin_cosf(x))
EMU_UNARY(tan, __builtin_tanf(x))
EMU_UNARY(asin, __builtin_asinf(x))
EMU_UNARY(acos, __builtin_acosf(x))
EMU_UNARY(atan, __builtin_atanf(x))
EMU_UNARY(sinh, __builtin_sinhf(x))
EMU_UNARY(cosh, __builtin_coshf(x))
EMU_UNARY(tanh, __builtin_tanhf(x))
EMU_UNARY(asinh, __builtin_asinhf(x))
EMU_UNARY(acosh, __builtin_acoshf(x))
EMU_UNARY(atanh, __builtin_atanhf(x))
EMU_UNARY(erf, __builtin_erff(x))
EMU_UNARY(floor, __builtin_floorf(x))
EMU_UNARY(ceil, __builtin_ceilf(x))
EMU_UNARY(round, __builtin_roundf(x))
EMU_UNARY(rint, __builtin_rintf(x))
EMU_UNARY(trunc, __builtin_truncf(x))
EMU_UNARY(fabs, __builtin_fabsf(x))
EMU_UNARY(fract, x - __builtin_floorf(x))
EMU_UNARY(saturate, x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x))
EMU_UNARY(sign, x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x != x ? 0.0f : x)))
EMU_BINARY(pow, __builtin_powf(x, y))
EMU_BINARY(powr, __builtin_powf(x, y))
EMU_BINARY(atan2, __builtin_atan2f(x, y))
EMU_BINARY(fmod, __builtin_fmodf(x, y))
EMU_BINARY(fmin, __builtin_fminf(x, y))
EMU_BINARY(fmax, __builtin_fmaxf(x, y))
EMU_BINARY(fdim, __builtin_fdimf(x, y))
EMU_BINARY(copysign, __builtin_copysignf(x, y))
EMU_BINARY(divide, x / y)
EMU_BINARY(step, y < x ? 0.0f : 1.0f)
EMU_PRED(isnan, __builtin_isnan(x))
EMU_PRED(isinf, __builtin_isinf(x))
EMU_PRED(isfinite, __builtin_isfinite(x))
EMU_PRED(isnormal, __builtin_isnormal(x))
EMU_PRED(signbit, __builtin_signbit(x))

inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline half fma(half a, half b, half c) { return half(__builtin_fmaf(float(a), float(b), float(c))); }
inline bfloat fma(bfloat a, bfloat b, bfloat c) { return bfloat(__builtin_fmaf(a, b, c)); }
EMU_VEC_MAP3(fma)
inline float mix(float a, float b, float t) { return a + (b - a) * t; }
inline half mix(half a, half b, half t) { return half(mix(float(a), float(b), float(t))); }
EMU_VEC_MAP3(mix)
inline float smoothstep(float e0, float e1, float x) {
  float t = saturate((x - e0) / (e1 - e0));
  return t * t * (3.0f - 2.0f * t);
}
EMU_VEC_MAP3(smoothstep)

// min, max, clamp, abs: every scalar type (exact match), plus float as the fallback.
template <class T, class = std::enable_if_t<emu::is_scalar<T>>> inline T max(T a, T b) {
  return a < b ? b : a;
}
template <class T, class = std::enable_if_t<emu::is_scalar<T>>> inline T min(T a, T b) {
  return b < a ? b : a;
}
inline float max(float a, float b) { return __builtin_fmaxf(a, b); }
inline float min(float a, float b) { return __builtin_fminf(a, b); }
template <class T, class = std::enable_if_t<emu::is_scalar<T>>> inline T clamp(T x, T lo, T hi) {
  return min(max(x, lo), hi);
}
inline float clamp(float x, float lo, float hi) { return min(max(x, lo), hi); }
template <class T, class = std::enable_if_t<emu::is_scalar<T>>> inline T abs(T x) {
  if constexpr (emu::is_float<T>) return T(__builtin_fabsf(float(x)));
  else return x < 0 ? T(-x) : x;
}
EMU_VEC_MAP2(max)
EMU_VEC_MAP2(min)
EMU_VEC_MAP3(clamp)
EMU_VEC_MAP1(abs)

template <class T, class = std::enable_if_t<emu::is_scalar<T>>> inline T select(T a, T b, bool c) {
  return c ? b : a;
}
inline float select(float a, float b, bool c) { return c ? b : a; }
template <class T, int N> inline vec<T, N> select(vec<T, N> a, vec<T, N> b, vec<bool, N> c) {
  vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = c[i] ? b[i] : a[i]; return r;
}
template <class T, int N> inline vec<T, N> select(vec<T, N> a, vec<T, N> b, bool c) {
  return c ? b : a;
}

inline bool all(bool b) { return b; }
inline bool any(bool b) { return b; }
template <int N> inline bool all(vec<bool, N> v) { for (int i = 0; i < N; ++i) if (!v[i]) return false; return true; }
template <int N> inline bool any(vec<bool, N> v) { for (int i = 0; i < N; ++i) if (v[i]) return true; return false; }

template <class T, int N> inline T dot(vec<T, N> a, vec<T, N> b) {
  float s = 0.0f;
  for (int i = 0; i < N; ++i) s += float(a[i]) * float(b[i]);
  return T(s);
}
template <class T, int N> inline T length(vec<T, N> a) { return sqrt(dot(a, a)); }
template <class T, int N> inline T length_squared(vec<T, N> a) { return dot(a, a); }
template <class T, int N> inline vec<T, N> normalize(vec<T, N> a) { return a * rsqrt(dot(a, a)); }
template <class T> inline vec<T, 3> cross(vec<T, 3> a, vec<T, 3> b) {
  return vec<T, 3>(a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x);
}

// Integer bit functions.
template <class T, class = std::enable_if_t<std::is_integral_v<T>>> inline T popcount(T x) {
  return T(__builtin_popcountll((unsigned long long)(std::make_unsigned_t<T>)x));
}
template <class T, class = std::enable_if_t<std::is_integral_v<T>>> inline T clz(T x) {
  using U = std::make_unsigned_t<T>;
  return x ? T(__builtin_clzll((unsigned long long)(U)x) - 8 * (8 - sizeof(T))) : T(8 * sizeof(T));
}
template <class T, class = std::enable_if_t<std::is_integral_v<T>>> inline T ctz(T x) {
  return x ? T(__builtin_ctzll((unsigned long long)(std::make_unsigned_t<T>)x)) : T(8 * sizeof(T));
}
inline int mulhi(int a, int b) { return int((long long)a * b >> 32); }
inline uint mulhi(uint a, uint b) { return uint((unsigned long long)a * b >> 32); }
EMU_VEC_MAP1(popcount)
EMU_VEC_MAP1(clz)
EMU_VEC_MAP1(ctz)

namespace fast { using namespace metal; }
namespace precise { using namespace metal; }

}  // namespace metal

#undef EMU_UNARY
#undef EMU_BINARY
#undef EMU_PRED
