// DeltaNet: see nn/attention_deltanet.cpp for the layer and its knobs. Exposed as a class (not
// only through the registry) so that tests and study tools can reach the per-head queries,
// keys, values and β the recurrence sees.
#pragma once
#include "attention.h"
#include "layers.h"

namespace lotgrad::nn {

class DeltaNetAttention : public AttentionMechanism {
 public:
  DeltaNetAttention(const AttentionOptions& opt, Generator& gen);
  std::string type_name() const override;
  // x (B, n, D) -> (B, H, n, d): the recurrence on the valid tokens (both directions when
  // not causal), then the per-head RMSNorm.
  Tensor forward_block(const Tensor& x, const Tensor& key_padding_mask) override;
  // A (B, H, n, n) with o = A v: o the read-out before the RMSNorm, v the values after the
  // short convolution and SiLU (the two directions summed when not causal). Small n only.
  Tensor attention_matrix_block(const Tensor& x, const Tensor& key_padding_mask) override;

  // What the recurrence sees for x (B, n, D), in its order: q/√d and k with unit-norm rows
  // (up to the ε), v (B, H, n, d), β (B, H, n).
  struct Features {
    Tensor q, k, v, beta;
  };
  Features features(const Tensor& x) const;
  // The causal computation on x whose valid tokens come first: (B, H, n, d).
  Tensor core(const Tensor& x) const;

  std::shared_ptr<Linear> proj;       // W_qkv (3D, D), rows laid out [q | k | v], each head-major
  std::shared_ptr<Linear> beta_proj;  // W_β (H, D)
  Tensor conv_weight;                 // (3D, conv_size), column 0 is lag 0
  Tensor o_norm_weight;               // (d), shared by the heads

 private:
  Tensor core_map(const Tensor& x) const;
  int64_t H_, d_, chunk_, conv_size_;
  bool neg_eigval_, causal_;
};

}  // namespace lotgrad::nn
