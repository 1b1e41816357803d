// Layer normalisation over the trailing dims, fused forward and backward. The forward
// saves each row's mean and 1/std; rows run in parallel, and the weight and bias gradients
// are summed over rows per column block (each column by one thread, in row order), so
// results do not depend on the thread count.
#pragma once
#include "../core/tensor.h"

namespace lotgrad {

// PyTorch F.layer_norm: x (..., *normalized_shape); weight and bias (normalized_shape) or
// undefined. y = (x - mean) / sqrt(var + eps) * weight + bias, var the biased variance.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight = Tensor(),
                  const Tensor& bias = Tensor(), double eps = 1e-5);

}  // namespace lotgrad
