#include "fft.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace lotgrad::fft {

int64_t next_pow2(int64_t n) {
  if (n < 1) throw std::invalid_argument("fft::next_pow2: n must be >= 1, got " + std::to_string(n));
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

template <class T>
Plan<T>::Plan(int64_t N) : N_(N) {
  if (N < 1 || (N & (N - 1)) != 0) throw std::invalid_argument("fft::Plan: size must be a power of two, got " + std::to_string(N));
  int bits = 0;
  while ((int64_t{1} << bits) < N) ++bits;
  rev_.resize((size_t)N);
  for (int64_t i = 0; i < N; ++i) {
    uint32_t r = 0;
    for (int b = 0; b < bits; ++b)
      if (i >> b & 1) r |= uint32_t{1} << (bits - 1 - b);
    rev_[(size_t)i] = r;
  }
  // Per pass (len = 4, 8, ..., N) its half = len/2 twiddles e^{-2πi j/len}, stored one pass after
  // the other from offset half (so each pass reads them contiguously).
  tw_.assign((size_t)std::max<int64_t>(N, 1), std::complex<T>(0));
  for (int64_t half = 2; half < N; half <<= 1)
    for (int64_t j = 0; j < half; ++j) {
      const double a = -M_PI * (double)j / (double)half;
      tw_[(size_t)(half + j)] = {(T)std::cos(a), (T)std::sin(a)};
    }
}

template <class T>
void Plan<T>::run(std::complex<T>* a, bool conj_twiddles) const {
  for (int64_t i = 0; i < N_; ++i)
    if (i < (int64_t)rev_[(size_t)i]) std::swap(a[i], a[rev_[(size_t)i]]);
  // Real arithmetic by hand: std::complex's operator* checks for NaN/inf (slow, not vectorised).
  T* p = reinterpret_cast<T*>(a);
  for (int64_t i = 0; i + 1 < N_; i += 2) {  // len 2: twiddle 1
    const T ur = p[2 * i], ui = p[2 * i + 1], vr = p[2 * i + 2], vi = p[2 * i + 3];
    p[2 * i] = ur + vr;
    p[2 * i + 1] = ui + vi;
    p[2 * i + 2] = ur - vr;
    p[2 * i + 3] = ui - vi;
  }
  const T s = conj_twiddles ? T(-1) : T(1);
  for (int64_t half = 2; half < N_; half <<= 1) {
    const T* w = reinterpret_cast<const T*>(tw_.data() + half);
    for (int64_t i = 0; i < N_; i += 2 * half) {
      T* __restrict u = p + 2 * i;
      T* __restrict v = p + 2 * (i + half);
      for (int64_t j = 0; j < half; ++j) {
        const T wr = w[2 * j], wi = s * w[2 * j + 1];
        const T vr = v[2 * j] * wr - v[2 * j + 1] * wi, vi = v[2 * j] * wi + v[2 * j + 1] * wr;
        v[2 * j] = u[2 * j] - vr;
        v[2 * j + 1] = u[2 * j + 1] - vi;
        u[2 * j] += vr;
        u[2 * j + 1] += vi;
      }
    }
  }
}

template <class T>
void Plan<T>::inverse(std::complex<T>* a) const {
  run(a, true);
  const T inv = T(1) / (T)N_;
  for (int64_t i = 0; i < N_; ++i) a[i] *= inv;
}

template class Plan<float>;
template class Plan<double>;

}  // namespace lotgrad::fft
