#include "probe.h"

#include <algorithm>
#include <cmath>

#include "../core/autograd.h"

namespace lotgrad::nn {

Tensor probe_attention(MultiHeadAttention& mha, const Tensor& x, const Tensor& mask) {
  NoGradGuard ng;
  if (mha.spec().caps.block_input)
    return zero_padded_rows(mha.mechanism->attention_matrix_block(x, mask), mask).contiguous();
  Tensor q, k, v;
  mha.project(x, q, k, v);
  return zero_padded_rows(mha.mechanism->attention_matrix(q, k, mask), mask).contiguous();
}

std::vector<double> singular_values(const std::vector<double>& a, int64_t rows, int64_t cols) {
  // One-sided Jacobi on the columns of a (rows × cols): orthogonalise column pairs until
  // converged; singular values are the column norms.
  std::vector<double> u = a;
  for (int sweep = 0; sweep < 60; ++sweep) {
    double off = 0;
    for (int64_t p = 0; p < cols; ++p)
      for (int64_t q = p + 1; q < cols; ++q) {
        double alpha = 0, beta = 0, gamma = 0;
        for (int64_t i = 0; i < rows; ++i) {
          const double up = u[i * cols + p], uq = u[i * cols + q];
          alpha += up * up;
          beta += uq * uq;
          gamma += up * uq;
        }
        if (gamma == 0 || std::abs(gamma) < 1e-15 * std::sqrt(alpha * beta)) continue;
        off = std::max(off, std::abs(gamma) / std::sqrt(alpha * beta));
        const double zeta = (beta - alpha) / (2 * gamma);
        const double t = (zeta >= 0 ? 1.0 : -1.0) / (std::abs(zeta) + std::sqrt(1 + zeta * zeta));
        const double c = 1 / std::sqrt(1 + t * t), s = c * t;
        for (int64_t i = 0; i < rows; ++i) {
          const double up = u[i * cols + p], uq = u[i * cols + q];
          u[i * cols + p] = c * up - s * uq;
          u[i * cols + q] = s * up + c * uq;
        }
      }
    if (off < 1e-13) break;
  }
  std::vector<double> sv((size_t)cols);
  for (int64_t p = 0; p < cols; ++p) {
    double s = 0;
    for (int64_t i = 0; i < rows; ++i) s += u[i * cols + p] * u[i * cols + p];
    sv[p] = std::sqrt(s);
  }
  std::sort(sv.begin(), sv.end(), std::greater<>());
  return sv;
}

AttentionStats attention_stats(const Tensor& A, const Tensor& mask, double rank_tol) {
  if (A.dim() != 4 || A.size(2) != A.size(3))
    throw_shape("attention_stats", "expects a (B, H, n, n) attention matrix", {{"A", &A}});
  const int64_t B = A.size(0), H = A.size(1), n = A.size(2);
  std::vector<double> a = A.to_vector();
  std::vector<double> rmax(B * H * n), rsum(B * H * n), csum(B * H * n, 0.0), rent(B * H * n);
  std::vector<int64_t> rank(B * H);
  AttentionStats st;
  const auto pos = valid_positions(mask, B, n);
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int64_t>& valid = pos[b];
    for (int64_t h = 0; h < H; ++h) {
      const double* M = &a[((b * H + h) * n) * n];
      for (int64_t i = 0; i < n; ++i) {
        double mx = 0, s = 0, e = 0;
        for (int64_t j = 0; j < n; ++j) {
          const double w = M[i * n + j];
          mx = std::max(mx, w);
          s += w;
          if (w > 0) e -= w * std::log(w);
        }
        const int64_t o = (b * H + h) * n + i;
        rmax[o] = mx;
        rsum[o] = s;
        rent[o] = e;
      }
      for (int64_t i : valid) {
        st.max_weight = std::max(st.max_weight, rmax[(b * H + h) * n + i]);
        for (int64_t j = 0; j < n; ++j) csum[(b * H + h) * n + j] += M[i * n + j];
      }
      // rank of the valid block (an O(L^3) decomposition: skipped, as -1, when rank_tol < 0)
      if (rank_tol < 0) {
        rank[b * H + h] = -1;
        continue;
      }
      const int64_t L = (int64_t)valid.size();
      std::vector<double> blk(L * L);
      for (int64_t r = 0; r < L; ++r)
        for (int64_t c = 0; c < L; ++c) blk[r * L + c] = M[valid[r] * n + valid[c]];
      std::vector<double> sv = L ? singular_values(blk, L, L) : std::vector<double>{};
      int64_t rk = 0;
      for (double s : sv)
        if (!sv.empty() && s > rank_tol * sv[0]) ++rk;
      rank[b * H + h] = rk;
    }
  }
  st.row_max = Tensor::from_vector(rmax, {B, H, n});
  st.row_sum = Tensor::from_vector(rsum, {B, H, n});
  st.col_sum = Tensor::from_vector(csum, {B, H, n});
  st.row_entropy = Tensor::from_vector(rent, {B, H, n});
  st.rank = Tensor::from_vector(rank, {B, H});
  return st;
}

}  // namespace lotgrad::nn
