// Moving between token-major activations and per-head layouts for attention, each in one
// copy forward and one copy backward (a chain of view ops would zero-fill and copy a full
// (3, B, H, n, dh) gradient per head tensor).
#pragma once
#include <array>

#include "../core/tensor.h"
#include "norm.h"

namespace lotgrad {

// qkv (B, n, 3·H·dh), laid out [q | k | v] along the last dim, each head-major -> q, k, v
// as contiguous (B, H, n, dh). Differentiable (one node with three outputs).
std::array<Tensor, 3> split_qkv_heads(const Tensor& qkv, int64_t heads);

// split_qkv_heads(linear(x, weight, bias), heads) computed one sequence at a time: x (B, n, D),
// weight (3·H·dh, D), bias (3·H·dh) or undefined -> q, k, v (B, H, n, dh). The (B, n, 3·H·dh)
// projection and its gradient never exist whole (one (n, 3·H·dh) block at a time, which stays
// in cache), so the attention input costs a third of the memory and traffic. With norm, x is
// layer-normalised first (over D) and the normalised rows are recomputed in the backward, not
// stored. Differentiable (x, weight, bias, norm's weight and bias).
std::array<Tensor, 3> linear_qkv_heads(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t heads,
                                       const PreNorm* norm = nullptr);

// linear_qkv_heads with parts of their own head widths: weight (H·(w0 + w1 + w2), D) laid out
// [part 0 | part 1 | part 2], each head-major -> (B, H, n, w_p) for p = 0, 1, 2. (LOTFormer's
// folded projection: r-column query and key maps and dh-column values.)
std::array<Tensor, 3> linear_heads(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t heads,
                                   const std::array<int64_t, 3>& widths, const PreNorm* norm = nullptr);

// o (B, H, n, dh) -> (B, n, H·dh), contiguous. Differentiable.
Tensor merge_heads(const Tensor& o);

}  // namespace lotgrad
