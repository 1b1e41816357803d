// Moving between token-major activations and per-head layouts for attention, each in one
// copy forward and one copy backward (a chain of view ops would zero-fill and copy a full
// (3, B, H, n, dh) gradient per head tensor).
#pragma once
#include <array>

#include "../core/tensor.h"

namespace lotgrad {

// qkv (B, n, 3·H·dh), laid out [q | k | v] along the last dim, each head-major -> q, k, v
// as contiguous (B, H, n, dh). Differentiable (one node with three outputs).
std::array<Tensor, 3> split_qkv_heads(const Tensor& qkv, int64_t heads);

// o (B, H, n, dh) -> (B, n, H·dh), contiguous. Differentiable.
Tensor merge_heads(const Tensor& o);

}  // namespace lotgrad
