// The delta rule of DeltaNet (Schlag et al. 2021, arXiv:2102.11174; chunkwise-parallel form of
// Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence
// Length", arXiv:2406.06484): per head, with a (dv, dk) state S,
//   S_0 = 0,   S_t = S_{t-1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,   o_t = S_t q_t.
// Equivalently u_t = β_t (v_t − S_{t-1} k_t) (the "delta") and S_t = S_{t-1} + u_t k_tᵀ.
// Any read-out scale (1/√dk) is the caller's, applied to q.
//
// delta_rule computes it chunk by chunk (the WY/UT form): within a chunk of c positions with
// incoming state S, the deltas U (c, dv) solve the unit lower-triangular system
//   (I + L) U = diag(β) (V − K Sᵀ),   L = strict-tril(diag(β) K Kᵀ)
// by forward substitution, then O = Q Sᵀ + tril(Q Kᵀ) U (diagonal included) and S += Uᵀ K.
// Everything but the substitution is a GEMM of c×d or c×c blocks; heads run in parallel.
// Memory: the backward node keeps q, k, v, β and the state entering each chunk,
// O(n·d + (n/C)·dk·dv) per head, never the O(n·dk·dv) per-step states; the backward
// recomputes each chunk's U from its saved state, in reverse chunk order.
#pragma once
#include <cstdint>

#include "../core/tensor.h"

namespace lotgrad {

// q, k (B, H, n, dk), v (B, H, n, dv), beta (B, H, n), one float dtype -> o (B, H, n, dv).
// chunk >= 1: positions per chunk (any n: the last chunk may be shorter). Differentiable in
// q, k, v and beta; inputs may be views.
Tensor delta_rule(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, int64_t chunk = 64);

// The same by the plain step-by-step recurrence, built from autograd ops (matmul, mul, ...):
// slow and O(n·dk·dv) memory in the backward. The reference for tests and for study.
Tensor delta_rule_recurrent(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta);

// Bytes the backward node of delta_rule(q, k, v, beta, chunk) keeps beyond its inputs: the
// per-chunk incoming states, B·H·ceil(n/C)·dk·dv elements (for tests and memory estimates).
int64_t delta_rule_state_bytes(const Tensor& q, const Tensor& v, int64_t chunk);

}  // namespace lotgrad
