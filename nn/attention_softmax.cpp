// Softmax attention: softmax(q kᵀ / sqrt(d) + mask) v. Knob "fused" (default 1) picks the
// tiled kernel (O(n·d) extra memory); 0 picks the composite reference (keeps the n×n map).
#include <cmath>

#include "../ops/attention.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/softmax.h"
#include "attention_mechanisms.h"

namespace lotgrad::nn {

namespace {
class SoftmaxAttention : public AttentionMechanism {
 public:
  explicit SoftmaxAttention(const AttentionOptions& opt) {
    for (auto& [k, v] : opt.knobs)
      if (k != "fused") throw std::invalid_argument("softmax attention: unknown option \"" + k + "\" (known: fused)");
    fused_ = opt.get("fused", 1.0) != 0.0;
  }
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

std::shared_ptr<AttentionMechanism> make_softmax_attention(const AttentionOptions& opt, Generator&) {
  return std::make_shared<SoftmaxAttention>(opt);
}

}  // namespace lotgrad::nn
