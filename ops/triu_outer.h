// The upper triangle of each row's outer product with itself, packed:
//   x (..., m) -> y (..., m(m+1)/2),   y[..., p(i, j)] = c_ij · x_i · x_j  for i <= j,
// c_ii = 1 and c_ij = off_diagonal for i < j, p running over i, then j = i..m-1 (row-major
// order of the upper triangle). With off_diagonal = √2 it is the symmetric half of
// vec(x ⊗ x) with the same inner products: ⟨triu_outer(a), triu_outer(b)⟩ = ⟨a, b⟩², in about
// half the width (the degree-2 polynomial features of QT-ViT's exact kernel, nn/attention_qtvit.cpp).
// Rows run in parallel, each by one thread in a fixed order (deterministic); the backward saves
// x only: dx_i = 2 g_ii x_i + Σ_{j != i} c_ij g_{min(i,j) max(i,j)} x_j.
#pragma once
#include <cmath>

#include "../core/tensor.h"

namespace lotgrad {

Tensor triu_outer(const Tensor& x, double off_diagonal = std::sqrt(2.0));

}  // namespace lotgrad
