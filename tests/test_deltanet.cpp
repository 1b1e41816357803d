// DeltaNet: the chunked delta-rule op (ops/delta_rule.h) against the plain recurrence (values
// and gradients, every chunk size, chunks that do not divide n, the blocked solve at C = 64),
// f64 gradient checks (views, a tensor used twice), f32, thread-count independence, the
// memory the backward keeps, refusals; then the deltanet mechanism through
// MultiHeadAttention: gradient check, causality, padding (causal and two-sided), chunk 1,
// neg_eigval reaching β > 1, the L2-norm ε convention, and the probe's map.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention_deltanet.h>
#include <lotgrad/ops/delta_rule.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {

// DeltaNet-shaped operands (f64 leaves): q random, k with unit rows, v random, β in (0, beta_max).
struct Operands {
  Tensor q, k, v, beta;
  V all() const { return {q, k, v, beta}; }
};
Operands operands(int64_t B, int64_t H, int64_t n, int64_t dk, int64_t dv, uint64_t seed, double beta_max = 2.0,
                  DType dt = kFloat64) {
  Generator g(seed);
  Operands o;
  NoGradGuard ng;
  o.q = randn({B, H, n, dk}, g, dt);
  const Tensor k = randn({B, H, n, dk}, g, dt);
  o.k = div(k, sqrt(sum(mul(k, k), {-1}, true)));
  o.v = randn({B, H, n, dv}, g, dt);
  o.beta = mul(rand({B, H, n}, g, dt), beta_max);
  for (Tensor* t : {&o.q, &o.k, &o.v, &o.beta}) t->requires_grad_();
  return o;
}

// Output and the gradients of q, k, v, β for a seeded random upstream gradient.
V run(const std::function<Tensor(const V&)>& f, const V& in) {
  for (const auto& t : in) t.zero_grad();
  Tensor out = f(in);
  Generator g(77);
  out.backward(randn(out.shape(), g, out.dtype()));
  V r{out.detach()};
  for (const auto& t : in) r.push_back(t.grad().defined() ? t.grad() : Tensor::zeros(t.shape(), t.dtype()));
  return r;
}

Tensor chunked(const V& x, int64_t C) { return delta_rule(x[0], x[1], x[2], x[3], C); }
Tensor recurrent(const V& x) { return delta_rule_recurrent(x[0], x[1], x[2], x[3]); }

// Largest |x|, +inf when an entry is not finite.

void check_chunked_vs_recurrent(const Operands& o, int64_t C, double tol, bool grads) {
  INFO("n " << o.q.size(2) << ", dk " << o.q.size(3) << ", dv " << o.v.size(3) << ", chunk " << C);
  if (!grads) {
    NoGradGuard ng;
    const Tensor a = chunked(o.all(), C), b = recurrent(o.all());
    CHECK(max_abs(b) > 0.1);
    CHECK(max_abs(sub(a, b)) < tol);
    return;
  }
  const V a = run([&](const V& x) { return chunked(x, C); }, o.all()), b = run(recurrent, o.all());
  const char* names[] = {"output", "dq", "dk", "dv", "dbeta"};
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(names[i]);
    CHECK(max_abs(b[i]) > 1e-3);  // not a comparison of zeros
    CHECK(max_abs(sub(a[i], b[i])) < tol);
  }
}

}  // namespace

TEST_CASE("delta_rule: the chunked form equals the recurrence for every chunk size") {
  for (int64_t n : {7, 13, 20}) {
    const Operands o = operands(2, 2, n, 5, 3, 100 + n);
    for (int64_t C : {1, 2, 3, 4, 5, 6, 8, 16, 19, 20, 64}) check_chunked_vs_recurrent(o, C, 1e-10, false);
  }
  // β up to 1 and keys of any norm (not DeltaNet-shaped, still the same algebra).
  Generator g(5);
  Operands o = operands(1, 3, 11, 4, 6, 6, 1.0);
  o.k = mul(randn({1, 3, 11, 4}, g, kFloat64), 0.4);
  for (int64_t C : {1, 3, 11}) check_chunked_vs_recurrent(o, C, 1e-10, false);
}

TEST_CASE("delta_rule: long sequence, C = 64 (blocked solve), widths past one vector") {
  // dk 33: four-vector blocks plus a scalar tail in f64; dv 40: a four-vector block plus one.
  const Operands o = operands(1, 2, 130, 33, 40, 11);
  for (int64_t C : {64, 17}) check_chunked_vs_recurrent(o, C, 1e-10, false);
}

TEST_CASE("delta_rule: chunked gradients equal the recurrence's gradients") {
  check_chunked_vs_recurrent(operands(2, 1, 13, 4, 5, 21), 4, 1e-10, true);
  check_chunked_vs_recurrent(operands(1, 2, 9, 3, 2, 22), 1, 1e-10, true);
  check_chunked_vs_recurrent(operands(1, 1, 130, 12, 9, 23), 64, 1e-9, true);
  check_chunked_vs_recurrent(operands(1, 1, 40, 17, 33, 24), 20, 1e-9, true);
}

GradcheckOptions few_checks() {
  GradcheckOptions opt;
  opt.max_checks_per_input = 24;
  return opt;
}

TEST_CASE("delta_rule: gradient check") {
  const Operands o = operands(2, 2, 9, 4, 3, 31);
  for (int64_t C : {1, 4, 9}) {
    INFO("chunk " << C);
    CHECK_GRAD([&](const V& x) { return chunked(x, C); }, o.all(), few_checks());
  }
}

TEST_CASE("delta_rule: gradient check with views as inputs") {
  const Tensor q = noncontig_leaf({1, 2, 7, 3}, 32), k = noncontig_leaf({1, 2, 7, 3}, 33, 0.5);
  const Tensor v = leaf({1, 7, 2, 4}, 34).detach().transpose(1, 2).requires_grad_();  // (1, 2, 7, 4), strided
  const Tensor b = leaf({1, 2, 14}, 35, 0.3, 0.8).detach().slice(-1, 0, 14, 2).requires_grad_();
  CHECK_FALSE(q.is_contiguous());
  CHECK_FALSE(v.is_contiguous());
  CHECK_FALSE(b.is_contiguous());
  CHECK_GRAD([](const V& x) { return delta_rule(x[0], x[1], x[2], x[3], 3); }, V{q, k, v, b}, few_checks());
}

TEST_CASE("delta_rule: one tensor as queries and keys") {
  const Tensor qk = leaf({1, 2, 8, 3}, 36, 0.5), v = leaf({1, 2, 8, 3}, 37), b = leaf({1, 2, 8}, 38, 0.2, 0.7);
  auto f = [](const V& x) { return delta_rule(x[0], x[0], x[1], x[2], 3); };
  CHECK_GRAD(f, V{qk, v, b}, few_checks());
  // and the same gradients as through the recurrence
  const V a = run(f, {qk, v, b});
  const V r = run([](const V& x) { return delta_rule_recurrent(x[0], x[0], x[1], x[2]); }, {qk, v, b});
  for (size_t i = 0; i < a.size(); ++i) CHECK(max_abs(sub(a[i], r[i])) < 1e-10);
}

TEST_CASE("delta_rule: f32 agrees with f64, and thread counts give the same bits") {
  const Operands o = operands(2, 3, 70, 16, 16, 41);
  const V ref = run([](const V& x) { return chunked(x, 32); }, o.all());
  V o32;
  for (const auto& t : o.all()) o32.push_back(t.detach().to(kFloat32).requires_grad_());
  const V f = run([](const V& x) { return chunked(x, 32); }, o32);
  for (size_t i = 0; i < f.size(); ++i) {
    CHECK(f[i].dtype() == kFloat32);
    CHECK(max_abs(sub(f[i].to(kFloat64), ref[i])) < 1e-3 * (1 + max_abs(ref[i])));
  }
  const int saved = get_num_threads();
  set_num_threads(1);
  const V one = run([](const V& x) { return chunked(x, 32); }, o32);
  set_num_threads(2);
  const V two = run([](const V& x) { return chunked(x, 32); }, o32);
  set_num_threads(saved);
  for (size_t i = 0; i < one.size(); ++i) CHECK(one[i].to_vector() == two[i].to_vector());
}

TEST_CASE("delta_rule: the backward keeps the chunk states, not one per step") {
  // B·H = 2, n = 512, d = 16, C = 64: the node holds the 8 incoming states per head
  // (8·16·16 values) beside the output, where per-step states would be 512·16·16.
  const Operands o = operands(1, 2, 512, 16, 16, 51);
  const int64_t C = 64, before = storage_bytes_in_use();
  Tensor out = delta_rule(o.q, o.k, o.v, o.beta, C);
  const int64_t held = storage_bytes_in_use() - before;
  const int64_t states = delta_rule_state_bytes(o.q, o.v, C);
  CHECK(states == 2 * 8 * 16 * 16 * 8);
  CHECK(held == (int64_t)out.numel() * 8 + states);  // inputs are contiguous: saved without copies
  out = Tensor();
  CHECK(storage_bytes_in_use() == before);  // the graph went with the output
}

TEST_CASE("delta_rule: an empty sequence and a chunk longer than the sequence") {
  const Operands e = operands(1, 2, 0, 4, 3, 62);
  const V r = run([](const V& x) { return chunked(x, 64); }, e.all());
  CHECK(r[0].shape() == Shape{1, 2, 0, 3});
  CHECK(r[1].shape() == Shape{1, 2, 0, 4});
  const Operands o = operands(1, 1, 5, 4, 3, 63);
  CHECK(delta_rule_state_bytes(o.q, o.v, 65536) == 4 * 3 * 8);  // one chunk, and no 65536² work buffer
  check_chunked_vs_recurrent(o, 65536, 1e-10, true);
}

TEST_CASE("delta_rule: bad operands are refused with the op, the rule and every shape") {
  const Operands o = operands(1, 2, 5, 4, 3, 61);
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  const std::string m1 = message([&] { delta_rule(o.q, o.k.narrow(3, 0, 3), o.v, o.beta); });
  CHECK(m1.find("delta_rule") != std::string::npos);
  CHECK(m1.find("q (1, 2, 5, 4) f64") != std::string::npos);
  CHECK(m1.find("k (1, 2, 5, 3) f64") != std::string::npos);
  CHECK(m1.find("v (1, 2, 5, 3) f64") != std::string::npos);
  CHECK(m1.find("beta (1, 2, 5) f64") != std::string::npos);
  CHECK(message([&] { delta_rule(o.q, o.k, o.v.narrow(2, 0, 4), o.beta); }).find("v (1, 2, 4, 3)") != std::string::npos);
  CHECK(message([&] { delta_rule(o.q, o.k, o.v, o.beta.unsqueeze(-1)); }).find("beta (1, 2, 5, 1)") != std::string::npos);
  CHECK(message([&] { delta_rule(o.q, o.k, o.v, o.beta.to(kFloat32)); }).find("one float dtype") != std::string::npos);
  CHECK(message([&] { delta_rule(o.q, o.k, o.v, o.beta, 0); }) == "delta_rule: chunk must be >= 1, got 0");
  CHECK(message([&] { delta_rule_recurrent(o.q, o.q, o.q, o.beta.narrow(2, 0, 2)); }).find("delta_rule_recurrent") !=
        std::string::npos);
}

// ---- the deltanet mechanism ---------------------------------------------------------------
namespace {

using nn::DeltaNetAttention;

nn::AttentionOptions dn_opts(bool causal, std::map<std::string, double> knobs = {{"chunk", 2}}) {
  nn::AttentionOptions o;
  o.name = "deltanet";
  o.n_heads = 2;
  o.knobs = knobs;
  o.causal = causal;
  return o;
}

// Multi-head attention with deltanet (D = 8: 2 heads of 4), f64, its parameters redrawn at
// scales where every part matters (the default 0.02 projections make q, k, v tiny).
struct Layer {
  std::shared_ptr<nn::MultiHeadAttention> mha;
  DeltaNetAttention* dn = nullptr;
  Layer(bool causal, std::map<std::string, double> knobs = {{"chunk", 2}}, uint64_t seed = 3) {
    Generator g(seed);
    mha = std::make_shared<nn::MultiHeadAttention>(8, dn_opts(causal, knobs), g);
    mha->to_(kFloat64);
    dn = dynamic_cast<DeltaNetAttention*>(mha->mechanism.get());
    REQUIRE(dn != nullptr);
    NoGradGuard ng;
    dn->proj->weight.copy_(mul(randn(dn->proj->weight.shape(), g, kFloat64), 0.4));
    dn->beta_proj->weight.copy_(mul(randn(dn->beta_proj->weight.shape(), g, kFloat64), 0.6));
    dn->o_norm_weight.copy_(add(mul(randn({4}, g, kFloat64), 0.3), 1.0));
  }
  Tensor block(const Tensor& x, const Tensor& mask = Tensor()) const { return dn->forward_block(x, mask); }
};

Tensor input(int64_t B, int64_t n, uint64_t seed) {
  Generator g(seed);
  return randn({B, n, 8}, g, kFloat64);
}

// (B, n) mask, true where pads[b] lists the position.
Tensor mask_of(int64_t B, int64_t n, const std::vector<std::vector<int64_t>>& pads) {
  std::vector<bool> m((size_t)(B * n), false);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p : pads[(size_t)b]) m[(size_t)(b * n + p)] = true;
  return Tensor::from_vector(m, {B, n});
}

// The layer written out element by element (causal, no padding): x W_qkvᵀ, the causal
// depthwise convolution, SiLU, per-head L2 norm with ε 1e-6 inside the square root, q/√d,
// β = sigmoid(x W_βᵀ) (× 2), the recurrence S ← S + β (v − S k) kᵀ, o = S q, RMSNorm (ε 1e-5)
// times the weight. -> (B, H, n, d) as a flat row-major vector.
std::vector<double> layer_by_hand(const Layer& L, const Tensor& x, bool neg_eigval) {
  const int64_t B = x.size(0), n = x.size(1), D = 8, H = 2, d = 4, K = L.dn->conv_weight.size(1);
  const std::vector<double> X = x.to_vector(), W = L.dn->proj->weight.to_vector(), Wb = L.dn->beta_proj->weight.to_vector(),
                            Cw = L.dn->conv_weight.to_vector(), g = L.dn->o_norm_weight.to_vector();
  std::vector<double> h((size_t)(B * n * 3 * D), 0.0), y(h.size(), 0.0), out((size_t)(B * H * n * d));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t c = 0; c < 3 * D; ++c)
        for (int64_t e = 0; e < D; ++e) h[(size_t)((b * n + t) * 3 * D + c)] += W[(size_t)(c * D + e)] * X[(size_t)((b * n + t) * D + e)];
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t c = 0; c < 3 * D; ++c) {
        double s = 0;
        for (int64_t m = 0; m < K && m <= t; ++m) s += Cw[(size_t)(c * K + m)] * h[(size_t)((b * n + t - m) * 3 * D + c)];
        y[(size_t)((b * n + t) * 3 * D + c)] = s / (1 + std::exp(-s));
      }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t hh = 0; hh < H; ++hh) {
      std::vector<double> S((size_t)(d * d), 0.0);  // S[i][j], (dv, dk)
      for (int64_t t = 0; t < n; ++t) {
        const double* row = &y[(size_t)((b * n + t) * 3 * D)];
        std::vector<double> q(row + hh * d, row + hh * d + d), k(row + D + hh * d, row + D + hh * d + d),
            v(row + 2 * D + hh * d, row + 2 * D + hh * d + d);
        double qq = 0, kk = 0, z = 0;
        for (int64_t e = 0; e < d; ++e) qq += q[e] * q[e], kk += k[e] * k[e];
        for (int64_t e = 0; e < d; ++e) q[e] /= std::sqrt(qq + 1e-6) * std::sqrt((double)d), k[e] /= std::sqrt(kk + 1e-6);
        for (int64_t e = 0; e < D; ++e) z += Wb[(size_t)(hh * D + e)] * X[(size_t)((b * n + t) * D + e)];
        const double beta = (neg_eigval ? 2.0 : 1.0) / (1 + std::exp(-z));
        for (int64_t i = 0; i < d; ++i) {
          double sk = 0;
          for (int64_t j = 0; j < d; ++j) sk += S[(size_t)(i * d + j)] * k[j];
          const double u = beta * (v[i] - sk);
          for (int64_t j = 0; j < d; ++j) S[(size_t)(i * d + j)] += u * k[j];
        }
        std::vector<double> o((size_t)d, 0.0);
        double ms = 0;
        for (int64_t i = 0; i < d; ++i) {
          for (int64_t j = 0; j < d; ++j) o[i] += S[(size_t)(i * d + j)] * q[j];
          ms += o[i] * o[i] / (double)d;
        }
        for (int64_t i = 0; i < d; ++i) out[(size_t)(((b * H + hh) * n + t) * d + i)] = o[i] / std::sqrt(ms + 1e-5) * g[i];
      }
    }
  return out;
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::isfinite(a[i] - b[i]) ? std::max(m, std::abs(a[i] - b[i])) : INFINITY;
  return m;
}

}  // namespace

TEST_CASE("deltanet: the layer equals its definition written out by hand") {
  for (bool neg : {false, true})
    for (int64_t conv : {4, 1}) {
      INFO("neg_eigval " << neg << ", conv_size " << conv);
      const Layer L(true, {{"chunk", 3}, {"neg_eigval", neg ? 1.0 : 0.0}, {"conv_size", (double)conv}});
      const Tensor x = input(2, 9, 71);
      const std::vector<double> ref = layer_by_hand(L, x, neg);
      CHECK(max_abs(Tensor::from_vector(ref, {(int64_t)ref.size()})) > 0.5);
      CHECK(max_diff(L.block(x).to_vector(), ref) < 1e-10);
    }
}

TEST_CASE("deltanet: every chunk size gives the same layer output (chunk 1 included)") {
  const Tensor x = input(2, 11, 72);
  const Tensor ref = Layer(true, {{"chunk", 64}}).block(x);
  for (int64_t C : {1, 2, 4, 11}) {
    INFO("chunk " << C);
    CHECK(max_abs(sub(Layer(true, {{"chunk", (double)C}}).block(x), ref)) < 1e-10);
  }
}

TEST_CASE("deltanet: gradient check through multi-head attention") {
  for (bool causal : {true, false}) {
    INFO((causal ? "causal" : "two-sided"));
    const Layer L(causal, {{"chunk", 2}, {"neg_eigval", 1}});
    const Tensor x = leaf({2, 6, 8}, 73, 0.8);
    const Tensor mask = mask_of(2, 6, {{}, {0, 4}});
    GradcheckOptions o;
    o.max_checks_per_input = 12;
    CHECK_GRAD([&](const V& v) { return L.mha->forward(v[0], mask); },
               V{x, L.dn->proj->weight, L.dn->beta_proj->weight, L.dn->conv_weight, L.dn->o_norm_weight,
                 L.mha->out_proj->weight},
               o);
  }
}

TEST_CASE("deltanet: causality (values and gradients)") {
  const Layer L(true);
  const Tensor x = input(1, 9, 74).requires_grad_();
  const int64_t t = 4;
  Tensor x2 = x.detach().clone();
  {
    NoGradGuard ng;
    x2.narrow(1, t + 1, 9 - t - 1).copy_(input(1, 9 - t - 1, 75));
  }
  const Tensor y = L.mha->forward(x), y2 = L.mha->forward(x2);
  CHECK(max_abs(sub(y.narrow(1, 0, t + 1), y2.narrow(1, 0, t + 1))) == 0.0);
  CHECK(max_abs(sub(y.narrow(1, t + 1, 9 - t - 1), y2.narrow(1, t + 1, 9 - t - 1))) > 1e-3);
  sum(y.narrow(1, 0, t + 1)).backward();
  CHECK(max_abs(x.grad().narrow(1, t + 1, 9 - t - 1)) == 0.0);
  CHECK(max_abs(x.grad().narrow(1, 0, t + 1)) > 1e-3);
}

TEST_CASE("deltanet: pad content changes no valid output, causal and two-sided") {
  const int64_t B = 3, n = 8;
  const Tensor mask = mask_of(B, n, {{}, {6, 7}, {0, 1, 5}});  // none, right, left and inside
  const std::vector<bool> is_pad = [&] {
    std::vector<bool> m;
    for (double v : mask.to(kFloat64).to_vector()) m.push_back(v != 0);
    return m;
  }();
  for (bool causal : {true, false}) {
    INFO((causal ? "causal" : "two-sided"));
    const Layer L(causal);
    const Tensor x = input(B, n, 76);
    Tensor x2 = x.clone();
    {
      NoGradGuard ng;
      const Tensor noise = mul(input(B, n, 77), 100.0);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t p = 0; p < n; ++p)
          if (is_pad[(size_t)(b * n + p)]) x2.select(0, b).select(0, p).copy_(noise.select(0, b).select(0, p));
    }
    const Tensor y = L.mha->forward(x, mask), y2 = L.mha->forward(x2, mask);
    CHECK(max_abs(y) < INFINITY);
    CHECK(max_abs(y2) < INFINITY);  // pads' rows finite too
    CHECK(max_abs(sub(y, y2)) < 1e-12);
    // a padded row's valid outputs equal those of the same sequence with its pads removed
    const Tensor valid = Tensor::from_vector(std::vector<int64_t>{2, 3, 4, 6, 7}, {5});
    const Tensor row = L.mha->forward(index_select(x.select(0, 2), 0, valid).unsqueeze(0));
    CHECK(max_abs(sub(row.select(0, 0), index_select(y.select(0, 2), 0, valid))) < 1e-12);
  }
}

TEST_CASE("deltanet: the two-sided form is the causal core forward plus the core on the reversed sequence") {
  const Layer L(false);
  const Tensor x = input(2, 7, 78);
  const Tensor flip = Tensor::from_vector(std::vector<int64_t>{6, 5, 4, 3, 2, 1, 0}, {7});
  const Tensor expect = add(L.dn->core(x), index_select(L.dn->core(index_select(x, 1, flip)), 2, flip));
  CHECK(max_abs(sub(L.block(x), expect)) < 1e-12);
  CHECK(max_abs(sub(L.block(x), L.dn->core(x))) > 1e-3);
}

TEST_CASE("deltanet: neg_eigval doubles beta, and beta above 1 is reached") {
  const Layer on(true, {{"chunk", 2}, {"neg_eigval", 1}}), off(true, {{"chunk", 2}, {"neg_eigval", 0}});
  const Tensor x = input(2, 16, 79);
  const Tensor b_on = on.dn->features(x).beta, b_off = off.dn->features(x).beta;  // same weights (same seed)
  CHECK(max_abs(sub(b_on, mul(b_off, 2.0))) < 1e-14);
  const std::vector<double> v = b_on.to_vector();
  CHECK(*std::max_element(v.begin(), v.end()) > 1.2);
  CHECK(*std::max_element(v.begin(), v.end()) < 2.0);
  CHECK(*std::min_element(v.begin(), v.end()) > 0.0);
  const std::vector<double> w = b_off.to_vector();
  CHECK(*std::max_element(w.begin(), w.end()) < 1.0);
  CHECK(max_abs(sub(on.block(x), off.block(x))) > 1e-2);  // and the flag changes the layer
}

TEST_CASE("deltanet: the L2 norm's epsilon sits inside the square root (1e-6)") {
  // Keys whose squared norm s is about 1e-6: their normalised norm is sqrt(s / (s + 1e-6)), not 1.
  const Layer L(true);
  const Tensor x = mul(input(1, 5, 80), 1.0);
  {
    NoGradGuard ng;
    L.dn->proj->weight.mul_(0.002);
  }
  const DeltaNetAttention::Features f = L.dn->features(x);
  const Tensor h = L.dn->proj->forward(x);  // recompute the raw keys: conv, SiLU, the k part of head 0
  const Tensor raw = mul(causal_conv1d(h, L.dn->conv_weight), sigmoid(causal_conv1d(h, L.dn->conv_weight))).narrow(2, 8, 4);
  const std::vector<double> r = raw.to_vector(), k = f.k.select(1, 0).to_vector();
  bool saw_small = false;
  for (int64_t t = 0; t < 5; ++t) {
    double s = 0, kn = 0;
    for (int64_t e = 0; e < 4; ++e) s += r[(size_t)(t * 4 + e)] * r[(size_t)(t * 4 + e)], kn += k[(size_t)(t * 4 + e)] * k[(size_t)(t * 4 + e)];
    saw_small = saw_small || s < 1e-5;
    CHECK(std::sqrt(kn) == doctest::Approx(std::sqrt(s / (s + 1e-6))).epsilon(1e-12));
  }
  CHECK(saw_small);
}

TEST_CASE("deltanet: the probe's map times the values is the read-out before the norm") {
  const Layer L(true, {{"chunk", 3}});
  const Tensor x = input(2, 7, 81);
  const DeltaNetAttention::Features f = L.dn->features(x);
  const Tensor o = delta_rule(f.q, f.k, f.v, f.beta, 3);
  const Tensor A = L.dn->attention_matrix_block(x, Tensor());
  CHECK(A.shape() == Shape{2, 2, 7, 7});
  CHECK(max_abs(sub(matmul(A, f.v), o)) < 1e-12);
  CHECK(max_abs(mul(A, rsub(causal_mask(7, kFloat64), 1.0))) == 0.0);  // nothing above the diagonal
  // with padding: valid rows give padded keys zero weight
  const Tensor mask = mask_of(2, 7, {{}, {1, 6}});
  const Tensor Am = nn::probe_attention(*L.mha, x, mask);
  CHECK(max_abs(Am.select(0, 1).narrow(2, 1, 1)) == 0.0);
  CHECK(max_abs(Am.select(0, 1).narrow(2, 6, 1)) == 0.0);
}
