// A small complex FFT for the long causal convolutions (ops/conv.h): iterative radix-2
// Cooley-Tukey, decimation in time (bit-reversed input order, then log2 N butterfly passes).
// Sizes are powers of two; callers zero-pad. Twiddles are computed in double once per plan.
#pragma once
#include <complex>
#include <cstdint>
#include <vector>

namespace lotgrad::fft {

// The smallest power of two >= n (n >= 1).
int64_t next_pow2(int64_t n);

template <class T>
class Plan {
 public:
  explicit Plan(int64_t N);  // N a power of two >= 1
  int64_t size() const { return N_; }
  // In place: a[k] <- Σ_t a[t] e^{-2πi kt/N}.
  void forward(std::complex<T>* a) const { run(a, false); }
  // In place: a[t] <- (1/N) Σ_k a[k] e^{+2πi kt/N}, so inverse(forward(a)) = a.
  void inverse(std::complex<T>* a) const;

 private:
  void run(std::complex<T>* a, bool conj_twiddles) const;
  int64_t N_;
  std::vector<uint32_t> rev_;          // bit reversal of 0..N-1
  std::vector<std::complex<T>> tw_;    // pass with half h: e^{-2πi j/(2h)} at h + j, j < h
};

extern template class Plan<float>;
extern template class Plan<double>;

}  // namespace lotgrad::fft
