// Linear attention (Katharopoulos et al. 2020): phi(x) = elu(x) + 1,
//   out_i = phi(q_i)ᵀ (Σ_j phi(k_j) v_jᵀ) / (phi(q_i)ᵀ Σ_j phi(k_j) + 1e-6),
// computed right to left in O(n d²) time and O(d²) extra memory per head. Padded keys are
// removed by zeroing phi(k) after the feature map (phi(0) = 1 would otherwise leak).
// Causal (AttentionOptions::causal): the sums run over j <= i, computed by the chunked prefix
// op causal_linear_prefix (ops/causal_linear.h) with a running (d, d) state, knob "chunk".
// Knobs "feature_map" identity and "normalize" 0 give the plain linear attention of the
// in-context-learning theory, out_i = Σ_j (q_i·k_j) v_j (Li, Rawat & Oymak, arXiv 2407.10005:
// one such layer implements one step of preconditioned gradient descent).
#include "../ops/causal_linear.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "../ops/shape.h"
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
  explicit LinearAttention(const AttentionOptions& o)
      : causal_(o.causal), chunk_((int64_t)o.get("chunk")), identity_(o.get("feature_map") == 1), normalize_(o.get("normalize") != 0) {}
  std::string type_name() const override {
    return std::string("LinearAttention(") + (identity_ ? "identity" : "elu+1") + (normalize_ ? "" : ", unnormalised") +
           (causal_ ? ", causal" : "") + ")";
  }
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    Tensor pq = phi(q);                        // (B, H, n, d)
    Tensor pk = masked_features(phi(k), mask);  // (B, H, n, d)
    if (!normalize_) return causal_ ? causal_linear_prefix(pq, pk, v, chunk_) : matmul(pq, matmul(pk.transpose(-2, -1), v));
    if (causal_) return causal_forward(pq, pk, v);
    Tensor kv = matmul(pk.transpose(-2, -1), v);        // (B, H, d, dv)
    Tensor z = sum(pk, {-2}, /*keepdim=*/true);         // (B, H, 1, d)
    Tensor num = matmul(pq, kv);                        // (B, H, n, dv)
    Tensor den = add(sum(mul(pq, z), {-1}, true), 1e-6);  // (B, H, n, 1)
    return div(num, den);
  }
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    Tensor s = matmul(phi(q), masked_features(phi(k), mask).transpose(-2, -1));  // (B, H, n, n)
    if (causal_) s = mul(s, causal_mask(s.size(-1), s.dtype()));
    return normalize_ ? div(s, add(sum(s, {-1}, true), 1e-6)) : s;
  }

 private:
  // The prefix product of [v | 1]: its last column is the normaliser Σ_{j<=i} phi(q_i)·phi(k_j).
  Tensor causal_forward(const Tensor& pq, const Tensor& pk, const Tensor& v) const {
    const int64_t e = v.size(-1);
    Shape ones_shape = v.shape();
    ones_shape.back() = 1;
    const Tensor Y = causal_linear_prefix(pq, pk, cat({v, Tensor::ones(ones_shape, v.dtype())}, -1), chunk_);  // (B, H, n, e + 1)
    return div(Y.narrow(-1, 0, e), add(Y.narrow(-1, e, 1), 1e-6));
  }
  Tensor phi(const Tensor& x) const { return identity_ ? x : add(elu(x), 1.0); }
  bool causal_;
  int64_t chunk_;
  bool identity_, normalize_;
};
}  // namespace

MechanismSpec linear_mechanism() {
  MechanismSpec s;
  s.name = "linear";
  s.summary = "linear attention, phi(x) = elu(x) + 1 (Katharopoulos et al. 2020); O(n·d²)";
  s.knobs = {{.name = "chunk", .type = KnobType::integer, .def = 64, .lo = 1, .hi = 65536,
              .help = "causal: positions per chunk of the prefix form (a running state carries the past)"},
             {.name = "feature_map", .type = KnobType::choice, .def = 0, .help = "phi: elu(x) + 1, or the identity",
              .choices = {"elu1", "identity"}},
             {.name = "normalize", .type = KnobType::flag, .def = 1,
              .help = "1: divide by phi(q_i)·Σ phi(k_j) (Katharopoulos); 0: the plain sum Σ (q_i·k_j) v_j"}};
  s.presets["tiny"] = {{"chunk", 3}};
  // The one-layer in-context regression study compares against one step of preconditioned GD,
  // which the plain (identity, unnormalised) form implements.
  s.presets["icl-regression"] = {{"feature_map", 1}, {"normalize", 0}};
  s.caps = {.causal = true, .linear_time = true};
  s.make = [](const AttentionOptions& o, Generator&) { return std::make_shared<LinearAttention>(o); };
  return s;
}

}  // namespace lotgrad::nn
