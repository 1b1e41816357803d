#include "fft.h"

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
  tw_.resize((size_t)(N / 2));
  for (int64_t k = 0; k < N / 2; ++k) {
    const double a = -2.0 * M_PI * (double)k / (double)N;
    tw_[(size_t)k] = {(T)std::cos(a), (T)std::sin(a)};
  }
}

template <class T>
void Plan<T>::run(std::complex<T>* a, bool conj_twiddles) const {
  for (int64_t i = 0; i < N_; ++i)
    if (i < (int64_t)rev_[(size_t)i]) std::swap(a[i], a[rev_[(size_t)i]]);
  // Real arithmetic by hand: std::complex's operator* checks for NaN/inf (slow, not vectorised).
  T* p = reinterpret_cast<T*>(a);
  const T* w = reinterpret_cast<const T*>(tw_.data());
  const T s = conj_twiddles ? T(-1) : T(1);
  for (int64_t len = 2; len <= N_; len <<= 1) {
    const int64_t half = len / 2, step = N_ / len;
    for (int64_t i = 0; i < N_; i += len)
      for (int64_t j = 0; j < half; ++j) {
        const T wr = w[2 * j * step], wi = s * w[2 * j * step + 1];
        T* u = p + 2 * (i + j);
        T* v = p + 2 * (i + j + half);
        const T vr = v[0] * wr - v[1] * wi, vi = v[0] * wi + v[1] * wr;
        v[0] = u[0] - vr;
        v[1] = u[1] - vi;
        u[0] += vr;
        u[1] += vi;
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
