// The fused tiled softmax-attention kernel against the composite reference: outputs and
// q/k/v gradients (f64 tight, f32 loose), masks with fully masked rows and batch entries,
// n ≠ m, sizes that are not whole tiles, non-contiguous inputs, an f64 gradient check,
// mask semantics, and determinism; the same for causal attention (is_causal), and its
// causality; values of a width of their own (e != d). The sliding window is tested in
// test_window.cpp.
#include <doctest/doctest.h>

#include <cmath>

#include "../ops/attention.h"
#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {

struct Result {
  std::vector<double> out, dq, dk, dv;
};

// Output and q/k/v gradients for a seeded random upstream gradient.
Result run(const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& mask, bool fused, bool causal = false) {
  Tensor q = q0.detach(), k = k0.detach(), v = v0.detach();
  q.requires_grad_();
  k.requires_grad_();
  v.requires_grad_();
  Tensor out = scaled_dot_product_attention(q, k, v, mask, causal, std::nan(""), fused);
  Generator g(99);
  out.backward(randn(out.shape(), g, out.dtype()));
  return {out.to_vector(), q.grad().to_vector(), k.grad().to_vector(), v.grad().to_vector()};
}

void check_close(const std::vector<double>& a, const std::vector<double>& b, double atol, double rtol, const char* what) {
  INFO(what);
  REQUIRE(a.size() == b.size());
  double worst = 0;
  bool finite = true;
  for (size_t i = 0; i < a.size(); ++i) {
    finite = finite && std::isfinite(a[i]) && std::isfinite(b[i]);
    worst = std::max(worst, std::abs(a[i] - b[i]) - rtol * std::abs(b[i]));
  }
  CHECK(finite);
  CHECK(worst <= atol);
}

void check_fused_vs_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, double atol,
                              double rtol, bool causal = false) {
  const Result f = run(q, k, v, mask, true, causal), r = run(q, k, v, mask, false, causal);
  check_close(f.out, r.out, atol, rtol, "output");
  check_close(f.dq, r.dq, atol, rtol, "dq");
  check_close(f.dk, r.dk, atol, rtol, "dk");
  check_close(f.dv, r.dv, atol, rtol, "dv");
}

Tensor rnd(const Shape& s, uint64_t seed, DType dt = kFloat64, double scale = 1.0) {
  Generator g(seed);
  Tensor t = randn(s, g, dt);
  t.mul_(scale);
  return t;
}

// (B, m) bool mask from a predicate.
template <class F>
Tensor make_mask(int64_t B, int64_t m, F padded) {
  std::vector<bool> v((size_t)(B * m));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < m; ++j) v[(size_t)(b * m + j)] = padded(b, j);
  return Tensor::from_vector(v, {B, m});
}

}  // namespace

TEST_CASE("fused attention equals the reference: random inputs, n != m, partial tiles") {
  for (DType dt : {kFloat64, kFloat32}) {
    const double atol = dt == kFloat64 ? 1e-11 : 2e-5, rtol = dt == kFloat64 ? 1e-9 : 1e-4;
    INFO(dtype_name(dt));
    // n and m not multiples of the tile size; d not a multiple of the vector width.
    check_fused_vs_reference(rnd({2, 3, 70, 20}, 1, dt), rnd({2, 3, 45, 20}, 2, dt), rnd({2, 3, 45, 20}, 3, dt),
                             Tensor(), atol, rtol);
    // Several tiles each way, d = 32, larger scores (peakier softmax).
    check_fused_vs_reference(rnd({1, 2, 150, 32}, 4, dt, 2.0), rnd({1, 2, 200, 32}, 5, dt), rnd({1, 2, 200, 32}, 6, dt),
                             Tensor(), atol, rtol);
    // One head on two threads: each head's query tiles are split into chunks whose dK/dV
    // partial sums are added afterwards.
    const int saved = get_num_threads();
    set_num_threads(2);
    check_fused_vs_reference(rnd({1, 1, 150, 24}, 10, dt), rnd({1, 1, 100, 24}, 11, dt), rnd({1, 1, 100, 24}, 12, dt),
                             Tensor(), atol, rtol);
    set_num_threads(saved);
    // Wider heads: d = 64 and d = 100 (several vector chunks per row).
    check_fused_vs_reference(rnd({1, 2, 65, 64}, 13, dt), rnd({1, 2, 70, 64}, 14, dt), rnd({1, 2, 70, 64}, 15, dt),
                             Tensor(), atol, rtol);
    check_fused_vs_reference(rnd({1, 1, 30, 100}, 16, dt), rnd({1, 1, 80, 100}, 17, dt), rnd({1, 1, 80, 100}, 18, dt),
                             Tensor(), atol, rtol);
    // Tiny sizes.
    check_fused_vs_reference(rnd({1, 1, 1, 1}, 7, dt), rnd({1, 1, 1, 1}, 8, dt), rnd({1, 1, 1, 1}, 9, dt), Tensor(),
                             atol, rtol);
  }
}

TEST_CASE("fused attention equals the reference with masks, fully masked rows and batch entries") {
  for (DType dt : {kFloat64, kFloat32}) {
    const double atol = dt == kFloat64 ? 1e-11 : 2e-5, rtol = dt == kFloat64 ? 1e-9 : 1e-4;
    INFO(dtype_name(dt));
    const int64_t B = 3, H = 2, n = 67, m = 130, d = 16;
    Generator g(11);
    // b = 0: random pads; b = 1: everything padded; b = 2: a padded tail (whole key tiles).
    Tensor u = rand({B, m}, g, kFloat64);
    const std::vector<double> uv = u.to_vector();
    Tensor mask = make_mask(B, m, [&](int64_t b, int64_t j) {
      return b == 0 ? uv[(size_t)j] < 0.4 : b == 1 ? true : j >= 20;
    });
    Tensor q = rnd({B, H, n, d}, 12, dt), k = rnd({B, H, m, d}, 13, dt), v = rnd({B, H, m, d}, 14, dt);
    check_fused_vs_reference(q, k, v, mask, atol, rtol);
    // The fully masked batch entry gives zeros and zero gradients, not NaN.
    const Result f = run(q, k, v, mask, true);
    for (int64_t i = 0; i < H * n * d; ++i) {
      CHECK(f.out[(size_t)(1 * H * n * d + i)] == 0.0);
      CHECK(f.dq[(size_t)(1 * H * n * d + i)] == 0.0);
    }
    for (int64_t i = 0; i < H * m * d; ++i) {
      CHECK(f.dk[(size_t)(1 * H * m * d + i)] == 0.0);
      CHECK(f.dv[(size_t)(1 * H * m * d + i)] == 0.0);
    }
  }
}

TEST_CASE("fused attention on non-contiguous inputs") {
  // q from (B, n, H, d) transposed to (B, H, n, d); k every other key; v with a strided d.
  const int64_t B = 2, H = 3, n = 75, m = 66, d = 12;
  for (DType dt : {kFloat64, kFloat32}) {
    const double atol = dt == kFloat64 ? 1e-11 : 2e-5, rtol = dt == kFloat64 ? 1e-9 : 1e-4;
    Tensor q = rnd({B, n, H, d}, 21, dt).transpose(1, 2);
    Tensor k = rnd({B, H, 2 * m, d}, 22, dt).slice(2, 0, 2 * m, 2);
    Tensor v = rnd({B, H, m, 2 * d}, 23, dt).slice(3, 0, 2 * d, 2);
    REQUIRE(!q.is_contiguous());
    Tensor mask = make_mask(B, m, [](int64_t b, int64_t j) { return (j * 7 + b) % 5 == 0; }).t().contiguous().t();
    check_fused_vs_reference(q, k, v, mask, atol, rtol);
    check_fused_vs_reference(q, k, v, mask, atol, rtol, true);  // causal, n != m
    // Same values as the contiguous copies.
    const Result a = run(q, k, v, Tensor(), true), c = run(q.contiguous(), k.contiguous(), v.contiguous(), Tensor(), true);
    check_close(a.out, c.out, 0, 0, "non-contiguous output");
    check_close(a.dq, c.dq, 0, 0, "non-contiguous dq");
  }
}

TEST_CASE("fused attention: f64 gradient checks") {
  auto f = [](const Tensor& mask) {
    return [mask](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2], mask); };
  };
  Tensor q = leaf({2, 2, 5, 3}, 31), k = leaf({2, 2, 7, 3}, 32), v = leaf({2, 2, 7, 3}, 33);
  CHECK_GRAD(f(Tensor()), {q, k, v});
  Tensor mask = make_mask(2, 7, [](int64_t b, int64_t j) { return b == 0 ? j % 3 == 1 : j >= 4; });
  CHECK_GRAD(f(mask), {q, k, v});
  Tensor dead = make_mask(2, 7, [](int64_t b, int64_t j) { return b == 1; });  // batch entry 1 fully masked
  CHECK_GRAD(f(dead), {q, k, v});
  // Non-contiguous leaves.
  Tensor qn = noncontig_leaf({2, 2, 5, 3}, 34), kn = noncontig_leaf({2, 2, 7, 3}, 35), vn = noncontig_leaf({2, 2, 7, 3}, 36);
  CHECK_GRAD(f(mask), {qn, kn, vn});
  // The same tensor as q, k and v (self-attention without projections).
  Tensor x = leaf({1, 2, 6, 4}, 37);
  CHECK_GRAD([](const V& a) { return scaled_dot_product_attention(a[0], a[0], a[0]); }, {x});
  // An explicit scale; and the reference path itself.
  CHECK_GRAD([](const V& a) { return scaled_dot_product_attention(a[0], a[1], a[2], Tensor(), false, 0.7); }, {q, k, v});
  CHECK_GRAD([mask](const V& a) { return scaled_dot_product_attention(a[0], a[1], a[2], mask, false, std::nan(""), false); },
             {q, k, v});
}

TEST_CASE("padded keys get zero weight and their content does not matter") {
  const int64_t B = 2, H = 2, n = 40, m = 90, d = 8;
  Tensor mask = make_mask(B, m, [](int64_t b, int64_t j) { return j % 4 == 3 || (b == 1 && j > 50); });
  const std::vector<double> mv = mask.to_vector();
  for (bool fused : {true, false}) {
    INFO("fused " << fused);
    Tensor q = rnd({B, H, n, d}, 41), k = rnd({B, H, m, d}, 42), v = rnd({B, H, m, d}, 43);
    // Changed pads: huge keys (would dominate the softmax) and huge values.
    Tensor k2 = k.clone(), v2 = v.clone();
    {
      Tensor big = rnd({B, H, m, d}, 44, kFloat64, 1000.0);
      double* kp = k2.data_ptr<double>();
      double* vp = v2.data_ptr<double>();
      const double* bp = big.data_ptr<double>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t j = 0; j < m; ++j)
            if (mv[(size_t)(b * m + j)] != 0.0)
              for (int64_t c = 0; c < d; ++c) {
                const int64_t o = ((b * H + h) * m + j) * d + c;
                kp[o] = bp[o];
                vp[o] = -bp[o];
              }
    }
    const Result a = run(q, k, v, mask, fused), c = run(q, k2, v2, mask, fused);
    if (fused) {  // the kernel never reads a padded weight: bit-identical
      check_close(a.out, c.out, 0, 0, "output");
      check_close(a.dq, c.dq, 0, 0, "dq");
    } else {
      check_close(a.out, c.out, 1e-13, 0, "output");
      check_close(a.dq, c.dq, 1e-13, 0, "dq");
    }
    // Padded keys and values receive zero gradient.
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t j = 0; j < m; ++j)
          if (mv[(size_t)(b * m + j)] != 0.0)
            for (int64_t c2 = 0; c2 < d; ++c2) {
              const size_t o = (size_t)(((b * H + h) * m + j) * d + c2);
              CHECK(a.dk[o] == 0.0);
              CHECK(a.dv[o] == 0.0);
            }
    // Weights sum to one: with v = 1 every row outputs exactly 1 (up to rounding).
    Tensor ones = Tensor::ones({B, H, m, d}, kFloat64);
    const std::vector<double> o1 = scaled_dot_product_attention(q, k, ones, mask, false, std::nan(""), fused).to_vector();
    for (double x : o1) CHECK(x == doctest::Approx(1.0).epsilon(1e-12));
    // Only key 0 unpadded: the output is v[0] exactly (one weight of 1).
    Tensor one = make_mask(B, m, [](int64_t, int64_t j) { return j != 0; });
    const std::vector<double> o2 = scaled_dot_product_attention(q, k, v, one, false, std::nan(""), fused).to_vector();
    const std::vector<double> vv = v.to_vector();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t c2 = 0; c2 < d; ++c2)
            CHECK(o2[(size_t)(((b * H + h) * n + i) * d + c2)] == doctest::Approx(vv[(size_t)(((b * H + h) * m) * d + c2)]).epsilon(1e-12));
  }
}

TEST_CASE("fused attention is deterministic, 1 and 2 threads agree") {
  const int saved = get_num_threads();
  // H = 3 on two threads splits each head's queries into chunks with partial dK/dV sums.
  Tensor q = rnd({1, 3, 300, 32}, 51, kFloat32), k = rnd({1, 3, 260, 32}, 52, kFloat32), v = rnd({1, 3, 260, 32}, 53, kFloat32);
  Tensor mask = make_mask(1, 260, [](int64_t, int64_t j) { return j % 9 == 0; });
  set_num_threads(2);
  const Result a = run(q, k, v, mask, true), b = run(q, k, v, mask, true);
  check_close(a.out, b.out, 0, 0, "same threads: output bits");
  check_close(a.dq, b.dq, 0, 0, "same threads: dq bits");
  check_close(a.dk, b.dk, 0, 0, "same threads: dk bits");
  check_close(a.dv, b.dv, 0, 0, "same threads: dv bits");
  set_num_threads(1);
  const Result c = run(q, k, v, mask, true);
  set_num_threads(saved);
  check_close(a.out, c.out, 0, 0, "1 vs 2 threads: output (per-row, so bit-identical)");
  check_close(a.dq, c.dq, 1e-6, 1e-5, "1 vs 2 threads: dq");
  check_close(a.dk, c.dk, 1e-6, 1e-5, "1 vs 2 threads: dk");
  check_close(a.dv, c.dv, 1e-6, 1e-5, "1 vs 2 threads: dv");
}

TEST_CASE("fused attention: no-grad forward, scale, and argument errors") {
  Tensor q = rnd({1, 2, 10, 4}, 61), k = rnd({1, 2, 12, 4}, 62), v = rnd({1, 2, 12, 4}, 63);
  {
    NoGradGuard ng;
    Tensor a = scaled_dot_product_attention(q, k, v);
    Tensor b = scaled_dot_product_attention(q, k, v, Tensor(), false, 0.5);  // explicit default scale (1/sqrt(4))
    check_close(a.to_vector(), b.to_vector(), 0, 0, "default scale");
    CHECK(a.shape() == Shape{1, 2, 10, 4});
  }
  // No keys at all: every row is fully masked, so zeros (and zero gradient); no queries: empty.
  {
    Tensor qe = q.detach();
    qe.requires_grad_();
    Tensor none = scaled_dot_product_attention(qe, k.narrow(2, 0, 0), v.narrow(2, 0, 0));
    for (double x : none.to_vector()) CHECK(x == 0.0);
    none.backward(Tensor::ones(none.shape(), kFloat64));
    for (double x : qe.grad().to_vector()) CHECK(x == 0.0);
    CHECK(scaled_dot_product_attention(q.narrow(2, 0, 0), k, v).shape() == Shape{1, 2, 0, 4});
  }
  CHECK_THROWS_AS(scaled_dot_product_attention(q.select(0, 0), k, v), ShapeError);
  CHECK_THROWS_AS(scaled_dot_product_attention(q, k, v.narrow(2, 0, 11)), ShapeError);
  CHECK_THROWS_AS(scaled_dot_product_attention(q, k.narrow(3, 0, 3), v.narrow(3, 0, 3)), ShapeError);
  CHECK_THROWS_AS(scaled_dot_product_attention(q, k.to(kFloat32), v), DTypeError);
  CHECK_THROWS_AS(scaled_dot_product_attention(q, k, v, Tensor::zeros({1, 12}, kFloat64)), DTypeError);
  CHECK_THROWS_AS(scaled_dot_product_attention(q, k, v, Tensor::zeros({1, 11}, kBool)), ShapeError);
}

// ---- causal (is_causal): key tiles above the diagonal are skipped, diagonal tiles masked ----

TEST_CASE("causal fused attention equals the reference: tile-boundary sizes, n != m, split heads") {
  for (DType dt : {kFloat64, kFloat32}) {
    const double atol = dt == kFloat64 ? 1e-11 : 2e-5, rtol = dt == kFloat64 ? 1e-9 : 1e-4;
    INFO(dtype_name(dt));
    for (int64_t n : {1, 63, 64, 65, 130}) {
      INFO("n " << n);
      check_fused_vs_reference(rnd({1, 2, n, 12}, 100 + n, dt), rnd({1, 2, n, 12}, 200 + n, dt),
                               rnd({1, 2, n, 12}, 300 + n, dt), Tensor(), atol, rtol, true);
    }
    // n != m, top-left aligned: with m < n the last queries see every key.
    check_fused_vs_reference(rnd({1, 2, 70, 20}, 1, dt), rnd({1, 2, 130, 20}, 2, dt), rnd({1, 2, 130, 20}, 3, dt),
                             Tensor(), atol, rtol, true);
    check_fused_vs_reference(rnd({1, 2, 130, 20}, 4, dt), rnd({1, 2, 70, 20}, 5, dt), rnd({1, 2, 70, 20}, 6, dt),
                             Tensor(), atol, rtol, true);
    // One head and three heads on two threads: each head's query tiles are cut into chunks
    // of equal tile-pair counts whose dK/dV partial sums are added afterwards.
    const int saved = get_num_threads();
    set_num_threads(2);
    check_fused_vs_reference(rnd({1, 1, 260, 16}, 7, dt), rnd({1, 1, 260, 16}, 8, dt), rnd({1, 1, 260, 16}, 9, dt),
                             Tensor(), atol, rtol, true);
    check_fused_vs_reference(rnd({1, 3, 200, 16}, 10, dt, 2.0), rnd({1, 3, 200, 16}, 11, dt),
                             rnd({1, 3, 200, 16}, 12, dt), Tensor(), atol, rtol, true);
    set_num_threads(saved);
  }
}

TEST_CASE("causal with key padding: rows whose visible keys are all padded give zeros and zero gradient") {
  const int64_t B = 3, H = 2, n = 130, d = 8;
  Generator g(13);
  const std::vector<double> u = rand({B, n}, g, kFloat64).to_vector();
  // b = 0: random pads; b = 1: the first 70 keys padded, so queries 0..69 (across a tile edge)
  // see only padded keys; b = 2: a padded tail.
  Tensor mask = make_mask(B, n, [&](int64_t b, int64_t j) {
    return b == 0 ? u[(size_t)j] < 0.4 : b == 1 ? j < 70 : j >= 100;
  });
  for (DType dt : {kFloat64, kFloat32}) {
    INFO(dtype_name(dt));
    const double atol = dt == kFloat64 ? 1e-11 : 2e-5, rtol = dt == kFloat64 ? 1e-9 : 1e-4;
    Tensor q = rnd({B, H, n, d}, 14, dt), k = rnd({B, H, n, d}, 15, dt), v = rnd({B, H, n, d}, 16, dt);
    check_fused_vs_reference(q, k, v, mask, atol, rtol, true);
    const Result f = run(q, k, v, mask, true, true);
    bool zero = true;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < 70; ++i)
        for (int64_t c = 0; c < d; ++c) {
          const size_t o = (size_t)(((1 * H + h) * n + i) * d + c);
          zero = zero && f.out[o] == 0.0 && f.dq[o] == 0.0 && f.dk[o] == 0.0 && f.dv[o] == 0.0;
        }
    CHECK(zero);
  }
}

TEST_CASE("causal: outputs up to t ignore later tokens, and later tokens get zero gradient from them") {
  const int64_t B = 2, H = 2, n = 130, d = 8, t = 70;  // t inside the second query tile
  Tensor q = rnd({B, H, n, d}, 71), k = rnd({B, H, n, d}, 72), v = rnd({B, H, n, d}, 73);
  // Later tokens replaced by large values (they would dominate any softmax that saw them).
  auto later_changed = [&](const Tensor& x, uint64_t seed) {
    Tensor y = x.clone();
    y.narrow(2, t + 1, n - t - 1).copy_(rnd({B, H, n - t - 1, d}, seed, kFloat64, 50.0));
    return y;
  };
  for (bool fused : {true, false}) {
    INFO("fused " << fused);
    const Tensor a = scaled_dot_product_attention(q, k, v, Tensor(), true, std::nan(""), fused);
    const Tensor b = scaled_dot_product_attention(later_changed(q, 74), later_changed(k, 75), later_changed(v, 76),
                                                  Tensor(), true, std::nan(""), fused);
    CHECK(max_abs_diff(a.narrow(2, 0, t + 1), b.narrow(2, 0, t + 1)) == 0.0);
    CHECK(max_abs_diff(a.narrow(2, t + 1, n - t - 1), b.narrow(2, t + 1, n - t - 1)) > 1e-3);  // the test can fail
    // d(outputs 0..t) / d(later q, k, v) = 0 exactly.
    Tensor qg = q.detach().requires_grad_(), kg = k.detach().requires_grad_(), vg = v.detach().requires_grad_();
    Tensor out = scaled_dot_product_attention(qg, kg, vg, Tensor(), true, std::nan(""), fused);
    Generator gr(77);
    sum(mul(out.narrow(2, 0, t + 1), randn({B, H, t + 1, d}, gr, kFloat64))).backward();
    const Tensor zeros = Tensor::zeros({B, H, n - t - 1, d}, kFloat64);
    for (const Tensor* x : {&qg, &kg, &vg}) CHECK(max_abs_diff(x->grad().narrow(2, t + 1, n - t - 1), zeros) == 0.0);
    CHECK(max_abs_diff(kg.grad().narrow(2, 0, t + 1), Tensor::zeros({B, H, t + 1, d}, kFloat64)) > 1e-6);
  }
}

TEST_CASE("causal fused attention: f64 gradient checks") {
  auto f = [](const Tensor& mask) {
    return [mask](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2], mask, true); };
  };
  Tensor q = leaf({2, 2, 6, 3}, 81), k = leaf({2, 2, 6, 3}, 82), v = leaf({2, 2, 6, 3}, 83);
  CHECK_GRAD(f(Tensor()), {q, k, v});
  // b = 1: keys 0, 1 padded, so queries 0, 1 see no key (zeros, zero gradient).
  Tensor mask = make_mask(2, 6, [](int64_t b, int64_t j) { return b == 0 ? j == 3 : j < 2; });
  CHECK_GRAD(f(mask), {q, k, v});
  // n != m both ways.
  Tensor k7 = leaf({2, 2, 7, 3}, 84), v7 = leaf({2, 2, 7, 3}, 85), q4 = leaf({2, 2, 4, 3}, 86);
  CHECK_GRAD(f(Tensor()), {q, k7, v7});
  CHECK_GRAD(f(Tensor()), {q4, k, v});
  // Views (every other element of the last dim), and one tensor as q, k and v.
  Tensor qn = noncontig_leaf({2, 2, 6, 3}, 87), kn = noncontig_leaf({2, 2, 6, 3}, 88), vn = noncontig_leaf({2, 2, 6, 3}, 89);
  CHECK_GRAD(f(mask), {qn, kn, vn});
  Tensor x = leaf({1, 2, 6, 4}, 90);
  CHECK_GRAD([](const V& a) { return scaled_dot_product_attention(a[0], a[0], a[0], Tensor(), true); }, {x});
  // Across a tile edge (n = 66: two query tiles, the second's diagonal tile holds 2 rows).
  GradcheckOptions go;
  go.max_checks_per_input = 40;
  Tensor qt = leaf({1, 1, 66, 2}, 91), kt = leaf({1, 1, 66, 2}, 92), vt = leaf({1, 1, 66, 2}, 93);
  CHECK_GRAD(f(Tensor()), {qt, kt, vt}, go);
  // The reference path itself.
  CHECK_GRAD([mask](const V& a) { return scaled_dot_product_attention(a[0], a[1], a[2], mask, true, std::nan(""), false); },
             {q, k, v});
}

TEST_CASE("causal fused attention is deterministic, 1 and 2 threads agree") {
  const int saved = get_num_threads();
  Tensor q = rnd({1, 3, 300, 32}, 95, kFloat32), k = rnd({1, 3, 300, 32}, 96, kFloat32), v = rnd({1, 3, 300, 32}, 97, kFloat32);
  Tensor mask = make_mask(1, 300, [](int64_t, int64_t j) { return j % 9 == 4; });
  set_num_threads(2);
  const Result a = run(q, k, v, mask, true, true), b = run(q, k, v, mask, true, true);
  set_num_threads(1);
  const Result c = run(q, k, v, mask, true, true);
  set_num_threads(saved);
  check_close(a.out, b.out, 0, 0, "same threads: output bits");
  check_close(a.dq, b.dq, 0, 0, "same threads: dq bits");
  check_close(a.dk, b.dk, 0, 0, "same threads: dk bits");
  check_close(a.dv, b.dv, 0, 0, "same threads: dv bits");
  check_close(a.out, c.out, 0, 0, "1 vs 2 threads: output (per-row, so bit-identical)");
  check_close(a.dk, c.dk, 1e-6, 1e-5, "1 vs 2 threads: dk");
  check_close(a.dv, c.dv, 1e-6, 1e-5, "1 vs 2 threads: dv");
}

// ---- values of their own width: v (B, H, m, e), e != d ----

TEST_CASE("fused attention with a value width e != d equals the reference: masks, causal, split heads, gradients") {
  for (DType dt : {kFloat64, kFloat32}) {
    const double atol = dt == kFloat64 ? 1e-11 : 2e-5, rtol = dt == kFloat64 ? 1e-9 : 1e-4;
    INFO(dtype_name(dt));
    const int64_t B = 2, H = 2, n = 70, m = 130, d = 20;
    Generator g(81);
    Tensor u = rand({B, m}, g, kFloat64);
    const std::vector<double> uv = u.to_vector();
    Tensor mask = make_mask(B, m, [&](int64_t b, int64_t j) { return b == 0 ? uv[(size_t)j] < 0.3 : j >= 100; });
    for (int64_t e : {int64_t(1), int64_t(3), 2 * d, int64_t(100)}) {  // narrower than a vector, twice d (FEM), several vector chunks
      INFO("e " << e);
      Tensor q = rnd({B, H, n, d}, 82 + e, dt), k = rnd({B, H, m, d}, 83 + e, dt), v = rnd({B, H, m, e}, 84 + e, dt);
      check_fused_vs_reference(q, k, v, Tensor(), atol, rtol);
      check_fused_vs_reference(q, k, v, mask, atol, rtol);
      check_fused_vs_reference(q, k.narrow(2, 0, n), v.narrow(2, 0, n), mask.narrow(1, 0, n), atol, rtol, true);
      CHECK(scaled_dot_product_attention(q, k, v).shape() == Shape{B, H, n, e});
    }
    // One head on two threads: the dV partial sums of the query-tile chunks have width e.
    const int saved = get_num_threads();
    set_num_threads(2);
    check_fused_vs_reference(rnd({1, 1, 150, 8}, 91, dt), rnd({1, 1, 150, 8}, 92, dt), rnd({1, 1, 150, 24}, 93, dt),
                             Tensor(), atol, rtol, true);
    set_num_threads(saved);
  }
  Tensor q = leaf({2, 2, 5, 3}, 94), k = leaf({2, 2, 7, 3}, 95), v = leaf({2, 2, 7, 5}, 96);
  Tensor mask = make_mask(2, 7, [](int64_t b, int64_t j) { return b == 0 ? j % 3 == 1 : j >= 4; });
  CHECK_GRAD([&](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2], mask); }, {q, k, v});
  const Tensor mask5 = mask.narrow(1, 0, 5);
  CHECK_GRAD([&](const V& x) { return scaled_dot_product_attention(x[0], x[1], x[2], mask5, true); },
             {q, k.narrow(2, 0, 5).detach().requires_grad_(), v.narrow(2, 0, 5).detach().requires_grad_()});
  CHECK_THROWS_WITH_AS(scaled_dot_product_attention(q, k, v.narrow(2, 0, 6)), doctest::Contains("v's B, H, m differ"),
                       ShapeError);
}
