// Performer, FAVOR+ (Choromanski et al. 2021): positive orthogonal random features
//   phi(x) = m^{-1/2} exp(W x̃ - |x̃|²/2),  x̃ = x d^{-1/4},
// then linear attention with phi(q), phi(k). W (m, d) stacks Q factors of Gaussian d×d
// matrices with rows rescaled by chi_d norms. Knobs ("features" m, "redraw", "feature_seed"):
// see performer_mechanism() below.
//
// Stabilisation (see feature_map): detached constants chosen so that they cancel EXACTLY
// between numerator and denominator, and so that every denominator is >= 1 whenever a batch
// row has a valid key. Hence no epsilon anywhere: an epsilon added inside phi (the old +1e-4)
// does not cancel against the stabilisers (the output then depends on them, and their
// gradient is dropped), and one added to the denominator (the old +1e-6) was as large as the
// stabilised sums, so rows summed to 0.4-0.7 (down to 0.05 for larger q, k) instead of 1.
// Only a batch row whose keys are all padded has a zero denominator; it is replaced by 1 (its
// outputs are then 0, finite).
#include <cmath>

#include "../core/autograd.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {
// (m, d) orthogonal random features, drawn in double then stored as f32.
Tensor orthogonal_features(int64_t m, int64_t d, Generator& gen) {
  std::vector<double> w((size_t)(m * d));
  for (int64_t row0 = 0; row0 < m; row0 += d) {
    // Gram-Schmidt on a Gaussian d×d block; rows are orthonormal.
    std::vector<double> blk((size_t)(d * d));
    for (auto& x : blk) x = gen.normal();
    for (int64_t i = 0; i < d; ++i) {
      double* ri = &blk[i * d];
      for (int64_t j = 0; j < i; ++j) {
        const double* rj = &blk[j * d];
        double dot = 0;
        for (int64_t t = 0; t < d; ++t) dot += ri[t] * rj[t];
        for (int64_t t = 0; t < d; ++t) ri[t] -= dot * rj[t];
      }
      double nrm = 0;
      for (int64_t t = 0; t < d; ++t) nrm += ri[t] * ri[t];
      nrm = std::sqrt(nrm);
      for (int64_t t = 0; t < d; ++t) ri[t] /= nrm;
    }
    for (int64_t i = 0; i < d && row0 + i < m; ++i) {
      double chi = 0;  // norm of a fresh Gaussian d-vector: keeps E[w wᵀ] = I
      for (int64_t t = 0; t < d; ++t) {
        const double g = gen.normal();
        chi += g * g;
      }
      chi = std::sqrt(chi);
      for (int64_t t = 0; t < d; ++t) w[(row0 + i) * d + t] = blk[i * d + t] * chi;
    }
  }
  return Tensor::from_vector(w, {m, d}).to(kFloat32);
}

class PerformerAttention : public AttentionMechanism {
 public:
  PerformerAttention(const AttentionOptions& opt, Generator& gen) {
    m_ = (int64_t)opt.get("features");
    d_ = opt.d_head;
    redraw_ = (int64_t)opt.get("redraw");
    gen_ = Generator(opt.has("feature_seed") ? (uint64_t)opt.get("feature_seed") : (uint64_t)gen.randint(0, INT64_MAX));
    features = orthogonal_features(m_, d_, gen_);
    register_buffer("features", &features);
  }
  std::string type_name() const override { return "PerformerAttention(m=" + std::to_string(m_) + ")"; }

  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    maybe_redraw();
    Tensor pq, pk;
    feature_map(q, k, mask, pq, pk);
    Tensor kv = matmul(pk.transpose(-2, -1), v);                 // (B, H, m, dv)
    Tensor z = sum(pk, {-2}, true);                               // (B, H, 1, m)
    Tensor den = sum(mul(pq, z), {-1}, true);                     // (B, H, n, 1), >= 1 or 0
    Tensor none;  // rows whose keys are all padded: den = 0 = numerator; divide by 1 instead
    {
      NoGradGuard ng;
      none = eq(den, 0.0);
    }
    return div(matmul(pq, kv), masked_fill(den, none, 1.0));
  }
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    Tensor pq, pk;
    feature_map(q, k, mask, pq, pk);
    Tensor s = matmul(pq, pk.transpose(-2, -1));  // (B, H, n, n)
    Tensor den = sum(s, {-1}, true);               // >= 1, or 0 where every key is padded
    Tensor none;
    {
      NoGradGuard ng;
      none = eq(den, 0.0);
    }
    return div(s, masked_fill(den, none, 1.0));
  }
  Tensor features;  // buffer (m, d)

 private:
  // q, k (B, H, n, d) -> pq, pk (B, H, n, m), the FAVOR+ features up to detached factors that
  // cancel in every ratio pq·Σ_j pk_j v_j / pq·Σ_j pk_j. With log-features lq, lk (W x̃ - |x̃|²/2):
  //   pk[j, f] = exp(lk[j, f] - t[f]),           t[f] = max over valid keys j of lk[j, f]
  //   pq[i, f] = exp(lq[i, f] + t[f] - s[i]),    s[i] = max over f of lq[i, f] + t[f]
  // so pq[i, f] pk[j, f] = exp(lq[i, f] + lk[j, f] - s[i]): t cancels inside every product and
  // s[i] (like m^{-1/2}, dropped) is one factor per query row, common to numerator and
  // denominator. The output is thus exactly independent of t and s, so treating them as
  // constants gives the exact gradient. Nothing overflows (every exponent is <= 0) and nothing
  // underflows to a zero denominator: the argmax feature f* of row i has pq[i, f*] = 1 and
  // Σ_j pk[j, f*] >= 1, so the denominator is >= 1. Padded keys' log-features are set to -inf
  // before exp: exactly zero weight, and their content (however large) cannot reach a valid
  // output. A row with every key padded gets t = 0 and pk = 0 (denominator 0: the callers divide
  // by 1 there instead).
  void feature_map(const Tensor& q, const Tensor& k, const Tensor& mask, Tensor& pq, Tensor& pk) {
    const double scale = std::pow((double)q.size(-1), -0.25);
    Tensor w = features.to(q.dtype()).t();
    auto log_features = [&](const Tensor& x) {
      Tensor xs = mul(x, scale);
      return sub(matmul(xs, w), mul(sum(mul(xs, xs), {-1}, true), 0.5));  // (B, H, n, m)
    };
    Tensor lq = log_features(q), lk = log_features(k);
    if (mask.defined()) lk = masked_fill(lk, mask.unsqueeze(1).unsqueeze(-1), -INFINITY);
    Tensor t;
    {
      NoGradGuard ng;  // detached stabiliser
      t = max(lk, -2, true).values;                   // (B, H, 1, m)
      t = masked_fill(t, eq(t, -INFINITY), 0.0);      // every key padded: max is -inf
    }
    pk = exp(sub(lk, t));
    Tensor a = add(lq, t);
    Tensor s;
    {
      NoGradGuard ng;  // detached stabiliser
      s = max(a, -1, true).values;  // (B, H, n, 1)
    }
    pq = exp(sub(a, s));
  }
  void maybe_redraw() {
    if (!is_training() || redraw_ <= 0) return;
    if (calls_ > 0 && calls_ % redraw_ == 0) features = orthogonal_features(m_, d_, gen_);
    ++calls_;
  }
  int64_t m_, d_, redraw_ = 0, calls_ = 0;
  Generator gen_;
};
}  // namespace

MechanismSpec performer_mechanism() {
  MechanismSpec s;
  s.name = "performer";
  s.summary = "FAVOR+ positive orthogonal random features (Choromanski et al. 2021); O(n·m·d)";
  s.knobs = {{.name = "features", .type = KnobType::integer, .def = 128, .lo = 1, .hi = 65536, .help = "random features m"},
             {.name = "redraw", .type = KnobType::integer, .def = 0, .lo = 0, .hi = 1e9,
              .help = "draw new features every N training calls (0: never)"},
             {.name = "feature_seed", .type = KnobType::integer, .lo = 0, .hi = kMaxSeed,
              .help = "seed of the random features (absent: drawn from the model's generator)", .optional = true}};
  s.presets["tiny"] = {{"features", 16}};
  s.caps = {.causal = false, .why_not_causal = "the causal (prefix-state) form is not built yet", .linear_time = true};
  s.make = [](const AttentionOptions& o, Generator& g) { return std::make_shared<PerformerAttention>(o, g); };
  return s;
}

}  // namespace lotgrad::nn
