// LOTFormer attention (doubly stochastic, linear time). Per head, with learned pivots
// Z (r, d) and pivot masses b = softmax(w / mass_temp):
//   Γ1 = OT(queries -> pivots; cost −QZᵀ/√d; marginals (1/n, b))        (n, r)
//   Γ2 = OT(pivots -> keys;   cost −ZKᵀ/√d; marginals (b, 1/n))        (r, n)
//   Y  = n · Γ1 · diag(1/b) · (Γ2 · V)                                    (n, d)
// computed right to left through sinkhorn_apply, so no n×n (or stored n×r plan per
// iteration) ever exists: O(n·r·d + half_steps·n·r) time, O(n·r) memory.
//
// Padding is zero mass: padded tokens get log-weight −inf, n is the number of valid tokens,
// and padded queries give zero output (MultiHeadAttention zeroes them).
//
// Knobs (AttentionOptions::knobs):
//   r (4), eps (0.1), half_steps (50), grad (1 = implicit, 0 = unrolled), tol (0: run all
//   half-steps), last (−1: the reference parity — odd half-steps end on rows, even on
//   columns; 0 rows; 1 columns), learn_masses (1), mass_temp (1), init_std (0.02; −1 means
//   1/√d), clamp (50: similarities clamped to ±clamp as the reference does; 0 = off),
//   fused (1: plan products; 0: the composite that stores Γ1, Γ2 and multiplies with ops),
//   lra_code_compat (0; 1 reproduces the public LRA code: mask ignored, uniform masses and
//   the output scaled by 1/r²; for comparisons only).
#include <cmath>
#include <limits>

#include "../core/autograd.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "../ops/sinkhorn.h"
#include "../ops/softmax.h"
#include "attention_lotformer.h"
#include "init.h"

namespace lotgrad::nn {

// Built directly (tests, `lotgrad maps --example`) or by make_attention: the knobs are
// resolved against the declaration either way.
LOTFormerAttention::LOTFormerAttention(const AttentionOptions& opt_in, Generator& gen)
    : opt_(resolved([&] {
        AttentionOptions o = opt_in;
        o.name = "lotformer";
        return o;
      }())) {
  const AttentionOptions& opt = opt_;
  r_ = (int64_t)opt.get("r");
  eps_ = opt.get("eps");
  half_steps_ = (int64_t)opt.get("half_steps");
  implicit_ = opt.get("grad") != 0;
  tol_ = opt.get("tol");
  last_ = (int)opt.get("last");
  learn_masses_ = opt.get("learn_masses") != 0;
  mass_temp_ = opt.get("mass_temp");
  clamp_ = opt.get("clamp");
  fused_ = opt.get("fused") != 0;
  compat_ = opt.get("lra_code_compat") != 0;
  const int64_t H = opt.n_heads, d = opt.d_head;
  double std = opt.get("init_std");
  if (std < 0) std = 1.0 / std::sqrt((double)d);
  pivots = Tensor::zeros({H, r_, d});
  init::normal_(pivots, gen, 0.0, std);
  register_parameter("pivots", &pivots);
  mass_logits = Tensor::zeros({H, r_});  // uniform masses at start
  if (learn_masses_ && !compat_) register_parameter("mass_logits", &mass_logits);
  else register_buffer("mass_logits", &mass_logits);
}

std::string LOTFormerAttention::type_name() const {
  return "LOTFormerAttention(r=" + std::to_string(r_) + ", eps=" + std::to_string(eps_) +
         ", half_steps=" + std::to_string(half_steps_) + (implicit_ ? ", implicit" : ", unrolled") +
         (compat_ ? ", lra_code_compat" : "") + ")";
}

Tensor LOTFormerAttention::log_masses(DType dt) const {
  Tensor w = mass_logits.to(dt);  // zeros (uniform) in compat mode: a buffer never trained
  return log_softmax(mass_temp_ == 1.0 ? w : div(w, mass_temp_), -1);  // (H, r)
}

Tensor LOTFormerAttention::scaled_pivots(DType dt) const {
  return mul(pivots.to(dt), 1.0 / std::sqrt((double)pivots.size(-1)));  // (H, r, d)
}

Tensor LOTFormerAttention::qk_map(DType dt) const { return r_ < pivots.size(-1) ? scaled_pivots(dt) : Tensor(); }

void LOTFormerAttention::costs(const Tensor& qm, const Tensor& km, Tensor& C1, Tensor& C2) const {
  Tensor S1 = qm;                     // (B, H, n, r)
  Tensor S2 = km.transpose(-2, -1);   // (B, H, r, n)
  if (clamp_ > 0) {
    S1 = clamp(S1, -clamp_, clamp_);
    S2 = clamp(S2, -clamp_, clamp_);
  }
  C1 = neg(S1);
  C2 = neg(S2);
}

// Zero-mass token weights; the compatibility mode ignores the mask, as the public code does.
void LOTFormerAttention::token_weights(const Tensor& mask, int64_t B, int64_t n, DType dt, Tensor& log_a,
                                       Tensor& n_valid) const {
  token_log_weights(compat_ ? Tensor() : mask, B, n, dt, log_a, n_valid);
}

SinkhornOptions LOTFormerAttention::solver_options() const {
  SinkhornOptions o;
  o.max_half_steps = half_steps_;
  o.last = last_ < 0 ? (half_steps_ % 2 ? SinkhornSide::rows : SinkhornSide::cols)
                     : (last_ == 0 ? SinkhornSide::rows : SinkhornSide::cols);
  o.tol = tol_;
  o.grad = implicit_ ? SinkhornGrad::implicit : SinkhornGrad::unrolled;
  o.return_plan = !fused_;
  return o;
}

Tensor LOTFormerAttention::forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) {
  const Tensor Mt = scaled_pivots(q.dtype()).transpose(-2, -1);  // (H, d, r)
  return forward_mapped(matmul(q, Mt), matmul(k, Mt), v, mask);
}

Tensor LOTFormerAttention::forward_mapped(const Tensor& qm, const Tensor& km, const Tensor& v, const Tensor& mask) {
  const int64_t B = qm.size(0), n = qm.size(2);
  Tensor C1, C2, log_a, n_valid;
  costs(qm, km, C1, C2);
  token_weights(mask, B, n, qm.dtype(), log_a, n_valid);
  Tensor log_b = log_masses(qm.dtype()).unsqueeze(0);  // (1, H, r)
  Tensor inv_b = exp(neg(log_b)).unsqueeze(-1);        // (1, H, r, 1)
  SinkhornOptions so = solver_options();
  Tensor y;
  // The scale n / b_j (and the compat mode's 1/r²) goes on the small (r, d) middle factor.
  Tensor scale = mul(inv_b, n_valid);  // (B, H, r, 1)
  if (compat_) scale = mul(scale, 1.0 / (double)(r_ * r_));
  if (fused_) {
    // Γ2 V (B, H, r, d), then Γ1 (n diag(1/b) Γ2 V) (B, H, n, d): plans never stored.
    Tensor kv = sinkhorn_apply(C2, log_b, log_a, eps_, v, Tensor(), so).PW;
    y = sinkhorn_apply(C1, log_a, log_b, eps_, mul(kv, scale), Tensor(), so).PW;
  } else {
    Tensor G1 = sinkhorn(C1, log_a, log_b, eps_, so).plan;  // (B, H, n, r)
    Tensor G2 = sinkhorn(C2, log_b, log_a, eps_, so).plan;  // (B, H, r, n)
    y = matmul(G1, mul(matmul(G2, v), scale));
  }
  return y;
}

void LOTFormerAttention::plans(const Tensor& q, const Tensor& k, const Tensor& mask, Tensor& G1, Tensor& G2,
                               Tensor& b) {
  const int64_t B = q.size(0), n = q.size(2);
  Tensor C1, C2, log_a, n_valid;
  const Tensor Mt = scaled_pivots(q.dtype()).transpose(-2, -1);  // (H, d, r)
  costs(matmul(q, Mt), matmul(k, Mt), C1, C2);
  token_weights(mask, B, n, q.dtype(), log_a, n_valid);
  Tensor log_b = log_masses(q.dtype()).unsqueeze(0);
  SinkhornOptions so = solver_options();
  so.return_plan = true;
  G1 = sinkhorn(C1, log_a, log_b, eps_, so).plan;
  G2 = sinkhorn(C2, log_b, log_a, eps_, so).plan;
  b = exp(log_b);
}

Tensor LOTFormerAttention::attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) {
  const int64_t B = q.size(0), n = q.size(2);
  Tensor G1, G2, b, log_a, n_valid;
  plans(q, k, mask, G1, G2, b);
  token_weights(mask, B, n, q.dtype(), log_a, n_valid);
  // A = n · Γ1 diag(1/b) Γ2  (B, H, n, n): for study only.
  Tensor A = mul(matmul(div(G1, b.unsqueeze(-2)), G2), n_valid);
  if (compat_) A = mul(A, 1.0 / (double)(r_ * r_));
  return A;
}

std::vector<double> LOTFormerAttention::weight_bound(int64_t n_valid) const {
  NoGradGuard ng;
  const std::vector<double> lb = log_masses(kFloat64).to_vector();  // (H, r)
  std::vector<double> out((size_t)opt_.n_heads);
  for (int64_t h = 0; h < opt_.n_heads; ++h) {
    double mn = 1.0;
    for (int64_t j = 0; j < r_; ++j) mn = std::min(mn, std::exp(lb[(size_t)(h * r_ + j)]));
    out[(size_t)h] = 1.0 / ((double)n_valid * mn);
  }
  return out;
}

MechanismSpec lotformer_mechanism() {
  MechanismSpec s;
  s.name = "lotformer";
  s.summary = "LOTFormer: doubly stochastic, linear time, two entropic OT plans through r learned pivots";
  const double inf = std::numeric_limits<double>::infinity();
  s.knobs = {
      {.name = "r", .type = KnobType::integer, .def = 4, .lo = 1, .hi = 4096, .help = "pivots per head"},
      {.name = "eps", .type = KnobType::real, .def = 0.1, .lo = 1e-6, .hi = 1e6, .help = "entropic regularisation"},
      {.name = "half_steps", .type = KnobType::integer, .def = 50, .lo = 1, .hi = 100000, .help = "Sinkhorn half-steps"},
      {.name = "grad", .type = KnobType::choice, .def = 1, .help = "gradients through the Sinkhorn iterations",
       .choices = {"unrolled", "implicit"}},
      {.name = "tol", .type = KnobType::real, .def = 0, .lo = 0, .hi = 1,
       .help = "stop early when the marginal error is below tol (0: run every half-step)"},
      {.name = "last", .type = KnobType::integer, .def = -1, .lo = -1, .hi = 1,
       .help = "the side the iterations end on: -1 by parity (odd half-steps: rows), 0 rows, 1 columns"},
      {.name = "learn_masses", .type = KnobType::flag, .def = 1, .help = "learn the pivot masses b (else uniform)"},
      {.name = "mass_temp", .type = KnobType::real, .def = 1, .lo = 1e-6, .hi = 1e6,
       .help = "temperature of the masses: b = softmax(w / mass_temp)"},
      {.name = "init_std", .type = KnobType::real, .def = 0.02, .lo = -1, .hi = 100,
       .help = "pivots start N(0, init_std²); negative: 1/√d"},
      {.name = "clamp", .type = KnobType::real, .def = 50, .lo = 0, .hi = inf,
       .help = "similarities clamped to ±clamp as the reference code does (0: off)"},
      {.name = "fused", .type = KnobType::flag, .def = 1,
       .help = "1: plan products without storing the plans; 0: the composite that stores Γ1, Γ2"},
      {.name = "lra_code_compat", .type = KnobType::flag, .def = 0,
       .help = "1: the public LRA code's variant (mask ignored, uniform masses, output / r²); comparisons only"}};
  // The public reference code's per-task settings (docs/lotformer.md).
  s.presets = {{"listops", {{"r", 4}, {"eps", 0.1}, {"half_steps", 50}}},
               {"text", {{"r", 32}, {"eps", 0.1}, {"half_steps", 50}}},
               {"retrieval", {{"r", 64}, {"eps", 0.1}, {"half_steps", 50}}},
               {"pathfinder", {{"r", 64}, {"eps", 0.1}, {"half_steps", 50}}},
               {"image", {{"r", 8}, {"eps", 25}, {"half_steps", 5}}},
               {"tiny", {{"r", 3}, {"eps", 0.5}, {"half_steps", 9}, {"grad", 0}}}};
  s.no_decay = {"pivots", "mass_logits"};
  s.caps = {.causal = false,
            .why_not_causal = "a lower-triangular doubly-stochastic matrix is the identity",
            .doubly_stochastic = true,
            .linear_time = true};
  s.make = [](const AttentionOptions& o, Generator& g) { return std::make_shared<LOTFormerAttention>(o, g); };
  return s;
}

}  // namespace lotgrad::nn
