// LOTFormer heads beside softmax heads: per-head mixing in one layer. Of the layer's H heads
// the first H − S run LOTFormer (nn/attention_lotformer.cpp, with all of its knobs) and the
// last S (knob softmax_heads, default 1) run softmax attention through the fused kernel, or
// sliding-window softmax when softmax_window > 0. Why: a doubly-stochastic head can put at
// most 1/(n·min b) on any token (docs/lotformer.md §4), while a softmax head can look at one
// token; the mixture keeps LOTFormer's global, balanced heads and adds one that can select
// (the study of LOTFormer on full-length ListOps, docs/lotformer.md §9).
// Each part is the registered mechanism itself, built by make_attention on its own heads:
// nothing is re-implemented here, and the parts' tests cover their arithmetic. Not causal
// (LOTFormer has no causal form); quadratic in n when the softmax heads are full.
#include <stdexcept>
#include <string>

#include "../ops/shape.h"
#include "attention.h"

namespace lotgrad::nn {

MechanismSpec lotformer_mechanism();

namespace {
const char* kSoftmaxHeads = "softmax_heads";
const char* kSoftmaxWindow = "softmax_window";

class LotformerHybrid : public AttentionMechanism {
 public:
  LotformerHybrid(const AttentionOptions& o, Generator& gen)
      : H_(o.n_heads), S_((int64_t)o.get(kSoftmaxHeads)) {
    if (S_ >= H_)
      throw std::invalid_argument("lotformer_hybrid: softmax_heads (" + std::to_string(S_) + ") must be below the " +
                                  std::to_string(H_) + " heads of the layer: at least one head runs LOTFormer");
    AttentionOptions lo = o;  // every knob but the two of this file is LOTFormer's
    lo.name = "lotformer";
    lo.n_heads = H_ - S_;
    lo.knobs.erase(kSoftmaxHeads);
    lo.knobs.erase(kSoftmaxWindow);
    AttentionOptions so;
    const int64_t window = (int64_t)o.get(kSoftmaxWindow);
    so.name = window > 0 ? "window" : "softmax";
    if (window > 0) so.knobs["window"] = (double)window;
    so.n_heads = S_;
    so.d_head = o.d_head;
    so.causal = o.causal;
    lotformer = register_module("lotformer", make_attention(lo, gen));
    softmax = register_module("softmax", make_attention(so, gen));
  }
  std::string type_name() const override {
    return "LotformerHybrid(" + std::to_string(H_ - S_) + " LOTFormer + " + std::to_string(S_) + " softmax heads)";
  }
  // q, k, v (B, H, n, d): heads [0, H − S) to LOTFormer, [H − S, H) to softmax; (B, H, n, d)
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    return cat({lotformer->forward(lo(q), lo(k), lo(v), mask), softmax->forward(sm(q), sm(k), sm(v), mask)}, 1);
  }
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    return cat({lotformer->attention_matrix(lo(q), lo(k), mask), softmax->attention_matrix(sm(q), sm(k), mask)}, 1);
  }
  // LOTFormer's bound per head, and 1 (no bound below the trivial one) for the softmax heads.
  std::vector<double> weight_bound(int64_t n_valid) const override {
    std::vector<double> b = lotformer->weight_bound(n_valid);
    b.resize((size_t)H_, 1.0);
    return b;
  }
  std::shared_ptr<AttentionMechanism> lotformer, softmax;

 private:
  Tensor lo(const Tensor& t) const { return t.narrow(1, 0, H_ - S_); }
  Tensor sm(const Tensor& t) const { return t.narrow(1, H_ - S_, S_); }
  int64_t H_, S_;
};
}  // namespace

MechanismSpec lotformer_hybrid_mechanism() {
  const MechanismSpec lot = lotformer_mechanism();  // its knobs and presets, as declared there
  MechanismSpec s;
  s.name = "lotformer_hybrid";
  s.summary = "LOTFormer heads beside softmax_heads softmax (or sliding-window) heads in one layer: per-head mixing";
  s.knobs = lot.knobs;
  s.knobs.push_back({.name = kSoftmaxHeads, .type = KnobType::integer, .def = 1, .lo = 1, .hi = 4095,
                     .help = "heads that run softmax attention, the last of the layer (the others run LOTFormer)"});
  s.knobs.push_back({.name = kSoftmaxWindow, .type = KnobType::integer, .def = 0, .lo = 0, .hi = 1e6,
                     .help = "0: the softmax heads see every key; W > 0: sliding-window softmax, W − 1 keys on each side"});
  s.presets = lot.presets;
  s.no_decay = lot.no_decay;
  s.caps = {.causal = false, .why_not_causal = lot.caps.why_not_causal};
  s.make = [](const AttentionOptions& o, Generator& g) { return std::make_shared<LotformerHybrid>(o, g); };
  return s;
}

}  // namespace lotgrad::nn
