// Sliding-window softmax attention (Child et al. 2019, arXiv:1904.10509, the local pattern;
// Beltagy et al. 2020, Longformer, arXiv:2004.05150): each query attends to the keys within
// `window` positions of it, softmax over those only.
//   causal (AttentionOptions::causal):  key j for query i iff 0 <= i - j < window
//   otherwise (symmetric):              key j for query i iff |i - j| < window
// The fused kernel (ops/attention.h, sliding_window_attention) visits only the key tiles that
// meet the band: O(n·window·d) time, O(n·d) extra memory. Knob "fused" 0 picks the composite
// reference, which keeps the n×n map (tests).
#include <cmath>

#include "../ops/attention.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {
class WindowAttention : public AttentionMechanism {
 public:
  explicit WindowAttention(const AttentionOptions& o)
      : window_((int64_t)o.get("window")), fused_(o.get("fused") != 0.0), causal_(o.causal) {}
  std::string type_name() const override {
    return "WindowAttention(window " + std::to_string(window_) + (causal_ ? ", causal" : ", symmetric") +
           (fused_ ? ")" : ", reference)");
  }
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    return sliding_window_attention(q, k, v, window_, causal_, mask, std::numeric_limits<double>::quiet_NaN(), fused_);
  }
  // The band-masked map of the reference path (rows with no unpadded key in their band: zeros).
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    return attention_weights(q, k, mask, causal_, window_);
  }

 private:
  int64_t window_;
  bool fused_, causal_;
};
}  // namespace

MechanismSpec window_mechanism() {
  MechanismSpec s;
  s.name = "window";
  s.summary = "sliding-window softmax attention (Child et al. 2019; Longformer, Beltagy et al. 2020); O(n·w·d)";
  s.knobs = {{.name = "window", .type = KnobType::integer, .def = 64, .lo = 1, .hi = 1e6,
              .help = "keys per query: causal, itself and the window-1 before it; else window-1 on each side"},
             {.name = "fused", .type = KnobType::flag, .def = 1,
              .help = "1: the fused tiled kernel; 0: the composite reference that keeps the n×n map"}};
  s.presets["tiny"] = {{"window", 3}};
  s.caps = {.causal = true, .linear_time = true};
  s.make = [](const AttentionOptions& o, Generator&) { return std::make_shared<WindowAttention>(o); };
  return s;
}

}  // namespace lotgrad::nn
