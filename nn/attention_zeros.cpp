// ZeroS, zero-sum linear attention (Lu et al., NeurIPS 2025, arXiv:2602.05230; derivation
// notes: github.com/vireshpati/ai4tsf25, SO.md). Per head, from the block input x (B, n, D):
// 1. q, k, v = x W_qkv; RoPE on q and k (positions: each token's rank among the valid
//    tokens), then q and k are L2-normalised, so q_t·k_i = cos θ_{t,i}.
// 2. Radial logits: u_i = W_U x_i, ū_i = (τμ + Σ_{j<=i} u_j)/(τ + i) (a prior mean μ worth τ
//    tokens, learned per head), s_i = −⟨u_i, ū_i⟩/√d.
// 3. Gates σ¹_t, σʰ_t = sigmoid(W_g x_t); with the zero-order gate knob, σ⁰_t = tanh(W_g x_t).
// 4. The zero-sum residuals of the prefix softmax p_{t,i} = e^{s_i}/Σ_{j<=t} e^{s_j}:
//    δ¹ = (s_i − s̄_t)/t (the first-order term) and δʰ = p − 1/t − δ¹ (the higher orders); both
//    sum to 0 over i <= t. w_{t,i} = σ¹_t δ¹ + σʰ_t δʰ (+ σ⁰_t/t), so rows sum to 0 (or σ⁰_t):
//    signed weights, contrastive mixing, no uniform 1/t bias.
// 5. o_t = Σ_{i<=t} w_{t,i} (q_t·k_i) v_i, then a LayerNorm over d without affine;
//    MultiHeadAttention's out_proj is the paper's W_O.
// Linear time (SO.md, "Full − 0th − 1st, gated"): o_t = q_tᵀ(α_t F_t + β_t G_t + γ_t H_t) with
//    F_t = Σ_{i<=t} e^{s_i − c} k_i v_iᵀ, G_t = Σ s_i k_i v_iᵀ, H_t = Σ k_i v_iᵀ, E_t = Σ e^{s_i − c},
//    P_t = Σ s_i, α = σʰ/E_t, β = (σ¹ − σʰ)/t, γ = −(β P_t + σʰ)/t (+ σ⁰/t),
// i.e. ONE unnormalised causal linear attention with 3d-wide features
//    φ_q = [α q; β q; γ q], φ_k = [e^{s−c} k; s k; k],
// through causal_linear_prefix (ops/causal_linear.h) with a running (3d, d) state per head.
// The stabiliser c is a running maximum of s, one per chunk (see plan_chunks), detached: E and
// the F rows of the state are rescaled together by e^{c_prev − c} as a chunk begins (c cancels in
// F_t/E_t, so dropping its gradient is exact), every e^{s−c} <= 1 and no early prefix underflows
// (one global shift, the maximum over the whole sequence, leaves the early E_t at e^{s − max} = 0
// once s rises by ~100 along an f32 sequence: tests/test_zeros.cpp shows it).
// Padding: pads are left out of every sum (ū, E, P, F, G, H) and t counts the valid keys, so a
// sequence's outputs do not depend on where pads are inserted.
// Two-sided (not causal, LRA): every query sees every valid token: the same formulas with the
// sums over all valid tokens, t = n_valid and ū = (τμ + Σ_valid u)/(τ + n_valid) (the global
// mean), in O(n·d²) by (3d, d) products S = φ_kᵀ v, o = φ_q S; c = the max over valid s.
#include "attention_zeros.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../ops/causal_linear.h"
#include "../ops/elementwise.h"
#include "../ops/heads.h"
#include "../ops/matmul.h"
#include "../ops/norm.h"
#include "../ops/reduce.h"
#include "../ops/rope.h"
#include "../ops/shape.h"

namespace lotgrad::nn {

namespace {
// Largest rise of the running max of s within one chunk: every E_t is then >= e^{-30}, a
// normal number in f32 (the term of the largest s_j, j <= t, is e^{s_j − c} >= e^{-30}).
constexpr double kMaxRise = 30.0;

// The chunks of the causal form and their detached stabilisers (running maxima of s).
struct ChunkPlan {
  std::vector<int64_t> lengths;
  Tensor ref;    // (B, H, n, 1): c of the chunk holding the row (0 while no valid key yet)
  Tensor decay;  // (B, H, n_chunks, 1): e^{c_prev − c} (0 while c_prev = -inf: empty state)
};

// sm (B, H, n, 1) = s with pads -inf. Cuts n positions into chunks of at most max_len, shared by
// every batch row and head, and ends a chunk before row i when for some (batch row, head) the
// running max of s would exceed by more than kMaxRise its value at the chunk's first row that
// has a valid key (a one-row chunk always fits). c of a chunk = the running max at its last row.
ChunkPlan plan_chunks(const Tensor& sm_in, int64_t max_len) {
  const Tensor sm = sm_in.detach().contiguous();
  const int64_t B = sm.size(0), H = sm.size(1), n = sm.size(2), BH = B * H;
  ChunkPlan plan;
  plan.ref = Tensor::empty(sm.shape(), sm.dtype());
  dispatch_float(sm.dtype(), "zeros causal", [&]<class T>() {
    const T* s = sm.data_ptr<T>();
    const double ninf = -std::numeric_limits<double>::infinity();
    std::vector<double> run((size_t)BH, ninf), first((size_t)BH, ninf), taus;  // taus (n_chunks, BH)
    int64_t start = 0;
    auto close = [&](int64_t end) {
      plan.lengths.push_back(end - start);
      taus.insert(taus.end(), run.begin(), run.end());
      std::fill(first.begin(), first.end(), ninf);
      start = end;
    };
    for (int64_t i = 0; i < n; ++i) {
      bool fits = i - start < max_len;
      for (int64_t bh = 0; bh < BH && fits; ++bh)
        if (first[(size_t)bh] != ninf && std::max(run[(size_t)bh], (double)s[bh * n + i]) - first[(size_t)bh] > kMaxRise)
          fits = false;
      if (!fits) close(i);
      for (int64_t bh = 0; bh < BH; ++bh) {
        run[(size_t)bh] = std::max(run[(size_t)bh], (double)s[bh * n + i]);
        if (first[(size_t)bh] == ninf) first[(size_t)bh] = run[(size_t)bh];
      }
    }
    if (n > 0) close(n);
    const int64_t nc = (int64_t)plan.lengths.size();
    T* ref = plan.ref.data_ptr<T>();
    std::vector<T> decay((size_t)(BH * nc));
    for (int64_t bh = 0, i = 0; bh < BH; ++bh, i = 0)
      for (int64_t c = 0; c < nc; ++c) {
        const double tau = taus[(size_t)(c * BH + bh)], prev = c > 0 ? taus[(size_t)((c - 1) * BH + bh)] : ninf;
        decay[(size_t)(bh * nc + c)] = prev == ninf ? T(0) : (T)std::exp(prev - tau);
        for (int64_t r = 0; r < plan.lengths[(size_t)c]; ++r, ++i) ref[bh * n + i] = tau == ninf ? T(0) : (T)tau;
      }
    plan.decay = Tensor::from_vector(decay, {B, H, nc, 1});
  });
  return plan;
}

// x / |x| over the last dim.
Tensor unit(const Tensor& x) { return div(x, sqrt(add(sum(mul(x, x), {-1}, true), 1e-12))); }

// x with 0 where z == 0 replaced by 1 (a row that sees no valid key: its sums are all 0).
Tensor nonzero(const Tensor& z) {
  Tensor zero;
  {
    NoGradGuard ng;
    zero = eq(z, 0.0);
  }
  return masked_fill(z, zero, 1.0);
}
}  // namespace

ZeroSAttention::ZeroSAttention(const AttentionOptions& o, Generator& gen)
    : H_(o.n_heads), d_(o.d_head), chunk_((int64_t)o.get("chunk")), causal_(o.causal),
      gate0_(o.get("zero_order_gate") != 0), rope_(o.get("rope") != 0) {
  if (rope_ && d_ % 2 != 0)
    throw std::invalid_argument("zeros attention: rope needs an even head dimension, got d_head = " + std::to_string(d_) +
                                " (--rope 0 turns it off)");
  const int64_t D = H_ * d_;
  qkv = register_module("qkv", std::make_shared<Linear>(D, 3 * D, gen));
  w_u = register_module("w_u", std::make_shared<Linear>(D, D, gen, /*bias=*/false));
  w_g = register_module("w_g", std::make_shared<Linear>(D, (gate0_ ? 3 : 2) * H_, gen));
  mu = Tensor::zeros({H_, d_});
  log_tau = Tensor::zeros({H_});
  register_parameter("zeros_mu", &mu);
  register_parameter("zeros_log_tau", &log_tau);
}

std::string ZeroSAttention::type_name() const {
  return std::string("ZeroSAttention(") + (causal_ ? "causal" : "two-sided") + (gate0_ ? ", zero-order gate" : "") +
         (rope_ ? ", rope" : "") + ")";
}

ZeroSInputs ZeroSAttention::inputs(const Tensor& x, const Tensor& mask) const {
  if (x.dim() != 3 || x.size(2) != H_ * d_)
    throw_shape("zeros attention", "x must be (B, n, D = " + std::to_string(H_ * d_) + ")", {{"x", &x}, {"mask", &mask}});
  const int64_t B = x.size(0), n = x.size(1);
  const DType dt = x.dtype();
  ZeroSInputs p;
  const Tensor valid2 = mask.defined() ? logical_not(mask).to(dt) : Tensor::ones({B, n}, dt);  // (B, n)
  const Tensor valid = valid2.reshape({B, 1, n, 1});
  if (mask.defined()) p.valid = valid;
  auto [q, k, v] = linear_qkv_heads(x, qkv->weight, qkv->bias, H_);
  if (rope_) {
    Tensor rank;  // each token's rank among the valid ones (a pad: its previous valid token's)
    {
      NoGradGuard ng;
      rank = clamp(sub(cumsum(valid2, 1), 1.0), 0.0);
    }
    q = rope(q, rank);
    k = rope(k, rank);
  }
  p.q = unit(q);
  p.k = unit(k);
  p.v = v;
  // radial logits: ū over the valid tokens seen so far (all of them when two-sided)
  const Tensor u = linear(x, w_u->weight).reshape({B, n, H_, d_}).permute({0, 2, 1, 3});  // (B, H, n, d)
  const Tensor uv = mask.defined() ? mul(u, valid) : u;
  const Tensor seen = causal_ ? cumsum(valid, 2) : sum(valid, {2}, true);  // (B, 1, n or 1, 1)
  const Tensor usum = causal_ ? cumsum(uv, 2) : sum(uv, {2}, true);
  const Tensor tau = exp(log_tau.to(dt)).reshape({1, H_, 1, 1});
  const Tensor ubar = div(add(mul(tau, mu.to(dt).reshape({1, H_, 1, d_})), usum), add(tau, seen));
  p.s = mul(sum(mul(u, ubar), {-1}, true), -1.0 / std::sqrt((double)d_));  // (B, H, n, 1)
  // gates (B, n, G·H) -> (B, H, n, 1) each
  const Tensor g = linear(x, w_g->weight, w_g->bias);
  auto gate = [&](int64_t j) { return g.narrow(-1, j * H_, H_).transpose(1, 2).unsqueeze(-1); };
  p.g1 = sigmoid(gate(0));
  p.gh = sigmoid(gate(1));
  if (gate0_) p.g0 = tanh(gate(2));
  return p;
}

namespace {
// What both forms derive from the inputs.
struct Derived {
  bool masked = false;  // some token is a pad (else the multiplications by valid are skipped)
  Tensor valid;         // (B, 1, n, 1), ones when in.valid is undefined
  Tensor sm;            // s with pads -inf
  Tensor s0;            // s with pads 0
};
Derived derive(const ZeroSInputs& in) {
  if (!in.q.defined() || !in.s.defined() || in.q.dim() != 4 || in.s.dim() != 4 || in.s.size(3) != 1 ||
      in.s.size(2) != in.q.size(2))
    throw_shape("zeros attention", "q, k, v must be (B, H, n, d) and s (B, H, n, 1)",
                {{"q", &in.q}, {"k", &in.k}, {"v", &in.v}, {"s", &in.s}});
  const int64_t B = in.s.size(0), n = in.s.size(2);
  Derived d;
  d.masked = in.valid.defined();
  d.valid = d.masked ? in.valid : Tensor::ones({B, 1, n, 1}, in.s.dtype());
  if (!d.masked) {
    d.sm = d.s0 = in.s;
    return d;
  }
  Tensor pad;
  {
    NoGradGuard ng;
    pad = eq(d.valid, 0.0);
  }
  d.sm = masked_fill(in.s, pad, -INFINITY);
  d.s0 = mul(in.s, d.valid);
  return d;
}

// φ_q, φ_k of the header comment, given E_t, P_t and t (E: stabilised, >= e^{-30} or 0).
Tensor query_features(const ZeroSInputs& in, const Tensor& E, const Tensor& P, const Tensor& count) {
  const Tensor alpha = div(in.gh, nonzero(E));
  const Tensor beta = div(sub(in.g1, in.gh), count);
  Tensor gamma = neg(div(add(mul(beta, P), in.gh), count));
  if (in.g0.defined()) gamma = add(gamma, div(in.g0, count));
  return cat({mul(alpha, in.q), mul(beta, in.q), mul(gamma, in.q)}, -1);  // (B, H, n, 3d)
}
Tensor key_features(const Tensor& k, const Tensor& ek, const Derived& dv) {
  const Tensor kv = dv.masked ? mul(k, dv.valid) : k;
  const Tensor& s0 = dv.s0;
  return cat({mul(ek, k), mul(s0, kv), kv}, -1);  // (B, H, n, 3d), 0 at pads
}

Tensor causal_form(const ZeroSInputs& in, int64_t chunk) {
  const Derived dv = derive(in);
  const int64_t B = in.q.size(0), H = in.q.size(1), n = in.q.size(2), d = in.q.size(3);
  const DType dt = in.q.dtype();
  const ChunkPlan plan = plan_chunks(dv.sm, chunk);
  const int64_t nc = (int64_t)plan.lengths.size();
  const Tensor ek = exp(sub(dv.sm, plan.ref));  // (B, H, n, 1), <= 1, 0 at pads
  const Tensor ones = Tensor::ones({B, H, n, 1}, dt);
  const Tensor E = causal_linear_prefix(ones, ek, ones, plan.lengths, plan.decay);  // (B, H, n, 1)
  const Tensor P = cumsum(dv.s0, 2);
  const Tensor count = clamp(cumsum(dv.valid, 2), 1.0);  // (B, 1, n, 1)
  const Tensor phi_q = query_features(in, E, P, count);
  const Tensor phi_k = key_features(in.k, ek, dv);
  // only the F rows of the state carry the stabiliser
  const Tensor decay = cat({plan.decay.expand({B, H, nc, d}), Tensor::ones({B, H, nc, 2 * d}, dt)}, -1);
  return causal_linear_prefix(phi_q, phi_k, in.v, plan.lengths, decay);
}

Tensor two_sided_form(const ZeroSInputs& in) {
  const Derived dv = derive(in);
  Tensor c;
  {
    NoGradGuard ng;  // detached stabiliser: the max over valid s (0 when every token is a pad)
    c = max(dv.sm, 2, true).values;  // (B, H, 1, 1)
    c = masked_fill(c, eq(c, -INFINITY), 0.0);
  }
  const Tensor ek = exp(sub(dv.sm, c));                               // (B, H, n, 1)
  const Tensor E = sum(ek, {2}, true), P = sum(dv.s0, {2}, true);    // (B, H, 1, 1); E >= 1 with a valid token
  const Tensor count = clamp(sum(dv.valid, {2}, true), 1.0);         // (B, 1, 1, 1): n_valid
  const Tensor phi_q = query_features(in, E, P, count);
  const Tensor phi_k = key_features(in.k, ek, dv);
  return matmul(phi_q, matmul(phi_k.transpose(-2, -1), in.v));  // (B, H, n, 3d) (B, H, 3d, d)
}
}  // namespace

Tensor zeros_linear_form(const ZeroSInputs& in, bool causal, int64_t chunk) {
  if (chunk < 1) throw std::invalid_argument("zeros attention: chunk must be >= 1, got " + std::to_string(chunk));
  return causal ? causal_form(in, chunk) : two_sided_form(in);
}

ZeroSWeights zeros_weights(const ZeroSInputs& in, bool causal) {
  const Derived dv = derive(in);
  const int64_t B = in.s.size(0), H = in.s.size(1), n = in.s.size(2);
  const DType dt = in.s.dtype();
  // seen[t, i] = 1 where query t sees key i (B, 1, n, n)
  const Tensor seen = mul(dv.valid.reshape({B, 1, 1, n}), causal ? causal_mask(n, dt) : Tensor::ones({n, n}, dt));
  Tensor unseen;
  {
    NoGradGuard ng;
    unseen = eq(seen, 0.0);
  }
  const Tensor si = in.s.transpose(-2, -1);  // (B, H, 1, n): s_i
  const Tensor L = masked_fill(si.expand({B, H, n, n}), unseen, -INFINITY);
  Tensor mx;
  {
    NoGradGuard ng;
    mx = max(L, -1, true).values;
    mx = masked_fill(mx, eq(mx, -INFINITY), 0.0);
  }
  const Tensor e = exp(sub(L, mx));
  const Tensor prob = div(e, nonzero(sum(e, {-1}, true)));     // the prefix softmax p[t, i]
  const Tensor t = clamp(sum(seen, {-1}, true), 1.0);          // (B, 1, n, 1)
  const Tensor sbar = div(sum(mul(si, seen), {-1}, true), t);  // (B, H, n, 1)
  ZeroSWeights w;
  w.delta1 = mul(seen, div(sub(si, sbar), t));
  w.deltah = sub(mul(seen, sub(prob, rdiv(t, 1.0))), w.delta1);
  w.w = add(mul(in.g1, w.delta1), mul(in.gh, w.deltah));
  if (in.g0.defined()) w.w = add(w.w, mul(in.g0, div(seen, t)));
  return w;
}

Tensor ZeroSAttention::forward_block(const Tensor& x, const Tensor& mask) {
  return layer_norm(zeros_linear_form(inputs(x, mask), causal_, chunk_), {d_});
}

ZeroSWeights ZeroSAttention::weights(const Tensor& x, const Tensor& mask) { return zeros_weights(inputs(x, mask), causal_); }

Tensor ZeroSAttention::attention_matrix_block(const Tensor& x, const Tensor& mask) {
  const ZeroSInputs in = inputs(x, mask);
  return mul(zeros_weights(in, causal_).w, matmul(in.q, in.k.transpose(-2, -1)));
}

MechanismSpec zeros_mechanism() {
  MechanismSpec s;
  s.name = "zeros";
  s.summary = "ZeroS zero-sum linear attention (Lu et al. 2025): signed softmax residuals, O(n·d²)";
  s.knobs = {{.name = "chunk", .type = KnobType::integer, .def = 64, .lo = 1, .hi = 65536,
              .help = "causal: most positions per chunk of the prefix form (cut shorter where the logits' running max rises fast)"},
             {.name = "zero_order_gate", .type = KnobType::flag, .def = 0,
              .help = "1: a third gate tanh(W_g x) restores the zero-order term 1/t (the paper's first layer)"},
             {.name = "rope", .type = KnobType::flag, .def = 1,
              .help = "1: rotary position embedding on q and k before their L2 normalisation"}};
  s.presets["tiny"] = {{"chunk", 3}};
  s.no_decay = {"zeros_mu", "zeros_log_tau"};
  s.caps = {.causal = true, .linear_time = true, .block_input = true};
  s.make = [](const AttentionOptions& o, Generator& g) { return std::make_shared<ZeroSAttention>(o, g); };
  return s;
}

}  // namespace lotgrad::nn
