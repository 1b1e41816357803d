// Losses with fused kernels. Reductions sum per-sample terms in double in a fixed order,
// so the result does not depend on the thread count.
#pragma once
#include <cstdint>
#include <string>

#include "../core/tensor.h"

namespace lotgrad {

// PyTorch F.cross_entropy with class-index targets (no class weights):
//   logits (N, C) with target int64 (N), or (N, C, d1, ...) with target (N, d1, ...), or
//   (C) with a 0-d target. Per sample, with p = log_softmax(logits) over C and eps the
//   label smoothing:  loss = -(1 - eps) * p[target] - eps / C * sum_c p[c];
//   samples whose target == ignore_index contribute 0.
// reduction: "mean" (sum over non-ignored samples / their count; NaN if all are
// ignored, as in PyTorch), "sum", or "none" (the target's shape, 0 where ignored).
// Targets outside [0, C) other than ignore_index throw ShapeError naming the value.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100,
                     const std::string& reduction = "mean", double label_smoothing = 0.0);
// The same with label_smoothing before reduction.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index, double label_smoothing,
                     const std::string& reduction = "mean");

// PyTorch F.mse_loss: (input - target)^2 with reduction "mean", "sum" or "none". input and
// target must have the same shape and dtype; both are differentiable.
Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction = "mean");

}  // namespace lotgrad
