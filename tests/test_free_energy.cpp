// The Free Energy Mixer's fused passes (ops/free_energy.h): free_energy_values and
// free_energy_read against the composite of elementwise ops they replace (nn::free_energy_reads
// with fused = false), values and every gradient, both priors, causal and not, clipping on and
// off, padding; gradient checks of each op alone with views, a tensor used twice, the
// normaliser column (clamped and not) and rows with Z̃ = 0; the same bits on 1 and 2 threads
// across several blocks of positions; f32 against f64; errors that name the op.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention_fem.h>

#include "support/gradcheck.h"
#include "support/same_bits.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using nn::FemPrior;
using V = std::vector<Tensor>;

namespace {
Tensor rnd(const Shape& s, uint64_t seed, double scale = 1.0) {
  Generator g(seed);
  return mul(randn(s, g, kFloat64), scale);
}
// (H, d) in [lo, hi], requiring grad
Tensor betas(int64_t H, int64_t d, uint64_t seed, double lo, double hi) {
  Generator g(seed);
  Tensor b = add(mul(rand({H, d}, g, kFloat64), hi - lo), lo);
  b.requires_grad_();
  return b;
}
Tensor pads(int64_t B, int64_t n, const std::vector<std::pair<int64_t, int64_t>>& at) {
  std::vector<bool> m((size_t)(B * n), false);
  for (auto [b, j] : at) m[(size_t)(b * n + j)] = true;
  return Tensor::from_vector(m, {B, n});
}
// Largest |a − b| / (1 + |b|).
double rel_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.contiguous().to_vector(), y = b.contiguous().to_vector();
  if (x.size() != y.size()) return INFINITY;
  double w = 0;
  for (size_t i = 0; i < x.size(); ++i) w = std::max(w, std::abs(x[i] - y[i]) / (1 + std::abs(y[i])));
  return w;
}
}  // namespace

TEST_CASE("free_energy: the fused reads equal the composite, values and gradients (f64)") {
  const int64_t B = 2, H = 2, n = 13, d = 4;
  const Tensor mask = pads(B, n, {{1, 0}, {1, 5}, {1, 11}, {1, 12}});
  for (FemPrior prior : {FemPrior::softmax, FemPrior::linear})
    for (bool causal : {false, true})
      for (double cap : {40.0, 1.5, (double)INFINITY})
        for (const Tensor& m : {Tensor(), mask}) {
          INFO((prior == FemPrior::linear ? "linear" : "softmax") << (causal ? " causal" : "") << " cap " << cap
                                                                  << (m.defined() ? " masked" : ""));
          Tensor q = leaf({B, H, n, 5}, 1), k = leaf({B, H, n, 5}, 2), v = leaf({B, H, n, d}, 3, 2.0);
          Tensor beta = betas(H, d, 4, 0.2, 3.0);
          const Tensor up_mu = rnd({B, H, n, d}, 5), up_F = rnd({B, H, n, d}, 6);
          auto run = [&](bool fused) {
            const nn::FreeEnergyReads r = nn::free_energy_reads(q, k, v, beta, m, prior, causal, cap, 4, fused);
            V out = input_grads(add(sum(mul(r.mu, up_mu)), sum(mul(r.F, up_F))), {q, k, v, beta});
            out.push_back(r.mu.detach());
            out.push_back(r.F.detach());
            return out;
          };
          const V f = run(true), c = run(false);
          const char* what[] = {"dq", "dk", "dv", "dbeta", "mu", "F"};
          for (size_t i = 0; i < f.size(); ++i) {
            INFO(what[i]);
            CHECK(rel_diff(f[i], c[i]) < 1e-12);
          }
        }
}

TEST_CASE("free_energy_values: gradient checks with clipping, padding, the ones column, a view and v used twice") {
  GradcheckOptions go;
  go.max_checks_per_input = 30;
  const Tensor mask = pads(2, 6, {{1, 1}, {1, 4}});
  for (bool ones : {false, true})
    for (double cap : {1.0, 40.0}) {
      INFO("ones " << ones << " cap " << cap);
      Tensor base = leaf({2, 2, 3, 6}, 11, 1.5), beta = betas(2, 3, 12, 0.5, 2.0);
      // M is a constant of the op that moves with v; exp(βv̂ − M)·exp(M) does not, so that is
      // what the central differences see.
      CHECK_GRAD([&](const V& in) {
        const Tensor v = in[0].transpose(2, 3);  // (B, H, n, d) as a view of (B, H, d, n)
        const FreeEnergyValues w = free_energy_values(v, in[1], cap, mask, ones);
        const Tensor e = mul(w.w.narrow(-1, 3, 3), exp(w.M));
        return mul(cat({w.w.narrow(-1, 0, 3), e}, -1), cat({v, v}, -1));  // v also used outside the op
      }, {base, beta}, go);
    }
  // The values themselves: [v̂, exp(βv̂ − M), 1], M over the valid positions only.
  const Tensor v = rnd({1, 1, 3, 1}, 13), beta = Tensor::full({1, 1}, 2.0, kFloat64);
  const Tensor vs = Tensor::from_vector(std::vector<double>{0.5, 3.0, -0.25}, {1, 1, 3, 1});
  const FreeEnergyValues w = free_energy_values(vs, beta, 4.0, pads(1, 3, {{0, 1}}), true);  // clip at ±2
  CHECK(w.M.item() == doctest::Approx(1.0));  // 2·0.5; the padded 3.0 (clipped to 2, βv̂ = 4) is left out
  const std::vector<double> got = w.w.to_vector();
  const std::vector<double> want = {0.5, 1.0, 1.0, 2.0, std::exp(4.0 - 1.0), 1.0, -0.25, std::exp(-0.5 - 1.0), 1.0};
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-14));
  // Every position padded: M = 0.
  CHECK(free_energy_values(v, beta, 4.0, pads(1, 3, {{0, 0}, {0, 1}, {0, 2}}), false).M.item() == 0.0);
}

TEST_CASE("free_energy_read: gradient checks with and without the normaliser, a clamped one, a row with Z = 0") {
  GradcheckOptions go;
  go.max_checks_per_input = 40;
  const int64_t B = 2, H = 2, n = 5, d = 3;
  const Tensor M = rnd({B, H, 1, d}, 21);
  for (bool norm : {false, true}) {
    INFO("normaliser " << norm);
    // y > 0 (sums of positive weights): exp of a normal draw; y a narrowed view of a wider leaf.
    Tensor base = leaf({B, H, n, 2 * d + 3}, 22, 0.5), beta = betas(H, d, 23, 0.5, 2.0);
    CHECK_GRAD([&](const V& in) {
      const Tensor y = exp(in[0]).narrow(-1, 1, 2 * d + norm);
      const FreeEnergyOut o = free_energy_read(y, M, in[1], norm);
      return cat({o.mu, o.F, mul(o.F, o.mu)}, -1);  // μ and F each used twice
    }, {base, beta}, go);
  }
  // Z̃ = 0 in one row (no key seen): μ = 0, F = log(tiny)/β, and no gradient to that row's Z̃.
  std::vector<double> yv((size_t)(1 * 1 * 2 * 3), 0.5);
  yv[1] = 0.0;  // row 0: Z̃ = 0 (the normaliser column is 2nd of [y1, y2, den])
  yv[0] = 0.0;
  Tensor y = Tensor::from_vector(yv, {1, 1, 2, 3});
  y.requires_grad_();
  Tensor beta = Tensor::full({1, 1}, 2.0, kFloat64);
  beta.requires_grad_();
  const Tensor M0 = Tensor::zeros({1, 1, 1, 1}, kFloat64);
  const FreeEnergyOut o = free_energy_read(y, M0, beta, true);
  CHECK(o.mu.to_vector()[0] == 0.0);
  CHECK(o.F.to_vector()[0] == doctest::Approx(std::log(std::numeric_limits<double>::min()) / 2.0));
  CHECK(o.F.to_vector()[1] == doctest::Approx(0.0).epsilon(1e-12));  // log(0.5/0.5)/2
  sum(o.F).backward();
  CHECK(y.grad().to_vector()[1] == 0.0);
  CHECK(y.grad().to_vector()[4] == doctest::Approx(1.0));  // dF/dy2 = 1/(β Z den) = 1/(2·1·0.5)
  // A normaliser below 1e-30 is clamped: no gradient reaches it.
  Tensor y2 = Tensor::from_vector(std::vector<double>{0.5, 0.5, 1e-40}, {1, 1, 1, 3});
  y2.requires_grad_();
  sum(free_energy_read(y2, M0, beta, true).mu).backward();
  CHECK(y2.grad().to_vector()[2] == 0.0);
  CHECK(y2.grad().to_vector()[0] == doctest::Approx(1e30));
}

TEST_CASE("free_energy: the same bits on 1 and 2 threads across blocks of positions, and f32 agrees with f64") {
  const int64_t B = 1, H = 3, n = 1300, d = 8;  // 1300 positions: three blocks of 512 per head
  const Tensor mask = pads(B, n, {{0, 7}, {0, 600}});
  Tensor v = leaf({B, H, n, d}, 31, 3.0), beta = betas(H, d, 32, 0.3, 3.0);
  const Tensor up = rnd({B, H, n, 2 * d + 1}, 33), up2 = rnd({B, H, n, d}, 34);
  const int nt = get_num_threads();
  auto run = [&](int t, DType dt) {
    set_num_threads(t);
    Tensor vv = v.detach().to(dt), bb = beta.detach().to(dt);
    vv.requires_grad_();
    bb.requires_grad_();
    const FreeEnergyValues w = free_energy_values(vv, bb, 40.0, mask, true);
    // a stand-in prior: y = w scaled per row, normaliser column positive
    const Tensor y = mul(w.w, add(exp(up.to(dt)), 0.5));
    const FreeEnergyOut o = free_energy_read(y, w.M, bb, true);
    const V g = input_grads(add(sum(mul(o.F, up2.to(dt))), sum(mul(o.mu, up2.to(dt)))), {vv, bb});
    return V{w.w.detach(), o.mu.detach(), o.F.detach(), g[0], g[1]};
  };
  const V a = run(1, kFloat64), b = run(2, kFloat64), f = run(2, kFloat32);
  set_num_threads(nt);
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("output " << i);
    CHECK(same_bits(a[i], b[i]));
    CHECK(rel_diff(f[i].to(kFloat64), a[i]) < (i == 4 ? 1e-3 : 1e-4));  // dβ: a sum over 1300 positions
  }
}

TEST_CASE("free_energy: errors name the op and the operands") {
  const Tensor v = Tensor::zeros({1, 2, 3, 4}, kFloat64), beta = Tensor::ones({2, 4}, kFloat64);
  CHECK_THROWS_WITH_AS(free_energy_values(v, Tensor::ones({2, 3}, kFloat64), 40.0, Tensor(), false),
                       doctest::Contains("free_energy_values"), ShapeError);
  CHECK_THROWS_WITH_AS(free_energy_values(v, beta.to(kFloat32), 40.0, Tensor(), false),
                       doctest::Contains("float dtype"), DTypeError);
  CHECK_THROWS_WITH_AS(free_energy_values(v, beta, NAN, Tensor(), false), doctest::Contains("cap must be > 0 (+inf: no clipping), got nan"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(free_energy_values(v, beta, 1.0, Tensor::zeros({1, 4}, kBool), false),
                       doctest::Contains("key_padding_mask"), ShapeError);
  const Tensor M = Tensor::zeros({1, 2, 1, 4}, kFloat64);
  CHECK_THROWS_WITH_AS(free_energy_read(Tensor::zeros({1, 2, 3, 8}, kFloat64), M, beta, true),
                       doctest::Contains("2d + 1"), ShapeError);
  CHECK_THROWS_WITH_AS(free_energy_read(Tensor::zeros({1, 2, 3, 8}, kFloat64), M.view({2, 4}), beta, false),
                       doctest::Contains("M (B, H, 1, d)"), ShapeError);
  Tensor Mg = M.detach();
  Mg.requires_grad_();
  CHECK_THROWS_WITH_AS(free_energy_read(Tensor::zeros({1, 2, 3, 8}, kFloat64), Mg, beta, false),
                       doctest::Contains("M is a constant"), std::invalid_argument);
}
