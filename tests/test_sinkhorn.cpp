// Sinkhorn op: forward marginals, invariances, closed forms, gradients of both modes
// against finite differences, unrolled -> implicit convergence, padding, f32 vs f64,
// the fused plan-product op and input errors. f64 unless stated.
#include <doctest/doctest.h>

#include <cmath>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {

// Normalised log-weights (log of a random point of the simplex), as a leaf.
Tensor logw(int64_t k, uint64_t seed, bool grad = true, Shape batch = {}) {
  Generator g(seed);
  Shape s = batch;
  s.push_back(k);
  std::vector<double> v = randn(s, g, kFloat64).to_vector();
  const int64_t rows = (int64_t)v.size() / k;
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -1e300, sum = 0;
    for (int64_t i = 0; i < k; ++i) mx = std::max(mx, 0.5 * v[r * k + i]);
    for (int64_t i = 0; i < k; ++i) sum += std::exp(0.5 * v[r * k + i] - mx);
    for (int64_t i = 0; i < k; ++i) v[r * k + i] = 0.5 * v[r * k + i] - mx - std::log(sum);
  }
  Tensor t = Tensor::from_vector(v, s);
  if (grad) t.requires_grad_();
  return t;
}
Tensor eps_t(double e, bool grad = true) {
  Tensor t = Tensor::scalar(e, kFloat64);
  if (grad) t.requires_grad_();
  return t;
}
SinkhornOptions opt(SinkhornGrad mode, int64_t steps, double tol = 0.0, SinkhornSide last = SinkhornSide::rows) {
  SinkhornOptions o;
  o.grad = mode;
  o.max_half_steps = steps;
  o.tol = tol;
  o.last = last;
  return o;
}
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}
double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::abs(x));
  return m;
}
// Row and column sums of a (n, m) row-major vector.
void sums(const std::vector<double>& P, int64_t n, int64_t m, std::vector<double>& r, std::vector<double>& c) {
  r.assign(n, 0.0);
  c.assign(m, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) r[i] += P[i * m + j], c[j] += P[i * m + j];
}
std::vector<double> expv(const Tensor& t) {
  std::vector<double> v = t.to_vector();
  for (auto& x : v) x = std::exp(x);
  return v;
}
// Gradients of sum(plan * R) for a fixed random R, w.r.t. (C, la, lb, eps).
std::vector<std::vector<double>> plan_grads(const Tensor& C, const Tensor& la, const Tensor& lb, const Tensor& e,
                                            const SinkhornOptions& o, uint64_t seed = 99) {
  for (auto t : {C, la, lb, e}) t.zero_grad();
  SinkhornResult r = sinkhorn(C, la, lb, e, o);
  Generator g(seed);
  r.plan.backward(randn(r.plan.shape(), g, kFloat64));
  return {C.grad().to_vector(), la.grad().to_vector(), lb.grad().to_vector(), e.grad().to_vector()};
}

}  // namespace

TEST_CASE("sinkhorn forward: marginals, last side, tolerance stop, batch and transposed layout") {
  for (auto shape : {Shape{7, 4}, Shape{4, 7}, Shape{2, 3, 5, 6}}) {
    INFO(shape_str(shape));
    const int64_t n = shape[shape.size() - 2], m = shape.back();
    Shape batch(shape.begin(), shape.end() - 2);
    Tensor C = leaf(shape, 1).detach();
    Tensor la = logw(n, 2, false, batch), lb = logw(m, 3, false, batch);
    for (auto last : {SinkhornSide::rows, SinkhornSide::cols}) {
      SinkhornResult r = sinkhorn(C, la, lb, 0.5, opt(SinkhornGrad::none, 1000, 1e-13, last));
      CHECK(r.converged);
      std::vector<double> P = r.plan.to_vector(), a = expv(la), b = expv(lb);
      const int64_t nb = shape_numel(batch);
      for (int64_t q = 0; q < nb; ++q) {
        std::vector<double> Pq(P.begin() + q * n * m, P.begin() + (q + 1) * n * m), rs, cs;
        sums(Pq, n, m, rs, cs);
        double er = 0, ec = 0;
        for (int64_t i = 0; i < n; ++i) er += std::abs(rs[i] - a[q * n + i]);
        for (int64_t j = 0; j < m; ++j) ec += std::abs(cs[j] - b[q * m + j]);
        if (last == SinkhornSide::rows) CHECK(er < 1e-14);
        else CHECK(ec < 1e-14);
        CHECK(er < 1e-12);
        CHECK(ec < 1e-12);
        for (double x : Pq) CHECK(x >= 0);
      }
      // Potentials reproduce the plan: P = exp((f + g - C) / eps).
      std::vector<double> f = r.f.to_vector(), g = r.g.to_vector(), c = C.to_vector();
      for (int64_t q = 0; q < nb; ++q)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < m; ++j) {
            const int64_t k = q * n * m + i * m + j;
            CHECK(P[k] == doctest::Approx(std::exp((f[q * n + i] + g[q * m + j] - c[k]) / 0.5)).epsilon(1e-10));
          }
    }
  }
  // A fixed number of half-steps, last = rows: rows exact after any count; half_steps reported.
  Tensor C = leaf({6, 3}, 4).detach();
  SinkhornResult r = sinkhorn(C, Tensor(), Tensor(), 0.1, opt(SinkhornGrad::none, 5));
  CHECK(r.half_steps.item() == 5);
  std::vector<double> rs, cs;
  sums(r.plan.to_vector(), 6, 3, rs, cs);
  for (double x : rs) CHECK(x == doctest::Approx(1.0 / 6).epsilon(1e-14));
  // One half-step from zero potentials (row step) is a row softmax / n.
  SinkhornResult r1 = sinkhorn(C, Tensor(), Tensor(), 0.7, opt(SinkhornGrad::none, 1));
  std::vector<double> c = C.to_vector(), P1 = r1.plan.to_vector();
  for (int64_t i = 0; i < 6; ++i) {
    double z = 0;
    for (int64_t j = 0; j < 3; ++j) z += std::exp(-c[i * 3 + j] / 0.7);
    for (int64_t j = 0; j < 3; ++j) CHECK(P1[i * 3 + j] == doctest::Approx(std::exp(-c[i * 3 + j] / 0.7) / z / 6).epsilon(1e-13));
  }
  // log_plan agrees with plan.
  SinkhornOptions o = opt(SinkhornGrad::none, 20);
  o.return_log_plan = true;
  SinkhornResult r2 = sinkhorn(C, Tensor(), Tensor(), 0.3, o);
  CHECK(max_abs_diff(expv(r2.log_plan), r2.plan.to_vector()) < 1e-15);
}

TEST_CASE("sinkhorn: shift invariance of plan and gradients, implicit grad has zero row/col sums") {
  const int64_t n = 6, m = 4;
  Tensor C = leaf({n, m}, 10);
  Tensor la = logw(n, 11), lb = logw(m, 12), e = eps_t(0.4);
  SinkhornOptions o = opt(SinkhornGrad::implicit, 2000, 1e-14);
  auto g0 = plan_grads(C, la, lb, e, o);
  std::vector<double> P0 = sinkhorn(C.detach(), la.detach(), lb.detach(), 0.4, o).plan.to_vector();
  // Zero row and column sums of dL/dC.
  std::vector<double> rs, cs;
  sums(g0[0], n, m, rs, cs);
  CHECK(max_abs(rs) < 1e-14 * std::max(1.0, max_abs(g0[0])) * 10);
  CHECK(max_abs(cs) < 1e-14 * std::max(1.0, max_abs(g0[0])) * 10);
  // Shift rows and columns by constants.
  std::vector<double> c = C.to_vector();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) c[i * m + j] += 3.0 * i - 1.7 * j + 5.0;
  Tensor C2 = Tensor::from_vector(c, {n, m});
  C2.requires_grad_();
  auto g1 = plan_grads(C2, la, lb, e, o);
  std::vector<double> P1 = sinkhorn(C2.detach(), la.detach(), lb.detach(), 0.4, o).plan.to_vector();
  CHECK(max_abs_diff(P0, P1) < 1e-13);
  CHECK(max_abs_diff(g0[0], g1[0]) < 1e-10);
  CHECK(max_abs_diff(g0[1], g1[1]) < 1e-10);
  CHECK(max_abs_diff(g0[2], g1[2]) < 1e-10);
  // eps gradient changes by -(1/eps) <dL/dC, shift> = 0 as the sums vanish.
  CHECK(g0[3][0] == doctest::Approx(g1[3][0]).epsilon(1e-8));
}

TEST_CASE("sinkhorn: large eps gives a b^T, 2x2 closed form, n = 1 or m = 1") {
  Tensor C = leaf({5, 3}, 20).detach();
  Tensor la = logw(5, 21, false), lb = logw(3, 22, false);
  std::vector<double> a = expv(la), b = expv(lb);
  double prev = 1;
  for (double e : {10.0, 100.0, 1000.0}) {
    std::vector<double> P = sinkhorn(C, la, lb, e, opt(SinkhornGrad::none, 500, 1e-15)).plan.to_vector();
    double err = 0;
    for (int i = 0; i < 5; ++i)
      for (int j = 0; j < 3; ++j) err = std::max(err, std::abs(P[i * 3 + j] - a[i] * b[j]) / (a[i] * b[j]));
    if (e > 10.0) CHECK(err == doctest::Approx(prev / 10).epsilon(0.1));  // decays like 1/eps
    CHECK(err < 2.0 / e);
    prev = err;
  }
  // 2x2: p = P11 solves (1 - k) p^2 + (a2 - b1 + k (a1 + b1)) p - k a1 b1 = 0, k = exp(-D/eps).
  Tensor C2 = Tensor::from_vector(std::vector<double>{0.3, 1.1, -0.4, 0.9}, {2, 2});
  C2.requires_grad_();
  Tensor la2 = Tensor::from_vector(std::vector<double>{std::log(0.3), std::log(0.7)}, {2});
  Tensor lb2 = Tensor::from_vector(std::vector<double>{std::log(0.6), std::log(0.4)}, {2});
  const double eps = 0.5, a1 = 0.3, a2 = 0.7, b1 = 0.6;
  const double D = 0.3 + 0.9 - 1.1 - (-0.4), k = std::exp(-D / eps);
  const double A = 1 - k, Bq = a2 - b1 + k * (a1 + b1), Cq = -k * a1 * b1;
  const double p = (-Bq + std::sqrt(Bq * Bq - 4 * A * Cq)) / (2 * A);
  SinkhornResult r = sinkhorn(C2, la2, lb2, eps, opt(SinkhornGrad::implicit, 1000, 1e-15));
  std::vector<double> P = r.plan.to_vector();
  CHECK(P[0] == doctest::Approx(p).epsilon(1e-13));
  CHECK(P[1] == doctest::Approx(a1 - p).epsilon(1e-13));
  CHECK(P[2] == doctest::Approx(b1 - p).epsilon(1e-13));
  r.plan.backward(Tensor::from_vector(std::vector<double>{0.2, -1.0, 0.5, 0.3}, {2, 2}));
  std::vector<double> gC = C2.grad().to_vector();  // proportional to [[1, -1], [-1, 1]]
  CHECK(gC[1] == doctest::Approx(-gC[0]).epsilon(1e-10));
  CHECK(gC[2] == doctest::Approx(-gC[0]).epsilon(1e-10));
  CHECK(gC[3] == doctest::Approx(gC[0]).epsilon(1e-10));
  CHECK(std::abs(gC[0]) > 1e-3);
  // m = 1: P = a b^T and dL/dC = 0 in both modes.
  for (auto mode : {SinkhornGrad::implicit, SinkhornGrad::unrolled}) {
    Tensor C1 = leaf({4, 1}, 23);
    SinkhornResult r1 = sinkhorn(C1, logw(4, 24, false), Tensor(), 0.3, opt(mode, 4));
    std::vector<double> P1 = r1.plan.to_vector(), a1v = expv(logw(4, 24, false));
    for (int i = 0; i < 4; ++i) CHECK(P1[i] == doctest::Approx(a1v[i]).epsilon(1e-14));
    r1.plan.backward(Tensor::ones({4, 1}, kFloat64) * 3.0);
    CHECK(max_abs(C1.grad().to_vector()) < 1e-14);
  }
}

TEST_CASE("sinkhorn implicit: finite differences for cost, log-weights, eps and potentials") {
  SinkhornOptions o = opt(SinkhornGrad::implicit, 4000, 1e-14);
  Tensor e = eps_t(0.6);
  auto plan = [&](const V& v) { return sinkhorn(v[0], v[1], v[2], v[3], o).plan; };
  CHECK_GRAD(plan, {leaf({5, 3}, 30), logw(5, 31), logw(3, 32), e});
  CHECK_GRAD(plan, {leaf({3, 5}, 33), logw(3, 34), logw(5, 35), e});         // transposed layout
  CHECK_GRAD(plan, {noncontig_leaf({5, 4}, 36), logw(5, 37), logw(4, 38), e});  // a view
  CHECK_GRAD(plan, {leaf({2, 4, 3}, 39), logw(4, 40), logw(3, 41, true, {2}), e});  // batch, broadcast log_a
  // The value W = <f, a> + <g, b>: its gradient w.r.t. C is the plan (envelope theorem).
  Tensor C = leaf({5, 3}, 42), la = logw(5, 43, false), lb = logw(3, 44, false);
  SinkhornResult r = sinkhorn(C, la, lb, 0.6, o);
  Tensor fa = r.f * exp(la), gbv = r.g * exp(lb);
  fa.backward(Tensor::ones({5}, kFloat64), true);
  gbv.backward(Tensor::ones({3}, kFloat64));
  CHECK(max_abs_diff(C.grad().to_vector(), r.plan.to_vector()) < 1e-10);
}

TEST_CASE("sinkhorn unrolled: finite differences of the truncated map (rows/cols last, warm start)") {
  Tensor e = eps_t(0.5);
  for (int64_t steps : {1, 4, 7}) {
    for (auto last : {SinkhornSide::rows, SinkhornSide::cols}) {
      INFO(steps);
      SinkhornOptions o = opt(SinkhornGrad::unrolled, steps, 0.0, last);
      auto plan = [&](const V& v) { return sinkhorn(v[0], v[1], v[2], v[3], o).plan; };
      CHECK_GRAD(plan, {leaf({5, 3}, 50 + steps), logw(5, 51), logw(3, 52), e});
      CHECK_GRAD(plan, {leaf({3, 4}, 53 + steps), logw(3, 54), logw(4, 55), e});
    }
  }
  // Potentials as outputs (f is exact data of the truncated map) and warm starts.
  SinkhornOptions o = opt(SinkhornGrad::unrolled, 6);
  auto pots = [&](const V& v) {
    SinkhornOptions oo = o;
    oo.f_init = v[4];
    oo.g_init = v[5];
    SinkhornResult r = sinkhorn(v[0], v[1], v[2], v[3], oo);
    return r.f.view({4, 1}) + r.g.view({1, 3});
  };
  CHECK_GRAD(pots, {leaf({4, 3}, 56), logw(4, 57), logw(3, 58), e, leaf({4}, 59, 0.3), leaf({3}, 60, 0.3)});
  // Tolerance-stopped runs are differentiable too (the stop index is fixed locally).
  SinkhornOptions ot = opt(SinkhornGrad::unrolled, 400, 1e-6);
  auto plan_t = [&](const V& v) { return sinkhorn(v[0], v[1], v[2], v[3], ot).plan; };
  CHECK_GRAD(plan_t, {leaf({5, 3}, 61), logw(5, 62), logw(3, 63), e});
  // The same tensor used twice (cost and, scaled, warm start).
  auto twice = [&](const V& v) {
    SinkhornOptions oo = opt(SinkhornGrad::unrolled, 3);
    oo.g_init = v[0].select(0, 0) * 0.1;
    return sinkhorn(v[0], Tensor(), Tensor(), 0.5, oo).plan;
  };
  CHECK_GRAD(twice, {leaf({4, 3}, 64)});
}

TEST_CASE("sinkhorn: unrolled gradients converge geometrically to implicit ones") {
  const int64_t n = 12, m = 5;
  Tensor C = leaf({n, m}, 70), la = logw(n, 71), lb = logw(m, 72), e = eps_t(0.3);
  auto gi = plan_grads(C, la, lb, e, opt(SinkhornGrad::implicit, 5000, 1e-15));
  std::vector<double> errs;
  for (int64_t T : {10, 20, 40, 80}) {
    auto gu = plan_grads(C, la, lb, e, opt(SinkhornGrad::unrolled, T + 1));  // odd: rows last
    double er = 0;
    for (int k = 0; k < 4; ++k) er = std::max(er, max_abs_diff(gu[k], gi[k]) / std::max(1e-12, max_abs(gi[k])));
    errs.push_back(er);
  }
  MESSAGE("relative error unrolled vs implicit at 11/21/41/81 half-steps: " << errs[0] << " " << errs[1] << " "
                                                                          << errs[2] << " " << errs[3]);
  // Geometric decay: each doubling of the steps at least squares the ratio (error ~ lambda^T).
  for (size_t k = 1; k < errs.size(); ++k) CHECK((errs[k] < errs[k - 1] * 0.5 || errs[k] < 1e-11));
  CHECK(errs.back() < 1e-8);
  const double r1 = errs[1] / errs[0], r2 = errs[2] / errs[1];
  if (errs[2] > 1e-11) CHECK(r2 < r1 * 1.5);  // ratio per 10 more steps is stable or shrinking
}

TEST_CASE("sinkhorn: zero-mass padding equals the unpadded problem (plan and gradients, both modes)") {
  const int64_t n = 5, m = 3, np = 8, mp = 4;
  Tensor Cs = leaf({n, m}, 80).detach();
  Tensor las = logw(n, 81, false), lbs = logw(m, 82, false);
  // Padded: rows 1, 4, 6 and column 2 are padding (with garbage costs).
  std::vector<int64_t> rowmap = {0, -1, 1, 2, -1, 3, -1, 4}, colmap = {0, 1, -1, 2};
  std::vector<double> cp((size_t)(np * mp)), lap(np), lbp(mp);
  std::vector<double> cs = Cs.to_vector(), la = las.to_vector(), lb = lbs.to_vector();
  for (int64_t i = 0; i < np; ++i) {
    lap[i] = rowmap[i] < 0 ? -INFINITY : la[rowmap[i]];
    for (int64_t j = 0; j < mp; ++j)
      cp[i * mp + j] = (rowmap[i] < 0 || colmap[j] < 0) ? 1e3 * (i + j + 1) : cs[rowmap[i] * m + colmap[j]];
  }
  for (int64_t j = 0; j < mp; ++j) lbp[j] = colmap[j] < 0 ? -INFINITY : lb[colmap[j]];
  for (auto mode : {SinkhornGrad::implicit, SinkhornGrad::unrolled}) {
    SinkhornOptions o = opt(mode, mode == SinkhornGrad::implicit ? 3000 : 9, mode == SinkhornGrad::implicit ? 1e-14 : 0);
    Tensor C1 = Cs.clone().requires_grad_(), la1 = las.clone().requires_grad_(), lb1 = lbs.clone().requires_grad_();
    Tensor C2 = Tensor::from_vector(cp, {np, mp}).requires_grad_();
    Tensor la2 = Tensor::from_vector(lap, {np}).requires_grad_(), lb2 = Tensor::from_vector(lbp, {mp}).requires_grad_();
    Tensor e1 = eps_t(0.4), e2 = eps_t(0.4);
    SinkhornResult r1 = sinkhorn(C1, la1, lb1, e1, o), r2 = sinkhorn(C2, la2, lb2, e2, o);
    Generator g(5);
    std::vector<double> R = randn({n, m}, g, kFloat64).to_vector(), Rp((size_t)(np * mp));
    for (int64_t i = 0; i < np; ++i)
      for (int64_t j = 0; j < mp; ++j)
        Rp[i * mp + j] = (rowmap[i] < 0 || colmap[j] < 0) ? 7.0 : R[rowmap[i] * m + colmap[j]];
    r1.plan.backward(Tensor::from_vector(R, {n, m}));
    r2.plan.backward(Tensor::from_vector(Rp, {np, mp}));
    std::vector<double> P1 = r1.plan.to_vector(), P2 = r2.plan.to_vector();
    std::vector<double> g1 = C1.grad().to_vector(), g2 = C2.grad().to_vector();
    std::vector<double> a1 = la1.grad().to_vector(), a2 = la2.grad().to_vector();
    std::vector<double> b1 = lb1.grad().to_vector(), b2 = lb2.grad().to_vector();
    for (int64_t i = 0; i < np; ++i) {
      for (int64_t j = 0; j < mp; ++j) {
        const bool pad = rowmap[i] < 0 || colmap[j] < 0;
        const int64_t k = pad ? 0 : rowmap[i] * m + colmap[j];
        CHECK(P2[i * mp + j] == (pad ? 0.0 : doctest::Approx(P1[k]).epsilon(1e-12)));
        CHECK(g2[i * mp + j] == (pad ? 0.0 : doctest::Approx(g1[k]).epsilon(1e-9).scale(1e-9)));
      }
      CHECK(a2[i] == (rowmap[i] < 0 ? 0.0 : doctest::Approx(a1[rowmap[i]]).epsilon(1e-9).scale(1e-9)));
    }
    for (int64_t j = 0; j < mp; ++j)
      CHECK(b2[j] == (colmap[j] < 0 ? 0.0 : doctest::Approx(b1[colmap[j]]).epsilon(1e-9).scale(1e-9)));
    CHECK(e2.grad().item() == doctest::Approx(e1.grad().item()).epsilon(1e-9));
    std::vector<double> f2 = r2.f.to_vector();
    CHECK(std::isinf(f2[1]));
    CHECK(f2[1] < 0);
  }
  // A fully padded batch entry gives a zero plan and zero gradients, no NaN.
  std::vector<double> lpad = {-INFINITY, -INFINITY, -INFINITY};
  Tensor Cb = leaf({2, 3, 3}, 83);
  Tensor lab = Tensor::from_vector(std::vector<double>{std::log(0.5), std::log(0.25), std::log(0.25), -INFINITY, -INFINITY, -INFINITY}, {2, 3});
  SinkhornResult rb = sinkhorn(Cb, lab, lab, 0.5, opt(SinkhornGrad::implicit, 50));
  rb.plan.backward(Tensor::ones({2, 3, 3}, kFloat64));
  std::vector<double> P = rb.plan.to_vector(), gC = Cb.grad().to_vector();
  for (int k = 9; k < 18; ++k) CHECK(P[k] == 0.0);
  for (double x : gC) CHECK(std::isfinite(x));
}

TEST_CASE("sinkhorn_apply: fused P W and P^T V match the plan path (values and gradients)") {
  for (auto mode : {SinkhornGrad::implicit, SinkhornGrad::unrolled}) {
    // small side 3 and 6: both register-tile widths of the backward seed (4 and 8 columns)
    for (auto shape : {Shape{6, 3}, Shape{3, 6}, Shape{6, 9}}) {
      INFO(shape_str(shape));
      const int64_t n = shape[0], m = shape[1];
      SinkhornOptions o = opt(mode, mode == SinkhornGrad::implicit ? 3000 : 7, mode == SinkhornGrad::implicit ? 1e-14 : 0);
      Tensor C = leaf(shape, 90), la = logw(n, 91), lb = logw(m, 92), e = eps_t(0.5);
      Tensor W = leaf({m, 2}, 93), Vv = leaf({n, 4}, 94);
      SinkhornApplyResult r = sinkhorn_apply(C, la, lb, e, W, Vv, o);
      // Reference: the plan, products by hand.
      std::vector<double> P = sinkhorn(C.detach(), la.detach(), lb.detach(), 0.5, o).plan.to_vector();
      std::vector<double> w = W.to_vector(), v = Vv.to_vector(), pw = r.PW.to_vector(), ptv = r.PtV.to_vector();
      for (int64_t i = 0; i < n; ++i)
        for (int64_t t = 0; t < 2; ++t) {
          double s = 0;
          for (int64_t j = 0; j < m; ++j) s += P[i * m + j] * w[j * 2 + t];
          CHECK(pw[i * 2 + t] == doctest::Approx(s).epsilon(1e-12));
        }
      for (int64_t j = 0; j < m; ++j)
        for (int64_t t = 0; t < 4; ++t) {
          double s = 0;
          for (int64_t i = 0; i < n; ++i) s += P[i * m + j] * v[i * 4 + t];
          CHECK(ptv[j * 4 + t] == doctest::Approx(s).epsilon(1e-12));
        }
      auto f = [&](const V& x) {
        SinkhornApplyResult q = sinkhorn_apply(x[0], x[1], x[2], x[3], x[4], x[5], o);
        return q.PW.view({n * 2, 1}) * 1.0 + Tensor::zeros({1, 1}, kFloat64) + q.PtV.view({1, m * 4}) * 0.5;
      };
      CHECK_GRAD(f, {C, la, lb, e, W, Vv});
    }
  }
}

TEST_CASE("sinkhorn f32 agrees with f64 at n = 16384 (small eps, no NaN)") {
  const int64_t n = 16384, m = 16;
  Generator g(100);
  Tensor Q = randn({n, 8}, g, kFloat64), Z = randn({m, 8}, g, kFloat64);
  // C = -q.z / sqrt(d): scale about 1; eps 0.05 of that.
  std::vector<double> q = Q.to_vector(), z = Z.to_vector(), c((size_t)(n * m));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double s = 0;
      for (int t = 0; t < 8; ++t) s += q[i * 8 + t] * z[j * 8 + t];
      c[i * m + j] = -s / std::sqrt(8.0) + 20.0;  // offset: shifting must make it harmless
    }
  // Both runs see the same (f32-representable) costs: the comparison is of the solvers,
  // not of rounding the input (at |C| ~ 20 and eps = 0.05 that alone is ~2e-5 in log P).
  Tensor C32 = Tensor::from_vector(c, {n, m}).to(kFloat32).requires_grad_();
  Tensor C64 = C32.detach().to(kFloat64).requires_grad_();
  Tensor lb64 = logw(m, 101, false), lb32 = lb64.to(kFloat32);
  SinkhornOptions o = opt(SinkhornGrad::implicit, 710, 0.0);
  SinkhornResult r64 = sinkhorn(C64, Tensor(), lb64, 0.05, opt(SinkhornGrad::implicit, 1000, 1e-12));
  SinkhornResult r32 = sinkhorn(C32, Tensor(), lb32, 0.05, o);
  MESSAGE("f64: " << r64.half_steps.item() << " half-steps, err " << r64.error.item() << "; f32: " << r32.half_steps.item() << " half-steps, err " << r32.error.item());
  CHECK(r32.error.item() < 2e-5);
  Tensor G = randn({n, m}, g, kFloat64);
  r64.plan.backward(G);
  r32.plan.backward(G.to(kFloat32));
  std::vector<double> P64 = r64.plan.to_vector(), P32 = r32.plan.to_vector();
  std::vector<double> g64 = C64.grad().to_vector(), g32 = C32.grad().to_vector();
  double pe = 0, ge = 0, pm = max_abs(P64), gm = max_abs(g64);
  for (size_t k = 0; k < P64.size(); ++k) {
    REQUIRE(std::isfinite(P32[k]));
    REQUIRE(std::isfinite(g32[k]));
    pe = std::max(pe, std::abs(P64[k] - P32[k]));
    ge = std::max(ge, std::abs(g64[k] - g32[k]));
  }
  MESSAGE("f32 vs f64 at n=16384, eps=0.05: plan err " << pe / pm << ", dC err " << ge / gm << " (relative to max)");
  // Stated tolerance: 1.5e-4 of the largest entry. This case mixes slowly (710 f64 half-steps
  // to 1e-12); the f32 marginal-error floor (~8e-6, potentials held in f32) is amplified by
  // 1 / (1 - lambda). Faster-mixing problems agree to ~1e-5.
  CHECK(pe / pm < 1.5e-4);
  CHECK(ge / gm < 1.5e-4);
  // n = 65,536 with eps = 0.01 of the cost scale, cold start, f32: finite plan and gradient.
  const int64_t nb = 65536;
  Tensor Cb = (randn({nb, m}, g, kFloat32) * 1.0 + 30.0).requires_grad_();
  SinkhornResult rb = sinkhorn(Cb, Tensor(), Tensor(), 0.01, opt(SinkhornGrad::implicit, 60));
  rb.plan.backward(randn({nb, m}, g, kFloat32));
  std::vector<double> Pb = rb.plan.to_vector(), gb = Cb.grad().to_vector();
  bool fin = true;
  double tot = 0;
  for (size_t k = 0; k < Pb.size(); ++k) fin = fin && std::isfinite(Pb[k]) && std::isfinite(gb[k]), tot += Pb[k];
  CHECK(fin);
  CHECK(tot == doctest::Approx(1.0).epsilon(1e-4));
  CHECK(rb.error.item() < 1.0);
}

TEST_CASE("sinkhorn: bad input errors") {
  Tensor C = leaf({4, 3}, 110).detach();
  Tensor la = logw(4, 111, false), lb = logw(3, 112, false);
  CHECK_THROWS_AS(sinkhorn(C, logw(5, 1, false), lb, 0.5), ShapeError);
  CHECK_THROWS_AS(sinkhorn(C, la, logw(4, 1, false), 0.5), ShapeError);
  CHECK_THROWS_AS(sinkhorn(C, la, lb, 0.0), ShapeError);
  CHECK_THROWS_AS(sinkhorn(C, la, lb, -1.0), ShapeError);
  CHECK_THROWS_AS(sinkhorn(C, la, lb + std::log(2.0), 0.5), ShapeError);  // totals 1 vs 2
  CHECK_THROWS_AS(sinkhorn(C.view({12}), la, lb, 0.5), ShapeError);
  CHECK_THROWS_AS(sinkhorn(C, la.to(kFloat32), lb, 0.5), DTypeError);
  std::vector<double> c = C.to_vector();
  c[5] = NAN;
  CHECK_THROWS_AS(sinkhorn(Tensor::from_vector(c, {4, 3}), la, lb, 0.5), ShapeError);
  try {
    sinkhorn(C, la, lb + std::log(2.0), 0.5);
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()).find("sinkhorn") != std::string::npos);
    CHECK(std::string(e.what()).find("total mass") != std::string::npos);
  }
  SinkhornOptions o;
  o.max_half_steps = 0;
  CHECK_THROWS_AS(sinkhorn(C, la, lb, 0.5, o), ShapeError);
  CHECK_THROWS_AS(sinkhorn_apply(C, la, lb, 0.5, leaf({4, 2}, 1), Tensor()), ShapeError);  // W needs m rows
}
