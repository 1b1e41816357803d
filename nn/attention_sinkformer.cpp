// Sinkformer (Sander et al. 2022): Sinkhorn over the full n×n scores S = QKᵀ/√d with
// uniform marginals, attention A = n·P. One half-step (a row step) is exactly softmax
// attention; more half-steps make A doubly stochastic. Quadratic in n (the cost matrix is
// n×n); the plan products go through sinkhorn_apply, so P itself is not stored.
// Padding is zero mass (log-weight −inf), n is the number of valid tokens.
// Knobs: eps (1), half_steps (3), grad (0 = unrolled, default; 1 = implicit, an n×n solve),
// last (−1: parity as in the reference — odd half-steps end on rows; 0 rows; 1 columns), tol (0).
#include <cmath>

#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/sinkhorn.h"
#include "attention_mechanisms.h"

namespace lotgrad::nn {

namespace {
class SinkformerAttention : public AttentionMechanism {
 public:
  explicit SinkformerAttention(const AttentionOptions& opt) {
    for (auto& [k, v] : opt.knobs)
      if (k != "eps" && k != "half_steps" && k != "grad" && k != "last" && k != "tol")
        throw std::invalid_argument("sinkformer attention: unknown option \"" + k + "\" (known: eps, half_steps, grad, last, tol)");
    eps_ = opt.get("eps", 1.0);
    const int64_t T = (int64_t)opt.get("half_steps", 3);
    if (eps_ <= 0 || T <= 0) throw std::invalid_argument("sinkformer attention: eps and half_steps must be positive");
    so_.max_half_steps = T;
    const int last = (int)opt.get("last", -1);
    so_.last = last < 0 ? (T % 2 ? SinkhornSide::rows : SinkhornSide::cols) : (last == 0 ? SinkhornSide::rows : SinkhornSide::cols);
    so_.grad = opt.get("grad", 0) != 0 ? SinkhornGrad::implicit : SinkhornGrad::unrolled;
    so_.tol = opt.get("tol", 0.0);
    so_.return_plan = false;
  }
  std::string type_name() const override { return "SinkformerAttention(half_steps=" + std::to_string(so_.max_half_steps) + ")"; }
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    Tensor C, log_a, nv;
    setup(q, k, mask, C, log_a, nv);
    return mul(sinkhorn_apply(C, log_a, log_a, eps_, v, Tensor(), so_).PW, nv);
  }
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    Tensor C, log_a, nv;
    setup(q, k, mask, C, log_a, nv);
    SinkhornOptions o = so_;
    o.return_plan = true;
    return mul(sinkhorn(C, log_a, log_a, eps_, o).plan, nv);
  }

 private:
  void setup(const Tensor& q, const Tensor& k, const Tensor& mask, Tensor& C, Tensor& log_a, Tensor& nv) const {
    C = mul(matmul(q, k.transpose(-2, -1)), -1.0 / std::sqrt((double)q.size(-1)));  // (B, H, n, n)
    token_log_weights(mask, q.size(0), q.size(2), q.dtype(), log_a, nv);
  }
  double eps_;
  SinkhornOptions so_;
};
}  // namespace

std::shared_ptr<AttentionMechanism> make_sinkformer_attention(const AttentionOptions& opt, Generator&) {
  return std::make_shared<SinkformerAttention>(opt);
}

}  // namespace lotgrad::nn
