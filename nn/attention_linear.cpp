// Linear attention (Katharopoulos et al. 2020): phi(x) = elu(x) + 1,
//   out_i = phi(q_i)ᵀ (Σ_j phi(k_j) v_jᵀ) / (phi(q_i)ᵀ Σ_j phi(k_j) + 1e-6),
// computed right to left in O(n d²) time and O(d²) extra memory per head. Padded keys are
// removed by zeroing phi(k) after the feature map (phi(0) = 1 would otherwise leak).
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {
// phi(k) with padded rows zeroed: (B, H, n, d)
Tensor masked_features(const Tensor& phi_k, const Tensor& mask) {
  if (!mask.defined()) return phi_k;
  return mul(phi_k, logical_not(mask).to(phi_k.dtype()).unsqueeze(1).unsqueeze(-1));
}

class LinearAttention : public AttentionMechanism {
 public:
  explicit LinearAttention(const AttentionOptions&) {}
  std::string type_name() const override { return "LinearAttention"; }
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    Tensor pq = add(elu(q), 1.0);                      // (B, H, n, d)
    Tensor pk = masked_features(add(elu(k), 1.0), mask);  // (B, H, n, d)
    Tensor kv = matmul(pk.transpose(-2, -1), v);        // (B, H, d, dv)
    Tensor z = sum(pk, {-2}, /*keepdim=*/true);         // (B, H, 1, d)
    Tensor num = matmul(pq, kv);                        // (B, H, n, dv)
    Tensor den = add(sum(mul(pq, z), {-1}, true), 1e-6);  // (B, H, n, 1)
    return div(num, den);
  }
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    Tensor pq = add(elu(q), 1.0);
    Tensor pk = masked_features(add(elu(k), 1.0), mask);
    Tensor s = matmul(pq, pk.transpose(-2, -1));  // (B, H, n, n)
    return div(s, add(sum(s, {-1}, true), 1e-6));
  }
};
}  // namespace

MechanismSpec linear_mechanism() {
  MechanismSpec s;
  s.name = "linear";
  s.summary = "linear attention, phi(x) = elu(x) + 1 (Katharopoulos et al. 2020); O(n·d²)";
  s.presets["tiny"] = {};
  s.caps = {.causal = false, .why_not_causal = "the causal (prefix-state) form is not built yet", .linear_time = true};
  s.make = [](const AttentionOptions& o, Generator&) { return std::make_shared<LinearAttention>(o); };
  return s;
}

}  // namespace lotgrad::nn
