// InLine, injective linear attention with a local residual (Han et al., "Bridging the Divide:
// Reconsidering Softmax and Linear Attention", NeurIPS 2024, arXiv:2412.06590; code
// github.com/LeapLabTHU/InLine, models/inline_swin.py): see nn/attention_inline.cpp for the
// mechanism and its knobs. Exposed as a class and free functions (not only through the
// registry) so that tests and study tools can reach the explicit weights and the residual.
#pragma once
#include "attention.h"

namespace lotgrad::nn {

// The kernel φ applied to q and k elementwise (the reference's kernel_func): the identity (its
// default), relu, leakyrelu (slope 0.01, PyTorch's default) or exp(0.2·min(x, 100)) (the
// clamp keeps φ <= e^20, so products and sums of φ stay finite in f32).
enum class InLineKernel { identity, relu, leakyrelu, exp };
Tensor inline_feature(const Tensor& x, InLineKernel kernel);

// What the weights are made of, per head.
struct InLineInputs {
  Tensor fq;     // (B, H, n, d): φ(q)
  Tensor fk;     // (B, H, n, d): φ(k), 0 at pads
  Tensor v;      // (B, H, n, e): values, 0 at pads
  Tensor valid;  // (B, 1, n, 1): 1 on valid tokens, 0 on pads; undefined: all valid
};
// φ(q), φ(k) and v with pads zeroed. q, k (B, H, n, d), v (B, H, n, e), mask bool (B, n) or undefined.
InLineInputs inline_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_padding_mask,
                           InLineKernel kernel);

// o = w v (B, H, n, e) in O(n·d·e), with the InLine weights over the keys query i sees (N_i of
// them: every valid key, or the valid keys j <= i when causal), s = d^{-1/2}:
//   w_ij = (s/N_i)(φ(q_i)·φ(k_j) − φ(q_i)·k̄_i) + 1/N_i,   k̄_i = the mean of φ(k) over those keys.
// Causal: the chunked causal prefix product (ops/causal_linear.h, `chunk` positions per chunk)
// of (s/t) φ(q), φ(k), v plus a cumulative sum of v; otherwise a (d, e) product per head.
Tensor inline_linear_form(const InLineInputs& in, bool causal, int64_t chunk = 64);
// The weights w (B, H, n, n) from their definition, 0 where query i does not see key j. O(n²).
Tensor inline_weights(const InLineInputs& in, bool causal);

// The local residual (B, H, n, e): a depthwise convolution over positions of v (B, H, n, e),
// pads zeroed, with kernel (B or 1, H, e, 3) per channel:
//   not causal: r_t = κ[0] v_{t−1} + κ[1] v_t + κ[2] v_{t+1}   (the reference's cross-correlation, zero padding 1)
//   causal:     r_t = κ[0] v_t + κ[1] v_{t−1} + κ[2] v_{t−2}    (causal_conv1d's order: κ[m] is lag m)
// where t ± m counts VALID tokens: a token's neighbours are the valid tokens m places before or
// after it, as in the sequence with its pads removed, and 0 beyond its ends. Rows of pads are 0.
Tensor inline_local_conv(const Tensor& v, const Tensor& kernel, const Tensor& key_padding_mask, bool causal);

class InLineAttention : public AttentionMechanism {
 public:
  InLineAttention(const AttentionOptions& opt, Generator& gen);
  std::string type_name() const override;
  // x (B, n, D = H·d) -> (B, H, n, d): inline_linear_form + inline_local_conv (when on).
  Tensor forward_block(const Tensor& x, const Tensor& key_padding_mask) override;
  // The weights w (B, H, n, n): forward_block = w v + the local residual of v, for the
  // mechanism's values v (pads zeroed). The residual is not in w. O(n²): for study.
  Tensor attention_matrix_block(const Tensor& x, const Tensor& key_padding_mask) override;
  // φ(q), φ(k), v and the valid tokens for x (B, n, D).
  InLineInputs inputs(const Tensor& x, const Tensor& key_padding_mask) const;
  // The residual's kernel (B or 1, H, d, 3): predicted per example from the mean of x over its
  // valid tokens (not causal), or the static learned one (causal). Undefined when off.
  Tensor residual_kernel(const Tensor& x, const Tensor& key_padding_mask) const;
  bool causal() const { return causal_; }
  bool has_residual() const { return residual_; }
  InLineKernel kernel() const { return kernel_; }

  std::shared_ptr<Linear> qkv;  // D -> 3D: [q | k | v], each head-major
  // Not causal, the reference's kernel predictor, per head h (a grouped 1×1 convolution):
  // κ_h = W2_h GELU(W1_h x̄_h + b1_h) + b2_h, x̄ the mean of x over the valid tokens.
  Tensor res_w1;  // (H, d, d): (out, in) per head
  Tensor res_b1;  // (D)
  Tensor res_w2;  // (H, 3d, d): output 3c + m is tap m of the head's channel c
  Tensor res_b2;  // (3D)
  Tensor res_kernel;  // causal: (D, 3), column m the weight of lag m

 private:
  int64_t H_, d_, chunk_;
  bool causal_, residual_;
  InLineKernel kernel_;
};

}  // namespace lotgrad::nn
