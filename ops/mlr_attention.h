// Multi-level low-rank (MLR) attention scores (Kuang et al., "Customizing the Inductive Biases
// of Softmax Attention using Structured Matrices", ICML 2025, arXiv:2509.07963; reference code
// github.com/YilunKuang/structured-attention, src/model.py, AttentionMLR).
//
// The head dims are split into levels, d = r_0 + r_1 + ... + r_{L-1} (q and k ordered by level:
// dims [R_{l-1}, R_l) with R_l = r_0 + ... + r_l belong to level l). Level l cuts the sequence
// into 2^l contiguous blocks, and a query-key pair gets the level's low-rank score only when
// both sit in the same level-l block:
//   S_ij = Σ_l 1[blk_l(i) = blk_l(j)] · c_l · q_i^(l)·k_j^(l),   out = softmax(S + mask) v.
// So near pairs use more of the head width than far ones: level 0 is global, deeper levels
// are local. c_l is the per-level scale, 1/r_l by default (what the reference code does).
//
// Blocks. A token's position p is its index among its example's valid (unpadded) tokens, and
//   blk_l(p) = floor(p · 2^l / N)       (nested: the level-(l+1) blocks halve the level-l ones)
// where N is
//   - span, when span > 0: fixed blocks of span/2^l positions (the paper's layout with span =
//     the context length; positions >= span fall into further blocks of the same size, and
//     pairs in different level-0 blocks score 0);
//   - else, not causal: the example's valid length. An example's output then depends neither on
//     how much padding its batch has nor on where the pads are (left, right, inside);
//   - else, causal: n, the sequence length of the call. The valid length would let a position's
//     output depend on how many tokens follow it; with n, what a valid token sees depends only
//     on earlier tokens (and n), and end padding changes nothing.
// Padded tokens sit between their valid neighbours (a pad takes the position of the next valid
// token, or of the last one when none follows); as keys they get zero weight. Padded queries
// are computed like any other (zero them downstream).
//
// The prefix trick: with c_l folded into q, S_ij is the dot product of q_i and k_j over their
// first R_{L(i,j)} dims, L(i,j) the deepest level whose block i and j share. The fused kernel
// uses it per (query tile, key tile): the inner product runs over R_L for the deepest level L
// every pair of the tile shares, plus each deeper level's dims only on the pairs that share it
// (tiles that straddle a block boundary). Scores cost Σ_l n²·r_l/2^l instead of n²·d, and dQ
// and dK shrink the same way; the exponentials and the value products (n²·e: out, dV, dP) do
// not. So of a tile pair's seven tile products four shrink to f = Σ_l r_l/2^l / d, and at
// d = e = 64 (f32, 72% of softmax's time in the products) the time is about 0.28 + 0.72·(3 +
// 4f)/7 of softmax's: 0.865 for ranks 32|16|8|8 (f = 43/64), 0.86-0.89 measured
// (docs/structured.md has the rank sweep that checks the model).
// No n×n memory, forward or backward.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/tensor.h"

namespace lotgrad {

// q, k (B, H, n, d), v (B, H, n, e): one float dtype (f32 or f64), any strides; q and k must
// have the same length (one sequence). Returns (B, H, n, e), differentiable in q, k and v.
// ranks: r_0, ..., r_{L-1}, each >= 1, summing to d, with 2^(L-1) <= n (and <= span when span
// > 0; an empty sequence takes any L): the deepest level's blocks hold at least one position
// each.
// key_padding_mask: optional bool (B, n), TRUE MEANS PADDED (as scaled_dot_product_attention).
// A query row with no key to see (causal, only pads before it) outputs zeros.
// is_causal: query i sees keys j <= i only.
// scales: c_0, ..., c_{L-1} (finite), or empty for c_l = 1/r_l (the reference code).
// span: >= 0; the block layout (see above).
// fused: the tiled kernel (default); false: the dense composite of ops (per level a masked
// score matrix, O(n²) memory; for tests).
// Errors (std::invalid_argument / ShapeError) name the op and the values involved.
Tensor mlr_attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int64_t>& ranks,
                     const Tensor& key_padding_mask = Tensor(), bool is_causal = false,
                     const std::vector<double>& scales = {}, int64_t span = 0, bool fused = true);

// The attention weights of the reference path, (B, H, n, n): out = weights · v (rows with no key
// to see are zeros). For study at small n only.
Tensor mlr_attention_weights(const Tensor& q, const Tensor& k, const std::vector<int64_t>& ranks,
                             const Tensor& key_padding_mask = Tensor(), bool is_causal = false,
                             const std::vector<double>& scales = {}, int64_t span = 0);

// How the mechanism splits a head of d dims into `levels` levels (each rank >= 1, else
// std::invalid_argument naming d and levels):
//   halving: r_l = floor(d / 2^(l+1)) for l < L-1, the last level takes the rest
//            (d 64, L 4: 32|16|8|8; d 4, L 3: 2|1|1);
//   equal:   d/L each, the remainder to the first levels (d 64, L 3: 22|21|21).
enum class MlrSplit { halving, equal };
std::vector<int64_t> mlr_ranks(int64_t d, int64_t levels, MlrSplit split);

}  // namespace lotgrad
