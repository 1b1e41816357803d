// Causal linear attention weighted by a diagonal state-space filter (S4D, a sum of damped
// complex exponentials over the lag):
//   Y_t = Σ_{j<=t} f_h[t − j] (q_t · k_j) v_j,   f_h[ℓ] = 2 Re Σ_m c_hm λ_hm^ℓ,
//   λ_hm = exp(log_lambda_re + i·log_lambda_im), c_hm = c_re + i·c_im,
//   q, k (B, H, n, d), v (B, H, n, e), log_lambda_re/_im, c_re/_im (H, M) -> Y (B, H, n, e).
// It is H3's read-out y_t = q_tᵀ Σ_j f[t − j] k_j v_jᵀ of its S4D long convolution over the outer
// products (Fu et al. 2023, arXiv:2212.14052, §3), in linear time: chunks of `chunk` positions,
// - pairs within a chunk: (Q Kᵀ ⊙ F) V per chunk, F the lower-triangular Toeplitz block of f on
//   lags 0..chunk−1 (a composite of autograd ops; O(n·chunk) memory);
// - pairs in different chunks: a running state per mode, Z_m = Σ_{j<t0} λ_m^{t0−1−j} k_j v_jᵀ
//   (d × e, complex) at each chunk start t0, read out as y_t += 2 Re Σ_m c_m λ_m^{t−t0+1} q_tᵀ Z_m:
//   one node with a hand-derived backward that walks the chunks in reverse, recomputing the
//   states from checkpoints kept every ~√(n/chunk) chunks.
// Time O(n·(chunk·(d + e) + M·d·e)), memory O(n·(d + e + chunk) + √(n/chunk)·M·d·e): no n×n and no
// n·d·e tensor. The state recurrence is stable for Re log λ <= 0 (H3's ZOH modes always are).
#pragma once
#include "../core/tensor.h"

namespace lotgrad {

// f (H, n) above, from the modes (H, M) (differentiable; lag 0 is 2 Re Σ_m c_m).
Tensor modal_filter(const Tensor& log_lambda_re, const Tensor& log_lambda_im, const Tensor& c_re, const Tensor& c_im,
                    int64_t n);

Tensor modal_causal_linear(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_lambda_re,
                           const Tensor& log_lambda_im, const Tensor& c_re, const Tensor& c_im, int64_t chunk = 64);

// Whether the chunked form is the faster one for n positions, M modes and head sizes d, e,
// against the Toeplitz forms of ops/toeplitz_linear.h (O(n²·(d + e)) direct): see the .cpp.
bool modal_uses_chunks(int64_t n, int64_t M, int64_t d, int64_t e);

// The cross-chunk part alone (pairs t, j in different chunks), for tests of the kernel.
Tensor modal_cross_chunk(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& log_lambda_re,
                         const Tensor& log_lambda_im, const Tensor& c_re, const Tensor& c_im, int64_t chunk);

}  // namespace lotgrad
