// The transformer MLP as one op: y = linear(dropout(gelu(linear(x, w1, b1)), p), w2, b2).
// It saves x and the hidden pre-activation u only; the hidden activation a = dropout(gelu(u))
// (at 2-4x the model width, the largest tensor of a layer) is recomputed in the backward in
// one elementwise pass, with the dropout mask redrawn from its counters. That halves the
// MLP's saved memory for the price of one pass, and fuses GELU and dropout into one pass.
// Values and gradients equal the composite of linear, gelu and dropout with the same
// generator state (tests/test_nn_functional.cpp).
#pragma once
#include "../core/random.h"
#include "../core/tensor.h"
#include "norm.h"

namespace lotgrad {

// x (..., in), w1 (hidden, in), b1 (hidden) or undefined, w2 (out, hidden), b2 (out) or
// undefined -> (..., out). Dropout (p in [0, 1)) applies when training and p > 0, drawing
// hidden-size values from gen exactly as dropout() would. With norm, x is layer-normalised
// first (over in) and the normalised rows are recomputed in the backward, not stored.
Tensor mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2, double p,
                bool training, Generator& gen, const PreNorm* norm = nullptr);

}  // namespace lotgrad
