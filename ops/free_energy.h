// The two fused elementwise halves of the Free Energy Mixer's reads (Lu & Yang, arXiv
// 2602.07160; the mechanism is nn/attention_fem.cpp). Between them runs any prior p_t(·) over
// positions (softmax or linear attention) on the values w these build:
//   free_energy_values:  v (B, H, n, d) -> w = [v̂, exp(βv̂ − M)] (B, H, n, 2d), v̂ = clip(v, ±cap/β),
//                        M (B, H, 1, d) the max of βv̂ over the valid positions (a constant);
//   free_energy_read:    y = Σ_i p_t(i) w_i (B, H, n, 2d) -> μ = y[:d], and per channel c
//                        F = (logaddexp(log Z̃, log tiny − M) + M)/β, Z̃ = y[d:] (F = (log tiny)/β
//                        where Z̃ = 0: a row with no key to see).
// Each is one pass over its tensors, forward and backward, where the composite of
// elementwise ops it replaces (free_energy_reads with fused = false) makes about ten; each is
// tested against that composite. With a linear prior the normaliser rides along as one more
// column: `ones_column` appends a column of ones to w, and `normaliser_column` divides y by
// its last column, clamped below at kFreeEnergyMinDenominator (so Σ_i p_t(i) = 1 exactly, which F needs).
#pragma once
#include "../core/tensor.h"

namespace lotgrad {

// The floor of a read's normaliser (the linear prior's Σ_i p_t(i), the softmax rows' sum in
// the composite reference): below it a row has no key to see.
inline constexpr double kFreeEnergyMinDenominator = 1e-30;

struct FreeEnergyValues {
  Tensor w;  // (B, H, n, 2d [+ 1])
  Tensor M;  // (B, H, 1, d), no gradient; 0 where every position is padded
};

// v (B, H, n, d), beta (H, d) > 0, cap > 0 (+inf: no clipping), key_padding_mask bool (B, n)
// (true = padded; excluded from M only) or undefined. Gradients to v and beta.
FreeEnergyValues free_energy_values(const Tensor& v, const Tensor& beta, double cap, const Tensor& key_padding_mask,
                                    bool ones_column);

struct FreeEnergyOut {
  Tensor mu, F;  // (B, H, n, d) each
};

// y (B, H, n, 2d [+ 1]), M (B, H, 1, d) as free_energy_values made it (a constant), beta (H, d).
// Gradients to y and beta.
FreeEnergyOut free_energy_read(const Tensor& y, const Tensor& M, const Tensor& beta, bool normaliser_column);

}  // namespace lotgrad
