// Softmax attention: softmax(q kᵀ / sqrt(d) + mask) v. Knob "fused" (default 1) picks the
// tiled kernel (O(n·d) extra memory); 0 picks the composite reference (keeps the n×n map).
#include <cmath>

#include "../ops/attention.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/softmax.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {
class SoftmaxAttention : public AttentionMechanism {
 public:
  explicit SoftmaxAttention(const AttentionOptions& opt) : fused_(opt.get("fused") != 0.0) {}
  std::string type_name() const override { return fused_ ? "SoftmaxAttention(fused)" : "SoftmaxAttention(reference)"; }
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    return scaled_dot_product_attention(q, k, v, mask, std::numeric_limits<double>::quiet_NaN(), fused_);
  }
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    Tensor s = mul(matmul(q, k.transpose(-2, -1)), 1.0 / std::sqrt((double)q.size(-1)));  // (B, H, n, n)
    if (mask.defined()) s = masked_fill(s, mask.unsqueeze(1).unsqueeze(1), -INFINITY);
    Tensor p = softmax(s, -1);
    return masked_fill(p, ne(p, p), 0.0);  // rows with every key padded: zeros
  }

 private:
  bool fused_ = true;
};
}  // namespace

MechanismSpec softmax_mechanism() {
  MechanismSpec s;
  s.name = "softmax";
  s.summary = "softmax(q kᵀ/√d) v (Vaswani et al. 2017); a fused tiled kernel, O(n·d) extra memory";
  s.knobs = {{.name = "fused", .type = KnobType::flag, .def = 1,
              .help = "1: the fused tiled kernel; 0: the composite reference that keeps the n×n map"}};
  s.presets["tiny"] = {};
  s.caps = {.causal = false, .why_not_causal = "the causal kernel is not built yet"};
  s.make = [](const AttentionOptions& o, Generator&) { return std::make_shared<SoftmaxAttention>(o); };
  return s;
}

}  // namespace lotgrad::nn
