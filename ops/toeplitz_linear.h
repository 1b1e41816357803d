// Causal linear attention weighted by a per-head filter over the lag (a Toeplitz weighting):
//   Y_t = Σ_{0 <= t−j < L} f_h[t − j] (q_t · k_j) v_j,
//   q, k (B, H, n, d), v (B, H, n, e), filter f (H, L) -> Y (B, H, n, e).
// It is H3's read-out of a long convolution over the outer products, y_t = q_tᵀ Σ_j f[t−j] k_j v_jᵀ
// (Fu et al. 2023, arXiv:2212.14052, §3), and with f ≡ 1 plain causal linear attention. Lags at
// or beyond n never meet a key (their gradient is 0).
// Two algorithms, one result (up to rounding):
// - direct: tiles of `tile` positions; for each tile offset δ every query tile i meets key tile
//   i − δ in one batched product, scores (q·k) times the (tile, tile) block of the Toeplitz
//   filter, then times v. Only the offsets the filter reaches are visited:
//   O(n·min(n, L + tile)·(d + e)) time, O(n·tile) extra memory (never n×n nor n·d·e). The
//   backward saves q, k, v and recomputes the scores per offset.
// - fft: the outer products k_j v_jᵀ materialised (B, n, H·d·e), convolved with f per channel
//   by causal_conv1d's FFT form, read out by q: O(H·d·e·n log n) time, O(n·H·d·e) memory.
// automatic: whichever toeplitz_uses_fft says (a cost model fitted to measured timings).
#pragma once
#include "conv.h"

namespace lotgrad {

Tensor toeplitz_causal_linear(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& filter,
                              ConvAlgo algo = ConvAlgo::automatic, int64_t tile = 64);

// What ConvAlgo::automatic picks for n positions, a filter of L lags and head sizes d, e.
bool toeplitz_uses_fft(int64_t n, int64_t L, int64_t d, int64_t e);

}  // namespace lotgrad
