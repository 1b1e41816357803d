// The causal prefix product of linear attention, chunked with a running state:
//   Y_i = Σ_{j<=i} (q_i · k_j) v_j,   q, k (B, H, n, d), v (B, H, n, e) -> Y (B, H, n, e).
// Within a chunk of C positions the scores are a masked (C, C) product; across chunks a
// running state S = Σ k_jᵀ v_j (B, H, d, e) carries the past (Katharopoulos et al. 2020,
// arXiv:2006.16236, §3.2; the chunked form as in Yang et al. 2024, arXiv:2312.06635). Memory is
// O(n·(d + e) + C² + d·e) per head in the forward and the backward: no (n, d, e) prefix tensor.
// The backward saves only q, k, v (and the decay) and recomputes: a forward-order pass with the
// running state for dq, a reverse pass with the running state's gradient M = Σ_{later} q_iᵀ g_i
// for dk, dv.
#pragma once
#include <vector>

#include "../core/tensor.h"

namespace lotgrad {

// (n, n) of dtype dt with 1 where j <= i, 0 above the diagonal: the causal mask.
Tensor causal_mask(int64_t n, DType dt);

// chunk >= 1 (any n: the last chunk may be shorter).
Tensor causal_linear_prefix(const Tensor& q, const Tensor& k, const Tensor& v, int64_t chunk = 64);

// The general form: chunks of the given lengths (each >= 1, summing to n) and, optionally, a
// per-chunk decay of the state, decay (B, H, n_chunks, d), applied to the state's rows as
// chunk c begins:
//   S_c = g_c ⊙ S_{c-1} + K_cᵀ V_c,   Y_i = q_i · (Σ_{j in c, j<=i} k_jᵀ v_j + g_c ⊙ S_{c-1})  (i in c)
// i.e. Y_i = Σ_{j<=i} Σ_f q_i[f] k_j[f] (Π_{c(j) < c' <= c(i)} g_c'[f]) v_j. An undefined decay
// is 1. The decay is a constant: no gradient flows to it (refused when it requires one). This
// is what carries a rescaled state, e.g. stabilisers that change from chunk to chunk.
Tensor causal_linear_prefix(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int64_t>& lengths,
                            const Tensor& decay);

}  // namespace lotgrad
