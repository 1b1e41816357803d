// Rotary position embedding (RoPE; Su et al., RoFormer, arXiv:2104.09864), in the half-split
// layout (GPT-NeoX, LLaMA): the pairs are (x[i], x[i + d/2]) for i < d/2, pair i rotated by the
// angle pos · base^(-2i/d):
//   y[i] = x[i] cos θ − x[i + d/2] sin θ,   y[i + d/2] = x[i + d/2] cos θ + x[i] sin θ.
// Then rope(q)·rope(k) depends on the positions only through their difference. The backward is
// the inverse rotation (θ -> −θ): a rotation's transpose.
#pragma once
#include "../core/tensor.h"

namespace lotgrad {

// x (B, H, n, d) with d even, positions (B, n) of any real or integer dtype (read as numbers;
// no gradient flows to them) -> (B, H, n, d). Differentiable in x.
Tensor rope(const Tensor& x, const Tensor& positions, double base = 10000.0);

}  // namespace lotgrad
