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

namespace detail {
// The row kernels, for fused ops that recompute normalised rows instead of storing them
// (ops/heads.cpp, ops/mlp.cpp). x, y, dx (rows, N) contiguous; mean and rstd (rows; the forward may be given null for both); w, b
// (N) or null. The backward writes dx when given and adds the weight and bias gradients
// into dw and db (double, N) when given.
template <class T>
void layer_norm_rows(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t rows, int64_t N, double eps);
template <class T>
void layer_norm_rows_backward(const T* x, const T* g, const T* mean, const T* rstd, const T* w, T* dx, double* dw,
                              double* db, int64_t rows, int64_t N);
}  // namespace detail

// A LayerNorm over the last dim that a fused op applies to its input first, recomputing the
// normalised rows in its backward instead of storing them (pre-LN transformer blocks).
struct PreNorm {
  Tensor weight, bias;  // (N) each, or undefined
  double eps = 1e-5;
};

}  // namespace lotgrad
