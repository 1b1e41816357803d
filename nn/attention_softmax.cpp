// Softmax attention: softmax(q kᵀ / sqrt(d) + mask) v. Knob "fused" (default 1) picks the
// tiled kernel (O(n·d) extra memory); 0 picks the composite reference (keeps the n×n map).
// Causal (AttentionOptions::causal): query i sees keys j <= i; the fused kernel skips the key
// tiles above the diagonal (about half the work).
#include <cmath>

#include "../ops/attention.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {
class SoftmaxAttention : public AttentionMechanism {
 public:
  explicit SoftmaxAttention(const AttentionOptions& opt) : fused_(opt.get("fused") != 0.0), causal_(opt.causal) {}
  std::string type_name() const override {
    return std::string("SoftmaxAttention(") + (fused_ ? "fused" : "reference") + (causal_ ? ", causal)" : ")");
  }
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    return scaled_dot_product_attention(q, k, v, mask, causal_, std::numeric_limits<double>::quiet_NaN(), fused_);
  }
  // The reference path's map: rows with every key padded are zeros.
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    return attention_weights(q, k, mask, causal_);
  }

 private:
  bool fused_ = true, causal_ = false;
};
}  // namespace

MechanismSpec softmax_mechanism() {
  MechanismSpec s;
  s.name = "softmax";
  s.summary = "softmax(q kᵀ/√d) v (Vaswani et al. 2017); a fused tiled kernel, O(n·d) extra memory";
  s.knobs = {{.name = "fused", .type = KnobType::flag, .def = 1,
              .help = "1: the fused tiled kernel; 0: the composite reference that keeps the n×n map"}};
  s.presets["tiny"] = {};
  s.caps = {.causal = true};
  s.make = [](const AttentionOptions& o, Generator&) { return std::make_shared<SoftmaxAttention>(o); };
  return s;
}

}  // namespace lotgrad::nn
