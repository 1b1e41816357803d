// Gradient checks (f64) for every elementwise op: contiguous, non-contiguous, broadcast on
// each side, and the same tensor used twice.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {
using Unary = std::function<Tensor(const Tensor&)>;
void check_unary(const char* name, Unary f, double scale = 1.0, double shift = 0.0) {
  INFO(name);
  Tensor x = leaf({3, 4}, 11, scale, shift);
  CHECK_GRAD([&](const V& v) { return f(v[0]); }, {x});
  Tensor nc = noncontig_leaf({3, 4}, 12, scale, shift);
  CHECK_GRAD([&](const V& v) { return f(v[0]); }, {nc});
  // used twice: f(x) * f(x)
  CHECK_GRAD([&](const V& v) { return mul(f(v[0]), f(v[0])); }, {x});
  // f32 forward agrees with f64
  Tensor x32 = x.detach().to(kFloat32);
  std::vector<double> a = f(x32).to_vector(), b = f(x.detach()).to_vector();
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i] == doctest::Approx(b[i]).epsilon(1e-5));
}
using Binary = std::function<Tensor(const Tensor&, const Tensor&)>;
void check_binary(const char* name, Binary f, double scale = 1.0, double shift = 0.0) {
  INFO(name);
  Tensor a = leaf({3, 4}, 21, scale, shift), b = leaf({3, 4}, 22, scale, shift);
  CHECK_GRAD([&](const V& v) { return f(v[0], v[1]); }, {a, b});
  Tensor r = leaf({4}, 23, scale, shift), c = leaf({3, 1}, 24, scale, shift);
  CHECK_GRAD([&](const V& v) { return f(v[0], v[1]); }, {a, r});  // broadcast right
  CHECK_GRAD([&](const V& v) { return f(v[0], v[1]); }, {c, b});  // broadcast left
  CHECK_GRAD([&](const V& v) { return f(v[0], v[1]); }, {c, r});  // both
  Tensor nc = noncontig_leaf({3, 4}, 25, scale, shift);
  CHECK_GRAD([&](const V& v) { return f(v[0], v[1]); }, {nc, b});
  CHECK_GRAD([&](const V& v) { return f(v[0], v[0]); }, {a});  // same tensor twice
}
}  // namespace

TEST_CASE("relu: NaN passes through forward and backward (a divergence is not hidden)") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Tensor x = Tensor::from_vector(std::vector<double>{-1.0, nan, 2.0}, {3}).requires_grad_();
  const std::vector<double> y = relu(x).to_vector();
  CHECK(y[0] == 0.0);
  CHECK(std::isnan(y[1]));
  CHECK(y[2] == 2.0);
  sum(mul(relu(x), 3.0)).backward();
  const std::vector<double> g = x.grad().to_vector();
  CHECK(g[0] == 0.0);
  CHECK(g[1] == 3.0);
  CHECK(g[2] == 3.0);
  CHECK(std::isnan(relu(Tensor::from_vector(std::vector<double>{nan}, {1}).to(kFloat32)).item()));
}

TEST_CASE("unary ops: gradient checks") {
  check_unary("neg", [](const Tensor& x) { return neg(x); });
  check_unary("exp", [](const Tensor& x) { return exp(x); });
  check_unary("log", [](const Tensor& x) { return log(x); }, 0.2, 2.0);
  check_unary("sqrt", [](const Tensor& x) { return sqrt(x); }, 0.2, 2.0);
  check_unary("rsqrt", [](const Tensor& x) { return rsqrt(x); }, 0.2, 2.0);
  check_unary("abs", [](const Tensor& x) { return abs(x); }, 1.0, 0.0);
  check_unary("tanh", [](const Tensor& x) { return tanh(x); });
  check_unary("sin", [](const Tensor& x) { return sin(x); }, 3.0);
  check_unary("cos", [](const Tensor& x) { return cos(x); }, 3.0);
  check_unary("sigmoid", [](const Tensor& x) { return sigmoid(x); });
  check_unary("relu", [](const Tensor& x) { return relu(x); });
  check_unary("gelu", [](const Tensor& x) { return gelu(x); });
  check_unary("gelu tanh", [](const Tensor& x) { return gelu(x, "tanh"); });
  check_unary("elu", [](const Tensor& x) { return elu(x, 0.7); });
  check_unary("softplus", [](const Tensor& x) { return softplus(x, 1.5, 20.0); });
  check_unary("clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.6); });
  check_unary("clamp min only", [](const Tensor& x) { return clamp(x, -0.5); });
  check_unary("pow 3", [](const Tensor& x) { return pow(x, 3.0); });
  check_unary("pow 2", [](const Tensor& x) { return pow(x, 2.0); });
  check_unary("pow -1.5", [](const Tensor& x) { return pow(x, -1.5); }, 0.2, 2.0);
  check_unary("scalar add/sub/mul/div", [](const Tensor& x) { return div(mul(sub(add(x, 1.5), 0.5), 3.0), 2.0); });
  check_unary("rsub rdiv", [](const Tensor& x) { return 2.0 / (3.0 - x); }, 0.2, 0.0);
}

TEST_CASE("binary ops: gradient checks with broadcasting, views and reuse") {
  check_binary("add", [](const Tensor& a, const Tensor& b) { return add(a, b); });
  check_binary("add alpha", [](const Tensor& a, const Tensor& b) { return add(a, b, -2.5); });
  check_binary("sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); });
  check_binary("mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); });
  check_binary("div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, 0.3, 2.0);
  check_binary("maximum", [](const Tensor& a, const Tensor& b) { return maximum(a, b); });
  check_binary("minimum", [](const Tensor& a, const Tensor& b) { return minimum(a, b); });
  check_binary("pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); }, 0.2, 1.5);
}

TEST_CASE("values: gelu, softplus, elu and clamp against closed forms") {
  Tensor x = Tensor::from_vector(std::vector<double>{-2.0, -0.5, 0.0, 0.5, 3.0}, {5});
  std::vector<double> g = gelu(x).to_vector(), gt = gelu(x, "tanh").to_vector();
  CHECK(g[3] == doctest::Approx(0.3457312306));
  CHECK(g[0] == doctest::Approx(-0.0455002639));
  CHECK(gt[3] == doctest::Approx(0.3457140714));
  CHECK(softplus(x).to_vector()[4] == doctest::Approx(std::log1p(std::exp(3.0))));
  CHECK(elu(x).to_vector()[0] == doctest::Approx(std::exp(-2.0) - 1));
  std::vector<double> c = clamp(x, -1.0, 1.0).to_vector();
  CHECK(c[0] == -1.0);
  CHECK(c[4] == 1.0);
  CHECK(c[3] == 0.5);
}

// exp, sigmoid, tanh, softplus and log run on ops/fastmath.h, not libm: the values and gradients
// std:: gives, within a few ulp, at the edges too (subnormal results, overflow, ±inf, NaN).
TEST_CASE("values: exp, sigmoid, tanh, softplus and log match std:: in f32 and f64 over their whole range") {
  using LD = long double;
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<double> xs{-inf, -1000, -746, -110, -103, -100, -90, -88.5, -40, -20, -1, -1e-30, -0.0, 0.0, 1e-30,
                               0.3, 1, 9.5, 15, 20, 20.5, 30, 88.5, 88.8, 100, 709.5, 710, 1000, inf, nan,
                               1e-40, 1e-310, 3e38, 1e300};  // log: subnormal and huge inputs
  struct Case {
    const char* name;
    Tensor (*op)(const Tensor&);
    LD (*f)(LD);   // the value
    LD (*df)(LD);  // its derivative
  };
  const Case cases[] = {
      {"exp", [](const Tensor& x) { return exp(x); }, [](LD x) { return std::exp(x); }, [](LD x) { return std::exp(x); }},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, [](LD x) { return 1 / (1 + std::exp(-x)); },
       [](LD x) { return x < -1e4L ? 0.0L : std::exp(-x) / ((1 + std::exp(-x)) * (1 + std::exp(-x))); }},
      {"tanh", [](const Tensor& x) { return tanh(x); }, [](LD x) { return std::tanh(x); },
       [](LD x) { return 1 - std::tanh(x) * std::tanh(x); }},
      {"softplus", [](const Tensor& x) { return softplus(x); }, [](LD x) { return x > 20 ? x : std::log1p(std::exp(x)); },
       [](LD x) { return x > 20 ? 1.0L : 1 / (1 + std::exp(-x)); }},
      {"log", [](const Tensor& x) { return log(x); }, [](LD x) { return std::log(x); }, [](LD x) { return 1 / x; }}};
  // |got - want| in ulps of want as T (subnormals in units of the smallest); 0 when both are
  // the same infinity or both NaN.
  auto ulps = [inf](double got, LD want, bool f32) -> double {
    const double w = f32 ? (double)(float)want : (double)want;
    if (std::isnan(w) || std::isinf(w)) return (std::isnan(w) && std::isnan(got)) || got == w ? 0.0 : inf;
    const double up = f32 ? (double)std::nextafter((float)std::abs(w), (float)inf) : std::nextafter(std::abs(w), inf);
    return (double)(std::fabs((LD)got - want) / (LD)(up - std::abs(w)));
  };
  for (const DType dt : {kFloat32, kFloat64}) {
    const bool f32 = dt == kFloat32;
    for (const Case& c : cases) {
      Tensor x = Tensor::from_vector(xs, {(int64_t)xs.size()}).to(dt).requires_grad_();
      const Tensor y = c.op(x);
      sum(y).backward();
      const std::vector<double> xv = x.detach().to_vector(), yv = y.to_vector(), gv = x.grad().to_vector();
      for (size_t i = 0; i < xs.size(); ++i) {
        INFO(std::string(c.name) << (f32 ? " f32" : " f64") << " at x = " << xv[i] << ": " << yv[i] << ", grad " << gv[i]);
        const LD xi = (LD)xv[i], want = c.f(xi), dwant = c.df(xi);
        // Values: 3 ulp (subnormal results of exp and softplus included); sigmoid may flush
        // below the smallest normal (sigmoid(-90) = 1 / (1 + exp(90)) is 0 in f32, as with
        // libm's exp and in PyTorch: exp(90) overflows).
        const LD tiny = f32 ? std::numeric_limits<float>::min() : std::numeric_limits<double>::min();
        const bool may_flush = std::string(c.name) == "sigmoid";
        CHECK((ulps(yv[i], want, f32) < 3.0 || (may_flush && std::fabs((LD)yv[i] - want) < tiny)));
        // Gradients: 4 ulp, or 4 eps absolute: sigmoid's y (1 - y) and tanh's 1 - y² are formed
        // from the rounded y (as PyTorch's), so they lose all digits where y rounds to 1.
        const LD eps = f32 ? std::numeric_limits<float>::epsilon() : std::numeric_limits<double>::epsilon();
        CHECK((ulps(gv[i], dwant, f32) < 4.0 || std::fabs((LD)gv[i] - dwant) <= 4 * eps));
      }
      CHECK(std::signbit(c.op(Tensor::from_vector(std::vector<double>{-0.0}, {1}).to(dt)).item()) ==
            (std::string(c.name) == "tanh" || std::string(c.name) == "log"));  // tanh(-0) = -0, log(-0) = -inf
    }
  }
}

TEST_CASE("maximum splits the gradient at ties") {
  Tensor a = Tensor::from_vector(std::vector<double>{1.0, 2.0}, {2}).requires_grad_();
  Tensor b = Tensor::from_vector(std::vector<double>{1.0, 3.0}, {2}).requires_grad_();
  maximum(a, b).backward(Tensor::ones({2}, kFloat64));
  CHECK(a.grad().to_vector() == std::vector<double>{0.5, 0.0});
  CHECK(b.grad().to_vector() == std::vector<double>{0.5, 1.0});
}

TEST_CASE("comparisons, where and masked_fill") {
  Tensor a = Tensor::from_vector(std::vector<double>{1, 2, 3, 4}, {2, 2});
  Tensor b = Tensor::from_vector(std::vector<double>{2, 2}, {2});
  CHECK(lt(a, b).dtype() == kBool);
  CHECK(lt(a, b).to_vector() == std::vector<double>{1, 0, 0, 0});
  CHECK(le(a, b).to_vector() == std::vector<double>{1, 1, 0, 0});
  CHECK(gt(a, 2.5).to_vector() == std::vector<double>{0, 0, 1, 1});
  CHECK(ge(a, b).to_vector() == std::vector<double>{0, 1, 1, 1});
  CHECK(eq(a, 3.0).to_vector() == std::vector<double>{0, 0, 1, 0});
  CHECK(ne(a, b).to_vector() == std::vector<double>{1, 0, 1, 1});
  CHECK(logical_not(eq(a, 3.0)).to_vector() == std::vector<double>{1, 1, 0, 1});
  Tensor x = leaf({2, 2}, 31), y = leaf({2}, 32);
  Tensor cond = gt(a, 2.5);
  CHECK_GRAD([&](const V& v) { return where(cond, v[0], v[1]); }, {x, y});
  CHECK_GRAD([&](const V& v) { return where(cond, v[0], v[0]); }, {x});
  Tensor mask = Tensor::from_vector(std::vector<bool>{true, false}, {2});  // broadcast over rows
  Tensor mf = masked_fill(x.detach(), mask, -7.0);
  CHECK(mf.at({0, 0}) == -7.0);
  CHECK(mf.at({1, 0}) == -7.0);
  CHECK(mf.at({1, 1}) == x.detach().at({1, 1}));
  CHECK_GRAD([&](const V& v) { return masked_fill(v[0], mask, 0.0); }, {x});
  masked_fill(x, mask, 1.0).backward(Tensor::ones({2, 2}, kFloat64));
  // no gradient reaches masked positions
  CHECK(x.grad().at({0, 0}) == 0.0);
  CHECK_THROWS_AS(where(a, a, a), DTypeError);
  CHECK_THROWS_AS(masked_fill(x, Tensor::zeros({3}, kBool), 0.0), ShapeError);
}

TEST_CASE("large inputs take the threaded path and agree with the serial one") {
  Generator g(5);
  Tensor a = randn({513, 257}, g), b = randn({257}, g);
  set_num_threads(2);
  std::vector<double> p = mul(gelu(a), b).to_vector();
  set_num_threads(1);
  std::vector<double> s = mul(gelu(a), b).to_vector();
  set_num_threads(2);
  CHECK(p == s);
  // a transposed (non-contiguous) big input
  std::vector<double> t1 = exp(a.t()).to_vector(), t2 = exp(a.t().contiguous()).to_vector();
  CHECK(t1 == t2);
}

TEST_CASE("gelu in f32 (vectorised erf) agrees with the f64 erf form to float precision") {
  std::vector<double> xs;
  for (int i = -4000; i <= 4000; ++i) xs.push_back(i * 0.0025);  // [-10, 10]
  Tensor x64 = Tensor::from_vector(xs, {(int64_t)xs.size()});
  Tensor x32 = x64.to(kFloat32).requires_grad_();
  std::vector<double> a = gelu(x32).to_vector(), b = gelu(x64).to_vector();
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]) / (1e-7 + std::abs(b[i])));
  CHECK(worst < 5e-6);  // relative, tails included (exp of -z² loses ~z²·eps)
  gelu(x32).backward(Tensor::ones({(int64_t)xs.size()}));
  Tensor x64g = x64.detach().requires_grad_();
  gelu(x64g).backward(Tensor::ones({(int64_t)xs.size()}, kFloat64));
  std::vector<double> ga = x32.grad().to_vector(), gb = x64g.grad().to_vector();
  double gworst = 0;
  for (size_t i = 0; i < ga.size(); ++i) gworst = std::max(gworst, std::abs(ga[i] - gb[i]));
  CHECK(gworst < 2e-6);
}
