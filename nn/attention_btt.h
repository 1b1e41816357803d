// Bilinear BTT scoring (Kuang et al., "Customizing the Inductive Biases of Softmax Attention
// using Structured Matrices", ICML 2025, arXiv:2509.07963): see nn/attention_btt.cpp for the
// mechanism. Exposed as functions and a class (not only through the registry) so that tests and
// study tools can reach the structured product, the cores and the dense W_h they stand for.
#pragma once
#include "attention.h"

namespace lotgrad::nn {

// D = a·b with a the largest divisor of D not above √D (the split closest to square), so a <= b.
// The cores use the same split on both sides (c = a, d' = b). Throws std::invalid_argument
// naming the mechanism and D when a would be 1 (D prime or 1): W_h would then be a dense D × D
// matrix per head (H·s·D·(D + 1) parameters), not a block tensor train.
struct BttSplit {
  int64_t a = 0, b = 0;
};
BttSplit btt_split(int64_t D);

// W_h x_t for every head h and token t without forming W_h:
//   x (B, n, D), R (c, d', H·b·s), L (H·b, a, c·s), D = a·b = c·d'  ->  (B, H, n, D),
//   W_h[(α,β), (γ,δ)] = Σ_σ L[(h,β), α, (γ,σ)] · R[γ, δ, (h,β,σ)],
// rows (α,β) at α·b + β, columns (γ,δ) at γ·d' + δ, (h,β,σ) at (h·b + β)·s + σ. Two batched
// products: R first (one GEMM per γ), then L (one per (h, β)); O(B·n·H·s·D·(b + c)) flops,
// O(B·n·H·s·D) memory. Differentiable in x, R and L.
Tensor btt_project(const Tensor& x, const Tensor& R, const Tensor& L, int64_t H);

// The reference's RMS cap on a core: w / max(1, rms(w)/scale), rms(w) = sqrt(mean(w²) + 1e-8)
// over the whole tensor. Where the cap acts, the gradient flows through rms too (w ↦ w·scale/rms
// is scale invariant); where it does not, w passes unchanged.
Tensor btt_rms_cap(const Tensor& w, double scale);
// The cap's scale for a core with fan_in inputs and fan_out outputs: sqrt(min(fan_in, fan_out))/fan_in
// (R: fan_in d', fan_out H·b·s; L: fan_in c·s, fan_out a).
double btt_cap_scale(int64_t fan_in, int64_t fan_out);

// The mechanism (block input): per head, scores x_iᵀ · LN(W_h x_j)/√D inside a softmax (the
// fused kernel with q = x broadcast over heads), values v = x W_vᵀ + b_v split into heads.
class BttAttention : public AttentionMechanism {
 public:
  BttAttention(const AttentionOptions& opt, Generator& gen);
  std::string type_name() const override;
  // x (B, n, D = H·d) -> (B, H, n, d): softmax(x_i · k_j /√D) over the keys j seen, times v.
  Tensor forward_block(const Tensor& x, const Tensor& key_padding_mask) override;
  // The (B, H, n, n) weights of forward_block (softmax of the same scores, padded keys and, when
  // causal, later keys at zero): forward_block = A v for v = values(x). O(n²): for study.
  Tensor attention_matrix_block(const Tensor& x, const Tensor& key_padding_mask) override;
  // k = LN(W_h x) (B, H, n, D): the structured product with the capped cores, then a LayerNorm
  // over D with the gain k_norm_weight and no bias.
  Tensor keys(const Tensor& x) const;
  // v (B, H, n, d).
  Tensor values(const Tensor& x) const;
  // The cores as the forward uses them (RMS-capped), in dtype dt.
  Tensor r_core(DType dt) const;
  Tensor l_core(DType dt) const;
  BttSplit split() const { return split_; }
  int64_t rank() const { return s_; }
  bool causal() const { return causal_; }

  Tensor btt_r;                   // (c, d', H·b·s): the core applied first (raw, before the cap)
  Tensor btt_l;                   // (H·b, a, c·s): the core applied second (raw)
  Tensor k_norm_weight;           // (D): the gain of the LayerNorm on W_h x, shared by the heads
  std::shared_ptr<Linear> v_proj;  // D -> D (head-major), with bias

 private:
  int64_t H_, d_, s_;
  BttSplit split_;
  bool causal_;
};

}  // namespace lotgrad::nn
