// Softmax attention: out = softmax(q kᵀ · scale + mask) v, per batch and head, optionally
// restricted to a band of keys per query (causal, sliding window).
//
// Two paths with the same meaning:
//  - fused (default): a tiled CPU kernel with online softmax (FlashAttention-2 style). It keeps
//    only the output and one log-sum-exp per query row for the backward, so extra memory is
//    O(n·d), and the backward recomputes each score tile. OpenMP over batch × heads × query
//    blocks; deterministic for a fixed thread count. With a band, key tiles wholly outside it
//    are never computed (forward and backward), so causal attention costs about half and a
//    window of w keys costs O(n·w·d).
//  - reference (fused = false): the composite of ops (matmul, masked_fill, softmax, matmul).
//    It keeps the (B, H, n, m) probabilities, so memory is O(n·m). Used to test the kernel.
#pragma once
#include <cstdint>
#include <limits>

#include "../core/tensor.h"

namespace lotgrad {

// q (B, H, n, d), k (B, H, m, d), v (B, H, m, e): one float dtype (f32 or f64), any strides;
// the value width e may differ from d (the Free Energy Mixer reads values [v, exp(βv − M)] of
// width 2d in one pass). Returns (B, H, n, e), differentiable with respect to q, k and v.
//
// key_padding_mask: optional bool (B, m); TRUE MEANS PADDED, i.e. key j of batch b is ignored
// (the convention of PyTorch's nn.MultiheadAttention key_padding_mask; note that
// F.scaled_dot_product_attention's attn_mask uses the opposite sign). Padded keys get exactly
// zero weight, so what padded keys and values contain never changes the output. A query row
// whose keys are all padded (or, with a band, whose band holds only padded keys or none)
// outputs zeros (not NaN) and passes zero gradient. Padded *queries* are not masked here:
// their rows are computed like any other (zero them downstream).
//
// is_causal: query i sees keys j <= i only (top-left aligned, as PyTorch's is_causal, also
// when n != m).
// scale: multiplies q kᵀ; NaN (the default) means 1/sqrt(d).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& key_padding_mask = Tensor(), bool is_causal = false,
                                    double scale = std::numeric_limits<double>::quiet_NaN(),
                                    bool fused = true);
// is_causal was inserted before scale: a call written for the old order (scale fifth, fused
// sixth) would convert the scale to is_causal without a word, so it does not compile.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& key_padding_mask, double scale) = delete;
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& key_padding_mask, double scale, bool fused) = delete;

// Sliding-window attention (Beltagy et al. 2020, Longformer; Child et al. 2019): as above, but
// query i sees key j only when
//   is_causal:  0 <= i - j < window   (itself and the window - 1 keys before it)
//   otherwise:  |i - j| < window      (window - 1 keys on each side)
// window >= 1, else std::invalid_argument naming the op and the value.
Tensor sliding_window_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t window, bool is_causal,
                                const Tensor& key_padding_mask = Tensor(),
                                double scale = std::numeric_limits<double>::quiet_NaN(), bool fused = true);

// The attention weights of the reference path, (B, H, n, m) (rows with no key to see are
// zeros): softmax(q kᵀ · scale) with padded keys and keys outside the band at -inf.
// window 0: no window (else as sliding_window_attention). For study at small n only.
Tensor attention_weights(const Tensor& q, const Tensor& k, const Tensor& key_padding_mask = Tensor(),
                         bool is_causal = false, int64_t window = 0,
                         double scale = std::numeric_limits<double>::quiet_NaN());

}  // namespace lotgrad
