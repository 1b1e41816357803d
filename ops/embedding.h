// Embedding lookup with a deterministic scatter-add backward.
#pragma once
#include <cstdint>
#include <optional>

#include "../core/tensor.h"

namespace lotgrad {

// weight (V, d), indices int64 of any shape -> (*indices.shape, d): row indices[i] of weight.
// Out-of-range indices throw ShapeError naming the offending value and its position.
// padding_idx (negative counts from V): that row is looked up as usual but receives no
// gradient (PyTorch's padding_idx). The weight gradient is a scatter-add done per column
// block in index order, so it is bit-identical for any thread count.
// PyTorch's F.embedding(input, weight) argument order is accepted as well: the int64
// operand is taken as the indices whichever side it is on.
Tensor embedding(const Tensor& weight, const Tensor& indices, std::optional<int64_t> padding_idx = std::nullopt);

}  // namespace lotgrad
