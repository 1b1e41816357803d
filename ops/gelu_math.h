// GELU (erf form) and its derivative, shared by the elementwise op and the fused MLP op so
// both compute the same numbers.
#pragma once
#include <cmath>
#include <type_traits>

#include "fastmath.h"

namespace lotgrad {

// The normal CDF Φ(x) = ½(1 + erf(x/√2)) for float in a form loops vectorise (glibc's erff does
// not), written through erfc so the negative tail keeps its relative accuracy:
// erfc(z) = t exp(-z² + P(t)), t = 1/(1 + z/2) (the Chebyshev fit of Numerical Recipes §6.2,
// relative error < 1.2e-7). Doubles keep std::erf (the gradient checks run in f64).
inline float normal_cdf_vec(float x) {
  const float z = (x < 0 ? -x : x) * float(M_SQRT1_2);
  const float t = 1.0f / (1.0f + 0.5f * z);
  const float p = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f + t * (-0.18628806f +
                  t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
  const float half_erfc = 0.5f * t * fastmath::fexp(-z * z + p);
  return x < 0 ? half_erfc : 1.0f - half_erfc;
}
template <class T> inline T normal_cdf(T x) {
  if constexpr (std::is_same_v<T, float>) return normal_cdf_vec(x);
  else return T(0.5) * (T(1) + std::erf(x * T(M_SQRT1_2)));
}
template <class T> inline T exp_t(T x) {
  if constexpr (std::is_same_v<T, float>) return fastmath::fexp(x);
  else return std::exp(x);
}
// gelu(x) = x Φ(x); gelu'(x) = Φ(x) + x φ(x).
template <class T> inline T gelu_erf(T x) { return x * normal_cdf(x); }
template <class T> inline T gelu_erf_grad(T x) {
  const T pdf = exp_t(T(-0.5) * x * x) * T(0.3989422804014327);
  return normal_cdf(x) + x * pdf;
}

}  // namespace lotgrad
