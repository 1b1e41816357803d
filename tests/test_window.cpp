// Sliding-window attention: the fused kernel (sliding_window_attention) against the composite
// reference for causal and symmetric windows at tile-boundary sizes, with key padding and
// n != m; f64 gradient checks; locality (a key outside the band changes nothing); the window
// mechanism and causal softmax through MultiHeadAttention.
#include <doctest/doctest.h>

#include <cmath>

#include <lotgrad/nn/attention.h>
#include <lotgrad/ops/attention.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {

struct Result {
  std::vector<double> out, dq, dk, dv;
};

// Output and q/k/v gradients of the window op for a seeded random upstream gradient.
Result run(const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& mask, int64_t w, bool causal,
           bool fused) {
  Tensor q = q0.detach(), k = k0.detach(), v = v0.detach();
  q.requires_grad_();
  k.requires_grad_();
  v.requires_grad_();
  Tensor out = sliding_window_attention(q, k, v, w, causal, mask, std::nan(""), fused);
  Generator g(99);
  out.backward(randn(out.shape(), g, out.dtype()));
  return {out.to_vector(), q.grad().to_vector(), k.grad().to_vector(), v.grad().to_vector()};
}

// max over i of |a - b| - rtol |b| <= atol, every value finite.
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

void check_fused_vs_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, int64_t w,
                              bool causal) {
  INFO("window " << w << (causal ? " causal" : " symmetric"));
  const bool f64 = q.dtype() == kFloat64;
  const double atol = f64 ? 1e-11 : 2e-5, rtol = f64 ? 1e-9 : 1e-4;
  const Result f = run(q, k, v, mask, w, causal, true), r = run(q, k, v, mask, w, causal, false);
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

template <class F>
Tensor make_mask(int64_t B, int64_t m, F padded) {
  std::vector<bool> v((size_t)(B * m));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < m; ++j) v[(size_t)(b * m + j)] = padded(b, j);
  return Tensor::from_vector(v, {B, m});
}

// Query i sees key j.
bool in_band(int64_t i, int64_t j, int64_t w, bool causal) { return causal ? j <= i && i - j < w : std::abs(i - j) < w; }

}  // namespace

TEST_CASE("sliding window: fused equals the reference, causal and symmetric, tile-boundary sizes and windows") {
  for (bool causal : {true, false})
    for (int64_t n : {1, 63, 64, 65, 130})
      for (int64_t w : {1, 2, 5, 64, 65, 200}) {  // 200 >= n: the window holds every key
        INFO("n " << n);
        check_fused_vs_reference(rnd({1, 2, n, 8}, 10 + n), rnd({1, 2, n, 8}, 20 + n), rnd({1, 2, n, 8}, 30 + n),
                                 Tensor(), w, causal);
      }
  // A window wider than a tile on several tiles: query tiles with key tiles wholly inside the
  // band on both sides, and boundary tiles on both edges; f32 as well.
  for (DType dt : {kFloat64, kFloat32})
    for (bool causal : {true, false})
      for (int64_t w : {100, 130})
        check_fused_vs_reference(rnd({1, 2, 300, 16}, 1, dt), rnd({1, 2, 300, 16}, 2, dt), rnd({1, 2, 300, 16}, 3, dt),
                                 Tensor(), w, causal);
}

TEST_CASE("sliding window with n != m, key padding, and rows that see no key") {
  // Symmetric with m < n: queries past m + w - 1 have an empty band (zeros); with m > n the last
  // keys are seen by no query (zero gradient).
  for (int64_t w : {1, 3, 70}) {
    check_fused_vs_reference(rnd({2, 2, 130, 8}, 41), rnd({2, 2, 45, 8}, 42), rnd({2, 2, 45, 8}, 43), Tensor(), w, false);
    check_fused_vs_reference(rnd({2, 2, 45, 8}, 44), rnd({2, 2, 130, 8}, 45), rnd({2, 2, 130, 8}, 46), Tensor(), w, false);
    check_fused_vs_reference(rnd({2, 2, 70, 8}, 47), rnd({2, 2, 130, 8}, 48), rnd({2, 2, 130, 8}, 49), Tensor(), w, true);
  }
  const Result e = run(rnd({1, 1, 130, 4}, 50), rnd({1, 1, 45, 4}, 51), rnd({1, 1, 45, 4}, 52), Tensor(), 3, false, true);
  for (int64_t i = 47; i < 130; ++i)  // key 44 is the last: query 47 is 3 away
    for (int64_t c = 0; c < 4; ++c) CHECK(e.out[(size_t)(i * 4 + c)] == 0.0);
  // Key padding: b = 1 has keys 60..79 padded, so with w = 3 causal queries 62..79 see only
  // padded keys (zeros, zero gradient); b = 0 random pads.
  const int64_t B = 2, H = 2, n = 130, d = 8;
  Generator g(53);
  const std::vector<double> u = rand({n}, g, kFloat64).to_vector();
  Tensor mask = make_mask(B, n, [&](int64_t b, int64_t j) { return b == 0 ? u[(size_t)j] < 0.4 : j >= 60 && j < 80; });
  Tensor q = rnd({B, H, n, d}, 54), k = rnd({B, H, n, d}, 55), v = rnd({B, H, n, d}, 56);
  for (bool causal : {true, false})
    for (int64_t w : {1, 3, 64, 100}) check_fused_vs_reference(q, k, v, mask, w, causal);
  const Result f = run(q, k, v, mask, 3, true, true);
  bool zero = true;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 62; i < 80; ++i)
      for (int64_t c = 0; c < d; ++c) {
        const size_t o = (size_t)(((1 * H + h) * n + i) * d + c);
        zero = zero && f.out[o] == 0.0 && f.dq[o] == 0.0;
      }
  CHECK(zero);
}

TEST_CASE("sliding window: a window covering every key is plain (causal) attention, bit for bit") {
  Tensor q = rnd({1, 2, 130, 8}, 61), k = rnd({1, 2, 130, 8}, 62), v = rnd({1, 2, 130, 8}, 63);
  CHECK(max_abs_diff(sliding_window_attention(q, k, v, 130, true), scaled_dot_product_attention(q, k, v, Tensor(), true)) == 0.0);
  CHECK(max_abs_diff(sliding_window_attention(q, k, v, 1000, false), scaled_dot_product_attention(q, k, v)) == 0.0);
  // and window 1, causal: each query sees itself only, so the output is v
  CHECK(max_abs_diff(sliding_window_attention(q, k, v, 1, true), v) < 1e-15);
}

TEST_CASE("sliding window: a key outside the band changes nothing, and gets no gradient from outside") {
  const int64_t B = 1, H = 2, n = 200, d = 8, w = 40, i0 = 100;
  Tensor q = rnd({B, H, n, d}, 71), k = rnd({B, H, n, d}, 72), v = rnd({B, H, n, d}, 73);
  for (bool causal : {true, false})
    for (bool fused : {true, false}) {
      INFO((causal ? "causal" : "symmetric") << " fused " << fused);
      // Keys and values just outside query i0's band on each side (and far away) replaced by large values.
      Tensor k2 = k.clone(), v2 = v.clone();
      for (int64_t j : {i0 - w, int64_t(3), i0 + (causal ? 1 : w), int64_t(190)}) {
        REQUIRE(!in_band(i0, j, w, causal));
        k2.narrow(2, j, 1).copy_(rnd({B, H, 1, d}, 74 + j, kFloat64, 50.0));
        v2.narrow(2, j, 1).copy_(rnd({B, H, 1, d}, 75 + j, kFloat64, 50.0));
      }
      const Tensor a = sliding_window_attention(q, k, v, w, causal, Tensor(), std::nan(""), fused);
      const Tensor b = sliding_window_attention(q, k2, v2, w, causal, Tensor(), std::nan(""), fused);
      CHECK(max_abs_diff(a.narrow(2, i0, 1), b.narrow(2, i0, 1)) == 0.0);
      CHECK(max_abs_diff(a, b) > 1e-3);  // other queries do see them: the test can fail
      // The gradient of output i0 reaches exactly the keys in its band.
      Tensor kg = k.detach().requires_grad_(), vg = v.detach().requires_grad_();
      Tensor out = sliding_window_attention(q, kg, vg, w, causal, Tensor(), std::nan(""), fused);
      sum(out.narrow(2, i0, 1)).backward();
      const Tensor gk = kg.grad(), gv = vg.grad();
      bool exact = true;
      for (int64_t j = 0; j < n; ++j) {
        const double mk = max_abs_diff(gk.narrow(2, j, 1), Tensor::zeros({B, H, 1, d}, kFloat64));
        const double mv = max_abs_diff(gv.narrow(2, j, 1), Tensor::zeros({B, H, 1, d}, kFloat64));
        exact = exact && (in_band(i0, j, w, causal) ? mk > 0 && mv > 0 : mk == 0 && mv == 0);
      }
      CHECK(exact);
    }
}

TEST_CASE("sliding window: f64 gradient checks") {
  auto f = [](int64_t w, bool causal, const Tensor& mask) {
    return [=](const V& x) { return sliding_window_attention(x[0], x[1], x[2], w, causal, mask); };
  };
  Tensor q = leaf({2, 2, 7, 3}, 81), k = leaf({2, 2, 7, 3}, 82), v = leaf({2, 2, 7, 3}, 83);
  // b = 1: keys 2..4 padded: with w = 2 causal, queries 3 and 4 see only padded keys.
  Tensor mask = make_mask(2, 7, [](int64_t b, int64_t j) { return b == 0 ? j == 5 : j >= 2 && j <= 4; });
  for (bool causal : {true, false})
    for (int64_t w : {1, 2, 3, 7}) {
      INFO("window " << w << " causal " << causal);
      CHECK_GRAD(f(w, causal, Tensor()), {q, k, v});
      CHECK_GRAD(f(w, causal, mask), {q, k, v});
    }
  // n != m (symmetric), views as inputs, one tensor as q, k and v, the reference path.
  Tensor k5 = leaf({2, 2, 5, 3}, 84), v5 = leaf({2, 2, 5, 3}, 85);
  CHECK_GRAD(f(2, false, Tensor()), {q, k5, v5});
  Tensor big = leaf({2, 7, 2, 6}, 86);  // (B, n, H, 2d), transposed: q, k, v are overlapping slices
  CHECK_GRAD([](const V& a) {
    const Tensor t = a[0].transpose(1, 2);
    return sliding_window_attention(t.narrow(3, 0, 3), t.narrow(3, 3, 3), t.narrow(3, 1, 3), 3, true);
  }, {big});
  Tensor x = leaf({1, 2, 6, 4}, 87);
  CHECK_GRAD([](const V& a) { return sliding_window_attention(a[0], a[0], a[0], 2, false); }, {x});
  CHECK_GRAD([mask](const V& a) { return sliding_window_attention(a[0], a[1], a[2], 2, true, mask, std::nan(""), false); },
             {q, k, v});
  // Across a tile edge: n = 70, window 5 (boundary tiles only) and 66 (a tile wholly inside).
  GradcheckOptions go;
  go.max_checks_per_input = 40;
  Tensor qt = leaf({1, 1, 70, 2}, 88), kt = leaf({1, 1, 70, 2}, 89), vt = leaf({1, 1, 70, 2}, 90);
  for (int64_t w : {5, 66}) CHECK_GRAD(f(w, false, Tensor()), {qt, kt, vt}, go);
}

TEST_CASE("sliding window: deterministic, 1 and 2 threads agree, and bad windows are refused naming the value") {
  const int saved = get_num_threads();
  Tensor q = rnd({1, 1, 400, 32}, 91, kFloat32), k = rnd({1, 1, 400, 32}, 92, kFloat32), v = rnd({1, 1, 400, 32}, 93, kFloat32);
  set_num_threads(2);
  const Result a = run(q, k, v, Tensor(), 100, true, true), b = run(q, k, v, Tensor(), 100, true, true);
  set_num_threads(1);
  const Result c = run(q, k, v, Tensor(), 100, true, true);
  set_num_threads(saved);
  check_close(a.out, b.out, 0, 0, "same threads: output bits");
  check_close(a.dk, b.dk, 0, 0, "same threads: dk bits");
  check_close(a.out, c.out, 0, 0, "1 vs 2 threads: output");
  check_close(a.dk, c.dk, 1e-6, 1e-5, "1 vs 2 threads: dk");
  check_close(a.dv, c.dv, 1e-6, 1e-5, "1 vs 2 threads: dv");
  CHECK_THROWS_WITH_AS(sliding_window_attention(q, k, v, 0, true), doctest::Contains("sliding_window_attention: window must be >= 1, got 0"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(sliding_window_attention(q, k, v, -3, false), doctest::Contains("got -3"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(sliding_window_attention(q, k.narrow(2, 0, 5), v, 4, true), doctest::Contains("sliding_window_attention"),
                       ShapeError);
}

// ---- the mechanisms: window (causal and symmetric) and causal softmax -------------------------

TEST_CASE("window and causal softmax mechanisms: forward = attention_matrix · v, zero outside the band") {
  Generator g(5);
  const int64_t B = 2, n = 9, D = 8, w = 3;
  Tensor mask = make_mask(B, n, [](int64_t b, int64_t j) { return b == 1 && j >= 7; });
  for (const std::string name : {"window", "softmax"})
    for (bool causal : {true, false}) {
      if (name == "softmax" && !causal) continue;  // plain softmax: the shared tests
      for (double fused : {1.0, 0.0}) {
        INFO(name << (causal ? " causal" : " symmetric") << " fused " << fused);
        nn::AttentionOptions o;
        o.name = name;
        o.n_heads = 2;
        o.causal = causal;
        o.knobs = {{"fused", fused}};
        if (name == "window") o.knobs["window"] = (double)w;
        nn::MultiHeadAttention mha(D, o, g);
        mha.to_(kFloat64);
        Tensor x = leaf({B, n, D}, 11), q, k, v;
        mha.project(x, q, k, v);
        const Tensor A = mha.mechanism->attention_matrix(q, k, mask);  // (B, H, n, n)
        CHECK(max_abs_diff(mha.mechanism->forward(q, k, v, mask), matmul(A, v)) < 1e-12);
        bool band = true;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < n; ++j) {
              const bool seen = (name == "softmax" ? j <= i : in_band(i, j, w, causal)) && !(b == 1 && j >= 7);
              band = band && (seen ? A.at({b, 0, i, j}) > 0 : A.at({b, 0, i, j}) == 0.0);
            }
        CHECK(band);
        CHECK_GRAD([&](const V& a) { return mha.forward(a[0], mask); }, {x, mha.qkv->weight});
      }
    }
  // The declaration: knob range, causal capability, linear time.
  const nn::MechanismSpec& s = nn::mechanism_spec("window");
  CHECK(s.caps.causal);
  CHECK(s.caps.linear_time);
  CHECK(nn::mechanism_spec("softmax").caps.causal);
  CHECK_THROWS_WITH_AS(nn::resolve_knobs(s, {{"window", 0}}), doctest::Contains("--window"), std::invalid_argument);
  CHECK(nn::resolve_knobs(s, {}).at("window") == 64);
}
