// Free Energy Mixer (Lu & Yang, arXiv 2602.07160, ICLR 2026): see nn/attention_fem.cpp for
// the mechanism and its knobs. Exposed (not only through the registry) so that tests and study
// tools can reach the two value reads μ and F and the prior's map.
#pragma once
#include <cmath>
#include <limits>

#include "attention.h"

namespace lotgrad::nn {

// The prior p_t(·) over positions: softmax(q kᵀ/√d) (the fused kernel, O(n·d) memory) or
// normalised linear attention with φ = elu + 1 (O(n·d²), causal through the chunked prefix op).
enum class FemPrior { softmax, linear };

// The two reads of values v under the prior, per channel c:
//   μ_t = Σ_i p_t(i) v̂_i,   F_t = (1/β_c) log Σ_i p_t(i) exp(β_c v̂_i,c),   v̂ = clip(v, ±cap/β).
struct FreeEnergyReads {
  Tensor mu, F;  // (B, H, n, d)
};

// q, k (B, H, n, dk), v (B, H, n, d), beta (H, d) > 0, key_padding_mask bool (B, n) (true =
// padded) or undefined. F is evaluated stably with one run of the prior on [v̂, exp(βv̂ − M)]
// (M: the detached max of βv̂ over the valid positions, per (b, h, c)):
//   F = (logaddexp(log Z̃, log tiny − M) + M)/β,  Z̃ = Σ_i p_t(i) exp(βv̂_i − M).
// cap = +inf: no clipping (then |βv| must stay below ~350 in f64, ~43 in f32, for every
// exp(βv̂ − M) to stay a normal float; see attention_fem.cpp). chunk: the linear prior's causal chunk length. Padded keys get zero
// weight; a row with no key to see (every key padded) reads μ = 0 and F = log(tiny)/β
// (finite). Differentiable with respect to q, k, v and beta. fused: the value and read passes
// of ops/free_energy.h; false: the composite of elementwise ops (their reference).
FreeEnergyReads free_energy_reads(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                                  const Tensor& key_padding_mask, FemPrior prior, bool is_causal, double cap = 40.0,
                                  int64_t chunk = 64, bool fused = true);

// The prior's map p (B, H, n, n) with μ = p v̂ (rows with no key to see are zeros). For study
// and tests at small n: it keeps the n×n map.
Tensor fem_prior_map(const Tensor& q, const Tensor& k, const Tensor& key_padding_mask, FemPrior prior, bool is_causal);

// The mechanism (block-input): q, k, v = x W_{q,k,v} per head (d = d_head each), λ = σ(x W_λ),
// g = L2-normalise(softplus(x W_g) + ε)·√d per head, out = g ∘ ((1 − λ)∘μ + λ∘F).
class FreeEnergyMixer : public AttentionMechanism {
 public:
  FreeEnergyMixer(const AttentionOptions& opt, Generator& gen, FemPrior prior);
  std::string type_name() const override;
  // x (B, n, D) -> (B, H, n, d)
  Tensor forward_block(const Tensor& x, const Tensor& key_padding_mask) override;
  // The prior's map p (B, H, n, n): μ = p v̂ for the mechanism's clipped values v̂.
  Tensor attention_matrix_block(const Tensor& x, const Tensor& key_padding_mask) override;
  // β = softplus(beta_raw) + ε, (H, d)
  Tensor beta() const;
  // The reads of x (for tests and study): q, k, v from qkv, then free_energy_reads.
  FreeEnergyReads reads(const Tensor& x, const Tensor& key_padding_mask) const;

  std::shared_ptr<Linear> qkv, lambda_proj, gate_proj;
  Tensor beta_raw;  // (H, d)

 private:
  void heads(const Tensor& x, Tensor& q, Tensor& k, Tensor& v) const;
  int64_t H_, d_;
  FemPrior prior_;
  bool causal_;
  double cap_;
  int64_t chunk_;
  bool fused_;
};

}  // namespace lotgrad::nn
