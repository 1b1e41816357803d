// Nyströmformer (Xiong et al. 2021): with landmark queries Q̃ and keys K̃ (means of m
// contiguous segments of the valid tokens),
//   F = softmax(Q K̃ᵀ)  (n, m),  A = softmax(Q̃ K̃ᵀ)  (m, m),  Bm = softmax(Q̃ Kᵀ + mask)  (m, n),
//   out = F · Z · (Bm · V),  Z ≈ A⁺ by the iteration Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ))).
// Q and K are scaled by d^{-1/4} each. Segments average valid tokens only, so pad content
// never reaches a landmark. Knobs: "landmarks" (m, default 64), "pinv_iters" (default 6).
#include <cmath>

#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "../ops/softmax.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {
// (B, 1, m, n) segment-mean matrix over the valid tokens of each batch row.
Tensor segment_means(int64_t B, int64_t n, int64_t m, const Tensor& mask, DType dt) {
  std::vector<double> s((size_t)(B * m * n), 0.0);
  const auto pos = valid_positions(mask, B, n);
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int64_t>& valid = pos[b];
    const int64_t L = (int64_t)valid.size();
    for (int64_t seg = 0; seg < m; ++seg) {
      const int64_t lo = L * seg / m, hi = L * (seg + 1) / m;
      for (int64_t t = lo; t < hi; ++t) s[(b * m + seg) * n + valid[t]] = 1.0 / (double)(hi - lo);
    }
  }
  return Tensor::from_vector(s, {B, 1, m, n}).to(dt);
}

class NystromAttention : public AttentionMechanism {
 public:
  explicit NystromAttention(const AttentionOptions& opt)
      : m_((int64_t)opt.get("landmarks")), iters_((int64_t)opt.get("pinv_iters")) {}
  std::string type_name() const override { return "NystromAttention(m=" + std::to_string(m_) + ")"; }

  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    Tensor F, Z, Bm;
    factors(q, k, mask, F, Z, Bm);
    return matmul(F, matmul(Z, matmul(Bm, v)));  // right to left: O(n m d)
  }
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    Tensor F, Z, Bm;
    factors(q, k, mask, F, Z, Bm);
    return matmul(matmul(F, Z), Bm);
  }

 private:
  void factors(const Tensor& q, const Tensor& k, const Tensor& mask, Tensor& F, Tensor& Z, Tensor& Bm) const {
    const int64_t B = q.size(0), n = q.size(2), m = std::min(m_, n);
    const double scale = std::pow((double)q.size(-1), -0.25);
    Tensor qs = mul(q, scale), ks = mul(k, scale);
    Tensor S = segment_means(B, n, m, mask, q.dtype());  // (B, 1, m, n)
    Tensor ql = matmul(S, qs), kl = matmul(S, ks);       // (B, H, m, d)
    F = softmax(matmul(qs, kl.transpose(-2, -1)), -1);   // (B, H, n, m)
    Tensor A = softmax(matmul(ql, kl.transpose(-2, -1)), -1);  // (B, H, m, m)
    Tensor sb = matmul(ql, ks.transpose(-2, -1));        // (B, H, m, n)
    if (mask.defined()) sb = masked_fill(sb, mask.unsqueeze(1).unsqueeze(1), -INFINITY);
    Bm = softmax(sb, -1);
    Bm = masked_fill(Bm, ne(Bm, Bm), 0.0);  // a batch row with no valid key: zeros, not NaN
    Z = pinv(A);
  }
  // Iterative Moore-Penrose inverse of row-stochastic A (B, H, m, m); per-(b, h) init scale.
  Tensor pinv(const Tensor& A) const {
    const int64_t m = A.size(-1);
    Tensor I = Tensor::zeros({m, m}, A.dtype());
    for (int64_t i = 0; i < m; ++i) I.select(0, i).select(0, i).fill_(1.0);
    Tensor colsum = sum(abs(A), {-2}, true);                           // (B, H, 1, m)
    Tensor scale = max(colsum, -1, true).values;                        // (B, H, 1, 1); rows sum to 1
    Tensor Z = div(A.transpose(-2, -1), scale);
    for (int64_t it = 0; it < iters_; ++it) {
      Tensor AZ = matmul(A, Z);
      Tensor t = sub(mul(I, 7.0), AZ);
      t = sub(mul(I, 15.0), matmul(AZ, t));
      t = sub(mul(I, 13.0), matmul(AZ, t));
      Z = mul(matmul(Z, t), 0.25);
    }
    return Z;
  }
  int64_t m_, iters_;
};
}  // namespace

MechanismSpec nystromformer_mechanism() {
  MechanismSpec s;
  s.name = "nystromformer";
  s.summary = "Nyström approximation of softmax with m segment-mean landmarks (Xiong et al. 2021); O(n·m)";
  s.knobs = {{.name = "landmarks", .type = KnobType::integer, .def = 64, .lo = 1, .hi = 65536,
              .help = "landmarks m (segment means of the valid tokens)"},
             {.name = "pinv_iters", .type = KnobType::integer, .def = 6, .lo = 0, .hi = 100,
              .help = "iterations of the Moore-Penrose pseudo-inverse approximation"}};
  s.presets["*"] = {{"landmarks", 128}};  // the Skyformer / LOTFormer LRA harness
  s.presets["tiny"] = {{"landmarks", 3}};
  s.caps = {.causal = false, .why_not_causal = "landmarks average over the whole sequence, future tokens included",
            .linear_time = true};
  s.make = [](const AttentionOptions& o, Generator&) { return std::make_shared<NystromAttention>(o); };
  return s;
}

}  // namespace lotgrad::nn
