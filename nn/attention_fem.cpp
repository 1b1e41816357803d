// Free Energy Mixer (Lu & Yang, arXiv 2602.07160, ICLR 2026; public code
// github.com/LJC-FVNR/FreeEnergyMixer, fem.py). A prior p_t(·) over positions (here softmax or
// linear attention) is read twice per value channel c:
//   μ_t = Σ_i p_t(i) v_i                                (the expectation: plain attention)
//   F_t = (1/β_c) log Σ_i p_t(i) exp(β_c v_i,c)         (the free energy, a soft max over p_t)
// F ≥ μ (Jensen), F → μ as β → 0 and F → max_{i: p_t(i) > 0} v_i,c as β → ∞, so the layer can
// pick out the largest value in its support instead of averaging. Then
//   out = g ∘ ((1 − λ)∘μ + λ∘F),  λ = σ(x W_λ),  g = L2-normalise(softplus(x W_g) + ε)·√d per head,
// and the block's out_proj is the paper's W_O.
//
// Choices:
// - Value width d_v = d_head (the public code uses fem_ratio 0.5: d_v = d_head/2), so that
//   MultiHeadAttention's out_proj (D → D) is W_O. q and k are d_head wide per head, as with
//   the public code's defaults (fem_ratio 0.5, p_t_to_fem_ratio 4: |Q| = |K| = D). Parameters:
//   W_q, W_k, W_v, W_λ, W_g (D × D each) and β (D), plus out_proj: 6·D² against softmax's 4·D².
// - Not ported: the public code's optional time-decay conditioning convolution, RoPE (the
//   models add positions themselves) and attention dropout.
// - β_c = softplus(β_raw,c) + 1e-6, β_raw initialised to 1.8 (knob beta_init), no weight decay.
//   Values are clipped to ±cap/β (knob value_cap, 40) so that |βv| ≤ cap: exp(βv − M) ≥
//   exp(−2·cap) stays a normal float (cap ≤ 43 in f32, ≤ 350 in f64), which also keeps a
//   causal F causal: M is one max per channel over all positions, and without the cap a large
//   later value could flush every earlier exp to 0 (F would read the floor log(tiny)/β). The
//   clipped values feed μ as well (as in the public code).
// - One run of the prior on [v̂, exp(βv̂ − M)] (value width 2d) gives μ and Z̃ together. The
//   values before it and the reads after it are one pass each (ops/free_energy.h; knob fused,
//   default 1); fused = 0 is the composite of elementwise ops they are tested against.
// - Softmax prior: the fused kernel scaled_dot_product_attention with values of width 2d (no
//   n×n tensor; the key padding mask is applied inside the softmax: a zeroed key would get
//   logit 0, not −inf; causal via is_causal). Per tile pair its products have widths
//   d + 2d forward and d + 2d + 2d + d + d backward (S, P V / S, dV, dP, dQ, dK), against
//   2d and 5d for softmax attention of head width d: about 1.5× and 1.4×.
// - Linear prior: φ = elu + 1, pads' key features zeroed, normalised by Σ_j φ(q)·φ(k_j) from a
//   ones column in the same run. The normaliser is clamped at 1e-30 instead of adding 1e-6 (as
//   the linear mechanism does): F needs Σ_i p_t(i) = 1 exactly, else F − μ picks up
//   log(Σ p)/β, which grows without bound as β → 0. Causal through causal_linear_prefix.
// - Non-causal = the prior's own non-causal form (both priors have one, with the key padding
//   mask): no forward/reverse combination is needed.
#include "attention_fem.h"

#include <cmath>
#include <limits>

#include "../ops/attention.h"
#include "../ops/causal_linear.h"
#include "../ops/elementwise.h"
#include "../ops/free_energy.h"
#include "../ops/heads.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "../ops/shape.h"

namespace lotgrad::nn {

namespace {
constexpr double kEps = 1e-6;         // β's floor and the gate's softplus floor (the public code's eps)
constexpr double kGateNormEps = 1e-5;  // F.normalize's eps in the public code

double tiny(DType dt) { return dt == kFloat64 ? std::numeric_limits<double>::min() : std::numeric_limits<float>::min(); }

// keep (B, 1, n, 1): 1 on valid tokens, 0 on padding.
Tensor keep_rows(const Tensor& mask, DType dt) { return logical_not(mask).to(dt).unsqueeze(1).unsqueeze(-1); }

Tensor phi(const Tensor& x) { return add(elu(x), 1.0); }

// The linear prior's key features (B, H, n, dk): φ(k), padded rows zeroed after the feature map.
Tensor key_features(const Tensor& k, const Tensor& mask) {
  Tensor pk = phi(k);
  return mask.defined() ? mul(pk, keep_rows(mask, pk.dtype())) : pk;
}

// The prior's products with values w (B, H, n, e): Σ_i p_t(i) w_i under softmax, the
// unnormalised Σ_i φ(q_t)·φ(k_i) w_i under the linear prior. (B, H, n, e)
Tensor prior_product(const Tensor& q, const Tensor& k, const Tensor& w, const Tensor& mask, FemPrior prior, bool causal,
                     int64_t chunk) {
  if (prior == FemPrior::softmax) return scaled_dot_product_attention(q, k, w, mask, causal);
  const Tensor pq = phi(q), pk = key_features(k, mask);
  return causal ? causal_linear_prefix(pq, pk, w, chunk) : matmul(pq, matmul(pk.transpose(-2, -1), w));
}

// Σ_i p_t(i) w_i (B, H, n, e). Linear: the last column of the product with [w | 1] is the
// normaliser Σ_j φ(q_t)·φ(k_j).
Tensor prior_read(const Tensor& q, const Tensor& k, const Tensor& w, const Tensor& mask, FemPrior prior, bool causal,
                  int64_t chunk) {
  if (prior == FemPrior::softmax) return prior_product(q, k, w, mask, prior, causal, chunk);
  const int64_t e = w.size(3);
  Shape ones_shape = w.shape();
  ones_shape.back() = 1;
  const Tensor w1 = cat({w, Tensor::ones(ones_shape, w.dtype())}, -1);  // (B, H, n, e + 1)
  const Tensor y = prior_product(q, k, w1, mask, prior, causal, chunk);
  return div(y.narrow(-1, 0, e), clamp(y.narrow(-1, e, 1), kFreeEnergyMinDenominator));
}

// M (B, H, 1, d): the max of u over the valid positions, detached; 0 where no position is valid.
Tensor valid_max(const Tensor& u, const Tensor& mask) {
  Tensor ud = u.detach();
  if (mask.defined()) ud = masked_fill(ud, mask.unsqueeze(1).unsqueeze(-1), -INFINITY);  // (B, 1, n, 1)
  Tensor M = max(ud, 2, /*keepdim=*/true).values;
  return masked_fill(M, eq(M, -INFINITY), 0.0);
}

// logaddexp(a, b) = max(a, b) + log(1 + exp(−|a − b|)), finite a and b.
Tensor logaddexp(const Tensor& a, const Tensor& b) {
  return add(maximum(a, b), log(add(exp(neg(abs(sub(a, b)))), 1.0)));
}

void check_reads(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& mask, double cap,
                 int64_t chunk) {
  const char* op = "free_energy_reads";
  if (!q.defined() || !k.defined() || !v.defined() || !beta.defined())
    throw ShapeError(std::string(op) + ": q, k, v and beta must be defined");
  if (q.dim() != 4 || q.shape() != k.shape() || v.dim() != 4 || v.size(0) != q.size(0) || v.size(1) != q.size(1) ||
      v.size(2) != q.size(2))
    throw_shape(op, "need q, k (B, H, n, dk) and v (B, H, n, d) with the same B, H, n", {{"q", &q}, {"k", &k}, {"v", &v}});
  if (beta.shape() != Shape{v.size(1), v.size(3)})
    throw_shape(op, "beta must be (H, d) for v (B, H, n, d)", {{"v", &v}, {"beta", &beta}});
  if (!is_floating(q.dtype()) || k.dtype() != q.dtype() || v.dtype() != q.dtype() || beta.dtype() != q.dtype())
    throw_dtype(op, "q, k, v and beta must share one float dtype", {{"q", &q}, {"k", &k}, {"v", &v}, {"beta", &beta}});
  if (mask.defined() && (mask.dtype() != kBool || mask.shape() != Shape{q.size(0), q.size(2)}))
    throw_shape(op, "key_padding_mask must be bool (B, n)", {{"q", &q}, {"key_padding_mask", &mask}});
  if (!(cap > 0)) throw std::invalid_argument(std::string(op) + ": cap must be > 0 (+inf: no clipping), got " + std::to_string(cap));
  if (chunk < 1) throw std::invalid_argument(std::string(op) + ": chunk must be >= 1, got " + std::to_string(chunk));
  const double bmin = min(beta.detach()).item();
  if (!(bmin > 0)) throw std::invalid_argument(std::string(op) + ": beta must be > 0, its smallest entry is " + std::to_string(bmin));
}

// The reads as a composite of elementwise ops (fused = false): the reference of ops/free_energy.h.
FreeEnergyReads composite_reads(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                                const Tensor& mask, FemPrior prior, bool causal, double cap, int64_t chunk) {
  const int64_t H = v.size(1), d = v.size(3);
  const Tensor b = beta.view({1, H, 1, d});
  Tensor vc = v;  // v̂ = clip(v, ±cap/β)
  if (std::isfinite(cap)) {
    const Tensor lim = rdiv(b, cap);
    vc = minimum(maximum(v, neg(lim)), lim);
  }
  const Tensor u = mul(b, vc);          // βv̂ (B, H, n, d)
  const Tensor M = valid_max(u, mask);  // (B, H, 1, d), constant
  const Tensor y = prior_read(q, k, cat({vc, exp(sub(u, M))}, -1), mask, prior, causal, chunk);  // (B, H, n, 2d)
  FreeEnergyReads r;
  r.mu = y.narrow(-1, 0, d);
  const Tensor Z = y.narrow(-1, d, d);  // Z̃ = Σ p exp(βv̂ − M) ≥ 0; 0 only in a row with no key to see
  const Tensor floor_ = rsub(M, std::log(tiny(v.dtype())));  // log tiny − M
  const Tensor live = gt(Z, 0.0);
  // log Z̃ where Z̃ > 0 (elsewhere log 1, discarded by the where: no −inf enters a gradient)
  const Tensor lse = where(live, logaddexp(log(where(live, Z, Tensor::scalar(1.0, Z.dtype()))), floor_), floor_);
  r.F = div(add(lse, M), b);
  return r;
}
}  // namespace

FreeEnergyReads free_energy_reads(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta,
                                  const Tensor& mask, FemPrior prior, bool causal, double cap, int64_t chunk,
                                  bool fused) {
  check_reads(q, k, v, beta, mask, cap, chunk);
  if (!fused) return composite_reads(q, k, v, beta, mask, prior, causal, cap, chunk);
  const bool linear = prior == FemPrior::linear;  // its normaliser rides along as a ones column
  const FreeEnergyValues w = free_energy_values(v, beta, cap, mask, linear);  // (B, H, n, 2d [+ 1])
  const FreeEnergyOut o = free_energy_read(prior_product(q, k, w.w, mask, prior, causal, chunk), w.M, beta, linear);
  return {o.mu, o.F};
}

Tensor fem_prior_map(const Tensor& q, const Tensor& k, const Tensor& mask, FemPrior prior, bool causal) {
  if (prior == FemPrior::softmax) return attention_weights(q, k, mask, causal);
  Tensor s = matmul(phi(q), key_features(k, mask).transpose(-2, -1));  // (B, H, n, n)
  if (causal) s = mul(s, causal_mask(s.size(-1), s.dtype()));
  return div(s, clamp(sum(s, {-1}, true), kFreeEnergyMinDenominator));
}

FreeEnergyMixer::FreeEnergyMixer(const AttentionOptions& o, Generator& gen, FemPrior prior)
    : H_(o.n_heads), d_(o.d_head), prior_(prior), causal_(o.causal), cap_(o.get("value_cap")),
      chunk_(prior == FemPrior::linear ? (int64_t)o.get("chunk") : 64), fused_(o.get("fused") != 0) {
  const int64_t D = H_ * d_;
  qkv = register_module("qkv", std::make_shared<Linear>(D, 3 * D, gen));
  lambda_proj = register_module("lambda_proj", std::make_shared<Linear>(D, D, gen));
  gate_proj = register_module("gate_proj", std::make_shared<Linear>(D, D, gen));
  beta_raw = Tensor::full({H_, d_}, o.get("beta_init"));
  register_parameter("beta_raw", &beta_raw);
}

std::string FreeEnergyMixer::type_name() const {
  return std::string("FreeEnergyMixer(") + (prior_ == FemPrior::softmax ? "softmax" : "linear") + " prior" +
         (causal_ ? ", causal)" : ")");
}

Tensor FreeEnergyMixer::beta() const { return add(softplus(beta_raw), kEps); }

void FreeEnergyMixer::heads(const Tensor& x, Tensor& q, Tensor& k, Tensor& v) const {
  if (x.dim() != 3 || x.size(2) != H_ * d_)
    throw_shape("FreeEnergyMixer", "expects x of shape (B, n, " + std::to_string(H_ * d_) + ")", {{"x", &x}});
  auto h = linear_qkv_heads(x, qkv->weight, qkv->bias, H_);  // (B, H, n, d) each
  q = h[0];
  k = h[1];
  v = h[2];
}

FreeEnergyReads FreeEnergyMixer::reads(const Tensor& x, const Tensor& mask) const {
  Tensor q, k, v;
  heads(x, q, k, v);
  return free_energy_reads(q, k, v, beta(), mask, prior_, causal_, cap_, chunk_, fused_);
}

Tensor FreeEnergyMixer::forward_block(const Tensor& x, const Tensor& mask) {
  const FreeEnergyReads r = reads(x, mask);
  const int64_t B = x.size(0), n = x.size(1);
  // (B, n, D) -> (B, n, H, d): per-head rows, where the gate is normalised
  auto split = [&](const Tensor& t) { return t.view({B, n, H_, d_}); };
  const Tensor lam = split(sigmoid(lambda_proj->forward(x))).transpose(1, 2);  // (B, H, n, d)
  Tensor g = add(softplus(split(gate_proj->forward(x))), kEps);               // (B, n, H, d)
  g = mul(div(g, clamp(sqrt(sum(mul(g, g), {-1}, true)), kGateNormEps)), std::sqrt((double)d_));
  // (1 − λ)∘μ + λ∘F = μ + λ∘(F − μ)
  return mul(g.transpose(1, 2), add(r.mu, mul(lam, sub(r.F, r.mu))));
}

Tensor FreeEnergyMixer::attention_matrix_block(const Tensor& x, const Tensor& mask) {
  Tensor q, k, v;
  heads(x, q, k, v);
  return fem_prior_map(q, k, mask, prior_, causal_);
}

namespace {
MechanismSpec fem_spec(FemPrior prior) {
  MechanismSpec s;
  s.knobs = {{.name = "fused", .type = KnobType::flag, .def = 1,
              .help = "1: the fused value and read kernels (ops/free_energy.h); 0: the composite of elementwise ops"},
             {.name = "value_cap", .type = KnobType::real, .def = 40, .lo = 1e-3, .hi = 350,
              .help = "values are clipped to ±value_cap/β so |β·v| <= value_cap (<= 43 for f32, 350 for f64)"},
             {.name = "beta_init", .type = KnobType::real, .def = 1.8, .lo = -50, .hi = 50,
              .help = "initial beta_raw: the inverse temperature is softplus(beta_raw) + 1e-6 per channel"}};
  if (prior == FemPrior::linear)
    s.knobs.push_back({.name = "chunk", .type = KnobType::integer, .def = 64, .lo = 1, .hi = 65536,
                       .help = "causal: positions per chunk of the prefix form (a running state carries the past)"});
  s.presets["tiny"] = prior == FemPrior::linear ? std::map<std::string, double>{{"chunk", 3}} : std::map<std::string, double>{};
  s.no_decay = {"beta_raw"};
  s.caps = {.causal = true, .linear_time = prior == FemPrior::linear, .block_input = true};
  s.make = [prior](const AttentionOptions& o, Generator& g) { return std::make_shared<FreeEnergyMixer>(o, g, prior); };
  return s;
}
}  // namespace

MechanismSpec fem_mechanism() {
  MechanismSpec s = fem_spec(FemPrior::softmax);
  s.name = "fem";
  s.summary = "Free Energy Mixer over a softmax prior (Lu & Yang, arXiv 2602.07160): g∘((1−λ)μ + λF), "
              "F = (1/β) log Σ p e^{βv}; the fused kernel with 2× value width, O(n²·d) time, O(n·d) memory";
  return s;
}

MechanismSpec fem_linear_mechanism() {
  MechanismSpec s = fem_spec(FemPrior::linear);
  s.name = "fem_linear";
  s.summary = "Free Energy Mixer over a linear-attention prior (elu+1, normalised; arXiv 2602.07160); "
              "O(n·d²) with 2× value width";
  return s;
}

}  // namespace lotgrad::nn
