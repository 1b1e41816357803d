// H3 and its long convolutions: the radix-2 FFT against a naive DFT; causal_conv1d's FFT form
// against the direct form and a naive loop (odd n, K = 1, K = n, K > n, non-powers of two) in
// values and gradients, gradient checks of both, the same bits on 1 and 2 threads;
// toeplitz_causal_linear (direct tiled, FFT) and modal_causal_linear (chunks with a running
// state per S4D mode) against the explicit n×n composite; the H3 layer's
// S4D kernel and read-out against the diagonal SSM recurrence computed naively in complex
// arithmetic; the free filter f ≡ 1 without shift equals plain causal linear attention; the map
// times the values is the output; gradient checks through MultiHeadAttention; causality,
// padding and the two-sided form.
#include <doctest/doctest.h>

#include <cmath>
#include <complex>

#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention.h>
#include <lotgrad/ops/conv.h>
#include <lotgrad/ops/fft.h>
#include <lotgrad/ops/ssm_linear.h>
#include <lotgrad/ops/toeplitz_linear.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;
using cd = std::complex<double>;

namespace {

// y[b, t, c] = bias[c] + Σ_{m <= t, m < K} w[c, m] x[b, t − m, c], loops.
Tensor conv_naive(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t B = x.size(0), n = x.size(1), C = x.size(2), K = w.size(1);
  std::vector<double> y((size_t)(B * n * C));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double s = bias.defined() ? bias.at({c}) : 0.0;
        for (int64_t m = 0; m < std::min(K, t + 1); ++m) s += w.at({c, m}) * x.at({b, t - m, c});
        y[(size_t)((b * n + t) * C + c)] = s;
      }
  return Tensor::from_vector(y, {B, n, C});
}

// Y_t = Σ_{0 <= t−j < L} f[h, t − j] (q_t·k_j) v_j through the explicit (n, n) weights.
Tensor toeplitz_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& f) {
  const int64_t H = q.size(1), n = q.size(2), L = f.size(1);
  std::vector<double> T((size_t)(H * n * n), 0.0);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j <= t && t - j < L; ++j) T[(size_t)((h * n + t) * n + j)] = 1.0;
  // weights as a differentiable gather of f: f padded with a zero, indexed by lag
  const Tensor fp = pad(f, {0, n + 1});  // (H, L + n + 1); index L + n is 0
  std::vector<int64_t> idx((size_t)(n * n));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < n; ++j) idx[(size_t)(t * n + j)] = (j <= t && t - j < L) ? t - j : L + n;
  const Tensor W = index_select(fp, 1, Tensor::from_vector(idx, {n * n})).view({1, H, n, n});
  return matmul(mul(matmul(q, k.transpose(-2, -1)), W), v);
}

Tensor param(const nn::Module& m, const std::string& name) {
  for (const auto& [k, t] : m.named_parameters())
    if (k == name) return t;
  FAIL("no parameter " << name);
  return Tensor();
}

nn::AttentionOptions h3_opts(std::map<std::string, double> knobs, bool causal = true, int64_t H = 2, int64_t d = 3) {
  nn::AttentionOptions o;
  o.name = "h3";
  o.n_heads = H;
  o.d_head = d;
  o.causal = causal;
  o.knobs = std::move(knobs);
  return o;
}
}  // namespace

TEST_CASE("fft::Plan: forward equals the naive DFT, inverse undoes it, any power of two") {
  for (int64_t N : {1, 2, 4, 8, 64}) {
    INFO("N " << N);
    Generator g(N);
    std::vector<cd> a((size_t)N);
    for (auto& z : a) z = {g.normal(), g.normal()};
    std::vector<cd> A = a;
    fft::Plan<double> plan(N);
    plan.forward(A.data());
    double err = 0;
    for (int64_t k = 0; k < N; ++k) {
      cd s = 0;
      for (int64_t t = 0; t < N; ++t) s += a[(size_t)t] * std::polar(1.0, -2 * M_PI * (double)(k * t) / (double)N);
      err = std::max(err, std::abs(s - A[(size_t)k]));
    }
    CHECK(err < 1e-12);
    plan.inverse(A.data());
    err = 0;
    for (int64_t t = 0; t < N; ++t) err = std::max(err, std::abs(A[(size_t)t] - a[(size_t)t]));
    CHECK(err < 1e-13);
  }
  CHECK(fft::next_pow2(1) == 1);
  CHECK(fft::next_pow2(5) == 8);
  CHECK(fft::next_pow2(64) == 64);
  CHECK_THROWS_WITH_AS(fft::Plan<double>(12), doctest::Contains("power of two"), std::invalid_argument);
}

TEST_CASE("causal_conv1d: the FFT form equals the direct form and a naive loop, values and gradients") {
  struct Case { int64_t B, n, C, K; };
  for (auto [B, n, C, K] : std::vector<Case>{{1, 1, 1, 1}, {2, 7, 3, 1}, {3, 13, 2, 5}, {2, 8, 3, 8}, {2, 5, 3, 9},
                                              {1, 33, 2, 17}, {3, 100, 3, 100}, {2, 64, 1, 40}, {1, 31, 4, 31}}) {
    INFO("B " << B << " n " << n << " C " << C << " K " << K);
    Tensor x = leaf({B, n, C}, 1), w = leaf({C, K}, 2), b = leaf({C}, 3);
    const Tensor yd = causal_conv1d(x, w, b, ConvAlgo::direct), yf = causal_conv1d(x, w, b, ConvAlgo::fft);
    CHECK(max_abs_diff(yf, conv_naive(x, w, b)) < 1e-10);
    CHECK(max_abs_diff(yd, conv_naive(x, w, b)) < 1e-10);
    CHECK(max_abs_diff(causal_conv1d(x, w, Tensor(), ConvAlgo::fft), conv_naive(x, w, Tensor())) < 1e-10);
    Generator gr(4);
    const Tensor R = randn({B, n, C}, gr, kFloat64);
    const V gd = input_grads(sum(mul(causal_conv1d(x, w, b, ConvAlgo::direct), R)), {x, w, b});
    const V gf = input_grads(sum(mul(causal_conv1d(x, w, b, ConvAlgo::fft), R)), {x, w, b});
    for (size_t i = 0; i < 3; ++i) CHECK(max_abs_diff(gf[i], gd[i]) < 1e-10);
    if (K > n) CHECK(max_abs(gf[1].narrow(1, n, K - n)) == 0.0);  // taps no input meets
  }
  // f32: the FFT form within float rounding of the direct form
  Generator g(5);
  const Tensor x = randn({2, 300, 3}, g), w = randn({3, 200}, g);
  const Tensor yd = causal_conv1d(x, w, Tensor(), ConvAlgo::direct);
  CHECK(max_abs_diff(causal_conv1d(x, w, Tensor(), ConvAlgo::fft), yd) < 1e-4 * std::max(1.0, max_abs(yd)));
  // automatic: by the number of taps that meet an input
  CHECK_FALSE(conv_uses_fft(1000, 4));
  CHECK_FALSE(conv_uses_fft(100, 1000));    // 100 taps meet an input, N = 256: 100 <= 16·8
  CHECK(conv_uses_fft(1000, 1000));          // N = 2048: 1000 > 16·11
  CHECK_FALSE(conv_uses_fft(4096, 200));     // N = 8192: 200 <= 16·13
}

TEST_CASE("causal_conv1d FFT form: gradient checks, a view input, the same bits on 1 and 2 threads") {
  GradcheckOptions o;
  o.max_checks_per_input = 25;
  for (auto [n, K] : std::vector<std::pair<int64_t, int64_t>>{{9, 3}, {6, 6}, {5, 8}}) {
    INFO("n " << n << " K " << K);
    Tensor x = leaf({3, n, 2}, 11), w = leaf({2, K}, 12), b = leaf({2}, 13);
    CHECK_GRAD([&](const V& v) { return causal_conv1d(v[0], v[1], v[2], ConvAlgo::fft); }, {x, w, b}, o);
    CHECK_GRAD([&](const V& v) { return causal_conv1d(v[0], v[1], v[2], ConvAlgo::direct); }, {x, w, b}, o);
  }
  Tensor base = leaf({2, 3, 7}, 14), w = leaf({3, 5}, 15);
  CHECK_GRAD([&](const V& v) {
    const Tensor x = v[0].transpose(1, 2);
    return mul(causal_conv1d(x, v[1], Tensor(), ConvAlgo::fft), x);
  }, {base, w});
  const int nt = get_num_threads();
  Tensor big = leaf({3, 200, 8}, 16), wb = leaf({8, 150}, 17);
  auto run = [&](int t) {
    set_num_threads(t);
    const Tensor y = causal_conv1d(big, wb, Tensor(), ConvAlgo::fft);
    const V g = input_grads(sum(mul(y, big)), {big, wb});
    return std::make_tuple(y.to_vector(), g[0].to_vector(), g[1].to_vector());
  };
  CHECK(run(1) == run(2));
  set_num_threads(nt);
  CHECK_THROWS_WITH_AS(causal_conv1d(big, Tensor::zeros({7, 3}, kFloat64), Tensor(), ConvAlgo::fft),
                       doctest::Contains("causal_conv1d"), ShapeError);
}

TEST_CASE("toeplitz_causal_linear: tiled direct and FFT forms equal the explicit n×n weights, values and gradients") {
  struct Case { int64_t n, L, tile; };
  for (auto [n, L, tile] : std::vector<Case>{{1, 1, 64}, {7, 1, 3}, {10, 4, 3}, {10, 10, 4}, {13, 30, 4}, {17, 6, 64},
                                              {20, 9, 1}, {33, 33, 8}}) {
    INFO("n " << n << " L " << L << " tile " << tile);
    Tensor q = leaf({2, 2, n, 3}, 21), k = leaf({2, 2, n, 3}, 22), v = leaf({2, 2, n, 4}, 23), f = leaf({2, L}, 24);
    const Tensor ref = toeplitz_reference(q, k, v, f);
    const Tensor yd = toeplitz_causal_linear(q, k, v, f, ConvAlgo::direct, tile);
    const Tensor yf = toeplitz_causal_linear(q, k, v, f, ConvAlgo::fft);
    CHECK(max_abs_diff(yd, ref) < 1e-10);
    CHECK(max_abs_diff(yf, ref) < 1e-10);
    Generator gr(25);
    const Tensor R = randn(ref.shape(), gr, kFloat64);
    const V gref = input_grads(sum(mul(toeplitz_reference(q, k, v, f), R)), {q, k, v, f});
    const V gd = input_grads(sum(mul(toeplitz_causal_linear(q, k, v, f, ConvAlgo::direct, tile), R)), {q, k, v, f});
    const V gf = input_grads(sum(mul(toeplitz_causal_linear(q, k, v, f, ConvAlgo::fft), R)), {q, k, v, f});
    for (size_t i = 0; i < 4; ++i) {
      INFO("input " << i);
      CHECK(max_abs_diff(gd[i], gref[i]) < 1e-10);
      CHECK(max_abs_diff(gf[i], gref[i]) < 1e-10);
    }
  }
  GradcheckOptions o;
  o.max_checks_per_input = 20;
  Tensor q = leaf({1, 2, 11, 3}, 31), k = leaf({1, 2, 11, 3}, 32), v = leaf({1, 2, 11, 2}, 33), f = leaf({2, 7}, 34);
  CHECK_GRAD([&](const V& t) { return toeplitz_causal_linear(t[0], t[1], t[2], t[3], ConvAlgo::direct, 4); }, {q, k, v, f}, o);
  CHECK_GRAD([&](const V& t) { return toeplitz_causal_linear(t[0], t[1], t[2], t[3], ConvAlgo::fft); }, {q, k, v, f}, o);
  // the same bits on 1 and 2 threads (direct)
  const int nt = get_num_threads();
  auto run = [&](int t) {
    set_num_threads(t);
    return input_grads(sum(mul(toeplitz_causal_linear(q, k, v, f, ConvAlgo::direct, 4), 1.5)), {q, k, v, f})[3].to_vector();
  };
  CHECK(run(1) == run(2));
  set_num_threads(nt);
  CHECK_THROWS_WITH_AS(toeplitz_causal_linear(q, k, v, leaf({3, 7}, 35)), doctest::Contains("toeplitz_causal_linear"),
                       ShapeError);
  CHECK_THROWS_AS(toeplitz_causal_linear(q, k, v, f, ConvAlgo::direct, 0), std::invalid_argument);
  // automatic: direct for short sequences or short filters, FFT for long filters over long sequences
  CHECK_FALSE(toeplitz_uses_fft(64, 64, 16, 16));
  CHECK_FALSE(toeplitz_uses_fft(1 << 16, 4, 16, 16));
  CHECK(toeplitz_uses_fft(1 << 16, 1 << 16, 16, 16));
}

namespace {
// Modes (H, M) of a stable S4D filter: Re log λ = −0.02 − 0.14 |N(0, 1)| so that many lags matter.
struct TestModes {
  Tensor lre, lim, cre, cim;
  TestModes(int64_t H, int64_t M, uint64_t seed, DType dt = kFloat64) {
    lre = sub(neg(abs(leaf({H, M}, seed, 0.14).detach())), 0.02).to(dt).requires_grad_();
    lim = leaf({H, M}, seed + 1, 2.0).detach().to(dt).requires_grad_();
    cre = leaf({H, M}, seed + 2).detach().to(dt).requires_grad_();
    cim = leaf({H, M}, seed + 3).detach().to(dt).requires_grad_();
  }
  V all() const { return {lre, lim, cre, cim}; }
};
}  // namespace

TEST_CASE("modal_filter: 2 Re Σ_m c_m λ_m^ℓ, computed by a loop in complex arithmetic") {
  const TestModes md(2, 3, 40);
  const int64_t n = 9;
  const Tensor f = modal_filter(md.lre, md.lim, md.cre, md.cim, n);
  REQUIRE(f.shape() == Shape{2, n});
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t l = 0; l < n; ++l) {
      cd s = 0;
      for (int64_t m = 0; m < 3; ++m)
        s += cd(md.cre.at({h, m}), md.cim.at({h, m})) * std::exp((double)l * cd(md.lre.at({h, m}), md.lim.at({h, m})));
      CHECK(f.at({h, l}) == doctest::Approx(2.0 * s.real()).epsilon(1e-12));
    }
  CHECK_GRAD([&](const V& t) { return modal_filter(t[0], t[1], t[2], t[3], 6); }, md.all());
}

TEST_CASE("modal_causal_linear: chunks with a running state per mode equal the explicit n×n weights, values and gradients") {
  struct Case { int64_t n, chunk, M, d, e; };
  for (auto [n, chunk, M, d, e] : std::vector<Case>{{1, 64, 2, 3, 2}, {13, 1, 2, 3, 4}, {13, 3, 3, 3, 4}, {30, 4, 2, 2, 5},
                                                   {30, 7, 1, 4, 3}, {64, 8, 4, 3, 3}, {70, 64, 2, 3, 3}, {40, 40, 2, 3, 3}}) {
    INFO("n " << n << " chunk " << chunk << " M " << M << " d " << d << " e " << e);
    Tensor q = leaf({2, 2, n, d}, 21), k = leaf({2, 2, n, d}, 22), v = leaf({2, 2, n, e}, 23);
    const TestModes md(2, M, 24);
    auto ref_fn = [&] { return toeplitz_reference(q, k, v, modal_filter(md.lre, md.lim, md.cre, md.cim, n)); };
    auto fast_fn = [&] { return modal_causal_linear(q, k, v, md.lre, md.lim, md.cre, md.cim, chunk); };
    const Tensor ref = ref_fn();
    CHECK(max_abs(ref) > 1e-3);
    CHECK(max_abs_diff(fast_fn(), ref) < 1e-10);
    Generator gr(25);
    const Tensor R = randn(ref.shape(), gr, kFloat64);
    const V ins{q, k, v, md.lre, md.lim, md.cre, md.cim};
    const V gref = input_grads(sum(mul(ref_fn(), R)), ins), gfast = input_grads(sum(mul(fast_fn(), R)), ins);
    for (size_t i = 0; i < ins.size(); ++i) {
      INFO("input " << i);
      if (n > 1) CHECK(max_abs(gref[i]) > 1e-6);  // at n = 1 only lag 0 (2 Re Σ c) exists
      CHECK(max_abs_diff(gfast[i], gref[i]) < 1e-9 * std::max(1.0, max_abs(gref[i])));
    }
  }
}

TEST_CASE("modal_causal_linear: gradient checks (views, q = k), the same bits on 1 and 2 threads, f32, refusals") {
  GradcheckOptions o;
  o.max_checks_per_input = 12;
  const TestModes md(2, 2, 50);
  Tensor q = leaf({1, 2, 11, 3}, 51), k = leaf({1, 2, 11, 3}, 52), v = leaf({1, 2, 11, 2}, 53);
  const V ins{q, k, v, md.lre, md.lim, md.cre, md.cim};
  CHECK_GRAD([&](const V& t) { return modal_causal_linear(t[0], t[1], t[2], t[3], t[4], t[5], t[6], 3); }, ins, o);
  CHECK_GRAD([&](const V& t) { return modal_cross_chunk(t[0], t[1], t[2], t[3], t[4], t[5], t[6], 4); }, ins, o);
  // q = k (one tensor used twice), and views: a transposed v and a narrowed q
  CHECK_GRAD([&](const V& t) { return modal_causal_linear(t[0], t[0], t[1], t[2], t[3], t[4], t[5], 4); },
             {q, v, md.lre, md.lim, md.cre, md.cim}, o);
  Tensor wide = leaf({1, 2, 11, 5}, 54), vt = leaf({1, 2, 2, 11}, 55);
  CHECK_GRAD([&](const V& t) {
    return modal_causal_linear(t[0].narrow(3, 1, 3), t[1], t[2].transpose(2, 3), t[3], t[4], t[5], t[6], 4);
  }, {wide, k, vt, md.lre, md.lim, md.cre, md.cim}, o);
  // the same bits on 1 and 2 threads, values and every gradient (B·H = 6 heads split over threads)
  Tensor q6 = leaf({3, 2, 40, 3}, 56), k6 = leaf({3, 2, 40, 3}, 57), v6 = leaf({3, 2, 40, 4}, 58);
  const int nt = get_num_threads();
  auto run = [&](int t) {
    set_num_threads(t);
    const V ins6{q6, k6, v6, md.lre, md.lim, md.cre, md.cim};
    V out = input_grads(sum(mul(modal_causal_linear(q6, k6, v6, md.lre, md.lim, md.cre, md.cim, 8), 1.5)), ins6);
    std::vector<double> all;
    for (const Tensor& x : out)
      for (double z : x.to_vector()) all.push_back(z);
    return all;
  };
  CHECK(run(1) == run(2));
  set_num_threads(nt);
  // f32 over a long sequence: close to f64
  const TestModes m32(2, 4, 60, kFloat32);
  Generator gx(61);
  const Tensor q32 = randn({1, 2, 3000, 4}, gx), k32 = randn({1, 2, 3000, 4}, gx), v32 = randn({1, 2, 3000, 4}, gx);
  const Tensor y32 = modal_causal_linear(q32, k32, v32, m32.lre, m32.lim, m32.cre, m32.cim);
  const Tensor y64 = modal_causal_linear(q32.to(kFloat64), k32.to(kFloat64), v32.to(kFloat64), m32.lre.to(kFloat64),
                                         m32.lim.to(kFloat64), m32.cre.to(kFloat64), m32.cim.to(kFloat64));
  CHECK(max_abs_diff(y32.to(kFloat64), y64) < 1e-4 * max_abs(y64));
  CHECK_THROWS_WITH_AS(modal_causal_linear(q, k, v, leaf({3, 2}, 62), md.lim, md.cre, md.cim),
                       doctest::Contains("modal_causal_linear"), ShapeError);
  CHECK_THROWS_WITH_AS(modal_causal_linear(q, k, v, md.lre, md.lim, md.cre, md.cim, 0), doctest::Contains("chunk must be >= 1, got 0"),
                       std::invalid_argument);
  CHECK_THROWS_AS(modal_causal_linear(q.to(kFloat32), k, v, md.lre, md.lim, md.cre, md.cim), DTypeError);
}

namespace {
// The H3 layer on x (B, n, D) computed naively: projections, the shift as loops, then per head
// and mode the diagonal SSM recurrence h_t = λ h_{t−1} + k̄_t v_tᵀ in complex arithmetic,
// Y_t = 2 Re Σ_m C̃_m h_t + D k̄_t v_tᵀ, y_t = q_tᵀ Y_t. -> (B, H, n, d)
Tensor h3_naive(const nn::Module& mech, const Tensor& x, int64_t H, int64_t d, int64_t taps) {
  NoGradGuard ng;
  const int64_t B = x.size(0), n = x.size(1), D = H * d;
  const Tensor p = add(matmul(x, param(mech, "qkv.weight").t()), param(mech, "qkv.bias"));  // (B, n, 3D)
  const Tensor q = p.narrow(2, 0, D), k = p.narrow(2, D, D), v = p.narrow(2, 2 * D, D);
  const Tensor kb = taps > 1 ? conv_naive(k, param(mech, "shift"), Tensor()) : k;
  const Tensor la = param(mech, "log_a"), ai = param(mech, "a_imag"), ldt = param(mech, "log_dt");
  const Tensor cr = param(mech, "c_re"), ci = param(mech, "c_im"), skip = param(mech, "skip");
  const int64_t M = la.size(1);
  std::vector<double> y((size_t)(B * H * n * d), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const double dt = std::exp(ldt.at({h, 0}));
      std::vector<cd> lam((size_t)M), ct((size_t)M);
      for (int64_t m = 0; m < M; ++m) {
        const cd A(-std::exp(la.at({h, m})), ai.at({h, m}));
        lam[(size_t)m] = std::exp(dt * A);
        ct[(size_t)m] = cd(cr.at({h, 0, m}), ci.at({h, 0, m})) * (lam[(size_t)m] - 1.0) / A;
      }
      std::vector<cd> state((size_t)(M * d * d), 0.0);  // (M, d, d)
      for (int64_t t = 0; t < n; ++t) {
        std::vector<double> Y((size_t)(d * d));
        for (int64_t i = 0; i < d; ++i)
          for (int64_t j = 0; j < d; ++j) {
            const double kv = kb.at({b, t, h * d + i}) * v.at({b, t, h * d + j});
            cd s = 0;
            for (int64_t m = 0; m < M; ++m) {
              cd& st = state[(size_t)((m * d + i) * d + j)];
              st = lam[(size_t)m] * st + kv;
              s += ct[(size_t)m] * st;
            }
            Y[(size_t)(i * d + j)] = 2.0 * s.real() + skip.at({h, 0}) * kv;
          }
        for (int64_t j = 0; j < d; ++j) {
          double s = 0;
          for (int64_t i = 0; i < d; ++i) s += q.at({b, t, h * d + i}) * Y[(size_t)(i * d + j)];
          y[(size_t)(((b * H + h) * n + t) * d + j)] = s;
        }
      }
    }
  return Tensor::from_vector(y, {B, H, n, d});
}
}  // namespace

TEST_CASE("h3: S4D long convolution, direct = FFT = chunked = the diagonal SSM recurrence, and the map times v is the output") {
  const int64_t H = 2, d = 3, D = H * d;
  for (auto [n, taps] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {9, 3}, {40, 4}, {70, 2}}) {
    INFO("n " << n << " shift_taps " << taps);
    std::map<std::string, double> knobs{{"shift_taps", (double)taps}, {"ssm_state", 6}};
    Generator g1(7), g2(7), g3(7), g4(7);
    knobs["conv"] = 1;
    auto direct = nn::make_attention(h3_opts(knobs), g1);
    knobs["conv"] = 2;
    auto fft = nn::make_attention(h3_opts(knobs), g2);
    knobs["conv"] = 3;
    knobs["chunk"] = 8;
    auto chunked = nn::make_attention(h3_opts(knobs), g4);
    Generator u1(8), u2(8), u4(8);  // O(1) q, k, v (the 0.02 default init makes every value tiny)
    nn::reset_linears_uniform_(*direct, u1);
    nn::reset_linears_uniform_(*fft, u2);
    nn::reset_linears_uniform_(*chunked, u4);
    // larger dt and slower decay than the init so that many lags matter
    NoGradGuard ng;
    for (auto* m : {direct.get(), fft.get(), chunked.get()}) {
      m->to_(kFloat64);
      param(*m, "log_dt").copy_(Tensor::full({H, 1}, std::log(0.05), kFloat64));
      param(*m, "log_a").copy_(Tensor::full({H, 3}, std::log(0.3), kFloat64));
    }
    const Tensor x = randn({2, n, D}, g3, kFloat64);
    const Tensor ref = h3_naive(*direct, x, H, d, taps);
    CHECK(max_abs(ref) > 1e-3);
    CHECK(max_abs_diff(direct->forward_block(x, Tensor()), ref) < 1e-10);
    CHECK(max_abs_diff(fft->forward_block(x, Tensor()), ref) < 1e-10);
    CHECK(max_abs_diff(chunked->forward_block(x, Tensor()), ref) < 1e-10);
    // A v = output, v the layer's own values
    const Tensor v = add(matmul(x, param(*direct, "qkv.weight").narrow(0, 2 * D, D).t()),
                         param(*direct, "qkv.bias").narrow(0, 2 * D, D)).view({2, n, H, d}).permute({0, 2, 1, 3});
    CHECK(max_abs_diff(matmul(direct->attention_matrix_block(x, Tensor()), v), ref) < 1e-10);
  }
}

TEST_CASE("h3: free filter f ≡ 1 without shift is plain causal linear attention given the same q, k, v") {
  const int64_t D = 8, n = 12;
  Generator g(3), gl(4), gx(5);
  nn::AttentionOptions o = h3_opts(nn::mechanism_spec("h3").preset("icl-regression"), true, 2, 4);
  nn::MultiHeadAttention h3(D, o, g);
  nn::AttentionOptions lo;
  lo.name = "linear";
  lo.n_heads = 2;
  lo.causal = true;
  lo.knobs = nn::mechanism_spec("linear").preset("icl-regression");
  nn::MultiHeadAttention lin(D, lo, gl);
  nn::reset_linears_uniform_(h3, gl);
  h3.to_(kFloat64);
  lin.to_(kFloat64);
  NoGradGuard ng;
  lin.qkv->weight.copy_(param(h3, "mechanism.qkv.weight"));
  lin.qkv->bias.copy_(param(h3, "mechanism.qkv.bias"));
  lin.out_proj->weight.copy_(h3.out_proj->weight);
  lin.out_proj->bias.copy_(h3.out_proj->bias);
  const Tensor x = randn({2, n, D}, gx, kFloat64);
  const Tensor y = h3.forward(x);
  CHECK(max_abs(y) > 1e-3);
  CHECK(max_abs_diff(y, lin.forward(x)) < 1e-10);
  // a filter not ≡ 1 weights the lags: no longer linear attention
  param(h3, "mechanism.filter").narrow(1, 1, 1).fill_(0.5);
  CHECK(max_abs_diff(h3.forward(x), lin.forward(x)) > 1e-3);
}

TEST_CASE("h3 through MultiHeadAttention: gradient checks (ssm direct and FFT, free), causality, padding, two-sided") {
  const int64_t D = 6, n = 7;
  GradcheckOptions go;
  go.max_checks_per_input = 8;
  Generator gx(9);
  const Tensor x0 = randn({2, n, D}, gx, kFloat64);
  const Tensor mask = Tensor::from_vector(std::vector<bool>{false, false, false, false, false, true, true,  //
                                                            true, false, false, false, false, false, false},
                                          {2, n});
  for (const auto& knobs : std::vector<std::map<std::string, double>>{
           {{"shift_taps", 3}, {"ssm_state", 4}, {"conv", 1}},
           {{"shift_taps", 3}, {"ssm_state", 4}, {"conv", 2}},
           {{"shift_taps", 3}, {"ssm_state", 4}, {"conv", 3}, {"chunk", 3}},
           {{"shift_taps", 2}, {"long_filter", 1}, {"filter_len", 5}}}) {
    for (bool causal : {true, false}) {
      INFO("filter " << knobs.count("long_filter") << " conv " << (knobs.count("conv") ? knobs.at("conv") : 0) << " causal " << causal);
      Generator g(1);
      nn::MultiHeadAttention mha(D, h3_opts(knobs, causal, 2, 3), g);
      nn::reset_linears_uniform_(mha, g);
      mha.to_(kFloat64);
      V inputs{x0.detach().clone().requires_grad_()};
      std::vector<std::string> names;
      for (const auto& [name, t] : mha.mechanism->named_parameters())
        if (name != "qkv.weight") {  // the projection's weight: the shared test checks it
          inputs.push_back(t);
          names.push_back(name);
        }
      CHECK_GRAD([&](const V& v) { return mha.forward(v[0], mask); }, inputs, go);
      // pads' content changes no valid output
      Tensor x2 = x0.clone();
      x2.select(0, 0).narrow(0, 5, 2).fill_(7.0);
      x2.select(0, 1).narrow(0, 0, 1).fill_(-9.0);
      const Tensor keep = logical_not(mask).to(kFloat64).unsqueeze(-1);
      CHECK(max_abs_diff(mul(mha.forward(x0, mask), keep), mul(mha.forward(x2, mask), keep)) < 1e-12);
      if (causal) {  // changing x after t changes nothing at or before t
        Tensor x3 = x0.clone();
        x3.narrow(1, 4, 3).fill_(3.0);
        CHECK(max_abs_diff(mha.forward(x0).narrow(1, 0, 4), mha.forward(x3).narrow(1, 0, 4)) < 1e-12);
      } else {  // two-sided: the causal core forward plus the causal core on the reversed sequence
        Generator g2(1);
        auto o = h3_opts(knobs, true, 2, 3);
        auto causal_mech = nn::make_attention(o, g2);
        causal_mech->to_(kFloat64);
        causal_mech->load_state_dict(mha.mechanism->state_dict());
        std::vector<int64_t> rev(n);
        for (int64_t t = 0; t < n; ++t) rev[(size_t)t] = n - 1 - t;
        const Tensor r = Tensor::from_vector(rev, {n});
        const Tensor two = add(causal_mech->forward_block(x0, Tensor()),
                               index_select(causal_mech->forward_block(index_select(x0, 1, r), Tensor()), 2, r));
        CHECK(max_abs_diff(mha.mechanism->forward_block(x0, Tensor()), two) < 1e-12);
      }
    }
  }
}

TEST_CASE("h3: knobs reach the layer, long f32 sequences, refusals") {
  Generator g(2);
  auto m = nn::make_attention(h3_opts({{"ssm_state", 64}, {"shift_taps", 4}}), g);
  CHECK(param(*m, "log_a").shape() == Shape{2, 32});
  CHECK(param(*m, "shift").shape() == Shape{6, 4});
  for (double ldt : param(*m, "log_dt").to_vector()) CHECK((ldt >= std::log(1e-3) && ldt <= std::log(1e-1)));
  auto f = nn::make_attention(h3_opts({{"long_filter", 1}, {"filter_len", 9}, {"shift_taps", 1}}), g);
  CHECK(param(*f, "filter").shape() == Shape{2, 9});
  CHECK(f->named_parameters().size() == 3);  // qkv weight and bias, the filter: no shift
  CHECK(m->type_name().find("ssm 64") != std::string::npos);
  CHECK(nn::mechanism_spec("h3").caps.linear_time);  // auto: chunks for long sequences
  CHECK_FALSE(modal_uses_chunks(1024, 32, 32, 32));
  CHECK(modal_uses_chunks(8192, 32, 32, 32));
  CHECK(modal_uses_chunks(256, 2, 32, 32));
  CHECK_THROWS_WITH_AS(nn::make_attention(h3_opts({{"ssm_state", 5}}), g), doctest::Contains("ssm_state must be even (ssm_state/2 complex modes, each with its conjugate); got 5"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(nn::make_attention(h3_opts({{"long_filter", 1}, {"conv", 3}}), g),
                       doctest::Contains("conv chunked needs long_filter ssm"), std::invalid_argument);
  // long sequences are fine in f32 (the chunked path): finite output
  Generator gx(3);
  const Tensor x = randn({1, 700, 6}, gx);
  const Tensor y = m->forward_block(x, Tensor());
  CHECK(std::isfinite(sum(y).item()));
  CHECK_THROWS_WITH_AS(m->forward_block(randn({1, 5, 7}, gx), Tensor()), doctest::Contains("H3"), ShapeError);
}
