// Performer, FAVOR+ (Choromanski et al. 2021): positive orthogonal random features
//   phi(x) = m^{-1/2} (exp(W x̃ - |x̃|²/2 - stab) + 1e-4),  x̃ = x d^{-1/4},
// then linear attention with phi(q), phi(k). W (m, d) stacks Q factors of Gaussian d×d
// matrices with rows rescaled by chi_d norms. The stabiliser (per query row; for keys one
// max over valid keys and features) is detached: it cancels between numerator and
// denominator. Knobs: "features" (m, default 128), "redraw" (redraw W every N training
// calls; 0 = never), "seed".
#include <cmath>

#include "../core/autograd.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "attention_mechanisms.h"

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
    for (auto& [k, v] : opt.knobs)
      if (k != "features" && k != "redraw" && k != "seed")
        throw std::invalid_argument("performer attention: unknown option \"" + k + "\" (known: features, redraw, seed)");
    m_ = (int64_t)opt.get("features", 128);
    d_ = opt.d_head;
    redraw_ = (int64_t)opt.get("redraw", 0);
    if (m_ <= 0) throw std::invalid_argument("performer attention: features must be positive");
    gen_ = Generator(opt.knobs.count("seed") ? (uint64_t)opt.get("seed", 0) : (uint64_t)gen.randint(0, INT64_MAX));
    features = orthogonal_features(m_, d_, gen_);
    register_buffer("features", &features);
  }
  std::string type_name() const override { return "PerformerAttention(m=" + std::to_string(m_) + ")"; }

  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    maybe_redraw();
    Tensor pq = feature_map(q, Tensor(), true);
    Tensor pk = feature_map(k, mask, false);
    Tensor kv = matmul(pk.transpose(-2, -1), v);                 // (B, H, m, dv)
    Tensor z = sum(pk, {-2}, true);                               // (B, H, 1, m)
    Tensor den = add(sum(mul(pq, z), {-1}, true), 1e-6);          // (B, H, n, 1)
    return div(matmul(pq, kv), den);
  }
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    Tensor pq = feature_map(q, Tensor(), true);
    Tensor pk = feature_map(k, mask, false);
    Tensor s = matmul(pq, pk.transpose(-2, -1));  // (B, H, n, n)
    return div(s, add(sum(s, {-1}, true), 1e-6));
  }
  Tensor features;  // buffer (m, d)

 private:
  // x (B, H, n, d) -> phi(x) (B, H, n, m); padded key rows zeroed after the map.
  Tensor feature_map(const Tensor& x, const Tensor& mask, bool is_query) {
    const double scale = std::pow((double)x.size(-1), -0.25);
    Tensor w = features.to(x.dtype());
    Tensor xs = mul(x, scale);
    Tensor proj = matmul(xs, w.t());                        // (B, H, n, m)
    Tensor sq = mul(sum(mul(xs, xs), {-1}, true), 0.5);     // (B, H, n, 1)
    Tensor stab;
    {
      NoGradGuard ng;  // detached stabiliser
      if (is_query) {
        stab = max(proj, -1, true).values;
      } else {
        Tensor p = proj;
        if (mask.defined()) p = masked_fill(proj, mask.unsqueeze(1).unsqueeze(-1), -INFINITY);
        stab = max(max(p, -1, true).values, -2, true).values;  // (B, H, 1, 1)
        stab = masked_fill(stab, eq(stab, -INFINITY), 0.0);  // every key padded: max is -inf
      }
    }
    Tensor phi = mul(add(exp(sub(sub(proj, sq), stab)), 1e-4), 1.0 / std::sqrt((double)m_));
    if (!is_query && mask.defined()) phi = mul(phi, logical_not(mask).to(phi.dtype()).unsqueeze(1).unsqueeze(-1));
    return phi;
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

std::shared_ptr<AttentionMechanism> make_performer_attention(const AttentionOptions& opt, Generator& gen) {
  return std::make_shared<PerformerAttention>(opt, gen);
}

}  // namespace lotgrad::nn
