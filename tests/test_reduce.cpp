// Reductions: values against hand-computed and naive double references, gradient checks
// (contiguous, views, keepdim, several dim sets, reuse), max/min indices, logsumexp at
// large magnitudes, error messages, and thread-count independence.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;
using Dims = std::vector<int64_t>;

namespace {
Tensor dvec(std::vector<double> v, const Shape& s) { return Tensor::from_vector(v, s); }

// Naive reference: sum over the dims in `red` (a mask), in double, keepdim shape.
std::vector<double> naive_sum(const Tensor& x, const std::vector<bool>& red) {
  Shape ks = x.shape();
  for (size_t d = 0; d < ks.size(); ++d)
    if (red[d]) ks[d] = 1;
  std::vector<double> out((size_t)shape_numel(ks), 0.0);
  std::vector<double> xv = x.to_vector();
  Shape idx(x.dim(), 0);
  for (size_t k = 0; k < xv.size(); ++k) {
    int64_t o = 0;
    for (int64_t d = 0; d < x.dim(); ++d) o = o * ks[d] + (red[d] ? 0 : idx[d]);
    out[o] += xv[k];
    for (int64_t d = x.dim() - 1; d >= 0; --d) {
      if (++idx[d] < x.shape()[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("sum and mean: hand-computed values, keepdim, negative and empty dims") {
  Tensor x = dvec({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(sum(x).item() == 21.0);
  CHECK(sum(x).dim() == 0);
  CHECK(sum(x, {0}).to_vector() == std::vector<double>{5, 7, 9});
  CHECK(sum(x, {1}).to_vector() == std::vector<double>{6, 15});
  CHECK(sum(x, {-1}, true).shape() == Shape{2, 1});
  CHECK(sum(x, {0, 1}, true).shape() == Shape{1, 1});
  CHECK(sum(x, {}).item() == 21.0);  // empty list: every dim
  CHECK(mean(x).item() == 3.5);
  CHECK(mean(x, {0}).to_vector() == std::vector<double>{2.5, 3.5, 4.5});
  CHECK(mean(x, {1}, true).to_vector() == std::vector<double>{2, 5});
  // f32 keeps its dtype
  Tensor xf = x.to(kFloat32);
  CHECK(sum(xf, {1}).dtype() == kFloat32);
  CHECK(sum(xf, {1}).to_vector() == std::vector<double>{6, 15});
  // 0-d and size-0 inputs
  CHECK(sum(Tensor::scalar(4.0, kFloat64)).item() == 4.0);
  CHECK(sum(Tensor::zeros({0, 3}, kFloat64), {0}).to_vector() == std::vector<double>{0, 0, 0});
  CHECK(std::isnan(mean(Tensor::zeros({0}, kFloat64)).item()));
  CHECK(sum(Tensor::zeros({3, 0}, kFloat64), {0}).shape() == Shape{0});
}

TEST_CASE("0-d inputs reduce to themselves") {
  Tensor s = leaf({}, 3);
  const double v = s.detach().item();
  CHECK(sum(s, {0}).item() == v);
  CHECK(mean(s, {-1}, true).dim() == 0);
  CHECK(max(s, 0).values.item() == v);
  CHECK(max(s, 0).indices.item() == 0.0);
  CHECK(argmax(s).item() == 0.0);
  CHECK(logsumexp(s, {}).item() == doctest::Approx(v));
  CHECK(cumsum(s, 0).item() == v);
  CHECK_GRAD([](const V& x) { return sum(x[0]); }, {s});
  CHECK_GRAD([](const V& x) { return max(x[0], 0).values; }, {s});
  CHECK_GRAD([](const V& x) { return logsumexp(x[0], {0}, true); }, {s});
  CHECK_GRAD([](const V& x) { return cumsum(x[0], -1); }, {s});
  // a (1,)-shaped reduction into 0-d and back
  Tensor one = leaf({1}, 4);
  CHECK_GRAD([](const V& x) { return max(x[0], 0).values; }, {one});
  CHECK_GRAD([](const V& x) { return var(x[0], {0}, 0.0); }, {one});
}

TEST_CASE("sum agrees with a naive reference on every dim set and layout") {
  Generator g(3);
  Tensor base = randn({4, 5, 6}, g, kFloat64);
  const std::vector<Tensor> layouts = {base, base.permute({2, 0, 1}), base.transpose(0, 1),
                                       base.slice(2, 0, 6, 2), base.slice(0, 1, 4).slice(1, 0, 5, 3),
                                       base.select(1, 2).unsqueeze(1).expand({4, 7, 6})};
  for (const Tensor& x : layouts) {
    for (int mask = 0; mask < 8; ++mask) {
      std::vector<bool> red(3);
      Dims dims;
      for (int d = 0; d < 3; ++d)
        if (mask >> d & 1) {
          red[d] = true;
          dims.push_back(d - 3);  // negative dims
        }
      if (dims.empty()) continue;
      INFO("shape " << shape_str(x.shape()) << " mask " << mask);
      std::vector<double> ref = naive_sum(x, red), got = sum(x, dims, true).to_vector();
      REQUIRE(got.size() == ref.size());
      for (size_t i = 0; i < ref.size(); ++i) CHECK(got[i] == doctest::Approx(ref[i]).epsilon(1e-12));
      // f32 agrees too
      std::vector<double> got32 = sum(x.to(kFloat32), dims, true).to_vector();
      for (size_t i = 0; i < ref.size(); ++i) CHECK(got32[i] == doctest::Approx(ref[i]).epsilon(1e-5).scale(1));
    }
  }
}

TEST_CASE("f32 sums accumulate in double") {
  // 2^24 + many ones: a float accumulator would stall at 16777216.
  const int64_t n = 1 << 20;
  Tensor x = Tensor::ones({n + 1}, kFloat32);
  {
    NoGradGuard ng;
    x.narrow(0, 0, 1).fill_(16777216.0);
  }
  CHECK(sum(x).item() == 16777216.0 + n);
  Tensor y = Tensor::full({3, 100000}, 0.1, kFloat32);
  for (double v : sum(y, {1}).to_vector()) CHECK(v == doctest::Approx(10000.0).epsilon(1e-6));
  CHECK(mean(y).item() == doctest::Approx(0.1).epsilon(1e-6));
}

TEST_CASE("sum / mean gradients: dim sets, keepdim, views, reuse") {
  Tensor x = leaf({2, 3, 4}, 1);
  for (const Dims& dims : {Dims{}, Dims{0}, Dims{1}, Dims{-1}, Dims{0, 2}, Dims{1, 2}, Dims{0, 1, 2}}) {
    for (bool keep : {false, true}) {
      INFO("dims " << shape_str(dims) << " keepdim " << keep);
      CHECK_GRAD([&](const V& v) { return sum(v[0], dims, keep); }, {x});
      CHECK_GRAD([&](const V& v) { return mean(v[0], dims, keep); }, {x});
    }
  }
  CHECK_GRAD([](const V& v) { return sum(v[0]); }, {x});
  CHECK_GRAD([](const V& v) { return mean(v[0]); }, {x});
  Tensor nc = noncontig_leaf({3, 4}, 2);  // transposed
  CHECK_GRAD([](const V& v) { return sum(v[0], {0}); }, {nc});
  CHECK_GRAD([](const V& v) { return mean(v[0], {1}, true); }, {nc});
  Tensor nc3 = noncontig_leaf({2, 3, 4}, 3);  // strided last dim
  CHECK_GRAD([](const V& v) { return sum(v[0], {0, 2}); }, {nc3});
  // reuse: x * sum(x) and sum(x) + mean(x)
  CHECK_GRAD([](const V& v) { return mul(v[0], sum(v[0], {1}, true)); }, {x});
  CHECK_GRAD([](const V& v) { return add(sum(v[0], {0}), mean(v[0], {0})); }, {x});
}

TEST_CASE("var: correction semantics, values and gradients") {
  Tensor x = dvec({1, 2, 3, 4}, {4});
  CHECK(var(x).item() == doctest::Approx(5.0 / 3.0));
  CHECK(var(x, {}, 0.0).item() == doctest::Approx(1.25));
  CHECK(var(x, {0}, 2.0).item() == doctest::Approx(2.5));
  Tensor m = dvec({1, 2, 3, 2, 4, 6}, {2, 3});
  CHECK(var(m, {1}).to_vector() == std::vector<double>{1.0, 4.0});
  CHECK(var(m, {0}, 0.0, true).shape() == Shape{1, 3});
  CHECK(var(m, {0}, 0.0).to_vector() == std::vector<double>{0.25, 1.0, 2.25});
  // large offset: two-pass stays exact where E[x^2] - E[x]^2 would cancel
  Tensor big = dvec({1e8 + 1, 1e8 + 2, 1e8 + 3, 1e8 + 4}, {4});
  CHECK(var(big).item() == doctest::Approx(5.0 / 3.0));
  CHECK(std::isinf(var(dvec({1, 2}, {2}), {}, 2.0).item()));  // N - correction = 0
  Tensor a = leaf({3, 4}, 5);
  CHECK_GRAD([](const V& v) { return var(v[0]); }, {a});
  CHECK_GRAD([](const V& v) { return var(v[0], {0}); }, {a});
  CHECK_GRAD([](const V& v) { return var(v[0], {-1}, 0.0, true); }, {a});
  CHECK_GRAD([](const V& v) { return var(v[0], {1}, 1.0, false); }, {noncontig_leaf({3, 4}, 6)});
  Tensor b = leaf({2, 3, 4}, 7);
  CHECK_GRAD([](const V& v) { return var(v[0], {0, 2}, 1.0, true); }, {b});
  CHECK_GRAD([](const V& v) { return mul(var(v[0], {2}, 1.0, true), v[0]); }, {b});
}

TEST_CASE("max / min along a dim: values, indices, ties, gradient to the arg position") {
  Tensor x = dvec({3, 7, 7, 1, -2, 5, 0, 0, -1}, {3, 3});
  ValuesIndices r = max(x, 1);
  CHECK(r.values.to_vector() == std::vector<double>{7, 5, 0});
  CHECK(r.indices.dtype() == kInt64);
  CHECK(r.indices.to_vector() == std::vector<double>{1, 2, 0});  // ties: first index
  ValuesIndices c = min(x, 0, true);
  CHECK(c.values.shape() == Shape{1, 3});
  CHECK(c.values.to_vector() == std::vector<double>{0, -2, -1});
  CHECK(c.indices.to_vector() == std::vector<double>{2, 1, 2});
  CHECK(argmax(x, 1).to_vector() == std::vector<double>{1, 2, 0});
  CHECK(argmin(x, -1, true).shape() == Shape{3, 1});
  CHECK(argmin(x, -1).to_vector() == std::vector<double>{0, 1, 2});
  CHECK(argmax(x).item() == 1.0);
  CHECK(argmax(x.t()).item() == 3.0);  // flat index in the view's row-major order
  CHECK(max(x).item() == 7.0);
  CHECK(min(x).item() == -2.0);
  // NaN is the maximum
  Tensor n = dvec({1, NAN, 3}, {3});
  CHECK(max(n, 0).indices.item() == 1.0);
  CHECK(std::isnan(max(n).item()));

  // The gradient goes only to the first arg position.
  Tensor xl = x.detach().clone().requires_grad_();
  max(xl, 1).values.backward(dvec({10, 20, 30}, {3}));
  CHECK(xl.grad().to_vector() == std::vector<double>{0, 10, 0, 0, 0, 20, 30, 0, 0});
  // Full max shares the gradient among ties.
  Tensor t = dvec({1, 4, 4, 2}, {4}).requires_grad_();
  max(t).backward();
  CHECK(t.grad().to_vector() == std::vector<double>{0, 0.5, 0.5, 0});

  Tensor a = leaf({3, 4, 5}, 11);  // random: no ties
  for (int64_t d : {0, 1, 2, -1})
    for (bool keep : {false, true}) {
      INFO("dim " << d << " keepdim " << keep);
      CHECK_GRAD([&](const V& v) { return max(v[0], d, keep).values; }, {a});
      CHECK_GRAD([&](const V& v) { return min(v[0], d, keep).values; }, {a});
    }
  CHECK_GRAD([](const V& v) { return max(v[0]); }, {a});
  CHECK_GRAD([](const V& v) { return min(v[0]); }, {a});
  Tensor nc = noncontig_leaf({4, 5}, 12);
  CHECK_GRAD([](const V& v) { return max(v[0], 0).values; }, {nc});
  CHECK_GRAD([](const V& v) { return min(v[0], 1, true).values; }, {nc});
  CHECK_GRAD([](const V& v) { return mul(max(v[0], 1, true).values, v[0]); }, {nc});
  CHECK_GRAD([](const V& v) { return add(max(v[0], 0).values, min(v[0], 0).values); }, {a});
}

TEST_CASE("max / min on long rows (vectorised path) match a naive scan, with ties, inf and NaN") {
  Generator g(13);
  for (DType dt : {kFloat32, kFloat64}) {
    Tensor x = randint(-20, 20, {6, 100}, g).to(dt);  // many ties
    {
      NoGradGuard ng;
      x.select(0, 1).narrow(0, 70, 1).fill_(INFINITY);
      x.select(0, 2).narrow(0, 3, 1).fill_(-INFINITY);
      x.select(0, 3).narrow(0, 50, 1).fill_(NAN);
      x.select(0, 4).narrow(0, 99, 1).fill_(NAN);
      x.select(0, 4).narrow(0, 10, 1).fill_(INFINITY);
    }
    std::vector<double> xv = x.to_vector();
    for (bool is_max : {true, false}) {
      ValuesIndices r = is_max ? max(x, 1) : min(x, 1);
      std::vector<double> v = r.values.to_vector(), i = r.indices.to_vector();
      for (int64_t row = 0; row < 6; ++row) {
        int64_t best = 0;
        for (int64_t j = 1; j < 100; ++j) {
          const double c = xv[row * 100 + j], b = xv[row * 100 + best];
          if (std::isnan(b)) break;
          if (std::isnan(c) || (is_max ? c > b : c < b)) best = j;
        }
        INFO("row " << row << " max " << is_max << " dtype " << dtype_name(dt));
        CHECK(i[row] == (double)best);
        const double want = xv[row * 100 + best];
        CHECK((v[row] == want || (std::isnan(v[row]) && std::isnan(want))));
      }
    }
  }
}

TEST_CASE("logsumexp: stable at large magnitudes, values and gradients") {
  Tensor x = dvec({1000, 1001, 1002, -1000, -1001, -1002}, {2, 3});
  std::vector<double> l = logsumexp(x, {1}).to_vector();
  const double tail = std::log(std::exp(-2.0) + std::exp(-1.0) + 1.0);
  CHECK(l[0] == doctest::Approx(1002 + tail));
  CHECK(l[1] == doctest::Approx(-1000 + tail));
  std::vector<double> l32 = logsumexp(x.to(kFloat32), {-1}, true).to_vector();
  CHECK(l32[0] == doctest::Approx(1002 + tail).epsilon(1e-6));
  CHECK(std::isfinite(l32[1]));
  CHECK(logsumexp(x.to(kFloat32), {-1}, true).shape() == Shape{2, 1});
  // small values: matches log(sum(exp))
  Tensor s = dvec({0.1, -0.3, 0.7, 1.5}, {2, 2});
  CHECK(logsumexp(s, {}).item() == doctest::Approx(std::log(std::exp(0.1) + std::exp(-0.3) + std::exp(0.7) + std::exp(1.5))));
  CHECK(logsumexp(s, {0}).to_vector()[1] == doctest::Approx(std::log(std::exp(-0.3) + std::exp(1.5))));
  // infinities
  const double inf = INFINITY;
  std::vector<double> li = logsumexp(dvec({-inf, -inf, 1, inf}, {2, 2}), {1}).to_vector();
  CHECK(li[0] == -inf);
  CHECK(li[1] == inf);
  // gradient at 1000s is the softmax, not NaN
  Tensor xl = x.detach().clone().requires_grad_();
  logsumexp(xl, {1}).backward(Tensor::ones({2}, kFloat64));
  for (double v : xl.grad().to_vector()) CHECK(std::isfinite(v));
  CHECK(xl.grad().at({0, 2}) == doctest::Approx(1.0 / (1 + std::exp(-1.0) + std::exp(-2.0))));

  Tensor a = leaf({3, 4, 2}, 21, 3.0);
  for (const Dims& dims : {Dims{0}, Dims{-1}, Dims{0, 2}, Dims{}})
    for (bool keep : {false, true}) {
      INFO("dims " << shape_str(dims) << " keepdim " << keep);
      CHECK_GRAD([&](const V& v) { return logsumexp(v[0], dims, keep); }, {a});
    }
  CHECK_GRAD([](const V& v) { return logsumexp(v[0], {1}); }, {noncontig_leaf({3, 4}, 22)});
  CHECK_GRAD([](const V& v) { return mul(logsumexp(v[0], {1}, true), v[0]); }, {leaf({3, 4}, 23)});
  CHECK_GRAD([](const V& v) { return logsumexp(add(v[0], 1000.0), {1}); }, {leaf({3, 4}, 24)});
}

TEST_CASE("cumsum: values and gradients along every dim") {
  Tensor x = dvec({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(cumsum(x, 1).to_vector() == std::vector<double>{1, 3, 6, 4, 9, 15});
  CHECK(cumsum(x, 0).to_vector() == std::vector<double>{1, 2, 3, 5, 7, 9});
  CHECK(cumsum(x, -1).shape() == Shape{2, 3});
  CHECK(cumsum(x.t(), 1).to_vector() == std::vector<double>{1, 5, 2, 7, 3, 9});
  Tensor a = leaf({3, 4, 2}, 31);
  for (int64_t d : {0, 1, 2, -1}) {
    INFO("dim " << d);
    CHECK_GRAD([&](const V& v) { return cumsum(v[0], d); }, {a});
  }
  CHECK_GRAD([](const V& v) { return cumsum(v[0], 0); }, {noncontig_leaf({3, 4}, 32)});
  CHECK_GRAD([](const V& v) { return mul(cumsum(v[0], 1), v[0]); }, {leaf({3, 4}, 33)});
}

TEST_CASE("errors name the op, the shapes and the rule") {
  Tensor x = Tensor::zeros({2, 3});
  std::string m = error_of([&] { sum(x, {2}); });
  CHECK(m.find("sum") != std::string::npos);
  CHECK(m.find("out of range") != std::string::npos);
  CHECK(m.find("(2, 3)") != std::string::npos);
  m = error_of([&] { mean(x, {1, -1}); });
  CHECK(m.find("more than once") != std::string::npos);
  CHECK(m.find("(2, 3)") != std::string::npos);
  CHECK_THROWS_AS(sum(x, {-3}), ShapeError);
  CHECK_THROWS_AS(var(x, {0, 0}), ShapeError);
  CHECK_THROWS_AS(max(x, 2), ShapeError);
  CHECK_THROWS_AS(logsumexp(x, {5}), ShapeError);
  CHECK_THROWS_AS(cumsum(x, 2), ShapeError);
  CHECK_THROWS_AS(max(Tensor::zeros({0, 3}), 0), ShapeError);
  CHECK_THROWS_AS(max(Tensor::zeros({0})), ShapeError);
  CHECK_THROWS_AS(sum(Tensor::zeros({2}, kInt64)), DTypeError);
  CHECK(max(Tensor::zeros({0, 3}), 1).values.shape() == Shape{0});  // empty output is fine
}

TEST_CASE("threaded reductions give the same bits as one thread") {
  const int prev = get_num_threads();
  Generator g(9);
  Tensor a = randn({300, 2000}, g);             // f32, 600k elements
  Tensor big = randn({3 * (1 << 17) + 7}, g);   // chunked whole-tensor path
  auto run = [&] {
    std::vector<std::vector<double>> r;
    r.push_back(sum(a, {1}).to_vector());       // last dim, contiguous
    r.push_back(sum(a, {0}).to_vector());       // blocked over columns
    r.push_back(mean(a.t(), {0}).to_vector());  // transposed view
    r.push_back(var(a, {1}).to_vector());
    r.push_back(logsumexp(a, {0}).to_vector());
    r.push_back(max(a, 1).values.to_vector());
    r.push_back(max(a, 0).indices.to_vector());
    r.push_back(cumsum(a, 0).to_vector());
    r.push_back({sum(big).item(), mean(big).item(), var(big).item(), max(big).item(), argmax(big).item(),
                 logsumexp(big, {}).item(), sum(a).item()});
    return r;
  };
  set_num_threads(2);
  auto p = run();
  set_num_threads(1);
  auto s = run();
  set_num_threads(prev);
  REQUIRE(p.size() == s.size());
  for (size_t i = 0; i < p.size(); ++i) {
    INFO("result " << i);
    CHECK(p[i] == s[i]);
  }
  // and the whole-tensor chunked sum matches a double reference
  double ref = 0;
  for (double v : big.to_vector()) ref += v;
  CHECK(sum(big).item() == doctest::Approx(ref).epsilon(1e-6));
  std::vector<double> col = sum(a, {0}).to_vector(), av = a.to_vector();
  double c0 = 0;
  for (int64_t i = 0; i < 300; ++i) c0 += av[i * 2000];
  CHECK(col[0] == doctest::Approx(c0).epsilon(1e-6));
}
