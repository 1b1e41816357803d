// Fused, numerically stable softmax and log_softmax along one dim, with hand-written
// backward passes. Rows (all positions of the other dims) are processed in parallel, each
// by one thread in a fixed order, so results do not depend on the thread count.
#pragma once
#include <cstdint>

#include "../core/tensor.h"

namespace lotgrad {

// y = exp(x - max) / sum(exp(x - max)) along dim (negative counts from the end).
// Backward: dx = y * (g - sum(g * y)).
Tensor softmax(const Tensor& x, int64_t dim);
// y = x - max - log(sum(exp(x - max))) along dim. Backward: dx = g - exp(y) * sum(g).
Tensor log_softmax(const Tensor& x, int64_t dim);

namespace detail {
// Kernels on contiguous (outer, L, inner) data, exposed for fused callers (cross_entropy).
template <class T> void softmax_rows(const T* x, T* y, int64_t outer, int64_t L, int64_t inner, bool log);
}  // namespace detail

}  // namespace lotgrad
