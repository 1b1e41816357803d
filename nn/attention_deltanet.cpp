// DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
// Sequence Length", arXiv:2406.06484), the layer as the public reference builds it
// (fla-org/flash-linear-attention, fla/layers/delta_net.py, default settings):
//   q, k, v = SiLU(ShortConv(x W_qkvᵀ))   depthwise causal conv over time, kernel conv_size
//   q, k    ← x / sqrt(Σ x² + 1e-6) per head (L2 norm; ε inside the square root)
//   β       = sigmoid(x W_βᵀ) per head and step; × 2 with neg_eigval (β in (0, 2): the
//             transition I − β k kᵀ may then have the negative eigenvalue 1 − β)
//   o       = delta_rule(q/√d, k, v, β)      S_t = S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t/√d
//   out     = RMSNorm(o) per head (learned weight shared by the heads, ε 1e-5)
// and MultiHeadAttention's out_proj is W_O. No biases in the projections or the convolution
// (as in the reference). Block-input mechanism: it sees the block input x (B, n, D).
// Causal by construction. Two-sided (not causal, e.g. LRA classification) and padding go
// through run_directions (nn/recurrent.h): the recurrence runs on the valid tokens only,
// forward and, when not causal, time-reversed with the same weights, the two summed.
#include <cmath>

#include "../core/autograd.h"
#include "../ops/conv.h"
#include "../ops/delta_rule.h"
#include "../ops/elementwise.h"
#include "../ops/heads.h"
#include "../ops/reduce.h"
#include "attention_deltanet.h"
#include "init.h"
#include "recurrent.h"

namespace lotgrad::nn {

namespace {

constexpr double kL2Eps = 1e-6;    // fla's l2norm: x · rsqrt(Σ x² + 1e-6)
constexpr double kNormEps = 1e-5;  // the output RMSNorm's ε (fla's norm_eps)

Tensor silu(const Tensor& x) { return mul(x, sigmoid(x)); }

Tensor l2_normalize(const Tensor& x) { return mul(x, rsqrt(add(sum(mul(x, x), {-1}, true), kL2Eps))); }

}  // namespace

DeltaNetAttention::DeltaNetAttention(const AttentionOptions& o, Generator& gen)
    : H_(o.n_heads), d_(o.d_head), chunk_((int64_t)o.get("chunk")), conv_size_((int64_t)o.get("conv_size")),
      neg_eigval_(o.get("neg_eigval") != 0), causal_(o.causal) {
  const int64_t D = H_ * d_;
  proj = register_module("proj", std::make_shared<Linear>(D, 3 * D, gen, /*bias=*/false));
  beta_proj = register_module("beta_proj", std::make_shared<Linear>(D, H_, gen, /*bias=*/false));
  // PyTorch's Conv1d default for a depthwise kernel (fan-in conv_size): U(±1/√conv_size).
  const double bound = 1.0 / std::sqrt((double)conv_size_);
  conv_weight = Tensor::zeros({3 * D, conv_size_});
  init::uniform_(conv_weight, gen, -bound, bound);
  register_parameter("conv_weight", &conv_weight);
  o_norm_weight = Tensor::ones({d_});
  register_parameter("o_norm_weight", &o_norm_weight);
}

std::string DeltaNetAttention::type_name() const {
  return "DeltaNet(chunk " + std::to_string(chunk_) + ", conv " + std::to_string(conv_size_) +
         (neg_eigval_ ? ", beta in (0, 2)" : "") + (causal_ ? ", causal" : ", two-sided") + ")";
}

Tensor DeltaNetAttention::forward_block(const Tensor& x, const Tensor& mask) {
  return run_directions(x, mask, causal_, [this](const Tensor& xs) { return core(xs); });
}

Tensor DeltaNetAttention::attention_matrix_block(const Tensor& x, const Tensor& mask) {
  return run_directions_matrix(x, mask, causal_, [this](const Tensor& xs) { return core_map(xs); });
}

DeltaNetAttention::Features DeltaNetAttention::features(const Tensor& x) const {
  const Tensor h = silu(causal_conv1d(proj->forward(x), conv_weight));  // (B, n, 3D)
  auto [q, k, v] = split_qkv_heads(h, H_);                              // (B, H, n, d)
  Tensor beta = sigmoid(beta_proj->forward(x)).transpose(1, 2);          // (B, H, n)
  if (neg_eigval_) beta = mul(beta, 2.0);
  return {mul(l2_normalize(q), 1.0 / std::sqrt((double)d_)), l2_normalize(k), v, beta};
}

Tensor DeltaNetAttention::core(const Tensor& x) const {
  const Features f = features(x);
  const Tensor o = delta_rule(f.q, f.k, f.v, f.beta, chunk_);
  const Tensor rms = rsqrt(add(mean(mul(o, o), {-1}, true), kNormEps));
  return mul(mul(o, rms), o_norm_weight);
}

// The causal map by its definition: S_t = Σ_{j<=t} β_j v_j k_jᵀ Π_{i=j+1..t} (I − β_i k_i k_iᵀ),
// so A_tj = β_j k_jᵀ (I − β_{j+1} k_{j+1} k_{j+1}ᵀ) ··· (I − β_t k_t k_tᵀ) q_t: the vector z = q_t
// taken back through the transitions from t down to j. O(n²·d) per head.
Tensor DeltaNetAttention::core_map(const Tensor& x) const {
  NoGradGuard ng;
  const Features f = features(x);
  const int64_t B = x.size(0), n = x.size(1), d = d_;
  const std::vector<double> Q = f.q.to_vector(), K = f.k.to_vector(), Bt = f.beta.to_vector();
  std::vector<double> A((size_t)(B * H_ * n * n), 0.0), z((size_t)d);
  for (int64_t bh = 0; bh < B * H_; ++bh)
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t e = 0; e < d; ++e) z[(size_t)e] = Q[(size_t)((bh * n + t) * d + e)];
      for (int64_t j = t; j >= 0; --j) {
        const double* kj = &K[(size_t)((bh * n + j) * d)];
        double kz = 0;
        for (int64_t e = 0; e < d; ++e) kz += kj[e] * z[(size_t)e];
        const double bj = Bt[(size_t)(bh * n + j)];
        A[(size_t)((bh * n + t) * n + j)] = bj * kz;
        for (int64_t e = 0; e < d; ++e) z[(size_t)e] -= bj * kz * kj[e];
      }
    }
  return Tensor::from_vector(A, {B, H_, n, n}).to(x.dtype());
}

MechanismSpec deltanet_mechanism() {
  MechanismSpec s;
  s.name = "deltanet";
  s.summary = "DeltaNet, the delta rule with short convolutions (Yang et al. 2024, arXiv:2406.06484); O(n·C·d + n·d²)";
  s.knobs = {{.name = "chunk", .type = KnobType::integer, .def = 64, .lo = 1, .hi = 65536,
              .help = "positions per chunk of the chunkwise (WY) form; any value gives the same result"},
             {.name = "conv_size", .type = KnobType::integer, .def = 4, .lo = 1, .hi = 64,
              .help = "kernel of the causal depthwise short convolution over q, k, v"},
             {.name = "neg_eigval", .type = KnobType::flag, .def = 0,
              .help = "1: beta = 2 sigmoid(.) in (0, 2), transitions with a negative eigenvalue; 0: beta in (0, 1)"}};
  s.presets["tiny"] = {{"chunk", 2}};
  s.no_decay = {"o_norm_weight"};
  s.caps = {.causal = true, .linear_time = true, .block_input = true};
  s.make = [](const AttentionOptions& o, Generator& g) { return std::make_shared<DeltaNetAttention>(o, g); };
  return s;
}

}  // namespace lotgrad::nn
