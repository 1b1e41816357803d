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
#include "attention.h"

namespace lotgrad::nn {

namespace {
class SinkformerAttention : public AttentionMechanism {
 public:
  explicit SinkformerAttention(const AttentionOptions& opt) {
    eps_ = opt.get("eps");
    const int64_t T = (int64_t)opt.get("half_steps");
    so_.max_half_steps = T;
    const int last = (int)opt.get("last");
    so_.last = last < 0 ? (T % 2 ? SinkhornSide::rows : SinkhornSide::cols) : (last == 0 ? SinkhornSide::rows : SinkhornSide::cols);
    so_.grad = opt.get("grad") != 0 ? SinkhornGrad::implicit : SinkhornGrad::unrolled;
    so_.tol = opt.get("tol");
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

MechanismSpec sinkformer_mechanism() {
  MechanismSpec s;
  s.name = "sinkformer";
  s.summary = "Sinkhorn over the full n×n scores, doubly stochastic (Sander et al. 2022); O(n²)";
  s.knobs = {{.name = "eps", .type = KnobType::real, .def = 1.0, .lo = 1e-6, .hi = 1e6, .help = "entropic regularisation"},
             {.name = "half_steps", .type = KnobType::integer, .def = 3, .lo = 1, .hi = 100000,
              .help = "Sinkhorn half-steps (1 is softmax attention)"},
             {.name = "grad", .type = KnobType::choice, .def = 0, .help = "gradients through the Sinkhorn iterations",
              .choices = {"unrolled", "implicit"}},
             {.name = "last", .type = KnobType::integer, .def = -1, .lo = -1, .hi = 1,
              .help = "the side the iterations end on: -1 by parity (odd half-steps: rows), 0 rows, 1 columns"},
             {.name = "tol", .type = KnobType::real, .def = 0, .lo = 0, .hi = 1,
              .help = "stop early when the marginal error is below tol (0: run every half-step)"}};
  s.presets["tiny"] = {{"half_steps", 3}};
  s.caps = {.causal = false,
            .why_not_causal = "a lower-triangular doubly-stochastic matrix is the identity",
            .doubly_stochastic = true};
  s.make = [](const AttentionOptions& o, Generator&) { return std::make_shared<SinkformerAttention>(o); };
  return s;
}

}  // namespace lotgrad::nn
