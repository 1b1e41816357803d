// data/mqar and data/icl_regression: the generators of the seed papers' evaluation tasks.
// MQAR (Zoology, arXiv 2312.04927): determinism, every structural property (context layout,
// each key queried once with its own value as target, targets only at query keys, fillers),
// the power-law query spacing against exact probabilities, refusals naming the option.
// In-context regression (Garg et al., arXiv 2208.01066; Li, Rawat & Oymak, arXiv 2407.10005):
// determinism, layout, moments, the closed-form predictors against direct normal-equation
// solves, and the closed-form risks against Monte Carlo.
#include <doctest/doctest.h>
#include <lotgrad/data/icl_regression.h>
#include <lotgrad/data/mqar.h>

#include <cmath>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>

using namespace lotgrad;
using namespace lotgrad::data;

namespace {
// Runs f, which must throw std::invalid_argument whose message contains `needle`.
template <class F>
void check_refusal(F f, const std::string& needle) {
  try {
    f();
    FAIL("no exception; expected one naming '" << needle << "'");
  } catch (const std::invalid_argument& e) {
    CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
  }
}

// Checks one MQAR example against every structural property of the generator.
void check_mqar_structure(const MqarOptions& o, const MqarExample& e) {
  const int64_t n = o.num_kv_pairs, ctx = 2 * n * o.passes, half = o.vocab_size / 2;
  REQUIRE((int64_t)e.inputs.size() == o.seq_len);
  REQUIRE(e.targets.size() == e.inputs.size());
  std::map<token_t, token_t> value_of;  // key -> value, from the first pass
  for (int64_t j = 0; j < n; ++j) {
    const token_t k = e.inputs[(size_t)(2 * j)], v = e.inputs[(size_t)(2 * j + 1)];
    CHECK((k >= 1 && k < half));
    CHECK((v >= half && v < o.vocab_size));
    CHECK(value_of.emplace(k, v).second);  // keys distinct
  }
  std::set<token_t> values;
  for (const auto& kv : value_of) values.insert(kv.second);
  CHECK((int64_t)values.size() == n);  // values distinct
  for (int64_t i = 2 * n; i < ctx; ++i) CHECK(e.inputs[(size_t)i] == e.inputs[(size_t)(i % (2 * n))]);
  std::set<token_t> queried;
  for (int64_t i = 0; i < o.seq_len; ++i) {
    const token_t in = e.inputs[(size_t)i], tg = e.targets[(size_t)i];
    CHECK((in >= 0 && in < o.vocab_size));
    if (tg == kMqarIgnore) {
      if (i >= ctx && !o.random_non_queries) CHECK(in == 0);
      continue;
    }
    CHECK(i >= ctx);
    CHECK((i - ctx) % 2 == 0);
    REQUIRE(value_of.count(in) == 1);
    CHECK(tg == value_of[in]);
    CHECK(queried.insert(in).second);
  }
  CHECK((int64_t)queried.size() == n);  // every key queried exactly once
}

// Slot (0-based) of the query of each key j of an example, in key order.
std::vector<int64_t> query_slots(const MqarOptions& o, const MqarExample& e) {
  const int64_t ctx = 2 * o.num_kv_pairs * o.passes;
  std::vector<int64_t> slots;
  for (int64_t j = 0; j < o.num_kv_pairs; ++j)
    for (int64_t i = ctx; i < o.seq_len; i += 2)
      if (e.targets[(size_t)i] != kMqarIgnore && e.inputs[(size_t)i] == e.inputs[(size_t)(2 * j)])
        slots.push_back((i - ctx) / 2);
  return slots;
}
}  // namespace

TEST_CASE("mqar: same seed same examples, other seeds differ, prefix stable") {
  MqarOptions o{.vocab_size = 512, .seq_len = 64, .num_kv_pairs = 8, .seed = 7};
  const auto a = generate_mqar(20, o), b = generate_mqar(20, o);
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].inputs == b[i].inputs);
    CHECK(a[i].targets == b[i].targets);
  }
  const auto tail = generate_mqar(5, o, 10);
  for (size_t i = 0; i < tail.size(); ++i) CHECK(tail[i].inputs == a[10 + i].inputs);
  o.seed = 8;
  const auto c = generate_mqar(20, o);
  int same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i].inputs == c[i].inputs;
  CHECK(same == 0);
  CHECK(a[0].inputs != a[1].inputs);
}

TEST_CASE("mqar: structure of every example for the Zoology grid and with passes") {
  for (auto [len, n, passes] : {std::tuple{64, 4, 1}, {128, 8, 1}, {256, 16, 1}, {64, 8, 1}, {96, 8, 2}}) {
    CAPTURE(len);
    CAPTURE(n);
    const MqarOptions o{.vocab_size = 8192, .seq_len = len, .num_kv_pairs = n, .passes = passes, .seed = 3};
    for (const auto& e : generate_mqar(50, o)) check_mqar_structure(o, e);
  }
  // The tightest fit 4N = L (every query slot used) and the smallest vocabulary.
  const MqarOptions tight{.vocab_size = 17, .seq_len = 16, .num_kv_pairs = 4, .seed = 1};
  for (const auto& e : generate_mqar(50, tight)) check_mqar_structure(tight, e);
}

TEST_CASE("mqar: random_non_queries fills only the zeros and keeps keys, values, targets") {
  MqarOptions o{.vocab_size = 1024, .seq_len = 128, .num_kv_pairs = 8, .seed = 5};
  const auto plain = generate_mqar(20, o);
  o.random_non_queries = true;
  const auto filled = generate_mqar(20, o);
  int64_t zeros_left = 0, fillers = 0;
  for (size_t e = 0; e < plain.size(); ++e) {
    check_mqar_structure(o, filled[e]);
    CHECK(filled[e].targets == plain[e].targets);
    for (size_t i = 0; i < plain[e].inputs.size(); ++i) {
      if (plain[e].inputs[i] != 0) CHECK(filled[e].inputs[i] == plain[e].inputs[i]);
      else ++fillers, zeros_left += filled[e].inputs[i] == 0;
    }
  }
  CHECK(fillers > 1000);
  CHECK(zeros_left < fillers / 100);  // uniform over 1024 ids: about 1 in 1024 stays 0
}

TEST_CASE("mqar: query slots follow the power law") {
  for (double a : {0.01, 1.0}) {
    CAPTURE(a);
    // One pair: the slot's law is exactly p(g) ∝ a·g^(a-1) over S = 10 slots.
    const MqarOptions one{.vocab_size = 64, .seq_len = 22, .num_kv_pairs = 1, .power_a = a, .seed = 11};
    const std::vector<double> p = mqar_slot_probabilities(10, a);
    std::vector<double> hist(10, 0.0);
    const int64_t count = 40000;
    for (const auto& e : generate_mqar(count, one)) hist[(size_t)query_slots(one, e)[0]] += 1.0 / count;
    for (size_t g = 0; g < p.size(); ++g) {
      CAPTURE(g);
      CHECK(std::fabs(hist[g] - p[g]) < 4 * std::sqrt(p[g] * (1 - p[g]) / count) + 1e-9);
    }
    if (a == 1.0) CHECK(p[0] == doctest::Approx(0.1));
    if (a == 0.01) CHECK(p[0] > 5 * p[9]);
  }
}

TEST_CASE("mqar: two queries are drawn without replacement with the exact inclusion law") {
  // S = 4 slots, N = 2: P(slot s used) = p_s + Σ_{i != s} p_i p_s / (1 - p_i); the first key's
  // slot has law p itself.
  const MqarOptions o{.vocab_size = 32, .seq_len = 12, .num_kv_pairs = 2, .power_a = 0.3, .seed = 2};
  const std::vector<double> p = mqar_slot_probabilities(4, 0.3);
  std::vector<double> used(4, 0.0), first(4, 0.0);
  const int64_t count = 40000;
  for (const auto& e : generate_mqar(count, o)) {
    const auto s = query_slots(o, e);
    REQUIRE(s.size() == 2);
    CHECK(s[0] != s[1]);
    used[(size_t)s[0]] += 1.0 / count, used[(size_t)s[1]] += 1.0 / count;
    first[(size_t)s[0]] += 1.0 / count;
  }
  for (size_t s = 0; s < 4; ++s) {
    double incl = p[s];
    for (size_t i = 0; i < 4; ++i)
      if (i != s) incl += p[i] * p[s] / (1 - p[i]);
    CHECK(std::fabs(used[s] - incl) < 0.012);
    CHECK(std::fabs(first[s] - p[s]) < 0.012);
  }
}

TEST_CASE("mqar: batch stacks inputs and targets as i64") {
  const MqarOptions o{.vocab_size = 256, .seq_len = 32, .num_kv_pairs = 4, .seed = 9};
  const auto ex = generate_mqar(4, o);
  const MqarBatch b = mqar_batch(ex, {2, 0});
  CHECK(b.inputs.shape() == Shape{2, 32});
  CHECK(b.targets.shape() == Shape{2, 32});
  const int64_t* in = b.inputs.data_ptr<int64_t>();
  const int64_t* tg = b.targets.data_ptr<int64_t>();
  for (int64_t i = 0; i < 32; ++i) {
    CHECK(in[i] == ex[2].inputs[(size_t)i]);
    CHECK(in[32 + i] == ex[0].inputs[(size_t)i]);
    CHECK(tg[i] == ex[2].targets[(size_t)i]);
  }
}

TEST_CASE("mqar: bad options are refused naming the option and value") {
  const MqarOptions ok{.vocab_size = 512, .seq_len = 64, .num_kv_pairs = 4};
  auto with = [&](auto change) { MqarOptions o = ok; change(o); return o; };
  check_refusal([&] { validate(with([](MqarOptions& o) { o.seq_len = 63; })); }, "seq_len = 63");
  check_refusal([&] { validate(with([](MqarOptions& o) { o.vocab_size = 64; })); }, "vocab_size = 64");
  check_refusal([&] { validate(with([](MqarOptions& o) { o.num_kv_pairs = 17; })); }, "num_kv_pairs = 17");
  check_refusal([&] { validate(with([](MqarOptions& o) { o.num_kv_pairs = 0; })); }, "num_kv_pairs = 0");
  check_refusal([&] { validate(with([](MqarOptions& o) { o.passes = 0; })); }, "passes = 0");
  check_refusal([&] { validate(with([](MqarOptions& o) { o.num_kv_pairs = 12, o.passes = 2; })); }, "num_kv_pairs = 12");
  check_refusal([&] { validate(with([](MqarOptions& o) { o.power_a = 0.0; })); }, "power_a = 0");
  check_refusal([&] { generate_mqar(-1, ok); }, "count = -1");
  check_refusal([&] { mqar_example(with([](MqarOptions& o) { o.seq_len = 0; }), 0); }, "seq_len = 0");
  CHECK_NOTHROW(validate(ok));
}

// ---------------------------------------------------------------------------------------------
namespace {
// Solves A z = b (m×m, dense, non-singular) by Gaussian elimination with partial pivoting.
std::vector<double> gauss_solve(std::vector<double> a, std::vector<double> b) {
  const size_t m = b.size();
  for (size_t c = 0; c < m; ++c) {
    size_t piv = c;
    for (size_t r = c + 1; r < m; ++r)
      if (std::fabs(a[r * m + c]) > std::fabs(a[piv * m + c])) piv = r;
    for (size_t k = 0; k < m; ++k) std::swap(a[c * m + k], a[piv * m + k]);
    std::swap(b[c], b[piv]);
    for (size_t r = c + 1; r < m; ++r) {
      const double f = a[r * m + c] / a[c * m + c];
      for (size_t k = c; k < m; ++k) a[r * m + k] -= f * a[c * m + k];
      b[r] -= f * b[c];
    }
  }
  std::vector<double> z(m);
  for (size_t c = m; c-- > 0;) {
    double s = b[c];
    for (size_t k = c + 1; k < m; ++k) s -= a[c * m + k] * z[k];
    z[c] = s / a[c * m + c];
  }
  return z;
}

// ŵ from the first k pairs by the normal equations, with weights u_i on the rows and ridge
// term lambda: (Σ u_i x_i x_iᵀ + λI)⁻¹ Σ u_i x_i y_i (k >= d or λ > 0).
std::vector<double> normal_equations(const IclPrompt& p, int64_t k, double lambda, const std::vector<double>& u) {
  const int64_t d = p.dim;
  std::vector<double> g((size_t)(d * d), 0.0), r((size_t)d, 0.0);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t a = 0; a < d; ++a) {
      r[(size_t)a] += u[(size_t)i] * p.x(i)[a] * p.ys[(size_t)i];
      for (int64_t b = 0; b < d; ++b) g[(size_t)(a * d + b)] += u[(size_t)i] * p.x(i)[a] * p.x(i)[b];
    }
  for (int64_t a = 0; a < d; ++a) g[(size_t)(a * d + a)] += lambda;
  return gauss_solve(g, r);
}

// The minimum-norm interpolant for k < d: Xᵀ(XXᵀ)⁻¹y.
std::vector<double> min_norm_interpolant(const IclPrompt& p, int64_t k) {
  std::vector<double> g((size_t)(k * k)), y(p.ys.begin(), p.ys.begin() + k), w((size_t)p.dim, 0.0);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      double s = 0.0;
      for (int64_t a = 0; a < p.dim; ++a) s += p.x(i)[a] * p.x(j)[a];
      g[(size_t)(i * k + j)] = s;
    }
  const auto z = gauss_solve(g, y);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t a = 0; a < p.dim; ++a) w[(size_t)a] += p.x(i)[a] * z[(size_t)i];
  return w;
}

double predict(const IclPrompt& p, int64_t k, const std::vector<double>& w) {
  double s = 0.0;
  for (int64_t a = 0; a < p.dim; ++a) s += p.x(k)[a] * w[(size_t)a];
  return s;
}
}  // namespace

TEST_CASE("icl regression: same seed same bits, other seeds differ, prefix stable") {
  IclRegressionOptions o{.dim = 5, .points = 11, .noise_std = 0.1, .seed = 4};
  const auto a = generate_icl_regression(6, o), b = generate_icl_regression(6, o);
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].xs == b[i].xs);
    CHECK(a[i].ys == b[i].ys);
    CHECK(a[i].w == b[i].w);
  }
  CHECK(generate_icl_regression(2, o, 4)[1].xs == a[5].xs);
  o.seed = 5;
  const auto c = generate_icl_regression(6, o);
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i].xs != c[i].xs);
  CHECK(a[0].w != a[1].w);
}

TEST_CASE("icl regression: Garg layout in the batch and inactive dimensions at zero") {
  const IclRegressionOptions o{.dim = 6, .points = 5, .active_dims = 4, .seed = 1};
  const auto ps = generate_icl_regression(3, o);
  const IclBatch b = icl_batch(ps, {1, 2});
  CHECK(b.tokens.shape() == Shape{2, 10, 6});
  CHECK(b.targets.shape() == Shape{2, 5});
  const float* t = b.tokens.data_ptr<float>();
  const float* y = b.targets.data_ptr<float>();
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t i = 0; i < 5; ++i) {
      const IclPrompt& p = ps[(size_t)r + 1];
      const float* xrow = t + (r * 10 + 2 * i) * 6;
      const float* yrow = xrow + 6;
      for (int64_t a = 0; a < 6; ++a) {
        CHECK(xrow[a] == (float)p.x(i)[a]);
        CHECK(yrow[a] == (a == 0 ? (float)p.ys[(size_t)i] : 0.0f));
        if (a >= 4) CHECK(p.x(i)[a] == 0.0);
      }
      CHECK(y[r * 5 + i] == (float)p.ys[(size_t)i]);
      CHECK(p.ys[(size_t)i] == doctest::Approx(predict(p, i, p.w)).epsilon(1e-12));  // noiseless
    }
}

TEST_CASE("icl regression: moments of x, w and y over many prompts") {
  struct Case { double x_std, w_std, noise; };
  for (Case c : {Case{1.0, 1.0, 0.0}, Case{1.0 / std::sqrt(8.0), 1.0, 0.5}, Case{2.0, 0.5, 1.0}}) {
    CAPTURE(c.x_std);
    const IclRegressionOptions o{.dim = 8, .points = 20, .x_std = c.x_std, .w_std = c.w_std, .noise_std = c.noise, .seed = 21};
    double sx = 0, sxx = 0, sw = 0, sww = 0, sy = 0, syy = 0, nx = 0, nw = 0, ny = 0;
    for (const IclPrompt& p : generate_icl_regression(3000, o)) {
      for (double v : p.xs) sx += v, sxx += v * v, ++nx;
      for (double v : p.w) sw += v, sww += v * v, ++nw;
      for (double v : p.ys) sy += v, syy += v * v, ++ny;
    }
    const double vx = c.x_std * c.x_std, vw = c.w_std * c.w_std, vy = 8 * vx * vw + c.noise * c.noise;
    CHECK(std::fabs(sx / nx) < 0.01 * c.x_std);
    CHECK(sxx / nx == doctest::Approx(vx).epsilon(0.01));
    CHECK(std::fabs(sw / nw) < 0.03 * c.w_std);
    CHECK(sww / nw == doctest::Approx(vw).epsilon(0.04));
    CHECK(std::fabs(sy / ny) < 0.05 * std::sqrt(vy));
    CHECK(syy / ny == doctest::Approx(vy).epsilon(0.05));
  }
}

TEST_CASE("icl regression: least squares equals the normal equations and the min-norm interpolant") {
  const IclRegressionOptions o{.dim = 5, .points = 12, .noise_std = 0.3, .seed = 8};
  const std::vector<double> ones(12, 1.0);
  for (const IclPrompt& p : generate_icl_regression(5, o)) {
    const auto pred = least_squares_predictions(p);
    CHECK(pred[0] == 0.0);
    for (int64_t k = 1; k < p.points; ++k) {
      CAPTURE(k);
      const auto w = k >= p.dim ? normal_equations(p, k, 0.0, ones) : min_norm_interpolant(p, k);
      const auto mine = least_squares_weights(p, k);
      for (int64_t a = 0; a < p.dim; ++a) CHECK(mine[(size_t)a] == doctest::Approx(w[(size_t)a]).epsilon(1e-9));
      CHECK(pred[(size_t)k] == doctest::Approx(predict(p, k, w)).epsilon(1e-9));
    }
  }
}

TEST_CASE("icl regression: noiseless least squares recovers w once k >= d") {
  for (int64_t d : {4, 20}) {
    const IclRegressionOptions o{.dim = d, .points = 2 * d + 1, .seed = 13};
    for (const IclPrompt& p : generate_icl_regression(5, o)) {
      for (int64_t k = d; k <= p.points; ++k) {
        const auto w = least_squares_weights(p, k);
        for (int64_t a = 0; a < d; ++a) CHECK(std::fabs(w[(size_t)a] - p.w[(size_t)a]) < 1e-8);
      }
      const auto pred = least_squares_predictions(p);
      for (int64_t k = d; k < p.points; ++k) CHECK(std::fabs(pred[(size_t)k] - p.ys[(size_t)k]) < 1e-8);
    }
  }
  // With inactive coordinates the interpolant recovers the active part and leaves the rest 0.
  const IclRegressionOptions half{.dim = 6, .points = 8, .active_dims = 3, .seed = 2};
  const IclPrompt p = icl_prompt(half, 0);
  const auto w = least_squares_weights(p, 5);
  for (int64_t a = 0; a < 6; ++a) CHECK(std::fabs(w[(size_t)a] - (a < 3 ? p.w[(size_t)a] : 0.0)) < 1e-8);
}

TEST_CASE("icl regression: ridge and Bayes predictions equal their normal equations") {
  const IclRegressionOptions o{.dim = 4, .points = 9, .w_std = 0.7, .noise_std = 0.5, .seed = 3};
  const std::vector<double> ones(9, 1.0);
  const IclPrompt p = icl_prompt(o, 0);
  const auto ridge = ridge_predictions(p, 0.8), bayes = bayes_predictions(p, 0.7);
  for (int64_t k = 1; k < p.points; ++k) {
    CHECK(ridge[(size_t)k] == doctest::Approx(predict(p, k, normal_equations(p, k, 0.8, ones))).epsilon(1e-9));
    const double lam = 0.25 / 0.49;  // σ²/w_std²
    CHECK(bayes[(size_t)k] == doctest::Approx(predict(p, k, normal_equations(p, k, lam, ones))).epsilon(1e-9));
  }
  // Heterogeneous noise: the posterior mean (Σ x_i x_iᵀ/σ_i² + I/τ²)⁻¹ Σ x_i y_i/σ_i².
  IclRegressionOptions h = o;
  h.point_noise_std = {0.1, 2.0, 0.5, 1.0, 0.2, 3.0, 0.4, 0.3, 1.5};
  const IclPrompt q = icl_prompt(h, 1);
  std::vector<double> u;
  for (double s : h.point_noise_std) u.push_back(1.0 / (s * s));
  const auto hb = bayes_predictions(q, 0.7);
  for (int64_t k = 1; k < q.points; ++k)
    CHECK(hb[(size_t)k] == doctest::Approx(predict(q, k, normal_equations(q, k, 1.0 / 0.49, u))).epsilon(1e-9));
  // Noiseless: Bayes is least squares.
  const IclPrompt z = icl_prompt(IclRegressionOptions{.dim = 4, .points = 9, .seed = 3}, 0);
  const auto lz = least_squares_predictions(z), bz = bayes_predictions(z, 1.0);
  for (size_t k = 0; k < lz.size(); ++k) CHECK(bz[k] == doctest::Approx(lz[k]).epsilon(1e-9));
}

TEST_CASE("icl regression: closed-form risks match the published table and Monte Carlo") {
  // Li, Rawat & Oymak setting: first half noiseless, second half σ = 10.
  auto design = [](int64_t n) {
    std::vector<double> v((size_t)n, 0.0);
    for (int64_t i = n / 2; i < n; ++i) v[(size_t)i] = 100.0;
    return v;
  };
  CHECK(pgd_risk(8, std::vector<double>(32, 1.0), design(32)) == doctest::Approx(5.19).epsilon(0.002));
  CHECK(h3_optimal_risk(8, design(32)) == doctest::Approx(2.74).epsilon(0.002));
  CHECK(pgd_risk(20, std::vector<double>(40, 1.0), design(40)) == doctest::Approx(12.79).epsilon(0.001));
  CHECK(h3_optimal_risk(20, design(40)) == doctest::Approx(9.44).epsilon(0.001));
  CHECK(linear_attention_risk(8, 32, 0.0) == doctest::Approx(1.756).epsilon(0.001));
  CHECK(pgd_risk(8, h3_optimal_weights(8, design(32)), design(32)) == doctest::Approx(h3_optimal_risk(8, design(32))));
  CHECK(pgd_best_scale(8, std::vector<double>(32, 1.0), std::vector<double>(32, 0.25)) ==
        doctest::Approx(1.0 / (32 + 9 + 0.25)));
  // Monte Carlo: 32 context points plus a noiseless query, read at the query (k = 32).
  std::vector<double> noise_std(33, 0.0);
  for (int64_t i = 16; i < 32; ++i) noise_std[(size_t)i] = 10.0;
  const IclRegressionOptions o{.dim = 8, .points = 33, .point_noise_std = noise_std, .seed = 17};
  const auto nv = design(32);
  const std::vector<double> la(33, 1.0);
  std::vector<double> h3 = h3_optimal_weights(8, nv);
  h3.push_back(0.0);
  const double c_la = pgd_best_scale(8, std::vector<double>(32, 1.0), nv), c_h3 = pgd_best_scale(8, h3_optimal_weights(8, nv), nv);
  double r_la = 0, r_h3 = 0;
  const int64_t count = 20000;
  for (const IclPrompt& p : generate_icl_regression(count, o)) {
    r_la += std::pow(p.ys[32] - pgd_predictions(p, la, c_la)[32], 2) / count;
    r_h3 += std::pow(p.ys[32] - pgd_predictions(p, h3, c_h3)[32], 2) / count;
  }
  CHECK(r_la == doctest::Approx(5.19).epsilon(0.05));
  CHECK(r_h3 == doctest::Approx(2.74).epsilon(0.05));
}

TEST_CASE("icl regression: least-squares risk against Monte Carlo") {
  CHECK(least_squares_risk(20, 5, 0.0) == 15.0);
  CHECK(least_squares_risk(20, 25, 0.0) == 0.0);
  CHECK(least_squares_risk(5, 10, 0.5) == doctest::Approx(0.3125));
  // d = 5: noiseless k = 3 (risk 2); noisy σ = 0.5, k = 10 with a noiseless query (0.3125).
  std::vector<double> noise_std(11, 0.5);
  noise_std[10] = 0.0;
  const IclRegressionOptions quiet{.dim = 5, .points = 4, .seed = 6};
  const IclRegressionOptions noisy{.dim = 5, .points = 11, .point_noise_std = noise_std, .seed = 6};
  double r0 = 0, r1 = 0;
  const int64_t count = 20000;
  for (const IclPrompt& p : generate_icl_regression(count, quiet))
    r0 += std::pow(p.ys[3] - least_squares_predictions(p)[3], 2) / count;
  for (const IclPrompt& p : generate_icl_regression(count, noisy))
    r1 += std::pow(p.ys[10] - predict(p, 10, least_squares_weights(p, 10)), 2) / count;
  CHECK(r0 == doctest::Approx(2.0).epsilon(0.05));
  CHECK(r1 == doctest::Approx(0.3125).epsilon(0.06));
}

TEST_CASE("icl regression: bad options are refused naming the option and value") {
  const IclRegressionOptions ok{.dim = 4, .points = 6};
  auto with = [&](auto change) { IclRegressionOptions o = ok; change(o); return o; };
  check_refusal([&] { validate(with([](IclRegressionOptions& o) { o.dim = 0; })); }, "dim = 0");
  check_refusal([&] { validate(with([](IclRegressionOptions& o) { o.points = 0; })); }, "points = 0");
  check_refusal([&] { validate(with([](IclRegressionOptions& o) { o.active_dims = 5; })); }, "active_dims = 5");
  check_refusal([&] { validate(with([](IclRegressionOptions& o) { o.x_std = 0; })); }, "x_std = 0");
  check_refusal([&] { validate(with([](IclRegressionOptions& o) { o.w_std = -1; })); }, "w_std = -1");
  check_refusal([&] { validate(with([](IclRegressionOptions& o) { o.noise_std = -0.5; })); }, "noise_std = -0.5");
  check_refusal([&] { validate(with([](IclRegressionOptions& o) { o.point_noise_std = {1, 2}; })); },
                "point_noise_std size = 2");
  check_refusal([&] { icl_prompt(with([](IclRegressionOptions& o) { o.point_noise_std = {1, 1, 1, 1, 1, NAN}; }), 0); },
                "point_noise_std = nan");
  check_refusal([&] { generate_icl_regression(-2, ok); }, "count = -2");
  const IclPrompt p = icl_prompt(ok, 0);
  check_refusal([&] { ridge_predictions(p, 0.0); }, "lambda = 0");
  check_refusal([&] { pgd_predictions(p, {1.0}, 1.0); }, "omega size = 1");
  check_refusal([&] { least_squares_risk(5, 6, 0.1); }, "k = 6");
  check_refusal([&] { least_squares_weights(p, 7); }, "k = 7");
  CHECK_NOTHROW(validate(ok));
}
