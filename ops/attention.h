// Softmax attention: out = softmax(q kᵀ · scale + mask) v, per batch and head.
//
// Two paths with the same meaning:
//  - fused (default): a tiled CPU kernel with online softmax (FlashAttention-2 style). It keeps
//    only the output and one log-sum-exp per query row for the backward, so extra memory is
//    O(n·d), and the backward recomputes each score tile. OpenMP over batch × heads × query
//    blocks; deterministic for a fixed thread count.
//  - reference (fused = false): the composite of ops (matmul, masked_fill, softmax, matmul).
//    It keeps the (B, H, n, m) probabilities, so memory is O(n·m). Used to test the kernel.
#pragma once
#include <limits>

#include "../core/tensor.h"

namespace lotgrad {

// q (B, H, n, d), k (B, H, m, d), v (B, H, m, d): one float dtype (f32 or f64), any strides.
// Returns (B, H, n, d), differentiable with respect to q, k and v.
//
// key_padding_mask: optional bool (B, m); TRUE MEANS PADDED, i.e. key j of batch b is ignored
// (the convention of PyTorch's nn.MultiheadAttention key_padding_mask; note that
// F.scaled_dot_product_attention's attn_mask uses the opposite sign). Padded keys get exactly
// zero weight, so what padded keys and values contain never changes the output. A query row
// whose keys are all padded outputs zeros (not NaN) and passes zero gradient. Padded *queries*
// are not masked here: their rows are computed like any other (zero them downstream).
//
// scale: multiplies q kᵀ; NaN (the default) means 1/sqrt(d).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& key_padding_mask = Tensor(),
                                    double scale = std::numeric_limits<double>::quiet_NaN(),
                                    bool fused = true);

}  // namespace lotgrad
