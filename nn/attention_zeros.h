// ZeroS, zero-sum linear attention (Lu et al., NeurIPS 2025, arXiv:2602.05230): see
// nn/attention_zeros.cpp for the mechanism and its knobs. Exposed as a class (not only through
// the registry) so that tests and study tools can reach the explicit zero-sum weights.
#pragma once
#include "attention.h"

namespace lotgrad::nn {

// The explicit (B, H, n, n) weights of ZeroS, zero where key i is not seen by query t (a later
// position under the causal mask, or a pad): with t the number of keys query t sees and p the
// softmax of the radial logits s over them,
//   delta1[t, i] = (s_i − s̄_t)/t,   deltah[t, i] = p[t, i] − 1/t − delta1[t, i]  (each row sums to 0),
//   w[t, i] = σ¹_t delta1 + σʰ_t deltah (+ σ⁰_t/t with the zero-order gate: rows then sum to σ⁰_t).
struct ZeroSWeights {
  Tensor delta1, deltah, w;
};

// What the zero-sum weights are made of, per head (MultiHeadAttention's block input x gives
// them through ZeroSAttention::inputs; tests may build them directly).
struct ZeroSInputs {
  Tensor q, k, v;      // (B, H, n, d); q and k already rotated and of unit length
  Tensor s;            // (B, H, n, 1) radial logits (pads: anything finite)
  Tensor g1, gh, g0;   // (B, H, n, 1): σ¹, σʰ and σ⁰ (undefined: no zero-order gate)
  Tensor valid;        // (B, 1, n, 1): 1 on valid tokens, 0 on pads; undefined: all valid
};

// o (B, H, n, d), o_t = Σ_{i seen by t} w[t, i] (q_t·k_i) v_i, before the per-head LayerNorm,
// in O(n·d²): causal by the chunked prefix op with running-max stabilisers (at most `chunk`
// positions per chunk), else two-sided over all valid tokens.
Tensor zeros_linear_form(const ZeroSInputs& in, bool causal, int64_t chunk = 64);
// The weights from their definition (B, H, n, n). O(n²).
ZeroSWeights zeros_weights(const ZeroSInputs& in, bool causal);

class ZeroSAttention : public AttentionMechanism {
 public:
  ZeroSAttention(const AttentionOptions& opt, Generator& gen);
  std::string type_name() const override;
  // x (B, n, D = H·d) -> LayerNorm_d(o) (B, H, n, d), o_t = Σ_{i seen} w[t, i] (q_t·k_i) v_i in O(n·d²).
  Tensor forward_block(const Tensor& x, const Tensor& key_padding_mask) override;
  // A = w ∘ (q kᵀ) (B, H, n, n): A v is o before the per-head LayerNorm. O(n²): for study.
  Tensor attention_matrix_block(const Tensor& x, const Tensor& key_padding_mask) override;
  // The weights of attention_matrix_block, from their definition. O(n²): for study and tests.
  ZeroSWeights weights(const Tensor& x, const Tensor& key_padding_mask);
  // q, k, v, s, gates and valid tokens for x (B, n, D).
  ZeroSInputs inputs(const Tensor& x, const Tensor& key_padding_mask) const;
  bool causal() const { return causal_; }
  bool zero_order_gate() const { return gate0_; }
  bool uses_rope() const { return rope_; }

  std::shared_ptr<Linear> qkv;  // D -> 3D: [q | k | v], each head-major
  std::shared_ptr<Linear> w_u;  // D -> D, no bias: the radial features u (head-major)
  std::shared_ptr<Linear> w_g;  // D -> 2H, or 3H with the zero-order gate: [σ¹ | σʰ | σ⁰] pre-activations
  Tensor mu;                    // (H, d): the prior mean of u (0 at init)
  Tensor log_tau;               // (H): log of the prior's weight τ, in tokens (τ = 1 at init)

 private:
  int64_t H_, d_, chunk_;
  bool causal_, gate0_, rope_;
};

}  // namespace lotgrad::nn
