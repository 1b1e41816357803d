// Vectorisable exp and log for float and double. std::exp / std::log do not vectorise
// without -ffast-math (they are glibc calls); these are plain arithmetic (range reduction,
// polynomial, exponent bits) and inline, so loops over them vectorise, and they give the
// same bits on every call (deterministic). Accuracy (tests/test_fastmath.cpp):
//   fexp float  ~1 ulp on [-87, 88.37]; below -87 returns 0 (also for -inf), above +inf.
//   fexp double ~1 ulp on [-708, 709]; below 0, above +inf.
//   fexpm1 float / double: within 2.5 ulp where fexp is defined (fexp's 1 ulp, times e/(e - 1)
//   just past |x| = 1); -1 below, +inf above.
//   flog float / double ~1 ulp for every positive finite input (subnormals included);
//   flog(0) = -inf, flog(+inf) = +inf, negative or NaN -> NaN.
//   flog_fast double: ~1e-12 relative, positive normal finite inputs only.
//   fexp_full float / double: ~1 ulp over the whole range, subnormal results included.
//   flog1p float / double: within 3 ulp; ftanh within 2.5 ulp.
// Compile the caller with -fno-trapping-math: GCC will not if-convert the selects here
// (so no loop vectorises) while compares may trap.
#pragma once
#include <bit>
#include <cstdint>
#include <cmath>
#include <limits>
#include <type_traits>

namespace lotgrad::fastmath {

// exp: x = k ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), Taylor polynomial in r,
// 2^k written into the exponent field. exp_reduce returns e^r and sets k, for x within the
// caller's clamp; pow2 builds 2^k for a normal k (unsigned shift: k is garbage for NaN input).
inline float exp_reduce(float x, int32_t& k) {
  constexpr float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504088896341f + shifter;
  k = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(shifter);
  const float kf = t - shifter;
  float r = x - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  return p * r + 1.0f;
}
inline double exp_reduce(double x, int64_t& k) {
  constexpr double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * 1.4426950408889634074 + shifter;
  k = std::bit_cast<int64_t>(t) - std::bit_cast<int64_t>(shifter);
  const double kf = t - shifter;
  double r = x - kf * 6.93147180369123816490e-01;
  r = r - kf * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  return p * r + 1.0;
}
inline float pow2(int32_t k) { return std::bit_cast<float>((uint32_t)(k + 127) << 23); }
inline double pow2(int64_t k) { return std::bit_cast<double>((uint64_t)(k + 1023) << 52); }

inline float fexp(float x) {
  constexpr float lo = -87.0f, hi = 88.37f;  // hi: 2^k stays a normal float (k <= 127)
  int32_t k;
  const float y = exp_reduce(x < lo ? lo : (x > hi ? hi : x), k) * pow2(k);
  return x < lo ? 0.0f : (x > hi ? std::numeric_limits<float>::infinity() : y);
}

inline double fexp(double x) {
  constexpr double lo = -708.0, hi = 709.0;
  int64_t k;
  const double y = exp_reduce(x < lo ? lo : (x > hi ? hi : x), k) * pow2(k);
  return x < lo ? 0.0 : (x > hi ? std::numeric_limits<double>::infinity() : y);
}

// exp over the whole IEEE range, as std::exp: gradual underflow to subnormals (to 0 below
// about -103.97 in float, -745.13 in double) and overflow to +inf only past the largest
// finite result (88.72 in float, 709.78 in double). 2^k (k in [-150, 128] in float) is applied
// as two normal powers of two, so the one rounding to a subnormal happens in the last product;
// the clamps are where the result is already 0 or +inf. One multiply more than fexp: for
// elementwise exp, sigmoid and softplus, whose edges users see (fexp's clamps suit kernels
// whose arguments are bounded by construction).
template <class T>
inline T fexp_full(T x) {
  constexpr T lo = sizeof(T) == 4 ? T(-104) : T(-746), hi = sizeof(T) == 4 ? T(89) : T(710);
  std::conditional_t<sizeof(T) == 4, int32_t, int64_t> k;
  const T p = exp_reduce(x < lo ? lo : (x > hi ? hi : x), k);
  return p * pow2(k >> 1) * pow2(k - (k >> 1));
}

// exp(x) - 1 without the cancellation near 0: for |x| <= 1 the Taylor series x + x²/2! + …
// (to x¹¹/11! in float, x¹⁸/18! in double: the first term left out is below half an ulp of
// the result), else fexp(x) - 1. Both are evaluated and one selected: no branch, so loops
// over it vectorise. -inf gives -1, NaN gives NaN.
inline float fexpm1(float x) {
  float p = 1.0f / 39916800.0f;  // 1/11!
  p = p * x + 1.0f / 3628800.0f;
  p = p * x + 1.0f / 362880.0f;
  p = p * x + 1.0f / 40320.0f;
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  const float series = x + x * x * p;
  const float big = fexp(x) - 1.0f;
  return (x <= 1.0f && x >= -1.0f) ? series : big;
}

inline double fexpm1(double x) {
  constexpr double c[] = {1.0 / 6402373705728000.0, 1.0 / 355687428096000.0, 1.0 / 20922789888000.0,
                          1.0 / 1307674368000.0,    1.0 / 87178291200.0,     1.0 / 6227020800.0,
                          1.0 / 479001600.0,        1.0 / 39916800.0,        1.0 / 3628800.0,
                          1.0 / 362880.0,           1.0 / 40320.0,           1.0 / 5040.0,
                          1.0 / 720.0,              1.0 / 120.0,             1.0 / 24.0,
                          1.0 / 6.0,                0.5};  // 1/18! … 1/2!
  double p = c[0];
  for (int i = 1; i < 17; ++i) p = p * x + c[i];
  const double series = x + x * x * p;
  const double big = fexp(x) - 1.0;
  return (x <= 1.0 && x >= -1.0) ? series : big;
}

// log: x = 2^e m with m in [sqrt(1/2), sqrt(2)) (found by integer arithmetic on the bits),
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716, odd series in s. log_reduce takes
// a positive normal finite x and returns log(x) - shift·ln2 (shift undoes flog's scaling of
// subnormals); the callers add the special values (for other inputs the integer arithmetic is
// unsigned, so any bits give some number and no undefined behaviour). Kept apart so that a caller's selects are
// its own: GCC would not vectorise flog1p(fexp_full(x)) with flog's selects inside.
inline double log_reduce(double x, double shift) {
  const uint64_t u = std::bit_cast<uint64_t>(x);
  constexpr uint64_t off = 0x3fe6a09e667f3bcdULL;  // bits of sqrt(1/2)
  const int64_t e = (int64_t)(u - off) >> 52;    // unsigned difference: no overflow for any bits
  const double m = std::bit_cast<double>(u - ((uint64_t)e << 52));
  const double ef = (double)e - shift;
  const double s = (m - 1.0) / (m + 1.0);
  const double z = s * s;
  double p = 2.0 / 23.0;
  p = p * z + 2.0 / 21.0;
  p = p * z + 2.0 / 19.0;
  p = p * z + 2.0 / 17.0;
  p = p * z + 2.0 / 15.0;
  p = p * z + 2.0 / 13.0;
  p = p * z + 2.0 / 11.0;
  p = p * z + 2.0 / 9.0;
  p = p * z + 2.0 / 7.0;
  p = p * z + 2.0 / 5.0;
  p = p * z + 2.0 / 3.0;
  constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  return ef * ln2_hi + ((s * z * p + ef * ln2_lo) + 2.0 * s);
}
inline float log_reduce(float x, float shift) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  constexpr uint32_t off = 0x3f3504f3;  // bits of sqrt(1/2)
  const int32_t e = (int32_t)(u - off) >> 23;
  const float m = std::bit_cast<float>(u - ((uint32_t)e << 23));
  const float ef = (float)e - shift;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float z = s * s;
  float p = 2.0f / 11.0f;
  p = p * z + 2.0f / 9.0f;
  p = p * z + 2.0f / 7.0f;
  p = p * z + 2.0f / 5.0f;
  p = p * z + 2.0f / 3.0f;
  constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  return ef * ln2_hi + ((s * z * p + ef * ln2_lo) + 2.0f * s);
}

template <class T>
inline T flog(T x) {
  constexpr bool f32 = sizeof(T) == 4;
  constexpr T tiny = std::numeric_limits<T>::min();  // smallest normal
  constexpr T lift = f32 ? T(16777216.0) : T(18014398509481984.0), bits = f32 ? T(24) : T(54);  // 2^24, 2^54
  const bool sub = x < tiny;
  const T y = log_reduce(sub ? x * lift : x, sub ? bits : T(0));
  constexpr T inf = std::numeric_limits<T>::infinity();
  return x > 0 && x < inf ? y : (x == 0 ? -inf : (x == inf ? inf : std::numeric_limits<T>::quiet_NaN()));
}

// log to ~1e-12 relative, for positive normal finite x only (no special values): cheaper
// (shorter series, no subnormal or special-value selects) where a double log's result is
// rounded to float anyway (Sinkhorn's f32 row log-sum-exps).
inline double flog_fast(double x) {
  const uint64_t u = std::bit_cast<uint64_t>(x);
  constexpr uint64_t off = 0x3fe6a09e667f3bcdULL;
  const int64_t e = (int64_t)(u - off) >> 52;
  const double m = std::bit_cast<double>(u - ((uint64_t)e << 52));
  const double ef = (double)e;
  const double s = (m - 1.0) / (m + 1.0);
  const double z = s * s;
  double p = 2.0 / 13.0;
  p = p * z + 2.0 / 11.0;
  p = p * z + 2.0 / 9.0;
  p = p * z + 2.0 / 7.0;
  p = p * z + 2.0 / 5.0;
  p = p * z + 2.0 / 3.0;
  constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  return ef * ln2_hi + ((s * z * p + ef * ln2_lo) + 2.0 * s);
}


// log(1 + x): u = 1 + x rounds, and log(u) · x / (u - 1) corrects for that rounding
// (Goldberg, "What every computer scientist should know about floating-point arithmetic",
// 1991, theorem 4); x itself where u rounds to 1. u is normal wherever x > -1. -1 gives -inf,
// +inf gives +inf, below -1 NaN.
template <class T>
inline T flog1p(T x) {
  constexpr T inf = std::numeric_limits<T>::infinity();
  const T u = T(1) + x;
  const T y = log_reduce(u, T(0)) * (x / (u - T(1)));
  const T special = x == T(-1) ? -inf : (x == inf ? inf : std::numeric_limits<T>::quiet_NaN());
  return u == T(1) ? x : (x > T(-1) && x < inf ? y : special);
}

// tanh(|x|) = e / (e + 2), e = expm1(2|x|) >= 0: no cancellation near 0, and the error of e
// shrinks by 2 / (e + 2) in the quotient; 1 from |x| > 20 (tanh's value in float and double;
// e overflows later). The sign is x's (copysign: odd, -0 included); NaN stays NaN. No clamp
// before fexpm1: with one GCC did not vectorise the loop.
template <class T>
inline T ftanh(T x) {
  const T a = std::abs(x);
  const T e = fexpm1(T(2) * a);
  return std::copysign(a > T(20) ? T(1) : e / (e + T(2)), x);
}

}  // namespace lotgrad::fastmath
