// The attention probe: for a small input, any mechanism's (B, H, n, n) attention matrix
// (built from its factors for low-rank mechanisms), written to .npy for study, and the
// statistics students look at: per-row maximum weight, row and column sums, row entropy and
// numerical rank.
#pragma once
#include <string>

#include "attention.h"

namespace lotgrad::nn {

// A (B, H, n, n) for x (B, n, D) through mha's projections and mechanism, with rows of
// padded queries zeroed. Runs without recording a graph.
Tensor probe_attention(MultiHeadAttention& mha, const Tensor& x, const Tensor& key_padding_mask = Tensor());

struct AttentionStats {
  Tensor row_max;      // (B, H, n) largest weight in each row
  Tensor row_sum;      // (B, H, n)
  Tensor col_sum;      // (B, H, n) sums over valid query rows
  Tensor row_entropy;  // (B, H, n) -Σ a log a over positive weights
  Tensor rank;         // (B, H) i64: singular values above rank_tol · σ_max (valid block)
  double max_weight = 0;  // over all valid rows
};
// A (B, H, n, n); key_padding_mask bool (B, n) or undefined. rank_tol < 0 skips the rank
// (an O(n^3) decomposition per head; rank is then -1).
AttentionStats attention_stats(const Tensor& A, const Tensor& key_padding_mask = Tensor(), double rank_tol = 1e-6);

// Singular values of a small dense row-major matrix (rows × cols), descending (one-sided Jacobi).
std::vector<double> singular_values(const std::vector<double>& a, int64_t rows, int64_t cols);

}  // namespace lotgrad::nn
