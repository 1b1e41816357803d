// MLR attention (Kuang et al., ICML 2025, arXiv:2509.07963): softmax attention whose scores
// are a sum of levels, level l a rank-r_l score kept only within the same one of 2^l
// contiguous blocks (ops/mlr_attention.h). Near pairs use more of the head width than far ones.
// Knobs:
//   mlr_levels  L, the number of levels (the deepest has 2^(L-1) blocks);
//   mlr_split   how d_head splits into the ranks: halving (d 64, L 4: 32|16|8|8) or equal;
//   mlr_scale   per-level score scale: 1/r_l (the reference code, which also applies a
//               LayerNorm to q and k) or 1/sqrt(r_l) (the usual softmax scale, per level);
//   mlr_span    0: blocks cut each example's valid length (causal: the sequence length n);
//               > 0: fixed blocks of span/2^l positions (the paper's, span = the context);
//   fused       the tiled kernel, or the dense reference (keeps the n×n map; tests).
// Causal (AttentionOptions::causal): query i sees keys j <= i; the kernel skips the key tiles
// above the diagonal.
#include <cmath>
#include <cstdio>

#include "../ops/mlr_attention.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {
class MlrAttention : public AttentionMechanism {
 public:
  explicit MlrAttention(const AttentionOptions& o)
      : ranks_(mlr_ranks(o.d_head, (int64_t)o.get("mlr_levels"), o.get("mlr_split") == 0 ? MlrSplit::halving : MlrSplit::equal)),
        span_((int64_t)o.get("mlr_span")),
        fused_(o.get("fused") != 0.0),
        causal_(o.causal) {
    for (int64_t r : ranks_) scales_.push_back(o.get("mlr_scale") == 0 ? 1.0 / (double)r : 1.0 / std::sqrt((double)r));
  }
  // Names the ranks and the score product's cost against softmax's at this head width,
  // Σ_l r_l/2^l / d, so that benchmarks and model lines show it.
  std::string type_name() const override {
    std::string r;
    double cost = 0, d = 0;
    for (size_t l = 0; l < ranks_.size(); ++l) {
      if (!r.empty()) r += "|";
      r += std::to_string(ranks_[l]);
      cost += std::ldexp((double)ranks_[l], -(int)l);
      d += (double)ranks_[l];
    }
    char c[32];
    std::snprintf(c, sizeof c, "%.3g", d > 0 ? cost / d : 0.0);
    return "MlrAttention(ranks " + r + ", score cost " + c + (span_ > 0 ? ", span " + std::to_string(span_) : "") +
           (causal_ ? ", causal" : "") + (fused_ ? ")" : ", reference)");
  }
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    return mlr_attention(q, k, v, ranks_, mask, causal_, scales_, span_, fused_);
  }
  // The reference path's weights (rows with no key to see: zeros).
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    return mlr_attention_weights(q, k, ranks_, mask, causal_, scales_, span_);
  }

 private:
  std::vector<int64_t> ranks_;
  std::vector<double> scales_;
  int64_t span_;
  bool fused_, causal_;
};
}  // namespace

MechanismSpec mlr_mechanism() {
  MechanismSpec s;
  s.name = "mlr";
  s.summary = "multi-level low-rank scores (Kuang et al. 2025): rank r_l within 2^l blocks; a fused tiled kernel, O(n²·Σ r_l/2^l)";
  s.knobs = {{.name = "mlr_levels", .type = KnobType::integer, .def = 4, .lo = 1, .hi = 30,
              .help = "levels L: level l cuts the sequence into 2^l blocks (needs d_head >= L and n >= 2^(L-1))"},
             {.name = "mlr_split", .type = KnobType::choice, .def = 0,
              .help = "ranks of the levels: halving (d 64, L 4: 32|16|8|8) or equal (d/L each)",
              .choices = {"halving", "equal"}},
             {.name = "mlr_scale", .type = KnobType::choice, .def = 0,
              .help = "score scale of level l: 1/r_l (the reference code) or 1/sqrt(r_l)", .choices = {"rank", "sqrt_rank"}},
             {.name = "mlr_span", .type = KnobType::integer, .def = 0, .lo = 0, .hi = 1e9,
              .help = "0: blocks cut each example's valid length (causal: the sequence length); else fixed blocks of span/2^l"},
             {.name = "fused", .type = KnobType::flag, .def = 1,
              .help = "1: the fused tiled kernel; 0: the composite reference that keeps the n×n map"}};
  // d_head 4 at the shared tests' sizes (n 5..13): ranks 2|1|1, level 2 blocks of about two tokens.
  s.presets["tiny"] = {{"mlr_levels", 3}};
  // The reference LM (context 256 in lotgrad's lm task): four levels, the deepest of 32 tokens.
  s.presets["lm"] = {{"mlr_levels", 4}};
  s.caps = {.causal = true};
  s.make = [](const AttentionOptions& o, Generator&) { return std::make_shared<MlrAttention>(o); };
  return s;
}

}  // namespace lotgrad::nn
