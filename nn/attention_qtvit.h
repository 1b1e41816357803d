// QT-ViT's feature maps (nn/attention_qtvit.cpp has the mechanism "qtvit" and the derivations),
// exposed for the tests and for study. Inner products of the features are the kernels.
#pragma once
#include "../core/tensor.h"

namespace lotgrad::nn {

// ρ in β² = ρ·|α|·√(1 + γ²)·sigmoid(b): the compact kernel with its linear term stays
// >= ½(1 + γ²)(1 − ρ²).
constexpr double kQtBetaRoom = 0.9;

// x (..., d) -> (..., (d+1)(d+2)/2 + 1) with ⟨φ(q), φ(k)⟩ = 1 + s + s²/2, s = q·k/√d.
Tensor qtvit_exact_features(const Tensor& x);

// x (..., d) -> [α x̃²; β (4/d)^{1/4} x̃; γ; 1]/√2, (..., 2d + 2), or without the linear block
// (..., d + 2) when beta2 is undefined; alpha, gamma, beta2 (1). x̃ = x/‖x‖₄ when unit (the
// official code's scale-free form), else x (the paper's Eq. 11):
//   ⟨φ(q), φ(k)⟩ = ½(α² Σ q̃_i² k̃_i² + β²·2 q̃·k̃/√d + γ² + 1).
Tensor qtvit_compact_features(const Tensor& x, const Tensor& alpha, const Tensor& gamma, const Tensor& beta2, bool unit);

// β² = ρ·|α|·√(1 + γ²)·sigmoid(beta_raw), all (1).
Tensor qtvit_beta2(const Tensor& alpha, const Tensor& gamma, const Tensor& beta_raw);

}  // namespace lotgrad::nn
