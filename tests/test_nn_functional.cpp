// softmax / log_softmax / layer_norm / embedding / dropout / cross_entropy / mse_loss:
// values against plain-loop references, f64 gradient checks (contiguous, views, other
// dims, the same tensor twice), determinism across thread counts and error messages.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {

Tensor rnd(const Shape& s, uint64_t seed, DType dt = kFloat64, double scale = 1.0) {
  Generator g(seed);
  Tensor t = randn(s, g, dt);
  t.mul_(scale);
  return t;
}

// Row-major (outer, L, inner) decomposition of shape around dim d.
void split(const Shape& s, int64_t d, int64_t& outer, int64_t& L, int64_t& inner) {
  outer = L = inner = 1;
  for (int64_t i = 0; i < (int64_t)s.size(); ++i) (i < d ? outer : i == d ? L : inner) *= s[i];
}

// Reference softmax / log_softmax in double with plain loops.
std::vector<double> ref_softmax(const Tensor& x, int64_t d, bool log) {
  std::vector<double> v = x.to_vector(), y(v.size());
  int64_t outer, L, inner;
  split(x.shape(), d, outer, L, inner);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      auto at = [&](int64_t j) { return (size_t)((o * L + j) * inner + i); };
      double mx = -INFINITY, s = 0;
      for (int64_t j = 0; j < L; ++j) mx = std::max(mx, v[at(j)]);
      for (int64_t j = 0; j < L; ++j) s += std::exp(v[at(j)] - mx);
      for (int64_t j = 0; j < L; ++j) y[at(j)] = log ? v[at(j)] - mx - std::log(s) : std::exp(v[at(j)] - mx) / s;
    }
  return y;
}

void check_close(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]) / (1.0 + std::abs(want[i])));
  CHECK(worst <= tol);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector(), y = b.to_vector();
  if (x.size() != y.size()) return false;
  for (size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i] || (std::isnan(x[i]) && std::isnan(y[i])))) return false;
  return true;
}

// Runs f with 1 thread and with 2 threads; both results must agree bit for bit.
template <class F>
void check_thread_independent(F f) {
  const int prev = get_num_threads();
  set_num_threads(1);
  Tensor a = f();
  set_num_threads(2);
  Tensor b = f();
  set_num_threads(prev);
  CHECK(same_bits(a, b));
}

}  // namespace

// =======================================================================================
TEST_CASE("softmax / log_softmax: values along any dim, rows sum to 1, f32 and f64") {
  for (DType dt : {kFloat32, kFloat64}) {
    const double tol = dt == kFloat32 ? 2e-6 : 1e-13;
    Tensor x = rnd({3, 4, 5}, 1, dt, 3.0);
    for (int64_t d = 0; d < 3; ++d) {
      INFO("dim ", d, " ", dtype_name(dt));
      Tensor y = softmax(x, d);
      check_close(y.to_vector(), ref_softmax(x, d, false), tol);
      check_close(log_softmax(x, d).to_vector(), ref_softmax(x, d, true), tol);
      // rows sum to 1
      int64_t outer, L, inner;
      split(x.shape(), d, outer, L, inner);
      std::vector<double> v = y.to_vector();
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          double s = 0;
          for (int64_t j = 0; j < L; ++j) s += v[(size_t)((o * L + j) * inner + i)];
          CHECK(s == doctest::Approx(1.0).epsilon(dt == kFloat32 ? 1e-6 : 1e-14));
        }
    }
    check_close(softmax(x, -1).to_vector(), softmax(x, 2).to_vector(), 0.0);
    // non-contiguous input
    Tensor xt = x.transpose(0, 2);
    check_close(softmax(xt, 1).to_vector(), ref_softmax(xt.contiguous(), 1, false), tol);
    // stable for large logits
    Tensor big = Tensor::from_vector(std::vector<double>{1000.0, 1001.0, 999.0, -1000.0}, {1, 4}).to(dt);
    std::vector<double> sb = softmax(big, -1).to_vector(), lb = log_softmax(big, -1).to_vector();
    CHECK(sb[1] == doctest::Approx(0.6652409558).epsilon(1e-6));
    CHECK(lb[1] == doctest::Approx(-0.4076059644).epsilon(1e-6));
    CHECK(sb[3] == 0.0);
    CHECK(std::isfinite(lb[3]));
  }
  // the vectorised f32 path: odd row lengths, a wide range of arguments, masked entries
  for (int64_t L : {1, 7, 37, 1000}) {
    INFO("L ", L);
    Tensor w = rnd({3, L}, 20 + L, kFloat64, 30.0);
    check_close(softmax(w.to(kFloat32), -1).to_vector(), ref_softmax(w.to(kFloat32).to(kFloat64), 1, false), 2e-6);
    check_close(log_softmax(w.to(kFloat32), -1).to_vector(), ref_softmax(w.to(kFloat32).to(kFloat64), 1, true), 2e-6);
  }
  Tensor masked = Tensor::from_vector(std::vector<float>{0.5f, -INFINITY, 1.5f, -INFINITY, -200.0f}, {1, 5});
  std::vector<double> mv = softmax(masked, -1).to_vector();
  CHECK(mv[1] == 0.0);
  CHECK(mv[3] == 0.0);
  CHECK(mv[4] == 0.0);
  CHECK(mv[0] == doctest::Approx(0.2689414214).epsilon(1e-6));
  for (DType dt : {kFloat32, kFloat64}) {  // a NaN reaches the whole row
    Tensor withnan = Tensor::from_vector(std::vector<double>{0.5, NAN, 1.5}, {1, 3}).to(dt);
    for (double v : softmax(withnan, -1).to_vector()) CHECK(std::isnan(v));
    for (double v : log_softmax(withnan, -1).to_vector()) CHECK(std::isnan(v));
  }
  // a 0-d input is a one-element row
  CHECK(softmax(Tensor::scalar(3.0, kFloat64), 0).item() == 1.0);
  // a row of all -inf has no distribution: NaN, as in PyTorch
  Tensor ninf = Tensor::full({2}, -INFINITY, kFloat64);
  CHECK(std::isnan(softmax(ninf, 0).to_vector()[0]));
}

TEST_CASE("softmax / log_softmax: gradient checks (f64)") {
  for (bool log : {false, true}) {
    INFO((log ? "log_softmax" : "softmax"));
    auto f = [log](const Tensor& x, int64_t d) { return log ? log_softmax(x, d) : softmax(x, d); };
    CHECK_GRAD([&](const V& v) { return f(v[0], -1); }, {leaf({3, 5}, 1)});
    CHECK_GRAD([&](const V& v) { return f(v[0], 0); }, {leaf({3, 5}, 2)});
    CHECK_GRAD([&](const V& v) { return f(v[0], 1); }, {leaf({2, 3, 4}, 3)});
    CHECK_GRAD([&](const V& v) { return f(v[0], -1); }, {noncontig_leaf({3, 5}, 4)});
    CHECK_GRAD([&](const V& v) { return f(v[0], 1); }, {noncontig_leaf({2, 3, 4}, 5)});
    CHECK_GRAD([&](const V& v) { return mul(f(v[0], -1), v[0]); }, {leaf({3, 4}, 6)});  // same tensor twice
    CHECK_GRAD([&](const V& v) { return f(f(v[0], -1), 0); }, {leaf({3, 4}, 7)});
  }
  // The fused backward agrees with the composite exp(x) / (exp(x) . 1) built from other ops.
  Tensor x = leaf({3, 4}, 8), R = rnd({3, 4}, 9);
  mul(softmax(x, -1), R).backward(Tensor::ones({3, 4}, kFloat64));
  const std::vector<double> fused = x.grad().to_vector();
  x.zero_grad();
  Tensor e = exp(x);
  Tensor comp = div(e, matmul(e, Tensor::ones({4, 1}, kFloat64)));
  mul(comp, R).backward(Tensor::ones({3, 4}, kFloat64));
  check_close(fused, x.grad().to_vector(), 1e-12);
}

TEST_CASE("softmax: errors and determinism") {
  CHECK_THROWS_AS(softmax(Tensor::zeros({2, 3}), 2), ShapeError);
  CHECK_THROWS_AS(softmax(Tensor::zeros({2, 3}, kInt64), 1), DTypeError);
  Tensor x = rnd({64, 1500}, 10, kFloat32);
  check_thread_independent([&] { return softmax(x, -1); });
  check_thread_independent([&] { return log_softmax(x, 0); });
}

// =======================================================================================
TEST_CASE("layer_norm: values against a plain-loop reference, f32 and f64") {
  for (DType dt : {kFloat32, kFloat64}) {
    const double tol = dt == kFloat32 ? 1e-5 : 1e-12;
    Tensor x = rnd({2, 3, 8}, 1, dt, 2.0), w = rnd({8}, 2, dt), b = rnd({8}, 3, dt);
    std::vector<double> xv = x.to_vector(), wv = w.to_vector(), bv = b.to_vector(), want(xv.size());
    for (int r = 0; r < 6; ++r) {
      double m = 0, v = 0;
      for (int j = 0; j < 8; ++j) m += xv[r * 8 + j] / 8;
      for (int j = 0; j < 8; ++j) v += (xv[r * 8 + j] - m) * (xv[r * 8 + j] - m) / 8;
      for (int j = 0; j < 8; ++j) want[r * 8 + j] = (xv[r * 8 + j] - m) / std::sqrt(v + 1e-5) * wv[j] + bv[j];
    }
    check_close(layer_norm(x, {8}, w, b).to_vector(), want, tol);
    // normalising over the last two dims equals normalising the flattened rows
    Tensor x2 = x.reshape({2, 24});
    check_close(layer_norm(x, {3, 8}).to_vector(), layer_norm(x2, {24}).to_vector(), tol);
  }
}

TEST_CASE("layer_norm: gradient checks (f64)") {
  auto ln = [](const V& v) { return layer_norm(v[0], {5}, v[1], v[2]); };
  CHECK_GRAD(ln, {leaf({3, 5}, 1), leaf({5}, 2), leaf({5}, 3)});
  CHECK_GRAD(ln, {leaf({2, 3, 5}, 4), leaf({5}, 5), leaf({5}, 6)});
  CHECK_GRAD(ln, {noncontig_leaf({3, 5}, 7), noncontig_leaf({5}, 8), leaf({5}, 9)});
  CHECK_GRAD([](const V& v) { return layer_norm(v[0], {5}); }, {leaf({4, 5}, 10)});
  CHECK_GRAD([](const V& v) { return layer_norm(v[0], {5}, v[1]); }, {leaf({4, 5}, 11), leaf({5}, 12)});
  CHECK_GRAD([](const V& v) { return layer_norm(v[0], {5}, Tensor(), v[1]); }, {leaf({4, 5}, 13), leaf({5}, 14)});
  CHECK_GRAD([](const V& v) { return layer_norm(v[0], {3, 4}, v[1], v[2]); }, {leaf({2, 3, 4}, 15), leaf({3, 4}, 16), leaf({3, 4}, 17)});
  CHECK_GRAD([](const V& v) { return mul(layer_norm(v[0], {4}), v[0]); }, {leaf({3, 4}, 18)});  // same tensor twice
  CHECK_GRAD([](const V& v) { return layer_norm(v[0], {4}, v[1], v[1]); }, {leaf({3, 4}, 19), leaf({4}, 20)});
  // only the parameters need gradients
  Tensor x = rnd({3, 4}, 21);
  CHECK_GRAD([&](const V& v) { return layer_norm(x, {4}, v[0], v[1]); }, {leaf({4}, 22), leaf({4}, 23)});
  CHECK_GRAD([&](const V& v) { return layer_norm(x, {4}, Tensor(), v[0]); }, {leaf({4}, 24)});
}

TEST_CASE("layer_norm: the fused kernel against the composite of ops, over many row blocks") {
  // 1000 rows span four 256-row gradient blocks and a partial one; 70 columns leave a lane tail.
  for (DType dt : {kFloat64, kFloat32}) {
    const double tol = dt == kFloat64 ? 1e-10 : 2e-4;
    Tensor x = rnd({10, 100, 70}, 31, dt, 3.0), w = rnd({70}, 32, dt), b = rnd({70}, 33, dt), g = rnd({10, 100, 70}, 34, dt);
    for (Tensor* t : {&x, &w, &b}) t->requires_grad_();
    Tensor y = layer_norm(x, {70}, w, b);
    y.backward(g);
    const Tensor gx = x.grad(), gw = w.grad(), gb = b.grad();
    for (Tensor* t : {&x, &w, &b}) t->zero_grad();
    Tensor mu = mean(x, {-1}, true);
    Tensor xc = sub(x, mu);
    Tensor var = mean(mul(xc, xc), {-1}, true);
    Tensor yc = add(mul(div(xc, sqrt(add(var, 1e-5))), w), b);
    CHECK(max_abs_diff(y, yc) < tol);
    yc.backward(g);
    CHECK(max_abs_diff(gx, x.grad()) < tol);
    CHECK(max_abs_diff(gw, w.grad()) < tol * 30);  // sums over 1000 rows
    CHECK(max_abs_diff(gb, b.grad()) < tol * 30);
  }
}

TEST_CASE("layer_norm: errors and determinism") {
  CHECK_THROWS_WITH_AS(layer_norm(Tensor::zeros({2, 3}), {4}), doctest::Contains("(2, 3)"), ShapeError);
  CHECK_THROWS_AS(layer_norm(Tensor::zeros({2, 3}), {3}, Tensor::zeros({4})), ShapeError);
  CHECK_THROWS_AS(layer_norm(Tensor::zeros({2, 3}), {3}, Tensor::zeros({3}, kFloat64)), DTypeError);
  Tensor x = rnd({512, 96}, 1, kFloat32), w = rnd({96}, 2, kFloat32), b = rnd({96}, 3, kFloat32), g = rnd({512, 96}, 4, kFloat32);
  w.requires_grad_();
  check_thread_independent([&] {
    w.zero_grad();
    Tensor y = layer_norm(x, {96}, w, b);
    y.backward(g);
    return w.grad();
  });
}

// =======================================================================================
TEST_CASE("embedding: lookup, gradient, padding_idx and errors") {
  Tensor w = rnd({6, 3}, 1);
  Tensor idx = Tensor::from_vector(std::vector<int64_t>{4, 0, 4, 5, 2, 0}, {2, 3});
  Tensor y = embedding(w, idx);
  CHECK(y.shape() == Shape{2, 3, 3});
  std::vector<double> yv = y.to_vector(), wv = w.to_vector();
  const int64_t ids[6] = {4, 0, 4, 5, 2, 0};
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 3; ++j) CHECK(yv[i * 3 + j] == wv[ids[i] * 3 + j]);
  CHECK(same_bits(embedding(idx, w), y));  // PyTorch's (input, weight) order
  CHECK(same_bits(embedding(w.t().contiguous().t(), idx), y));  // strided weight

  CHECK_GRAD([&](const V& v) { return embedding(v[0], idx); }, {leaf({6, 3}, 2)});
  CHECK_GRAD([&](const V& v) { return embedding(v[0], idx); }, {noncontig_leaf({6, 3}, 3)});
  CHECK_GRAD([&](const V& v) { return mul(embedding(v[0], idx.slice(1, 0, 3, 2)), embedding(v[0], idx.slice(1, 1, 3, 2))); },
             {leaf({6, 3}, 4)});

  // padding_idx: the row is looked up but gets no gradient; repeated rows accumulate.
  Tensor wl = leaf({6, 3}, 5);
  embedding(wl, idx, 0).backward(Tensor::ones({2, 3, 3}, kFloat64));
  std::vector<double> gw = wl.grad().to_vector();
  CHECK(gw[0] == 0.0);
  CHECK(gw[4 * 3] == 2.0);
  CHECK(gw[5 * 3] == 1.0);
  CHECK(gw[1 * 3] == 0.0);
  wl.zero_grad();
  embedding(wl, idx, -1).backward(Tensor::ones({2, 3, 3}, kFloat64));  // -1 is row 5
  CHECK(wl.grad().to_vector()[5 * 3] == 0.0);
  CHECK(wl.grad().to_vector()[0] == 2.0);

  Tensor bad = Tensor::from_vector(std::vector<int64_t>{1, 7}, {2});
  CHECK_THROWS_WITH_AS(embedding(w, bad), doctest::Contains("index 7"), ShapeError);
  CHECK_THROWS_WITH_AS(embedding(w, Tensor::from_vector(std::vector<int64_t>{-1}, {1})), doctest::Contains("index -1"), ShapeError);
  CHECK_THROWS_AS(embedding(w, Tensor::zeros({2})), DTypeError);
  CHECK_THROWS_AS(embedding(w, idx, 6), ShapeError);
  CHECK_THROWS_AS(embedding(Tensor::zeros({6}), idx), ShapeError);

  // gradient bits do not depend on the thread count
  Generator gi(7);
  Tensor big_idx = randint(0, 50, {4000}, gi);
  Tensor wb = rnd({50, 64}, 8, kFloat32), gb = rnd({4000, 64}, 9, kFloat32);
  wb.requires_grad_();
  check_thread_independent([&] {
    wb.zero_grad();
    embedding(wb, big_idx).backward(gb);
    return wb.grad();
  });
}

// =======================================================================================
TEST_CASE("dropout: seeded, thread-count independent, scaled, identity in eval") {
  Tensor x = rnd({200, 300}, 1, kFloat32);
  Generator g1(42), g2(42);
  Tensor a = dropout(x, 0.3, true, g1), b = dropout(x, 0.3, true, g2);
  CHECK(same_bits(a, b));
  CHECK(g1.counter() == (uint64_t)x.numel());
  Tensor c = dropout(x, 0.3, true, g1);  // the generator moved on: a new mask
  CHECK(!same_bits(a, c));
  check_thread_independent([&] {
    Generator g(5);
    return dropout(x, 0.3, true, g);
  });
  // kept fraction ~ 0.7, kept values scaled by 1 / 0.7
  std::vector<double> av = a.to_vector(), xv = x.to_vector();
  int64_t kept = 0;
  for (size_t i = 0; i < av.size(); ++i)
    if (av[i] != 0.0) {
      ++kept;
      CHECK(av[i] == doctest::Approx(xv[i] / 0.7).epsilon(1e-6));
    }
  CHECK(std::abs((double)kept / (double)av.size() - 0.7) < 0.01);
  // identity when not training or p == 0 (no draws)
  Generator g3(1);
  CHECK(dropout(x, 0.5, false, g3).impl() == x.impl());
  CHECK(dropout(x, 0.0, true, g3).impl() == x.impl());
  CHECK(g3.counter() == 0);
  for (double v : dropout(x, 1.0, true, g3).to_vector()) CHECK(v == 0.0);
  CHECK_THROWS_AS(dropout(x, 1.5, true, g3), std::invalid_argument);
  // non-contiguous input: same mask as its contiguous copy
  Tensor xt = rnd({30, 20}, 2, kFloat32).t();
  Generator g4(9), g5(9);
  CHECK(same_bits(dropout(xt, 0.5, true, g4), dropout(xt.contiguous(), 0.5, true, g5)));
}

TEST_CASE("dropout: the integer keep test equals uniform >= p exactly") {
  for (double p : {1e-9, 0.1, 0.25, 0.3, 0.5, 1.0 / 3.0, 0.9, 0.999999})
    for (uint64_t c = 0; c < 20000; ++c) {
      const bool by_double = Generator::uniform(11, c) >= p;
      const bool by_int = (Generator::bits(11, c) >> 11) >= Generator::uniform_threshold(p);
      if (by_double != by_int) FAIL("p ", p, " counter ", c);
    }
  CHECK(Generator::uniform_threshold(0.0) == 0);
  CHECK(Generator::uniform_threshold(1.0) == (uint64_t(1) << 53));
}

TEST_CASE("dropout: gradient checks (f64)") {
  // A fresh generator per call gives the same mask on every evaluation.
  CHECK_GRAD([](const V& v) {
    Generator g(3);
    return dropout(v[0], 0.4, true, g);
  }, {leaf({4, 5}, 1)});
  CHECK_GRAD([](const V& v) {
    Generator g(4);
    return dropout(v[0], 0.4, true, g);
  }, {noncontig_leaf({4, 5}, 2)});
  CHECK_GRAD([](const V& v) {
    Generator g(5);
    return mul(dropout(v[0], 0.5, true, g), v[0]);
  }, {leaf({4, 5}, 3)});
}

// =======================================================================================
TEST_CASE("mlp_gelu: equals linear -> gelu -> dropout -> linear, values and gradients, f64 and f32") {
  for (DType dt : {kFloat64, kFloat32})
    for (double p : {0.0, 0.3}) {
      INFO(dtype_name(dt), " p ", p);
      const double tol = dt == kFloat64 ? 1e-12 : 2e-5;
      Tensor x = rnd({3, 70, 8}, 1, dt), w1 = rnd({24, 8}, 2, dt), b1 = rnd({24}, 3, dt), w2 = rnd({5, 24}, 4, dt),
             b2 = rnd({5}, 5, dt), up = rnd({3, 70, 5}, 6, dt);
      std::vector<Tensor> ps = {x, w1, b1, w2, b2};
      for (Tensor& t : ps) t.requires_grad_();
      auto grads = [&](const Tensor& y) {
        for (Tensor& t : ps) t.zero_grad();
        y.backward(up);
        std::vector<Tensor> g;
        for (Tensor& t : ps) g.push_back(t.grad());
        return g;
      };
      Generator g1(7), g2(7);
      Tensor fused = mlp_gelu(ps[0], ps[1], ps[2], ps[3], ps[4], p, true, g1);
      const std::vector<Tensor> gf = grads(fused);
      Tensor comp = linear(dropout(gelu(linear(ps[0], ps[1], ps[2])), p, true, g2), ps[3], ps[4]);
      const std::vector<Tensor> gc = grads(comp);
      CHECK(max_abs_diff(fused, comp) < tol);
      for (size_t i = 0; i < gf.size(); ++i) CHECK(max_abs_diff(gf[i], gc[i]) < tol * 10);
      CHECK(g1.counter() == g2.counter());  // the same draws
    }
}

TEST_CASE("mlp_gelu with a pre-norm: equals layer_norm then the composite, gradient checks") {
  for (DType dt : {kFloat64, kFloat32}) {
    INFO(dtype_name(dt));
    const double tol = dt == kFloat64 ? 1e-11 : 1e-4;
    Tensor x = rnd({3, 300, 8}, 21, dt), w1 = rnd({24, 8}, 22, dt), b1 = rnd({24}, 23, dt), w2 = rnd({5, 24}, 24, dt),
           b2 = rnd({5}, 25, dt), lw = rnd({8}, 26, dt), lb = rnd({8}, 27, dt), up = rnd({3, 300, 5}, 28, dt);
    std::vector<Tensor> ps = {x, w1, b1, w2, b2, lw, lb};
    for (Tensor& t : ps) t.requires_grad_();
    auto grads = [&](const Tensor& y) {
      for (Tensor& t : ps) t.zero_grad();
      y.backward(up);
      std::vector<Tensor> g = {y.detach()};
      for (Tensor& t : ps) g.push_back(t.grad());
      return g;
    };
    Generator g1(9), g2(9);
    PreNorm pn;
    pn.weight = ps[5];
    pn.bias = ps[6];
    const auto gf = grads(mlp_gelu(ps[0], ps[1], ps[2], ps[3], ps[4], 0.2, true, g1, &pn));
    const auto gc = grads(linear(dropout(gelu(linear(layer_norm(ps[0], {8}, ps[5], ps[6]), ps[1], ps[2])), 0.2, true, g2), ps[3], ps[4]));
    for (size_t i = 0; i < gf.size(); ++i) {
      INFO("output ", i);
      double scale = 0;
      for (double v : gc[i].to_vector()) scale = std::max(scale, std::abs(v));
      CHECK(max_abs_diff(gf[i], gc[i]) < tol * (1.0 + scale));
    }
  }
  CHECK_GRAD([](const V& v) {
    Generator g(3);
    PreNorm pn;
    pn.weight = v[5];
    pn.bias = v[6];
    return mlp_gelu(v[0], v[1], v[2], v[3], v[4], 0.25, true, g, &pn);
  }, {leaf({2, 3, 4}, 31), leaf({6, 4}, 32), leaf({6}, 33), leaf({5, 6}, 34), leaf({5}, 35), leaf({4}, 36), leaf({4}, 37)});
  CHECK_GRAD([](const V& v) {  // affine-free norm, x twice
    Generator g(4);
    PreNorm pn;
    return mul(mlp_gelu(v[0], v[1], Tensor(), v[2], Tensor(), 0.0, true, g, &pn), v[0]);
  }, {leaf({3, 4}, 38), leaf({6, 4}, 39), leaf({4, 6}, 40)});
}

TEST_CASE("mlp_gelu: gradient checks (f64) with views, no biases, a tensor used twice, errors") {
  CHECK_GRAD([](const V& v) {
    Generator g(3);
    return mlp_gelu(v[0], v[1], v[2], v[3], v[4], 0.25, true, g);
  }, {leaf({2, 3, 4}, 1), leaf({6, 4}, 2), leaf({6}, 3), leaf({5, 6}, 4), leaf({5}, 5)});
  CHECK_GRAD([](const V& v) {
    Generator g(4);
    return mlp_gelu(v[0], v[1], Tensor(), v[2], Tensor(), 0.0, true, g);
  }, {noncontig_leaf({3, 4}, 6), noncontig_leaf({6, 4}, 7), leaf({4, 6}, 8)});
  CHECK_GRAD([](const V& v) {  // w used as both weights, x twice
    Generator g(5);
    return mul(mlp_gelu(v[0], v[1], v[2], v[1], v[2], 0.2, true, g), v[0]);
  }, {leaf({3, 4}, 9), leaf({4, 4}, 10), leaf({4}, 11)});
  Generator g(1);
  CHECK_THROWS_WITH_AS(mlp_gelu(Tensor::zeros({2, 3}), Tensor::zeros({6, 4}), Tensor(), Tensor::zeros({5, 6}), Tensor(), 0.1, true, g),
                       doctest::Contains("w1 (6, 4)"), ShapeError);
  CHECK_THROWS_AS(mlp_gelu(Tensor::zeros({2, 4}), Tensor::zeros({6, 4}), Tensor(), Tensor::zeros({5, 6}), Tensor(), 1.0, true, g),
                  std::invalid_argument);
  // eval mode draws nothing
  const uint64_t c0 = g.counter();
  mlp_gelu(Tensor::zeros({2, 4}), Tensor::zeros({6, 4}), Tensor(), Tensor::zeros({5, 6}), Tensor(), 0.5, false, g);
  CHECK(g.counter() == c0);
}

// =======================================================================================
TEST_CASE("cross_entropy: hand-computed values, ignore_index, label smoothing, reductions") {
  // logits (3, 3); targets 2, -100 (ignored), 0.
  Tensor lg = Tensor::from_vector(std::vector<double>{1.0, 2.0, 3.0, 0.5, 0.5, 0.5, -1.0, 0.0, 1.0}, {3, 3});
  Tensor tg = Tensor::from_vector(std::vector<int64_t>{2, -100, 0}, {3});
  // log-softmax by hand: row 0 lse = 3 + log(1 + e^-1 + e^-2) = 3.40760596444; row 2 lse = 1.40760596444
  const double lse0 = 3.40760596444438, lse2 = 1.40760596444438;
  const double l0 = lse0 - 3.0, l2 = lse2 - (-1.0);
  CHECK(cross_entropy(lg, tg).item() == doctest::Approx((l0 + l2) / 2).epsilon(1e-12));
  CHECK(cross_entropy(lg, tg, -100, "sum").item() == doctest::Approx(l0 + l2).epsilon(1e-12));
  std::vector<double> none = cross_entropy(lg, tg, -100, "none").to_vector();
  CHECK(none[0] == doctest::Approx(l0).epsilon(1e-12));
  CHECK(none[1] == 0.0);
  CHECK(none[2] == doctest::Approx(l2).epsilon(1e-12));
  // label smoothing 0.1 (PyTorch): (1 - 0.1) * nll + 0.1 / C * sum_c (-logp_c)
  const double s0 = 3 * lse0 - (1.0 + 2.0 + 3.0), s2 = 3 * lse2 - (-1.0 + 0.0 + 1.0);
  const double ls0 = 0.9 * l0 + 0.1 / 3 * s0, ls2 = 0.9 * l2 + 0.1 / 3 * s2;
  CHECK(cross_entropy(lg, tg, -100, "mean", 0.1).item() == doctest::Approx((ls0 + ls2) / 2).epsilon(1e-12));
  CHECK(cross_entropy(lg, tg, -100, 0.1).item() == doctest::Approx((ls0 + ls2) / 2).epsilon(1e-12));  // brief's order
  CHECK(cross_entropy(lg, tg, -100, 0.1, "sum").item() == doctest::Approx(ls0 + ls2).epsilon(1e-12));
  // a custom ignore_index; f32
  Tensor tg2 = Tensor::from_vector(std::vector<int64_t>{2, 1, 1}, {3});
  CHECK(cross_entropy(lg.to(kFloat32), tg2, 1).item() == doctest::Approx(l0).epsilon(1e-6));
  // every target ignored: mean is NaN (0 / 0), as in PyTorch
  CHECK(std::isnan(cross_entropy(lg, Tensor::full({3}, -100, kInt64)).item()));
  // (N, C, d) layout agrees with moving the class dim last
  Tensor lg3 = rnd({2, 4, 3}, 1), tg3 = Tensor::from_vector(std::vector<int64_t>{0, 3, 1, 2, -100, 3}, {2, 3});
  Tensor flat = lg3.permute({0, 2, 1}).reshape({6, 4});
  CHECK(cross_entropy(lg3, tg3, -100, "mean", 0.2).item() ==
        doctest::Approx(cross_entropy(flat, tg3.reshape({6}), -100, "mean", 0.2).item()).epsilon(1e-12));
  // 1-d logits with a 0-d target
  CHECK(cross_entropy(lg.select(0, 0), Tensor::scalar(2, kInt64)).item() == doctest::Approx(l0).epsilon(1e-12));
}

TEST_CASE("cross_entropy: gradient checks (f64)") {
  Tensor tg = Tensor::from_vector(std::vector<int64_t>{2, -100, 0, 4}, {4});
  for (const char* red : {"mean", "sum", "none"})
    for (double eps : {0.0, 0.25}) {
      INFO(red, " eps ", eps);
      CHECK_GRAD([&](const V& v) { return cross_entropy(v[0], tg, -100, red, eps); }, {leaf({4, 5}, 1)});
      CHECK_GRAD([&](const V& v) { return cross_entropy(v[0], tg, -100, red, eps); }, {noncontig_leaf({4, 5}, 2)});
    }
  Tensor tg3 = Tensor::from_vector(std::vector<int64_t>{0, 3, 1, 2, -100, 3}, {2, 3});
  CHECK_GRAD([&](const V& v) { return cross_entropy(v[0], tg3, -100, "mean", 0.1); }, {leaf({2, 4, 3}, 3)});
  CHECK_GRAD([&](const V& v) { return mul(cross_entropy(v[0], tg, -100, "none"), v[0].select(1, 0)); }, {leaf({4, 5}, 4)});
}

TEST_CASE("cross_entropy: errors name the value and the shapes") {
  Tensor lg = Tensor::zeros({3, 4});
  CHECK_THROWS_WITH_AS(cross_entropy(lg, Tensor::from_vector(std::vector<int64_t>{0, 4, 1}, {3})), doctest::Contains("target 4"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(cross_entropy(lg, Tensor::from_vector(std::vector<int64_t>{0, -1, 1}, {3})), doctest::Contains("target -1"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(cross_entropy(lg, Tensor::zeros({4}, kInt64)), doctest::Contains("(3, 4)"), ShapeError);
  CHECK_THROWS_AS(cross_entropy(lg, Tensor::zeros({3})), DTypeError);
  CHECK_THROWS_AS(cross_entropy(lg, Tensor::zeros({3}, kInt64), -100, "avg"), std::invalid_argument);
}

TEST_CASE("mse_loss: values and gradients") {
  Tensor a = Tensor::from_vector(std::vector<double>{1.0, 2.0, 4.0}, {3}), b = Tensor::from_vector(std::vector<double>{0.0, 2.0, 1.0}, {3});
  CHECK(mse_loss(a, b).item() == doctest::Approx(10.0 / 3));
  CHECK(mse_loss(a, b, "sum").item() == doctest::Approx(10.0));
  CHECK(mse_loss(a, b, "none").to_vector() == std::vector<double>{1.0, 0.0, 9.0});
  for (const char* red : {"mean", "sum", "none"}) {
    INFO(red);
    CHECK_GRAD([&](const V& v) { return mse_loss(v[0], v[1], red); }, {leaf({3, 4}, 1), noncontig_leaf({3, 4}, 2)});
    CHECK_GRAD([&](const V& v) { return mse_loss(v[0], v[0].t(), red); }, {leaf({4, 4}, 3)});
  }
  CHECK_THROWS_WITH_AS(mse_loss(Tensor::zeros({3}), Tensor::zeros({4})), doctest::Contains("(4)"), ShapeError);
}
