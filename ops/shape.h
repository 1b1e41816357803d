// Joining, splitting, indexing and padding. Every op works on any dtype and is
// differentiable with respect to its float inputs (never the int64 indices). Index
// gradients are scatter-adds run in a fixed order, so they are deterministic.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "../core/tensor.h"

namespace lotgrad {

// Concatenates along dim. All tensors share dtype and rank, and sizes off dim.
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);
// Stacks equal-shaped tensors along a new dim (dim may be -1 for a new last dim).
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0);

// Views of x (narrow): chunks of split_size along dim, the last one possibly smaller.
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim = 0);
// Views of x with the given sizes along dim (they must sum to x.size(dim)).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim = 0);
// Makes split(x, {2, 3}) pick the sizes overload rather than split_size.
inline std::vector<Tensor> split(const Tensor& x, std::initializer_list<int64_t> sizes, int64_t dim = 0) {
  return split(x, std::vector<int64_t>(sizes), dim);
}

// out = x with dim indexed by `index` (int64, 1-d, each in [0, x.size(dim))).
// Output shape: x's with size(dim) replaced by index.numel().
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
// PyTorch gather: out[i][j][k] = x[i][index[i][j][k]][k] for dim 1. index is int64 of
// x's rank with index.size(d) <= x.size(d) for d != dim; out has index's shape.
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// Out-of-place scatter-add: x with src[i][j][k] added at [i][index[i][j][k]][k] (dim 1).
// index and src share a shape; index.size(d) <= x.size(d) for d != dim.
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);

// Constant padding, F.pad order: pad = (last_left, last_right, prev_left, prev_right, ...),
// at most two entries per dim. Negative pads (cropping) are rejected.
Tensor pad(const Tensor& x, const std::vector<int64_t>& pad, double value = 0.0);

}  // namespace lotgrad
