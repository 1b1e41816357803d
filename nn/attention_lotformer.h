// LOTFormer attention: see nn/attention_lotformer.cpp for the mechanism and its knobs.
// Exposed as a class (not only through the registry) so that tests and study tools can
// reach the plans Γ1, Γ2 and the masses b.
#pragma once
#include "../ops/sinkhorn.h"
#include "attention.h"

namespace lotgrad::nn {

class LOTFormerAttention : public AttentionMechanism {
 public:
  LOTFormerAttention(const AttentionOptions& opt, Generator& gen);
  std::string type_name() const override;
  // q, k, v (B, H, n, d) -> (B, H, n, d)
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_padding_mask) override;
  // The costs use q and k only through q·Zᵀ/√d and k·Zᵀ/√d: M = Z/√d (H, r, d), folded into
  // the projection by MultiHeadAttention when r < d.
  Tensor qk_map(DType dt) const override;
  Tensor forward_mapped(const Tensor& qm, const Tensor& km, const Tensor& v, const Tensor& key_padding_mask) override;
  // A = n · Γ1 diag(1/b) Γ2 (B, H, n, n), for study at small n.
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& key_padding_mask) override;
  // The two plans Γ1 (B, H, n, r), Γ2 (B, H, r, n) and the masses b (1, H, r).
  void plans(const Tensor& q, const Tensor& k, const Tensor& key_padding_mask, Tensor& G1, Tensor& G2, Tensor& b);
  Tensor log_masses(DType dt) const;  // (H, r)
  std::vector<double> weight_bound(int64_t n_valid) const override;  // 1/(n·min b) per head
  int64_t r() const { return r_; }

  Tensor pivots;       // (H, r, d)
  Tensor mass_logits;  // (H, r); a parameter when masses are learned, else a buffer

 private:
  Tensor scaled_pivots(DType dt) const;  // Z/√d (H, r, d)
  // C1 = −q·Zᵀ/√d (B, H, n, r), C2 = −Z·kᵀ/√d (B, H, r, n) from qm = q·Zᵀ/√d, km = k·Zᵀ/√d.
  void costs(const Tensor& qm, const Tensor& km, Tensor& C1, Tensor& C2) const;
  void token_weights(const Tensor& mask, int64_t B, int64_t n, DType dt, Tensor& log_a, Tensor& n_valid) const;
  SinkhornOptions solver_options() const;
  AttentionOptions opt_;
  int64_t r_, half_steps_;
  double eps_, tol_, mass_temp_, clamp_;
  int last_;
  bool implicit_, learn_masses_, fused_, compat_;
};

}  // namespace lotgrad::nn
