// QT-ViT (nn/attention_qtvit.cpp) and the packed outer-product op (ops/triu_outer.h): the
// kernels against their closed forms (f64, 1e-12), the packed features against the full
// Kronecker ones, the linear term's positivity bound, the mechanism's output against the
// explicit O(n²) normalised kernel weights (two-sided and causal, chunk sizes 1, 3 and 64 at
// n = 7, pads inside and at the end), padding (pads change nothing, the output is that of the
// sequence without them, and zeroing v alone would not do), the local shortcut, gradient checks.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention_qtvit.h>
#include <lotgrad/ops/triu_outer.h>

#include "support/gradcheck.h"
#include "support/same_bits.h"

using namespace lotgrad;
using namespace lotgrad::nn;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {

Tensor rnd(const Shape& s, uint64_t seed, double scale = 1.0) {
  Generator g(seed);
  Tensor t = randn(s, g, kFloat64);
  t.mul_(scale);
  return t;
}

// The kernel in closed form on plain vectors. kind: 0 compact (x/‖x‖₄), 1 compact_raw, 2 exact.
struct Kernel {
  int kind = 0;
  double alpha = 1, gamma = 1, beta2 = 0;
  double operator()(const double* q, const double* k, int64_t d) const {
    auto fourth_root_sum = [&](const double* x) {
      double s = 0;
      for (int64_t i = 0; i < d; ++i) s += x[i] * x[i] * x[i] * x[i];
      return std::pow(s + 1e-12, 0.25);
    };
    const double nq = kind == 0 ? fourth_root_sum(q) : 1.0, nk = kind == 0 ? fourth_root_sum(k) : 1.0;
    double dot = 0, diag = 0;
    for (int64_t i = 0; i < d; ++i) {
      const double a = q[i] / nq * k[i] / nk;
      dot += a;
      diag += a * a;
    }
    if (kind == 2) {
      const double s = dot / std::sqrt((double)d);
      return 1 + s + s * s / 2;
    }
    return 0.5 * (alpha * alpha * diag + beta2 * 2 * dot / std::sqrt((double)d) + gamma * gamma + 1);
  }
};

// The explicit O(n²) form: out_i = Σ_j K(q_i, k_j) v_j / (Σ_j K(q_i, k_j) + 1e-6) over valid keys
// (and j <= i when causal). q, k (B, H, n, d), v (B, H, n, e), mask (B, n) or undefined.
Tensor explicit_output(const Kernel& K, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                       bool causal) {
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), d = q.size(3), e = v.size(3);
  const std::vector<double> Q = q.to_vector(), Kv = k.to_vector(), X = v.to_vector();
  const std::vector<double> M = mask.defined() ? mask.to(kFloat64).to_vector() : std::vector<double>((size_t)(B * n), 0.0);
  std::vector<double> out((size_t)(B * H * n * e), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < n; ++i) {
        const int64_t r = (b * H + h) * n;
        double den = 0;
        std::vector<double> num((size_t)e, 0.0);
        for (int64_t j = 0; j < (causal ? i + 1 : n); ++j) {
          if (M[(size_t)(b * n + j)] != 0) continue;
          const double w = K(&Q[(size_t)((r + i) * d)], &Kv[(size_t)((r + j) * d)], d);
          den += w;
          for (int64_t c = 0; c < e; ++c) num[(size_t)c] += w * X[(size_t)((r + j) * e + c)];
        }
        for (int64_t c = 0; c < e; ++c) out[(size_t)((r + i) * e + c)] = num[(size_t)c] / (den + 1e-6);
      }
  return Tensor::from_vector(out, {B, H, n, e});
}

const char* kKernelNames[] = {"compact", "compact_raw", "exact"};

std::shared_ptr<AttentionMechanism> make_qtvit(int kind, bool causal, std::map<std::string, double> knobs = {},
                                               int64_t heads = 2, int64_t d = 4) {
  AttentionOptions o;
  o.name = "qtvit";
  o.n_heads = heads;
  o.d_head = d;
  o.causal = causal;
  o.knobs = knobs;
  o.knobs["qt_kernel"] = kind;
  Generator g(7);
  auto m = make_attention(o, g);
  m->to_(kFloat64);
  return m;
}

Tensor param(const Module& m, const std::string& name) {
  for (const auto& [n, t] : m.named_parameters())
    if (n == name) return t;
  FAIL("no parameter " << name);
  return Tensor();
}

// Sets the learned scalars away from their initial values; returns the kernel they make.
Kernel set_scalars(Module& m, int kind, bool linear) {
  Kernel K{.kind = kind};
  if (kind == 2) return K;
  NoGradGuard ng;
  param(m, "qt_alpha").fill_(K.alpha = 0.8);
  param(m, "qt_gamma").fill_(K.gamma = -0.6);
  if (linear) {
    param(m, "qt_beta_raw").fill_(1.3);
    K.beta2 = kQtBetaRoom * 0.8 * std::sqrt(1 + 0.36) / (1 + std::exp(-1.3));
  }
  return K;
}

// (B, n) mask from a list of padded (b, j).
Tensor make_mask(int64_t B, int64_t n, const std::vector<std::pair<int64_t, int64_t>>& pads) {
  std::vector<bool> m((size_t)(B * n), false);
  for (auto [b, j] : pads) m[(size_t)(b * n + j)] = true;
  return Tensor::from_vector(m, {B, n});
}

Tensor gram(const Tensor& a, const Tensor& b) { return matmul(a, b.transpose(-2, -1)); }

}  // namespace

TEST_CASE("triu_outer: the packed upper triangle, its Gram matrix equals the full Kronecker features', gradients") {
  const Tensor a = rnd({3, 5, 6}, 1);
  for (double c : {std::sqrt(2.0), 0.7}) {
    const Tensor P = triu_outer(a, c);
    REQUIRE(P.shape() == Shape{3, 5, 21});
    const std::vector<double> x = a.to_vector(), y = P.to_vector();
    double worst = 0;
    for (int64_t r = 0; r < 15; ++r)
      for (int64_t i = 0, p = 0; i < 6; ++i)
        for (int64_t j = i; j < 6; ++j, ++p)
          worst = std::max(worst, std::abs(y[(size_t)(r * 21 + p)] - (i == j ? 1.0 : c) * x[(size_t)(r * 6 + i)] * x[(size_t)(r * 6 + j)]));
    CHECK(worst == 0.0);
  }
  // ⟨triu_outer(a), triu_outer(b)⟩ = ⟨vec(a⊗a), vec(b⊗b)⟩ = ⟨a, b⟩²
  const Tensor u = rnd({2, 5, 7}, 2, 1.7), w = rnd({2, 4, 7}, 3);
  auto kron = [](const Tensor& x) { return mul(x.unsqueeze(-1), x.unsqueeze(-2)).reshape({x.size(0), x.size(1), 49}); };
  const Tensor packed = gram(triu_outer(u), triu_outer(w)), full = gram(kron(u), kron(w)), ab = gram(u, w);
  CHECK(max_abs_diff(packed, full) < 1e-12);
  CHECK(max_abs_diff(packed, mul(ab, ab)) < 1e-12);
  CHECK(triu_outer(rnd({4, 1}, 4)).shape() == Shape{4, 1});
  // gradients: non-contiguous input, two off-diagonal scales, m = 1
  for (double c : {std::sqrt(2.0), -1.3})
    CHECK_GRAD([&](const V& v) { return triu_outer(v[0], c); }, {noncontig_leaf({2, 3, 5}, 5)});
  CHECK_GRAD([&](const V& v) { return triu_outer(v[0]); }, {leaf({3, 1}, 6)});
  // f32 agrees with f64
  CHECK(max_abs_diff(triu_outer(a.to(kFloat32)), triu_outer(a)) < 1e-5);
  CHECK_THROWS_AS(triu_outer(Tensor::scalar(1.0, kFloat64)), ShapeError);
  CHECK_THROWS_AS(triu_outer(Tensor::arange(6).reshape({2, 3})), DTypeError);
  CHECK_THROWS_AS(triu_outer(a, std::nan("")), std::invalid_argument);
}

TEST_CASE("triu_outer is deterministic: the same bits at 1 and 2 threads, forward and backward, with rows split across threads") {
  Generator g(8);
  const Tensor x0 = randn({2000, 33}, g), R = randn({2000, 33 * 34 / 2}, g);  // 1.1M outputs: split across threads
  auto run = [&](int threads) {
    const int prev = get_num_threads();
    set_num_threads(threads);
    Tensor x = x0.detach();
    x.requires_grad_();
    const Tensor y = triu_outer(x);
    y.backward(R);
    set_num_threads(prev);
    return std::make_pair(y.detach(), x.grad());
  };
  const auto [y1, g1] = run(1);
  const auto [y2, g2] = run(2);
  CHECK(same_bits(y1, y2));
  CHECK(same_bits(g1, g2));
}

TEST_CASE("qtvit exact kernel: 1 + s + s²/2 to 1e-12 with (d+1)(d+2)/2 + 1 features, >= 1/2, 1/2 at s = -1") {
  for (int64_t d : {1, 5, 16}) {
    INFO("d " << d);
    const Tensor q = rnd({7, d}, 10 + d, 1.5), k = rnd({6, d}, 20 + d, 1.5);
    const Tensor fq = qtvit_exact_features(q), fk = qtvit_exact_features(k);
    CHECK(fq.shape() == Shape{7, (d + 1) * (d + 2) / 2 + 1});
    const Tensor s = div(gram(q, k), std::sqrt((double)d));
    const Tensor closed = add(add(s, mul(mul(s, s), 0.5)), 1.0);
    CHECK(max_abs_diff(gram(fq, fk), closed) < 1e-12);
    CHECK(min(gram(fq, fk)).item() >= 0.5);
  }
  // s = -1: q = (c, 0, ...), k = (-√d/c, 0, ...)
  const int64_t d = 4;
  std::vector<double> qv(d, 0.0), kv(d, 0.0);
  qv[0] = 1.7;
  kv[0] = -std::sqrt((double)d) / 1.7;
  const Tensor K = gram(qtvit_exact_features(Tensor::from_vector(qv, {1, d})), qtvit_exact_features(Tensor::from_vector(kv, {1, d})));
  CHECK(std::abs(K.item() - 0.5) < 1e-14);
}

TEST_CASE("qtvit compact kernels: the closed forms, the official code's q²/|q²| + c², scale invariance") {
  const int64_t d = 6;
  const Tensor q = rnd({5, d}, 31, 1.3), k = rnd({4, d}, 32, 0.8);
  const double al = 0.7, ga = -1.3, braw = 0.4;
  const Tensor alpha = Tensor::full({1}, al, kFloat64), gamma = Tensor::full({1}, ga, kFloat64);
  const Tensor beta2 = qtvit_beta2(alpha, gamma, Tensor::full({1}, braw, kFloat64));
  const double b2 = kQtBetaRoom * al * std::sqrt(1 + ga * ga) / (1 + std::exp(-braw));
  CHECK(std::abs(beta2.item() - b2) < 1e-15);
  const std::vector<double> Q = q.to_vector(), Kk = k.to_vector();
  for (bool unit : {true, false})
    for (bool linear : {false, true}) {
      INFO("unit " << unit << " linear " << linear);
      const Tensor fq = qtvit_compact_features(q, alpha, gamma, linear ? beta2 : Tensor(), unit);
      const Tensor fk = qtvit_compact_features(k, alpha, gamma, linear ? beta2 : Tensor(), unit);
      CHECK(fq.shape() == Shape{5, linear ? 2 * d + 2 : d + 2});
      const Kernel ker{.kind = unit ? 0 : 1, .alpha = al, .gamma = ga, .beta2 = linear ? b2 : 0.0};
      std::vector<double> closed;
      for (int64_t i = 0; i < 5; ++i)
        for (int64_t j = 0; j < 4; ++j) closed.push_back(ker(&Q[(size_t)(i * d)], &Kk[(size_t)(j * d)], d));
      CHECK(max_abs_diff(gram(fq, fk), Tensor::from_vector(closed, {5, 4})) < 1e-12);
      if (!unit) continue;
      // scale-free: features(λx) = features(x)
      CHECK(max_abs_diff(qtvit_compact_features(mul(q, 3.7), alpha, gamma, linear ? beta2 : Tensor(), true), fq) < 1e-12);
      if (linear) continue;
      // the code's Sim(q, k) = ⟨q²/|q²|, k²/|k²|⟩ + c² with c² = (γ² + 1)/α²: 2K/α² here
      auto sq_unit = [](const Tensor& x) {
        const Tensor x2 = mul(x, x);
        return div(x2, sqrt(sum(mul(x2, x2), {-1}, true)));
      };
      const Tensor code = add(gram(sq_unit(q), sq_unit(k)), (ga * ga + 1) / (al * al));
      CHECK(max_abs_diff(mul(gram(fq, fk), 2 / (al * al)), code) < 1e-11);
    }
}

TEST_CASE("qtvit linear term: the kernel stays >= (1 + γ²)(1 - ρ²)/2, the bound is tight, an unbounded β goes negative") {
  const int64_t d = 6;
  const double al = 0.8, ga = 0.5, floor = 0.5 * (1 + ga * ga) * (1 - kQtBetaRoom * kQtBetaRoom);
  const Tensor alpha = Tensor::full({1}, al, kFloat64), gamma = Tensor::full({1}, ga, kFloat64);
  const Tensor beta2 = qtvit_beta2(alpha, gamma, Tensor::full({1}, 30.0, kFloat64));  // sigmoid = 1 in f64
  // The minimiser: q_i k_i = -β²/(α²√d) for every i (raw form), kernel = ½(1 + γ² - β⁴/α²).
  auto at_minimum = [&](const Tensor& b2) {
    const double a = -b2.item() / (al * al * std::sqrt((double)d));
    const Tensor q = Tensor::ones({1, d}, kFloat64), k = Tensor::full({1, d}, a, kFloat64);
    return gram(qtvit_compact_features(q, alpha, gamma, b2, false), qtvit_compact_features(k, alpha, gamma, b2, false)).item();
  };
  CHECK(floor > 0.09);  // a positive floor: the denominator of n_valid keys is >= 0.09·n_valid
  const double b2 = beta2.item();
  CHECK(std::abs(at_minimum(beta2) - 0.5 * (1 + ga * ga - b2 * b2 / (al * al))) < 1e-14);
  CHECK(std::abs(at_minimum(beta2) - floor) < 1e-12);
  CHECK(at_minimum(Tensor::full({1}, 1.5 * b2, kFloat64)) < 0);  // β outside the bound: a negative weight
  // random inputs at every scale, both forms, β at its largest
  for (bool unit : {false, true})
    for (double scale : {0.1, 1.0, 10.0}) {
      const Tensor q = rnd({64, d}, 41, scale), k = rnd({64, d}, 42, scale);
      const double lo = min(gram(qtvit_compact_features(q, alpha, gamma, beta2, unit),
                                 qtvit_compact_features(k, alpha, gamma, beta2, unit))).item();
      CHECK(lo >= floor - 1e-15);
    }
}

TEST_CASE("qtvit: output = explicit normalised kernel weights times v, every kernel, pads, two-sided and causal with chunks 1, 3, 64") {
  const int64_t B = 2, H = 2, n = 7, d = 4, e = 5;
  const Tensor q = rnd({B, H, n, d}, 51), k = rnd({B, H, n, d}, 52), v = rnd({B, H, n, e}, 53);
  const Tensor mask = make_mask(B, n, {{1, 2}, {1, 6}});  // a pad inside and one at the end
  for (int kind : {0, 1, 2})
    for (bool linear : {false, true}) {
      if (kind == 2 && linear) continue;
      for (bool causal : {false, true})
        for (int64_t chunk : {1, 3, 64}) {
          if (!causal && chunk != 64) continue;
          INFO(kKernelNames[kind] << " linear " << linear << " causal " << causal << " chunk " << chunk);
          auto m = make_qtvit(kind, causal, {{"qt_linear", (double)linear}, {"chunk", (double)chunk}});
          const Kernel K = set_scalars(*m, kind, linear);
          const Tensor out = m->forward(q, k, v, mask);
          CHECK(max_abs_diff(out, explicit_output(K, q, k, v, mask, causal)) < 1e-10);
          CHECK(max_abs_diff(out, explicit_output(K, q, k, v, Tensor(), causal)) > 1e-3);  // the mask matters
          // the study matrix is what forward applies
          CHECK(max_abs_diff(matmul(m->attention_matrix(q, k, mask), v), out) < 1e-12);
        }
    }
}

TEST_CASE("qtvit padding: pad contents change nothing, the output is the unpadded sequence's, zeroing v alone is not enough") {
  const int64_t H = 2, n = 7, d = 4;
  const std::vector<int64_t> valid = {0, 1, 3, 4, 5};  // pads at 2 and 6
  const Tensor mask = make_mask(1, n, {{0, 2}, {0, 6}});
  const Tensor q = rnd({1, H, n, d}, 61), k = rnd({1, H, n, d}, 62), v = rnd({1, H, n, d}, 63);
  const Tensor idx = Tensor::from_vector(valid, {5});
  for (int kind : {0, 1, 2})
    for (bool causal : {false, true}) {
      const bool linear = kind == 1;
      INFO(kKernelNames[kind] << " causal " << causal);
      auto m = make_qtvit(kind, causal, {{"qt_linear", (double)linear}, {"chunk", 3}});
      set_scalars(*m, kind, linear);
      const Tensor out = index_select(m->forward(q, k, v, mask), 2, idx);
      // other pad contents
      Tensor q2 = q.clone(), k2 = k.clone(), v2 = v.clone();
      for (int64_t j : {2, 6})
        for (Tensor* t : {&q2, &k2, &v2}) t->narrow(2, j, 1).copy_(rnd({1, H, 1, d}, 64 + j, 10.0));
      CHECK(max_abs_diff(index_select(m->forward(q2, k2, v2, mask), 2, idx), out) < 1e-12);
      // the same as the sequence without its pads
      const Tensor short_out = m->forward(index_select(q, 2, idx), index_select(k, 2, idx), index_select(v, 2, idx), Tensor());
      CHECK(max_abs_diff(short_out, out) < 1e-12);
      // zeroing the pads' values (and not their features) leaves their constant channels in
      // every denominator: a different output
      Tensor v0 = v.clone();
      for (int64_t j : {2, 6}) v0.narrow(2, j, 1).zero_();
      CHECK(max_abs_diff(index_select(m->forward(q, k, v0, Tensor()), 2, idx), out) > 1e-2);
    }
  // the constant channels alone (α = 0, the linear term off): every valid key weighs the same,
  // so the output is the mean of the valid values; an unmasked pad with v = 0 would count in the
  // denominator only
  auto m = make_qtvit(0, false);
  {
    NoGradGuard ng;
    param(*m, "qt_alpha").fill_(0.0);
  }
  const Tensor out = m->forward(q, k, v, mask);
  const Tensor mean_valid = mean(index_select(v, 2, idx), {2}, true);
  CHECK(max_abs_diff(out.narrow(2, 0, 1), mean_valid) < 1e-6);
  Tensor v0 = v.clone();
  for (int64_t j : {2, 6}) v0.narrow(2, j, 1).zero_();
  CHECK(max_abs_diff(m->forward(q, k, v0, Tensor()).narrow(2, 0, 1), mul(mean_valid, 5.0 / 7.0)) < 1e-6);
}

TEST_CASE("qtvit shortcut: out = attention + GELU(LayerNorm(v)) per head, the study matrix leaves it out") {
  const int64_t B = 2, H = 2, n = 6, d = 4;
  const Tensor q = rnd({B, H, n, d}, 71), k = rnd({B, H, n, d}, 72), v = rnd({B, H, n, d}, 73);
  const Tensor mask = make_mask(B, n, {{1, 4}, {1, 5}});
  for (bool causal : {false, true}) {
    auto with = make_qtvit(0, causal, {{"qt_shortcut", 1}});
    auto without = make_qtvit(0, causal);
    Tensor w = param(*with, "shortcut_norm.weight"), b = param(*with, "shortcut_norm.bias");
    {
      NoGradGuard ng;
      w.copy_(rnd({d}, 74));
      b.copy_(rnd({d}, 75));
    }
    const Tensor local = gelu(layer_norm(v, {d}, w, b));
    CHECK(max_abs_diff(with->forward(q, k, v, mask), add(without->forward(q, k, v, mask), local)) < 1e-12);
    CHECK(max_abs_diff(with->attention_matrix(q, k, mask), without->attention_matrix(q, k, mask)) == 0.0);
  }
}

TEST_CASE("qtvit gradient checks: every kernel, two-sided and causal, with pads, the learned scalars and the shortcut") {
  const int64_t B = 2, H = 2, n = 5, d = 3;
  const Tensor mask = make_mask(B, n, {{1, 1}, {1, 4}});
  GradcheckOptions o;
  o.max_checks_per_input = 10;
  for (int kind : {0, 1, 2})
    for (bool causal : {false, true}) {
      const bool extras = kind != 2;  // the linear term and the shortcut with the compact kernels
      INFO(kKernelNames[kind] << " causal " << causal);
      auto m = make_qtvit(kind, causal, {{"qt_linear", (double)extras}, {"qt_shortcut", (double)extras}, {"chunk", 2}}, H, d);
      set_scalars(*m, kind, extras);
      V inputs{leaf({B, H, n, d}, 81), leaf({B, H, n, d}, 82), leaf({B, H, n, d}, 83)};
      if (extras)
        for (const char* p : {"qt_alpha", "qt_gamma", "qt_beta_raw", "shortcut_norm.weight", "shortcut_norm.bias"})
          inputs.push_back(param(*m, p));
      CHECK_GRAD([&](const V& x) { return m->forward(x[0], x[1], x[2], mask); }, inputs, o);
    }
}

TEST_CASE("qtvit f32 agrees with f64 at n = 300, exact and compact, causal and two-sided") {
  const int64_t B = 1, H = 2, n = 300, d = 8;
  const Tensor q = rnd({B, H, n, d}, 91), k = rnd({B, H, n, d}, 92), v = rnd({B, H, n, d}, 93);
  for (int kind : {0, 2})
    for (bool causal : {false, true}) {
      INFO(kKernelNames[kind] << " causal " << causal);
      auto m = make_qtvit(kind, causal, {}, H, d);
      const Tensor ref = m->forward(q, k, v, Tensor());
      m->to_(kFloat32);
      const Tensor out = m->forward(q.to(kFloat32), k.to(kFloat32), v.to(kFloat32), Tensor());
      CHECK(max_abs_diff(out, ref) < 1e-4);
    }
}

TEST_CASE("qtvit declaration: parameters without weight decay, refusals naming the knobs and shapes") {
  const MechanismSpec& s = mechanism_spec("qtvit");
  CHECK(s.caps.causal);
  CHECK(s.caps.linear_time);
  CHECK(!s.caps.block_input);
  auto m = make_qtvit(0, true, {{"qt_linear", 1}, {"qt_shortcut", 1}});
  int n_params = 0;
  for (const auto& [name, t] : m->named_parameters()) {
    INFO(name);
    bool listed = false;
    for (const auto& sub : s.no_decay) listed = listed || name.find(sub) != std::string::npos;
    CHECK(listed);
    ++n_params;
  }
  CHECK(n_params == 5);  // α, γ, β, the shortcut norm's weight and bias
  CHECK(make_qtvit(2, false)->named_parameters().empty());  // the exact kernel learns nothing
  CHECK(make_qtvit(1, false)->named_parameters().size() == 2);
  CHECK(m->type_name() == "QTViTAttention(compact, linear term, shortcut, causal)");
  CHECK_THROWS_WITH_AS(make_qtvit(2, false, {{"qt_linear", 1}}), doctest::Contains("--qt-linear"), std::invalid_argument);
  const Tensor q = rnd({1, 2, 5, 4}, 1);
  CHECK_THROWS_WITH_AS(m->forward(q, rnd({1, 2, 6, 4}, 2), q, Tensor()), doctest::Contains("qtvit attention"), ShapeError);
  CHECK_THROWS_AS(m->forward(q.reshape({2, 5, 4}), q.reshape({2, 5, 4}), q.reshape({2, 5, 4}), Tensor()), ShapeError);
}
