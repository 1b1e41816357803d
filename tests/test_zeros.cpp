// ZeroS (zero-sum linear attention): the linear-time forms (causal with running-max chunks,
// two-sided) against a plain-loop reference built from the layer's parameters, the zero-sum
// rows of the weights, the explicit map, RoPE (definition, gradient, errors), gradient checks
// through multi-head attention, causality, padding (pads anywhere: the same as the compacted
// sequence), and the running maximum against one global shift where the logits rise by 200.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/lotgrad.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::nn;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {
double max_diff(const Tensor& a, const Tensor& b) { return max_abs(sub(a, b)); }

AttentionOptions zopts(bool causal, std::map<std::string, double> knobs = {}, int64_t heads = 2) {
  AttentionOptions o;
  o.name = "zeros";
  o.n_heads = heads;
  o.knobs = knobs;
  o.causal = causal;
  return o;
}
// A ZeroS layer in f64 with parameters large enough that the logits, gates and μ, τ matter.
std::shared_ptr<ZeroSAttention> layer(bool causal, std::map<std::string, double> knobs = {}, int64_t D = 8, uint64_t seed = 3) {
  Generator g(seed);
  auto m = std::dynamic_pointer_cast<ZeroSAttention>(make_attention(resolved([&] {
                                                                      AttentionOptions o = zopts(causal, knobs);
                                                                      o.d_head = D / o.n_heads;
                                                                      return o;
                                                                    }()),
                                                                    g));
  REQUIRE(m);
  m->to_(kFloat64);
  reset_linears_uniform_(*m, g);
  NoGradGuard ng;
  m->w_u->weight.copy_(mul(m->w_u->weight, 4.0));  // spread the logits s over a few units
  m->mu.copy_(randn(m->mu.shape(), g, kFloat64));
  m->log_tau.copy_(mul(randn(m->log_tau.shape(), g, kFloat64), 0.5));
  return m;
}
// (B, n) mask from a list of padded (batch row, position) pairs.
Tensor mask_of(int64_t B, int64_t n, const std::vector<std::pair<int64_t, int64_t>>& pads) {
  std::vector<bool> m((size_t)(B * n), false);
  for (auto [b, j] : pads) m[(size_t)(b * n + j)] = true;
  return Tensor::from_vector(m, {B, n});
}

// The plain-loop reference (f64, no graph) from the layer's parameters and its definition in
// nn/attention_zeros.cpp: per batch row and head, the weights w (n, n) and the output o (n, d)
// before the LayerNorm, for every valid query (pad rows stay 0).
struct Naive {
  std::vector<double> w, o;  // (B, H, n, n), (B, H, n, d)
};
Naive naive(ZeroSAttention& m, const Tensor& x, const Tensor& mask) {
  const int64_t B = x.size(0), n = x.size(1), D = x.size(2), H = m.mu.size(0), d = D / H;
  const std::vector<double> X = x.to_vector(), Wqkv = m.qkv->weight.to_vector(), bqkv = m.qkv->bias.to_vector(),
                            Wu = m.w_u->weight.to_vector(), Wg = m.w_g->weight.to_vector(), bg = m.w_g->bias.to_vector(),
                            MU = m.mu.to_vector(), LT = m.log_tau.to_vector();
  std::vector<double> M = mask.defined() ? mask.to(kFloat64).to_vector() : std::vector<double>((size_t)(B * n), 0.0);
  const int64_t G = m.w_g->weight.size(0);
  auto lin = [&](const std::vector<double>& W, const double* b, int64_t row, int64_t bb, int64_t t) {
    double a = b ? b[row] : 0.0;
    for (int64_t c = 0; c < D; ++c) a += W[(size_t)(row * D + c)] * X[(size_t)((bb * n + t) * D + c)];
    return a;
  };
  Naive r;
  r.w.assign((size_t)(B * H * n * n), 0.0);
  r.o.assign((size_t)(B * H * n * d), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> valid, rank((size_t)n, 0);
    for (int64_t t = 0; t < n; ++t)
      if (M[(size_t)(b * n + t)] == 0) {
        rank[(size_t)t] = (int64_t)valid.size();
        valid.push_back(t);
      }
    for (int64_t h = 0; h < H; ++h) {
      std::vector<std::vector<double>> q(n), k(n), v(n), u(n);
      std::vector<double> g1(n), gh(n), g0(n, 0.0), s(n);
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t f = 0; f < d; ++f) {
          q[t].push_back(lin(Wqkv, bqkv.data(), h * d + f, b, t));
          k[t].push_back(lin(Wqkv, bqkv.data(), D + h * d + f, b, t));
          v[t].push_back(lin(Wqkv, bqkv.data(), 2 * D + h * d + f, b, t));
          u[t].push_back(lin(Wu, nullptr, h * d + f, b, t));
        }
        if (m.uses_rope())
          for (auto* z : {&q[t], &k[t]}) {
            std::vector<double> y = *z;
            for (int64_t i = 0; i < d / 2; ++i) {
              const double th = (double)rank[(size_t)t] * std::pow(10000.0, -2.0 * (double)i / (double)d);
              y[i] = (*z)[i] * std::cos(th) - (*z)[i + d / 2] * std::sin(th);
              y[i + d / 2] = (*z)[i + d / 2] * std::cos(th) + (*z)[i] * std::sin(th);
            }
            *z = y;
          }
        for (auto* z : {&q[t], &k[t]}) {
          double nn2 = 0;
          for (double e : *z) nn2 += e * e;
          for (double& e : *z) e /= std::sqrt(nn2);
        }
        g1[t] = 1 / (1 + std::exp(-lin(Wg, bg.data(), h, b, t)));
        gh[t] = 1 / (1 + std::exp(-lin(Wg, bg.data(), H + h, b, t)));
        if (G == 3 * H) g0[t] = std::tanh(lin(Wg, bg.data(), 2 * H + h, b, t));
      }
      // radial logits: ū_t over the valid tokens up to t (all valid ones when two-sided)
      const double tau = std::exp(LT[(size_t)h]);
      for (int64_t t = 0; t < n; ++t) {
        std::vector<double> acc(d);
        double cnt = 0;
        for (int64_t j : valid)
          if (!m.causal() || j <= t) {
            cnt += 1;
            for (int64_t f = 0; f < d; ++f) acc[f] += u[j][f];
          }
        double dot = 0;
        for (int64_t f = 0; f < d; ++f) dot += u[t][f] * (tau * MU[(size_t)(h * d + f)] + acc[f]) / (tau + cnt);
        s[t] = -dot / std::sqrt((double)d);
      }
      for (int64_t t : valid) {
        std::vector<int64_t> seen;
        for (int64_t i : valid)
          if (!m.causal() || i <= t) seen.push_back(i);
        const double T = (double)seen.size();
        double mx = -INFINITY, Z = 0, sbar = 0;
        for (int64_t i : seen) mx = std::max(mx, s[i]), sbar += s[i] / T;
        for (int64_t i : seen) Z += std::exp(s[i] - mx);
        for (int64_t i : seen) {
          const double p = std::exp(s[i] - mx) / Z, d1 = (s[i] - sbar) / T, dh = p - 1 / T - d1;
          const double w = g1[t] * d1 + gh[t] * dh + g0[t] / T;
          r.w[(size_t)(((b * H + h) * n + t) * n + i)] = w;
          double qk = 0;
          for (int64_t f = 0; f < d; ++f) qk += q[t][f] * k[i][f];
          for (int64_t f = 0; f < d; ++f) r.o[(size_t)(((b * H + h) * n + t) * d + f)] += w * qk * v[i][f];
        }
      }
    }
  }
  return r;
}
// Rows of padded queries zeroed: x (B, H, n, ·).
Tensor valid_rows(const Tensor& x, const Tensor& mask) { return mask.defined() ? zero_padded_rows(x, mask) : x; }
}  // namespace

TEST_CASE("rope: its definition, relative positions, norms, gradient check, refusals") {
  Generator g(1);
  const Tensor x = randn({2, 3, 5, 6}, g, kFloat64), y = randn({2, 3, 5, 6}, g, kFloat64);
  const Tensor pos = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 7, 3, 0, 2, 9}, {2, 5});
  const Tensor rx = rope(x, pos);
  // element (b=1, h=2, t=3, i=1): position 2, angle 2 · 10000^(-2/6)
  const double th = 2.0 * std::pow(10000.0, -2.0 / 6.0);
  CHECK(rx.at({1, 2, 3, 1}) == doctest::Approx(x.at({1, 2, 3, 1}) * std::cos(th) - x.at({1, 2, 3, 4}) * std::sin(th)).epsilon(1e-13));
  CHECK(rx.at({1, 2, 3, 4}) == doctest::Approx(x.at({1, 2, 3, 4}) * std::cos(th) + x.at({1, 2, 3, 1}) * std::sin(th)).epsilon(1e-13));
  // a rotation: norms kept; dot products depend on the position difference only
  CHECK(max_diff(sum(mul(rx, rx), {-1}), sum(mul(x, x), {-1})) < 1e-12);
  const Tensor shifted = add(pos.to(kFloat64), 11.0);
  CHECK(max_diff(sum(mul(rope(x, pos), rope(y, pos)), {-1}), sum(mul(rope(x, shifted), rope(y, shifted)), {-1})) < 1e-12);
  CHECK(max_diff(rope(x, Tensor::zeros({2, 5}, kFloat64)), x) == 0.0);
  Tensor xl = randn({1, 2, 4, 4}, g, kFloat64).requires_grad_(true);
  const Tensor p1 = Tensor::from_vector(std::vector<double>{0.5, 3, 1, 7}, {1, 4});
  CHECK_GRAD([&](const V& in) { return rope(in[0], p1); }, V{xl});
  CHECK_THROWS_WITH_AS(rope(randn({1, 1, 2, 3}, g), Tensor::zeros({1, 2})), doctest::Contains("rope: x must be (B, H, n, d) with d even"), ShapeError);
  CHECK_THROWS_WITH_AS(rope(randn({1, 1, 2, 4}, g), Tensor::zeros({1, 3})), doctest::Contains("positions must be (B, n) = (1, 2)"), ShapeError);
  CHECK_THROWS_AS(rope(randn({1, 1, 2, 4}, g), Tensor::zeros({1, 2}), -1.0), std::invalid_argument);
  CHECK_THROWS_WITH_AS(layer(true, {{"rope", 1}}, 6), doctest::Contains("rope needs an even head dimension, got d_head = 3"), std::invalid_argument);
}

TEST_CASE("zeros: the linear-time forms equal the plain-loop zero-sum weights, at every chunk size, pads anywhere") {
  const int64_t B = 2, n = 9, D = 8, H = 2, d = 4;
  // row 0 unpadded; row 1 with pads at the start, in the middle and at the end
  const Tensor mask = mask_of(B, n, {{1, 0}, {1, 4}, {1, 5}, {1, 8}});
  Generator g(11);
  const Tensor x = randn({B, n, D}, g, kFloat64);
  for (bool causal : {true, false})
    for (double gate0 : {0.0, 1.0})
      for (const Tensor& mk : {Tensor(), mask}) {
        INFO("causal " << causal << ", zero-order gate " << gate0 << ", mask " << mk.defined());
        auto m = layer(causal, {{"zero_order_gate", gate0}});
        const Naive ref = naive(*m, x, mk);
        const Tensor o_ref = Tensor::from_vector(ref.o, {B, H, n, d}), w_ref = Tensor::from_vector(ref.w, {B, H, n, n});
        CHECK(max_abs(o_ref) > 0.1);
        const ZeroSInputs in = m->inputs(x, mk);
        for (int64_t chunk : {1, 2, 4, 9, 64}) {
          INFO("chunk " << chunk);
          CHECK(max_diff(valid_rows(zeros_linear_form(in, causal, chunk), mk), o_ref) < 1e-10);
          if (!causal) break;  // the two-sided form has no chunks
        }
        // the explicit weights and map, and forward = LayerNorm(A v)
        const ZeroSWeights w = m->weights(x, mk);
        CHECK(max_diff(valid_rows(w.w, mk), w_ref) < 1e-12);
        const Tensor A = m->attention_matrix_block(x, mk);
        CHECK(max_diff(valid_rows(matmul(A, in.v), mk), o_ref) < 1e-10);
        CHECK(max_diff(valid_rows(m->forward_block(x, mk), mk), valid_rows(layer_norm(o_ref, {d}), mk)) < 1e-9);
      }
}

TEST_CASE("zeros: delta1 and deltah rows sum to 0, w rows to 0 or to the zero-order gate, signed weights") {
  const int64_t B = 2, n = 7, D = 8;
  const Tensor mask = mask_of(B, n, {{1, 2}, {1, 6}});
  Generator g(12);
  const Tensor x = randn({B, n, D}, g, kFloat64);
  for (bool causal : {true, false})
    for (double gate0 : {0.0, 1.0}) {
      INFO("causal " << causal << ", zero-order gate " << gate0);
      auto m = layer(causal, {{"zero_order_gate", gate0}});
      const ZeroSWeights w = m->weights(x, mask);
      const Tensor r1 = valid_rows(sum(w.delta1, {-1}, true), mask), rh = valid_rows(sum(w.deltah, {-1}, true), mask);
      CHECK(max_abs(r1) < 1e-13);
      CHECK(max_abs(rh) < 1e-13);
      CHECK(max_abs(w.delta1) > 1e-2);  // not trivially zero
      CHECK(max_abs(w.deltah) > 1e-3);
      const Tensor rw = valid_rows(sum(w.w, {-1}, true), mask);
      const ZeroSInputs in = m->inputs(x, mask);
      CHECK(max_diff(rw, gate0 != 0 ? valid_rows(in.g0, mask) : Tensor::zeros(rw.shape(), kFloat64)) < 1e-13);
      if (gate0 != 0) CHECK(max_abs(in.g0) > 1e-2);
      // negative and positive weights in one row; padded keys get none
      CHECK(max_abs(relu(neg(w.w))) > 1e-3);
      CHECK(max_abs(relu(w.w)) > 1e-3);
      for (int64_t j : {2, 6}) CHECK(max_abs(w.w.select(0, 1).narrow(-1, j, 1)) == 0.0);
      if (causal) CHECK(max_abs(mul(w.w, rsub(causal_mask(n, kFloat64), 1.0))) == 0.0);
    }
}

TEST_CASE("zeros: gradient checks through multi-head attention, causal and two-sided, every parameter") {
  const int64_t n = 7;
  const Tensor mask = mask_of(2, n, {{1, 1}, {1, 5}, {1, 6}});
  for (bool causal : {true, false}) {
    INFO("causal " << causal);
    Generator g(5);
    MultiHeadAttention mha(8, zopts(causal, {{"chunk", 3}, {"zero_order_gate", 1}}), g);
    mha.to_(kFloat64);
    auto* z = dynamic_cast<ZeroSAttention*>(mha.mechanism.get());
    REQUIRE(z);
    reset_linears_uniform_(mha, g);
    {
      NoGradGuard ng;
      z->mu.copy_(randn(z->mu.shape(), g, kFloat64));
      z->log_tau.copy_(mul(randn(z->log_tau.shape(), g, kFloat64), 0.5));
    }
    Tensor x = mul(randn({2, n, 8}, g, kFloat64), 1.5).requires_grad_(true);
    GradcheckOptions go;
    go.max_checks_per_input = 12;
    V inputs{x, z->qkv->weight, z->qkv->bias, z->w_u->weight, z->w_g->weight, z->w_g->bias, z->mu, z->log_tau};
    CHECK_GRAD([&](const V& in) { return mha.forward(in[0], mask); }, inputs, go);
  }
}

TEST_CASE("zeros: causal outputs and gradients ignore later tokens") {
  const int64_t n = 10, t = 4;
  auto m = layer(true, {{"chunk", 3}});
  Generator g(6);
  Tensor x = randn({2, n, 8}, g, kFloat64).requires_grad_(true);
  const Tensor y = m->forward_block(x, Tensor());
  Tensor x2 = x.detach().clone();
  x2.narrow(1, t + 1, n - t - 1).copy_(mul(randn({2, n - t - 1, 8}, g, kFloat64), 5.0));
  const Tensor y2 = m->forward_block(x2, Tensor());
  CHECK(max_diff(y.narrow(2, 0, t + 1), y2.narrow(2, 0, t + 1)) < 1e-12);
  CHECK(max_diff(y.narrow(2, t + 1, n - t - 1), y2.narrow(2, t + 1, n - t - 1)) > 1e-3);
  sum(mul(y.narrow(2, 0, t + 1), randn({2, 2, t + 1, 4}, g, kFloat64))).backward();
  CHECK(max_abs(x.grad().narrow(1, t + 1, n - t - 1)) == 0.0);
  CHECK(max_abs(x.grad().narrow(1, 0, t + 1)) > 1e-6);
}

TEST_CASE("zeros: padding: pads anywhere change nothing, t = n_valid, same as the compacted sequence") {
  const int64_t n = 8, D = 8;
  const std::vector<int64_t> keep{1, 2, 4, 5, 7};  // row 1's valid tokens
  const Tensor mask = mask_of(2, n, {{1, 0}, {1, 3}, {1, 6}});
  Generator g(7);
  const Tensor x = randn({2, n, D}, g, kFloat64);
  Tensor x2 = x.clone();  // pads hold something else, large
  for (int64_t j : {0, 3, 6}) x2.select(0, 1).select(0, j).copy_(mul(randn({D}, g, kFloat64), 100.0));
  Tensor compact = Tensor::empty({1, (int64_t)keep.size(), D}, kFloat64);
  for (size_t i = 0; i < keep.size(); ++i) compact.select(1, (int64_t)i).copy_(x.select(0, 1).select(0, keep[i]));
  for (bool causal : {true, false}) {
    INFO("causal " << causal);
    auto m = layer(causal, {{"chunk", 2}, {"zero_order_gate", 1}});
    const Tensor y = m->forward_block(x, mask), y2 = m->forward_block(x2, mask), yc = m->forward_block(compact, Tensor());
    CHECK(max_abs(y2) < 1e3);  // pads' rows finite too
    CHECK(max_diff(y.select(0, 0), y2.select(0, 0)) == 0.0);
    for (size_t i = 0; i < keep.size(); ++i) {
      const Tensor yi = y.select(0, 1).select(1, keep[i]), y2i = y2.select(0, 1).select(1, keep[i]);
      CHECK(max_diff(yi, y2i) < 1e-12);
      CHECK(max_diff(yi, yc.select(0, 0).select(1, (int64_t)i)) < 1e-12);
    }
    // two-sided: every valid query sees n_valid = 5 keys (the weights' support), with 1/t in them
    const ZeroSWeights w = m->weights(x, mask);
    const Tensor support = gt(abs(w.delta1.select(0, 1).select(0, 0)), 0.0).to(kFloat64);  // (n, n)
    if (!causal) CHECK(sum(support.select(0, 1)).item() == doctest::Approx(5.0));
    // a batch row with every token padded: finite (MultiHeadAttention zeroes its rows)
    std::vector<std::pair<int64_t, int64_t>> all;
    for (int64_t j = 0; j < n; ++j) all.push_back({1, j});
    CHECK(max_abs(m->forward_block(x2, mask_of(2, n, all))) < 1e3);
  }
}

TEST_CASE("zeros: the running maximum keeps f32 prefixes where one global shift underflows (logits rising by 200)") {
  const int64_t B = 1, H = 1, n = 64, d = 4;
  Generator g(8);
  ZeroSInputs in;
  in.q = randn({B, H, n, d}, g, kFloat64);
  in.k = randn({B, H, n, d}, g, kFloat64);
  in.v = randn({B, H, n, d}, g, kFloat64);
  in.q = div(in.q, sqrt(sum(mul(in.q, in.q), {-1}, true)));
  in.k = div(in.k, sqrt(sum(mul(in.k, in.k), {-1}, true)));
  std::vector<double> s(n);
  for (int64_t i = 0; i < n; ++i) s[(size_t)i] = 200.0 * (double)i / (double)(n - 1) + std::sin((double)i);
  in.s = Tensor::from_vector(s, {B, H, n, 1});
  in.g1 = sigmoid(randn({B, H, n, 1}, g, kFloat64));
  in.gh = sigmoid(randn({B, H, n, 1}, g, kFloat64));
  const Tensor ref = zeros_linear_form(in, true, 8);  // f64
  // the f64 form is the definition (explicit weights)
  CHECK(max_diff(ref, matmul(mul(zeros_weights(in, true).w, matmul(in.q, in.k.transpose(-2, -1))), in.v)) < 1e-10);
  ZeroSInputs f = in;
  for (Tensor* t : {&f.q, &f.k, &f.v, &f.s, &f.g1, &f.gh}) *t = t->to(kFloat32);
  for (int64_t chunk : {1, 8, 64}) {
    INFO("chunk " << chunk);  // chunk 64 = n: the cuts where the max rises by 30 do the work
    const Tensor o = zeros_linear_form(f, true, chunk).to(kFloat64);
    CHECK(max_diff(o, ref) < 1e-4 * std::max(1.0, max_abs(ref)));
  }
  // one global shift c = max s (the reference implementation's): the early E_t = Σ_{j<=t} e^{s_j - c}
  // are 0 in f32, so α_t = σʰ/E_t and the output are not finite there
  const Tensor c = max(f.s);
  const Tensor ek = exp(sub(f.s, c));
  const Tensor E = cumsum(ek, 2);
  CHECK(E.at({0, 0, 0, 0}) == 0.0);
  const Tensor cnt = Tensor::from_vector(std::vector<float>([&] {
                                           std::vector<float> t(n);
                                           for (int64_t i = 0; i < n; ++i) t[(size_t)i] = (float)(i + 1);
                                           return t;
                                         }()),
                                         {1, 1, n, 1});
  const Tensor P = cumsum(f.s, 2);
  const Tensor alpha = div(f.gh, E), beta = div(sub(f.g1, f.gh), cnt), gamma = neg(div(add(mul(beta, P), f.gh), cnt));
  const Tensor phi_q = cat({mul(alpha, f.q), mul(beta, f.q), mul(gamma, f.q)}, -1);
  const Tensor phi_k = cat({mul(ek, f.k), mul(f.s, f.k), f.k}, -1);
  const Tensor global = causal_linear_prefix(phi_q, phi_k, f.v, 8).to(kFloat64);
  CHECK(!std::isfinite(max_abs(global.narrow(2, 0, 8))));
  CHECK(max_diff(global.narrow(2, n - 8, 8), ref.narrow(2, n - 8, 8)) < 1e-3 * std::max(1.0, max_abs(ref)));  // late rows fine
}

TEST_CASE("zeros: declaration, knobs, names") {
  const MechanismSpec& s = mechanism_spec("zeros");
  CHECK(s.caps.causal);
  CHECK(s.caps.linear_time);
  CHECK(s.caps.block_input);
  Generator g(9);
  MultiHeadAttention mha(8, zopts(false, {{"zero_order_gate", 1}}), g);
  std::vector<std::string> names;
  for (const auto& [name, t] : mha.named_parameters()) names.push_back(name);
  for (const char* want : {"mechanism.qkv.weight", "mechanism.w_u.weight", "mechanism.w_g.weight", "mechanism.zeros_mu",
                           "mechanism.zeros_log_tau"})
    CHECK(std::find(names.begin(), names.end(), want) != names.end());
  CHECK(mha.mechanism->named_parameters().size() == 7);  // qkv (2), w_u (1), w_g (2), mu, log tau
  auto* z = dynamic_cast<ZeroSAttention*>(mha.mechanism.get());
  REQUIRE(z);
  CHECK(z->w_g->weight.size(0) == 6);  // 3 gates × 2 heads
  CHECK(z->type_name() == "ZeroSAttention(two-sided, zero-order gate, rope)");
  CHECK_THROWS_WITH_AS(zeros_linear_form(z->inputs(randn({1, 3, 8}, g), Tensor()), true, 0),
                       doctest::Contains("chunk must be >= 1, got 0"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(z->inputs(randn({1, 3, 6}, g), Tensor()), doctest::Contains("x must be (B, n, D = 8)"), ShapeError);
}
