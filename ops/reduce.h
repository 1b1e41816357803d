// Reductions over any set of dims (negative dims count from the end), all differentiable
// for f32 and f64. f32 sums accumulate in double. Each output element is reduced by one
// thread in a fixed order, and whole-tensor reductions split into fixed-size chunks
// combined in order, so results do not depend on the thread count.
//
// dims: an empty list means every dim (PyTorch's dim=None). A repeated or out-of-range
// dim throws ShapeError. keepdim keeps reduced dims as size 1.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/tensor.h"

namespace lotgrad {

// ---- sums and moments -----------------------------------------------------------------
Tensor sum(const Tensor& x);  // 0-d
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x);  // 0-d
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
// Sum of squared deviations / (N - correction): correction=1 is the unbiased estimate,
// 0 the population variance (PyTorch's `correction`). N - correction <= 0 gives inf/nan.
Tensor var(const Tensor& x, const std::vector<int64_t>& dims, double correction = 1.0, bool keepdim = false);
Tensor var(const Tensor& x);  // all elements, correction 1, 0-d (others: var(x, {}, c))

// ---- max / min ------------------------------------------------------------------------
// values and the int64 position along dim of the first maximum (NaN counts as the
// maximum, as in PyTorch). The gradient flows to that position only.
struct ValuesIndices {
  Tensor values;
  Tensor indices;
};
ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim = false);
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim = false);
// Over all elements (0-d). The gradient is shared equally among tied maxima.
Tensor max(const Tensor& x);
Tensor min(const Tensor& x);
// Not differentiable (int64 results).
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x);  // flat index into x (row-major), 0-d

// ---- log-sum-exp and scans ------------------------------------------------------------
// log(sum(exp(x))) over dims, computed as m + log(sum(exp(x - m))) with m the max, so
// inputs in the thousands do not overflow. All -inf gives -inf; +inf gives +inf.
Tensor logsumexp(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
// Inclusive prefix sum along dim (same shape as x).
Tensor cumsum(const Tensor& x, int64_t dim);

}  // namespace lotgrad
