// QT-ViT: linear attention with a second-order Taylor kernel (Xu et al., "QT-ViT: Improving
// Linear Attention in ViT with Quadratic Taylor Expansion", NeurIPS 2024; official code
// github.com/AMD-AIG-AIMA/AMD_QTViT, efficientvit/models/nn/ops.py, LiteMLA). Per head,
//   out_i = φ(q_i)ᵀ (Σ_j φ(k_j) v_jᵀ) / (φ(q_i)ᵀ Σ_j φ(k_j) + ε),
// computed right to left: O(n·F·d) for F features, no n×n map. Kernels (knob qt_kernel):
// - exact: exp(s) ≈ 1 + s + s²/2 with s = q·k/√d, written as ((s + 1)² + 1)/2 (paper Eqs. 4-8):
//   ϕ(x) = [x/d^{1/4}; 1], φ(x) = [triu_outer(ϕ(x))/√2; 1/√2], the packed upper triangle of
//   ϕ⊗ϕ (off-diagonal entries ×√2, ops/triu_outer.h): (d+1)(d+2)/2 + 1 features with
//   ⟨φ(q), φ(k)⟩ = 1 + s + s²/2 exactly, >= 1/2 (minimum at s = -1).
// - compact_raw: the paper's Eq. 11, the self-products x_i² only, linear terms merged, learned
//   scalars α, β, γ: φ(x) = [α·x_i²; β·(4/d)^{1/4}·x_i; γ; 1]/√2 (2d + 2 wide, d + 2 without
//   the linear term), ⟨φ(q), φ(k)⟩ = ½(α² Σ_i q_i² k_i² + β²·2 q·k/√d + γ² + 1).
// - compact (default): the official code's form, the same on x̃ = x/‖x‖₄, so that x̃² =
//   x²/‖x²‖₂ (the code's q²/‖q²‖, scale-free): ½(α²⟨q̃², k̃²⟩ + γ² + 1) with ⟨q̃², k̃²⟩ in
//   [0, 1]. The code's constant channel c (Sim = ⟨q̃², k̃²⟩ + c²) is c² = (γ² + 1)/α² here;
//   α = √2, γ = 1 start it at the code's c = 1. The fixed 1/√2 channel keeps every weight's
//   denominator >= n_valid/2 however α and γ are learned (the code's c can shrink to 0).
// The linear term (knob qt_linear; the paper sets β = 0 throughout) can make the compact kernel
// negative. Per coordinate, α²a² + 2β²a/√d >= -β⁴/(α²d) for a = q̃_i k̃_i, so the kernel is
// >= ½(1 + γ² - β⁴/α²); β is learned as β² = ρ·|α|·√(1 + γ²)·sigmoid(b) with ρ = 0.9, which keeps
// it >= ½(1 + γ²)(1 - ρ²) >= 0.095: a positive denominator for every input.
// Padding: the WHOLE φ(k_j) of a pad is zeroed, its constant channels included (else each pad
// adds to every numerator and denominator). Causal: the prefix sums through
// causal_linear_prefix (ops/causal_linear.h) with [v | 1], whose last column is the normaliser.
// Local shortcut (knob qt_shortcut, off by default so that only the kernel differs from the
// other linear mechanisms): out += GELU(LayerNorm(v)) over each head's d channels, the norm's
// affine shared by the heads. The code uses a BatchNorm2d there (its batch statistics mix
// tokens across time and examples: a leak under a causal mask and with padding); the paper
// also writes o + GELU(BN(v)). Not built: the code's learned positional table on the keys and
// EfficientViT's multi-scale q, k, v branch (they belong to the backbone, not the kernel).
#include "attention_qtvit.h"

#include <cmath>
#include <stdexcept>

#include "../ops/causal_linear.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/norm.h"
#include "../ops/reduce.h"
#include "../ops/shape.h"
#include "../ops/triu_outer.h"
#include "attention.h"

namespace lotgrad::nn {

namespace {
enum class QtKernel { compact = 0, compact_raw = 1, exact = 2 };
constexpr double kEps = 1e-6;       // the normaliser's ε (as linear's)
constexpr double kNormEps = 1e-12;  // x̃ = x / (Σ x⁴ + kNormEps)^{1/4}

// φ(k) with padded rows zeroed, constant channels included: (B, H, n, F)
Tensor masked_features(const Tensor& phi_k, const Tensor& mask) {
  if (!mask.defined()) return phi_k;
  return mul(phi_k, logical_not(mask).to(phi_k.dtype()).unsqueeze(1).unsqueeze(-1));
}

class QTViTAttention : public AttentionMechanism {
 public:
  explicit QTViTAttention(const AttentionOptions& o)
      : kernel_((QtKernel)(int)o.get("qt_kernel")), causal_(o.causal), linear_(o.get("qt_linear") != 0),
        shortcut_(o.get("qt_shortcut") != 0), chunk_((int64_t)o.get("chunk")) {
    if (kernel_ == QtKernel::exact && linear_)
      throw std::invalid_argument("qtvit attention: --qt-linear 1 is for the compact kernels; the exact kernel "
                                  "(--qt-kernel exact) has its linear term built in");
    if (kernel_ != QtKernel::exact) {
      // compact: the code's initial c = 1; compact_raw: α² Σ q_i²k_i² is the diagonal of s² (= 2·s²/2)
      alpha = Tensor::full({1}, kernel_ == QtKernel::compact ? std::sqrt(2.0) : 1.0 / std::sqrt((double)o.d_head));
      gamma = Tensor::ones({1});
      register_parameter("qt_alpha", &alpha);
      register_parameter("qt_gamma", &gamma);
      if (linear_) {
        beta_raw = Tensor::zeros({1});
        register_parameter("qt_beta_raw", &beta_raw);
      }
    }
    if (shortcut_) shortcut_norm = register_module("shortcut_norm", std::make_shared<LayerNorm>(o.d_head));
  }
  std::string type_name() const override {
    static const char* names[] = {"compact", "compact_raw", "exact"};
    return std::string("QTViTAttention(") + names[(int)kernel_] + (linear_ ? ", linear term" : "") +
           (shortcut_ ? ", shortcut" : "") + (causal_ ? ", causal" : "") + ")";
  }

  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    check(q, k, v);
    const Tensor pq = features(q), pk = masked_features(features(k), mask);  // (B, H, n, F)
    const int64_t e = v.size(-1);
    const Tensor v1 = pad(v, {0, 1}, 1.0);  // [v | 1] (B, H, n, e + 1): the last column sums φ(q)·φ(k)
    const Tensor Y = causal_ ? causal_linear_prefix(pq, pk, v1, chunk_)
                             : matmul(pq, matmul(pk.transpose(-2, -1), v1));  // (B, H, n, e + 1)
    Tensor out = div(Y.narrow(-1, 0, e), add(Y.narrow(-1, e, 1), kEps));
    if (shortcut_) out = add(out, gelu(shortcut_norm->forward(v)));
    return out;
  }
  // The normalised kernel weights K_ij / (Σ_j K_ij + ε), pads (and, causal, j > i) zero: the
  // output is A v plus, with qt_shortcut, the local term GELU(LayerNorm(v)), which A leaves out.
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    check(q, k, k);
    Tensor K = matmul(features(q), masked_features(features(k), mask).transpose(-2, -1));  // (B, H, n, n)
    if (causal_) K = mul(K, causal_mask(K.size(-1), K.dtype()));
    return div(K, add(sum(K, {-1}, true), kEps));
  }

  Tensor alpha, gamma, beta_raw;  // compact kernels: learned scalars (beta_raw with qt_linear)
  std::shared_ptr<LayerNorm> shortcut_norm;

 private:
  void check(const Tensor& q, const Tensor& k, const Tensor& v) const {
    if (q.dim() != 4 || k.shape() != q.shape() || v.dim() != 4 || v.size(2) != q.size(2) || v.size(0) != q.size(0) ||
        v.size(1) != q.size(1) || q.size(-1) < 1)
      throw_shape("qtvit attention", "expects q, k (B, H, n, d) of one shape and v (B, H, n, e)",
                  {{"q", &q}, {"k", &k}, {"v", &v}});
  }
  Tensor features(const Tensor& x) const {
    if (kernel_ == QtKernel::exact) return qtvit_exact_features(x);
    const DType dt = x.dtype();
    const Tensor a = alpha.to(dt), g = gamma.to(dt);
    return qtvit_compact_features(x, a, g, linear_ ? qtvit_beta2(a, g, beta_raw.to(dt)) : Tensor(),
                                  kernel_ == QtKernel::compact);
  }

  QtKernel kernel_;
  bool causal_, linear_, shortcut_;
  int64_t chunk_;
};
}  // namespace

// [triu_outer(ϕ)/√2; 1/√2] with ϕ = [x/d^{1/4}; 1]: the /√2 is folded into ϕ as 2^{-1/4}.
Tensor qtvit_exact_features(const Tensor& x) {
  const double d = (double)x.size(-1), r = std::pow(2.0, -0.25);
  const Tensor phi = pad(mul(x, r * std::pow(d, -0.25)), {0, 1}, r);  // (..., d + 1)
  return pad(triu_outer(phi), {0, 1}, 1.0 / std::sqrt(2.0));           // (..., (d+1)(d+2)/2 + 1)
}

Tensor qtvit_compact_features(const Tensor& x, const Tensor& alpha, const Tensor& gamma, const Tensor& beta2, bool unit) {
  const double d = (double)x.size(-1), h = 1.0 / std::sqrt(2.0);
  const Tensor x2 = mul(x, x);
  // unit: x̃² = x²/‖x²‖₂ and x̃ = x/‖x²‖₂^{1/2}, i.e. x/‖x‖₄ (no pow over the (n, d) values)
  const Tensor r2 = unit ? rsqrt(add(sum(mul(x2, x2), {-1}, true), kNormEps)) : Tensor();  // (..., 1)
  std::vector<Tensor> parts{mul(unit ? mul(x2, r2) : x2, mul(alpha, h))};
  if (beta2.defined()) {
    const Tensor c = mul(sqrt(beta2), std::pow(4.0 / d, 0.25) * h);
    parts.push_back(unit ? mul(x, mul(sqrt(r2), c)) : mul(x, c));
  }
  Shape one = x.shape();
  one.back() = 1;
  parts.push_back(mul(Tensor::ones(one, x.dtype()), mul(gamma, h)));  // γ/√2
  return pad(cat(parts, -1), {0, 1}, h);
}

Tensor qtvit_beta2(const Tensor& alpha, const Tensor& gamma, const Tensor& beta_raw) {
  return mul(mul(mul(abs(alpha), sqrt(add(mul(gamma, gamma), 1.0))), sigmoid(beta_raw)), kQtBetaRoom);
}

MechanismSpec qtvit_mechanism() {
  MechanismSpec s;
  s.name = "qtvit";
  s.summary = "QT-ViT linear attention with a 2nd-order Taylor kernel (Xu et al. 2024); O(n·d²) compact, O(n·d³) exact";
  s.knobs = {{.name = "qt_kernel", .type = KnobType::choice, .def = 0,
              .help = "compact: the official code's q²/|q²| + constant; compact_raw: the paper's Eq. 11 on raw q, k; "
                      "exact: 1 + s + s²/2 by (d+1)(d+2)/2 + 1 packed features",
              .choices = {"compact", "compact_raw", "exact"}},
             {.name = "qt_linear", .type = KnobType::flag, .def = 0,
              .help = "compact kernels: 1 adds the linear term β·(4/d)^{1/4}·x (the paper uses β = 0), β bounded so the kernel stays positive"},
             {.name = "qt_shortcut", .type = KnobType::flag, .def = 0,
              .help = "1: out += GELU(LayerNorm(v)) per head, the official code's local term (its BatchNorm replaced)"},
             {.name = "chunk", .type = KnobType::integer, .def = 64, .lo = 1, .hi = 65536,
              .help = "causal: positions per chunk of the prefix form (a running state carries the past)"}};
  s.presets["tiny"] = {{"chunk", 3}};
  s.no_decay = {"qt_alpha", "qt_gamma", "qt_beta_raw", "shortcut_norm"};
  s.caps = {.causal = true, .linear_time = true};
  s.make = [](const AttentionOptions& o, Generator&) { return std::make_shared<QTViTAttention>(o); };
  return s;
}

}  // namespace lotgrad::nn
