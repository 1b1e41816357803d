// Running a causal sequence core (DeltaNet, H3, ZeroS: recurrences over time) on padded
// batches, causally or in both directions.
//
// `core` is the mechanism's causal computation on a block input x (B, n, D) whose valid tokens
// come first, in order, and whose pads come after every valid token; it returns per-head
// outputs (B, H, n, d) (or, for the map, (B, H, n, n)). Because pads follow every valid token,
// a causal core needs no masking for valid outputs to ignore them, whatever the pads hold and
// wherever the caller's mask put them (left, right or scattered padding).
// - causal: the valid tokens compacted to the front, core, the outputs moved back.
// - not causal (the two-sided form for classification): the same, plus core on the valid
//   tokens in reversed order, the two outputs summed (the same parameters both ways).
// Rows of padded positions in the result are finite but meaningless: MultiHeadAttention
// zeroes them. With no padding the forward order needs no copy at all.
#pragma once
#include <functional>

#include "../core/tensor.h"

namespace lotgrad::nn {

using SequenceCore = std::function<Tensor(const Tensor& x)>;

// x (B, n, D), key_padding_mask bool (B, n) (true = pad) or undefined -> (B, H, n, d).
Tensor run_directions(const Tensor& x, const Tensor& key_padding_mask, bool causal, const SequenceCore& core);
// The same for a core that returns the (B, H, n, n) map: rows and columns are moved back, so
// the result is the map of run_directions's output (summed over the two directions).
Tensor run_directions_matrix(const Tensor& x, const Tensor& key_padding_mask, bool causal, const SequenceCore& core);

}  // namespace lotgrad::nn
