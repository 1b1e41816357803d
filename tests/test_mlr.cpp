// MLR attention (ops/mlr_attention.h, nn/attention_mlr.cpp): the dense reference against the
// element-by-element definition; the fused kernel against the reference (values and q, k, v
// gradients, f64 to 1e-10) at tile-boundary sizes, causal and not, with left, right and inner
// padding, several rank splits and spans; one level is plain softmax; causality; what padding
// means (the blocks' N); determinism; gradient checks of the op and the mechanism; errors.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include <lotgrad/nn/attention.h>
#include <lotgrad/ops/attention.h>
#include <lotgrad/ops/mlr_attention.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;
using Ranks = std::vector<int64_t>;

namespace {

Tensor rnd(const Shape& s, uint64_t seed, DType dt = kFloat64) {
  Generator g(seed);
  return randn(s, g, dt);
}

template <class F>
Tensor make_mask(int64_t B, int64_t n, F padded) {
  std::vector<bool> v((size_t)(B * n));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) v[(size_t)(b * n + j)] = padded(b, j);
  return Tensor::from_vector(v, {B, n});
}

// The element-by-element definition (f64, no graph), written from the paper's formula and the
// block rule of mlr_attention.h, independently of the implementation:
//   p(i) = valid tokens before i (trailing pads: the last valid one's); N = span, or (causal) n, or the valid length;
//   blk_l(p) = floor(p · 2^l / N); S_ij = Σ_l [blk_l(p_i) = blk_l(p_j)] c_l Σ_{f in level l} q_if k_jf;
//   out_i = Σ_j softmax_j(S_ij over unpadded j, j <= i when causal) v_j (zeros if no such j).
std::vector<double> definition(const Tensor& q, const Tensor& k, const Tensor& v, const Ranks& ranks, const Tensor& mask,
                               bool causal, std::vector<double> scales, int64_t span) {
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), d = q.size(3), e = v.size(3), L = (int64_t)ranks.size();
  const std::vector<double> Q = q.to_vector(), K = k.to_vector(), Vv = v.to_vector();
  const std::vector<double> M = mask.defined() ? mask.to_vector() : std::vector<double>((size_t)(B * n), 0.0);
  if (scales.empty())
    for (int64_t r : ranks) scales.push_back(1.0 / (double)r);
  std::vector<double> out((size_t)(B * H * n * e), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> pos((size_t)n);
    double valid = 0;
    for (int64_t i = 0; i < n; ++i) {
      pos[(size_t)i] = valid;
      valid += M[(size_t)(b * n + i)] == 0.0 ? 1 : 0;
    }
    for (int64_t i = n - 1; i >= 0 && pos[(size_t)i] == valid; --i) pos[(size_t)i] = std::max(valid - 1, 0.0);
    const double N = span > 0 ? (double)span : causal ? (double)n : std::max(valid, 1.0);
    auto blk = [&](int64_t i, int64_t l) { return std::floor(pos[(size_t)i] * std::pow(2.0, (double)l) / N); };
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> s((size_t)n, -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
          if (M[(size_t)(b * n + j)] != 0.0 || (causal && j > i)) continue;
          double sij = 0;
          int64_t f0 = 0;
          for (int64_t l = 0; l < L; ++l) {
            double dot = 0;
            for (int64_t f = f0; f < f0 + ranks[(size_t)l]; ++f)
              dot += Q[(size_t)(((b * H + h) * n + i) * d + f)] * K[(size_t)(((b * H + h) * n + j) * d + f)];
            if (blk(i, l) == blk(j, l)) sij += scales[(size_t)l] * dot;
            f0 += ranks[(size_t)l];
          }
          s[(size_t)j] = sij;
          mx = std::max(mx, sij);
        }
        if (mx == -INFINITY) continue;
        double z = 0;
        for (int64_t j = 0; j < n; ++j) z += std::exp(s[(size_t)j] - mx);
        for (int64_t j = 0; j < n; ++j) {
          const double w = std::exp(s[(size_t)j] - mx) / z;
          for (int64_t c = 0; c < e; ++c)
            out[(size_t)(((b * H + h) * n + i) * e + c)] += w * Vv[(size_t)(((b * H + h) * n + j) * e + c)];
        }
      }
  }
  return out;
}

struct Result {
  Tensor out, dq, dk, dv;
};

struct Setting {
  Ranks ranks;
  Tensor mask;
  bool causal = false;
  std::vector<double> scales;
  int64_t span = 0;
};

// Output and q/k/v gradients for a seeded random upstream gradient.
Result run(const Tensor& q0, const Tensor& k0, const Tensor& v0, const Setting& s, bool fused) {
  Tensor q = q0.detach(), k = k0.detach(), v = v0.detach();
  q.requires_grad_();
  k.requires_grad_();
  v.requires_grad_();
  Tensor out = mlr_attention(q, k, v, s.ranks, s.mask, s.causal, s.scales, s.span, fused);
  Generator g(99);
  out.backward(randn(out.shape(), g, out.dtype()));
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

// Largest |a - b|, +inf when an entry is not finite (a NaN must not pass as small).
double max_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  const std::vector<double> x = a.to_vector(), y = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i)
    m = std::isfinite(x[i]) && std::isfinite(y[i]) ? std::max(m, std::abs(x[i] - y[i])) : INFINITY;
  return m;
}

void check_fused_vs_reference(const Tensor& q, const Tensor& k, const Tensor& v, const Setting& s, double tol = 1e-10) {
  std::string r;
  for (int64_t x : s.ranks) r += std::to_string(x) + " ";
  INFO("n " << q.size(2) << " ranks " << r << (s.causal ? "causal" : "full") << " span " << s.span
            << (s.mask.defined() ? " masked" : ""));
  const Result f = run(q, k, v, s, true), ref = run(q, k, v, s, false);
  CHECK(max_diff(f.out, ref.out) < tol);
  CHECK(max_diff(f.dq, ref.dq) < tol);
  CHECK(max_diff(f.dk, ref.dk) < tol);
  CHECK(max_diff(f.dv, ref.dv) < tol);
  CHECK(max_abs(ref.out) > 1e-3);  // not a vacuous comparison
}

// Batch row 0 and 1 padded in the given style: none, right (a tail), left (a head), inner
// (row 0 scattered pads, row 1 a run in the middle).
Tensor pads(const std::string& style, int64_t B, int64_t n) {
  if (style == "none") return Tensor();
  Generator g(7 + n);
  const std::vector<double> u = rand({B * n}, g, kFloat64).to_vector();
  return make_mask(B, n, [&](int64_t b, int64_t j) {
    if (style == "right") return b == 1 && j >= n - n / 3;
    if (style == "left") return b == 1 && j < n / 3;
    return b == 0 ? u[(size_t)(b * n + j)] < 0.3 && j != 0 : j >= n / 3 && j < n / 3 + n / 4;
  });
}

// The valid tokens of batch row b, compacted: (1, H, N_valid, w).
Tensor compact(const Tensor& x, const Tensor& mask, int64_t b) {
  const std::vector<double> m = mask.to_vector();
  const int64_t n = x.size(2);
  std::vector<Tensor> rows;
  for (int64_t i = 0; i < n; ++i)
    if (m[(size_t)(b * n + i)] == 0.0) rows.push_back(x.narrow(0, b, 1).narrow(2, i, 1));
  return cat(rows, 2);
}

}  // namespace

TEST_CASE("mlr reference equals the element-by-element definition") {
  const int64_t B = 2, H = 2, n = 11;
  Tensor q = rnd({B, H, n, 5}, 1), k = rnd({B, H, n, 5}, 2), v = rnd({B, H, n, 3}, 3);
  const Tensor inner = make_mask(B, n, [](int64_t b, int64_t j) { return b == 1 && (j == 0 || j == 4 || j == 5 || j == 10); });
  for (const Ranks& ranks : {Ranks{5}, Ranks{2, 2, 1}, Ranks{1, 1, 1, 1, 1}})
    for (bool causal : {false, true})
      for (const Tensor& mask : {Tensor(), inner})
        for (int64_t span : {0, 8}) {
          if ((1 << (ranks.size() - 1)) > (span > 0 ? span : n)) continue;
          INFO("levels " << ranks.size() << " causal " << causal << " span " << span << " masked " << mask.defined());
          const std::vector<double> want = definition(q, k, v, ranks, mask, causal, {}, span);
          const Tensor got = mlr_attention(q, k, v, ranks, mask, causal, {}, span, /*fused=*/false);
          CHECK(max_diff(got, Tensor::from_vector(want, {B, H, n, 3})) < 1e-12);
          // the weights are what the output applies
          CHECK(max_diff(matmul(mlr_attention_weights(q, k, ranks, mask, causal, {}, span), v), got) < 1e-12);
        }
  // explicit scales
  const std::vector<double> c{0.7, -0.2, 1.5};
  CHECK(max_diff(mlr_attention(q, k, v, {2, 2, 1}, inner, false, c, 0, false),
                 Tensor::from_vector(definition(q, k, v, {2, 2, 1}, inner, false, c, 0), {B, H, n, 3})) < 1e-12);
  // the levels matter: another split of the same dims gives another output
  CHECK(max_diff(mlr_attention(q, k, v, {2, 2, 1}, Tensor(), false, {1, 1, 1}, 0, false),
                 mlr_attention(q, k, v, {5}, Tensor(), false, {1}, 0, false)) > 1e-3);
}

TEST_CASE("mlr fused equals the reference at tile-boundary sizes, causal and not, every padding, several splits") {
  const int64_t B = 2, H = 1, e = 5;  // several heads: the other cases
  // d 8 (whole f64 vectors at AVX-512), d 11 (a partial vector in dQ and dK)
  const std::vector<Ranks> splits{{8}, {4, 2, 1, 1}, {3, 3, 2}, {1, 1, 1, 1, 1, 1, 1, 1}, {5, 3, 2, 1}};
  for (int64_t n : {1, 5, 63, 64, 65, 100, 130})
    for (const Ranks& ranks : splits) {
      if ((int64_t(1) << (ranks.size() - 1)) > n) continue;
      int64_t d = 0;
      for (int64_t r : ranks) d += r;
      const Tensor q = rnd({B, H, n, d}, 10 + n), k = rnd({B, H, n, d}, 20 + n), v = rnd({B, H, n, e}, 30 + n);
      const bool all = n == 65 || n == 130;  // left and right padding at two sizes; inner everywhere
      for (bool causal : {false, true})
        for (const char* style : {"none", "inner", "right", "left"})
          if (all || style[0] == 'n' || style[0] == 'i') check_fused_vs_reference(q, k, v, {ranks, pads(style, B, n), causal});
    }
  // fixed spans: pairs in different level-0 blocks score 0, and blocks cross tiles anywhere
  const Tensor q = rnd({B, H, 150, 8}, 41), k = rnd({B, H, 150, 8}, 42), v = rnd({B, H, 150, e}, 43);
  for (int64_t span : {8, 40, 100, 300})
    for (bool causal : {false, true}) {
      check_fused_vs_reference(q, k, v, {{4, 2, 1, 1}, Tensor(), causal, {}, span});
      check_fused_vs_reference(q, k, v, {{3, 3, 2}, pads("inner", B, 150), causal, {}, span});
    }
  // scales of either sign, large scores (the online max moves), strided inputs (a transposed view)
  const Tensor qt = rnd({B, 100, H, 8}, 44).transpose(1, 2), kt = rnd({B, 100, H, 8}, 45).transpose(1, 2);
  check_fused_vs_reference(qt, kt, rnd({B, H, 100, e}, 46), {{4, 2, 1, 1}, pads("inner", B, 100), false, {3.0, -2.0, 5.0, 4.0}});
  // f32: the kernel's other vector width (16 lanes: every level a partial vector)
  const Tensor qf = rnd({B, H, 130, 12}, 47, kFloat32), kf = rnd({B, H, 130, 12}, 48, kFloat32), vf = rnd({B, H, 130, e}, 49, kFloat32);
  for (bool causal : {false, true}) check_fused_vs_reference(qf, kf, vf, {{6, 3, 2, 1}, pads("inner", B, 130), causal}, 2e-5);
}

TEST_CASE("mlr with one level is softmax attention") {
  const int64_t n = 100, d = 8;
  const Tensor q = rnd({2, 2, n, d}, 51), k = rnd({2, 2, n, d}, 52), v = rnd({2, 2, n, 6}, 53);
  const Tensor mask = pads("inner", 2, n);
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    // scale 1/sqrt(d): scaled_dot_product_attention's default; 1/d: MLR's default 1/r_0
    const Setting sq{{d}, mask, causal, {1 / std::sqrt((double)d)}};
    Result m = run(q, k, v, sq, true);
    Tensor q2 = q.detach(), k2 = k.detach(), v2 = v.detach();
    for (Tensor* t : {&q2, &k2, &v2}) t->requires_grad_();
    Tensor o = scaled_dot_product_attention(q2, k2, v2, mask, causal);
    Generator g(99);
    o.backward(randn(o.shape(), g, o.dtype()));
    CHECK(max_diff(m.out, o) < 1e-12);
    CHECK(max_diff(m.dq, q2.grad()) < 1e-12);
    CHECK(max_diff(m.dk, k2.grad()) < 1e-12);
    CHECK(max_diff(m.dv, v2.grad()) < 1e-12);
    CHECK(max_diff(mlr_attention(q, k, v, {d}, mask, causal), scaled_dot_product_attention(q, k, v, mask, causal, 1.0 / d)) < 1e-12);
  }
}

TEST_CASE("mlr causal: later keys and values change nothing, and get no gradient from earlier outputs") {
  const int64_t B = 2, H = 2, n = 150, d = 8, t = 70;
  const Tensor q = rnd({B, H, n, d}, 61), k = rnd({B, H, n, d}, 62), v = rnd({B, H, n, d}, 63);
  Tensor k2 = k.clone(), v2 = v.clone();
  k2.narrow(2, t + 1, n - t - 1).copy_(rnd({B, H, n - t - 1, d}, 64));
  v2.narrow(2, t + 1, n - t - 1).copy_(rnd({B, H, n - t - 1, d}, 65));
  for (bool fused : {true, false}) {
    INFO("fused " << fused);
    const Tensor a = mlr_attention(q, k, v, {4, 2, 1, 1}, Tensor(), true, {}, 0, fused);
    const Tensor b = mlr_attention(q, k2, v2, {4, 2, 1, 1}, Tensor(), true, {}, 0, fused);
    CHECK(max_diff(a.narrow(2, 0, t + 1), b.narrow(2, 0, t + 1)) == 0.0);
    CHECK(max_diff(a.narrow(2, t + 1, n - t - 1), b.narrow(2, t + 1, n - t - 1)) > 1e-3);
    Tensor qq = q.detach(), kk = k.detach(), vv = v.detach();
    for (Tensor* x : {&qq, &kk, &vv}) x->requires_grad_();
    const V g = input_grads(sum(mlr_attention(qq, kk, vv, {4, 2, 1, 1}, Tensor(), true, {}, 0, fused).narrow(2, 0, t + 1)),
                            {qq, kk, vv});
    for (const Tensor& gi : g) {
      CHECK(max_abs(gi.narrow(2, t + 1, n - t - 1)) == 0.0);
      CHECK(max_abs(gi.narrow(2, 0, t + 1)) > 1e-6);
    }
  }
}

TEST_CASE("mlr padding: pads change nothing, and not causal an example's output is its own (blocks cut its valid length)") {
  const int64_t B = 2, H = 2, n = 130, d = 8, e = 4;
  const Ranks ranks{4, 2, 1, 1};
  const Tensor q = rnd({B, H, n, d}, 71), k = rnd({B, H, n, d}, 72), v = rnd({B, H, n, e}, 73);
  for (const char* style : {"right", "left", "inner"}) {
    INFO(style);
    const Tensor mask = pads(style, B, n);
    const Tensor keep = logical_not(mask).to(kFloat64).unsqueeze(1).unsqueeze(-1);  // (B, 1, n, 1)
    for (bool fused : {true, false}) {
      INFO("fused " << fused);
      // what pads hold changes no valid output
      const Tensor noise = mul(rnd({B, H, n, d}, 74), rsub(keep, 1.0));
      const Tensor y = mlr_attention(q, k, v, ranks, mask, false, {}, 0, fused);
      const Tensor y2 = mlr_attention(add(q, noise), add(k, mul(noise, 100.0)), add(v, mul(noise.narrow(-1, 0, e), 9.0)), ranks,
                                      mask, false, {}, 0, fused);
      CHECK(max_diff(mul(y, keep), mul(y2, keep)) < 1e-12);
      // each example equals itself alone, unpadded: N is the valid length, wherever the pads are
      for (int64_t b = 0; b < B; ++b) {
        const Tensor alone = mlr_attention(compact(q, mask, b), compact(k, mask, b), compact(v, mask, b), ranks, Tensor(), false,
                                           {}, 0, fused);
        CHECK(max_diff(compact(y, mask, b), alone) < 1e-12);
      }
    }
  }
  // the same example padded to a longer batch: the same output
  const Tensor mask = pads("right", B, n);
  const Tensor y = mlr_attention(q, k, v, ranks, mask);
  const Tensor more = make_mask(B, n + 70, [&](int64_t b, int64_t j) { return j >= n || (b == 1 && j >= n - n / 3); });
  auto longer = [&](const Tensor& x) { return cat({x, rnd({B, H, 70, x.size(3)}, 75)}, 2); };
  CHECK(max_diff(mlr_attention(longer(q), longer(k), longer(v), ranks, more).narrow(2, 0, n), y) < 1e-12);
}

TEST_CASE("mlr padding, causal: N is n (end padding changes nothing), or a fixed span (the length changes nothing)") {
  const int64_t B = 2, H = 2, n = 9, d = 4, pad = 3;
  const Ranks ranks{2, 1, 1};
  const Tensor q = rnd({B, H, n, d}, 81), k = rnd({B, H, n, d}, 82), v = rnd({B, H, n, d}, 83);
  const Tensor mask = make_mask(B, n, [&](int64_t b, int64_t j) { return b == 1 && j >= n - pad; });
  for (bool fused : {true, false}) {
    INFO("fused " << fused);
    // span 0: blocks cut n, so a right-padded example reads as the unpadded one at its valid positions
    const Tensor y = mlr_attention(q, k, v, ranks, Tensor(), true, {}, 0, fused);
    const Tensor ym = mlr_attention(q, k, v, ranks, mask, true, {}, 0, fused);
    CHECK(max_diff(ym.narrow(2, 0, n - pad), y.narrow(2, 0, n - pad)) < 1e-12);
    CHECK(max_diff(ym.select(0, 0), y.select(0, 0)) < 1e-12);
    // ... which is not the valid length: cut at n - pad, the blocks move
    const Tensor cut = mlr_attention(q.narrow(2, 0, n - pad), k.narrow(2, 0, n - pad), v.narrow(2, 0, n - pad), ranks, Tensor(),
                                     true, {}, 0, fused);
    CHECK(max_diff(cut, y.narrow(2, 0, n - pad)) > 1e-6);
    // a fixed span: the first t positions of any length are the same
    for (int64_t t : {1, 4, 6}) {
      const Tensor a = mlr_attention(q.narrow(2, 0, t), k.narrow(2, 0, t), v.narrow(2, 0, t), ranks, Tensor(), true, {}, 4, fused);
      CHECK(max_diff(a, mlr_attention(q, k, v, ranks, Tensor(), true, {}, 4, fused).narrow(2, 0, t)) < 1e-12);
    }
  }
  // A query that sees only pads (causal, a padded head) outputs zeros and passes zero gradient.
  Tensor qq = rnd({1, 1, 100, 8}, 84), kk = rnd({1, 1, 100, 8}, 85), vv = rnd({1, 1, 100, 8}, 86);
  for (Tensor* x : {&qq, &kk, &vv}) x->requires_grad_();
  const Tensor head = make_mask(1, 100, [](int64_t, int64_t j) { return j < 10; });
  const Tensor o = mlr_attention(qq, kk, vv, {4, 2, 1, 1}, head, true);
  CHECK(max_abs(o.narrow(2, 0, 10)) == 0.0);
  CHECK(max_abs(o.narrow(2, 10, 90)) > 1e-3);
  const V g = input_grads(sum(mul(o, rnd({1, 1, 100, 8}, 87))), {qq});
  CHECK(max_abs(g[0].narrow(2, 0, 10)) == 0.0);
}

TEST_CASE("mlr fused is deterministic for a fixed thread count") {
  const int saved = get_num_threads();
  const Tensor q = rnd({1, 3, 300, 16}, 91, kFloat32), k = rnd({1, 3, 300, 16}, 92, kFloat32), v = rnd({1, 3, 300, 16}, 93, kFloat32);
  const Setting s{{8, 4, 2, 2}, make_mask(1, 300, [](int64_t, int64_t j) { return j % 9 == 0; }), true};
  set_num_threads(2);
  const Result a = run(q, k, v, s, true), b = run(q, k, v, s, true);
  set_num_threads(saved);
  CHECK(max_diff(a.out, b.out) == 0.0);
  CHECK(max_diff(a.dq, b.dq) == 0.0);
  CHECK(max_diff(a.dk, b.dk) == 0.0);
  CHECK(max_diff(a.dv, b.dv) == 0.0);
}

TEST_CASE("mlr gradient checks: the op (fused and reference) and the mechanism") {
  GradcheckOptions go;
  go.max_checks_per_input = 16;
  const int64_t n = 70;  // two tiles; level blocks cross the tile boundary
  Tensor q = leaf({2, 1, n, 6}, 101, 0.7), k = leaf({2, 1, n, 6}, 102, 0.7), v = leaf({2, 1, n, 3}, 103);
  const Tensor mask = pads("inner", 2, n);
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    CHECK_GRAD([&](const V& x) { return mlr_attention(x[0], x[1], x[2], {3, 2, 1}, mask, causal); }, {q, k, v}, go);
  }
  CHECK_GRAD([&](const V& x) { return mlr_attention(x[0], x[1], x[2], {3, 2, 1}, mask, false, {}, 0, false); }, {q, k, v}, go);
  CHECK_GRAD([&](const V& x) { return mlr_attention(x[0], x[1], x[2], {3, 2, 1}, Tensor(), true, {}, 24); }, {q, k, v}, go);
  // one tensor as q and k
  CHECK_GRAD([&](const V& x) { return mlr_attention(x[0], x[0], x[1], {3, 2, 1}, mask); }, {q, v}, go);
  // the mechanism through multi-head attention, causal and not
  for (bool causal : {false, true}) {
    nn::AttentionOptions o;
    o.name = "mlr";
    o.n_heads = 2;
    o.d_head = 8;
    o.knobs = {{"mlr_levels", 3}};
    o.causal = causal;
    Generator g(5);
    nn::MultiHeadAttention mha(16, o, g);
    mha.to_(kFloat64);
    Tensor x = leaf({2, 20, 16}, 104, 0.5);
    const Tensor m = pads("left", 2, 20);
    CHECK_GRAD([&](const V& in) { return mha.forward(in[0], m); }, {x, mha.qkv->weight, mha.out_proj->weight}, go);
  }
}

TEST_CASE("mlr mechanism: knobs, ranks, the map it applies") {
  CHECK(mlr_ranks(64, 4, MlrSplit::halving) == Ranks{32, 16, 8, 8});
  CHECK(mlr_ranks(4, 3, MlrSplit::halving) == Ranks{2, 1, 1});
  CHECK(mlr_ranks(64, 3, MlrSplit::equal) == Ranks{22, 21, 21});
  CHECK(mlr_ranks(8, 1, MlrSplit::halving) == Ranks{8});
  CHECK_THROWS_WITH_AS(mlr_ranks(4, 4, MlrSplit::halving), doctest::Contains("2|1|0|1"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(mlr_ranks(4, 5, MlrSplit::equal), doctest::Contains("5 levels for head dim d = 4"), std::invalid_argument);
  Generator g(3);
  nn::AttentionOptions o;
  o.name = "mlr";
  o.n_heads = 2;
  o.d_head = 16;
  o.knobs = {{"mlr_split", 1}, {"mlr_levels", 3}, {"mlr_scale", 1}};
  auto m = nn::make_attention(o, g);
  CHECK(m->type_name() == "MlrAttention(ranks 6|5|5, score cost 0.609)");  // (6 + 5/2 + 5/4)/16
  const Tensor q = rnd({2, 2, 40, 16}, 111), k = rnd({2, 2, 40, 16}, 112), v = rnd({2, 2, 40, 16}, 113);
  const Tensor mask = pads("inner", 2, 40);
  const std::vector<double> c{1 / std::sqrt(6.0), 1 / std::sqrt(5.0), 1 / std::sqrt(5.0)};
  const Tensor y = m->forward(q, k, v, mask);
  CHECK(max_diff(y, mlr_attention(q, k, v, {6, 5, 5}, mask, false, c)) < 1e-12);
  CHECK(max_diff(y, matmul(m->attention_matrix(q, k, mask), v)) < 1e-12);
  o.knobs["fused"] = 0;
  CHECK(max_diff(nn::make_attention(o, g)->forward(q, k, v, mask), y) < 1e-12);
  o.knobs = {{"mlr_levels", 5}};  // d 16 halving: 8|4|2|1|1
  CHECK(nn::make_attention(o, g)->type_name() == "MlrAttention(ranks 8|4|2|1|1, score cost 0.668)");  // 10.6875/16
  o.knobs = {{"mlr_levels", 6}};  // 8|4|2|1|0|1
  CHECK_THROWS_WITH_AS(nn::make_attention(o, g), doctest::Contains("leaves a level without dims"), std::invalid_argument);
}

TEST_CASE("mlr errors name the op and the values") {
  const Tensor q = rnd({1, 2, 9, 8}, 121), k = rnd({1, 2, 9, 8}, 122), v = rnd({1, 2, 9, 8}, 123);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k, v, {4, 2, 1}), doctest::Contains("mlr_attention: ranks 4|2|1 for head dim d = 8: they sum to 7, not 8"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k, v, {4, 4, 0}), doctest::Contains("every rank must be >= 1, got ranks 4|4|0"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k, v, {}), doctest::Contains("at least one level"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k, v, {2, 2, 1, 1, 1, 1}),
                       doctest::Contains("6 levels (ranks 2|2|1|1|1|1 for head dim d = 8) cut the sequence into 2^5 blocks at the deepest level, more than n = 9"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k, v, {4, 2, 1, 1}, Tensor(), false, {}, 7), doctest::Contains("more than span = 7"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k, v, {4, 4}, Tensor(), false, {}, -1), doctest::Contains("span must be >= 0, got -1"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k, v, {4, 4}, Tensor(), false, {1.0}), doctest::Contains("1 scales for 2 levels"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k, v, {4, 4}, Tensor(), false, {1.0, NAN}), doctest::Contains("scale of level 1"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k.narrow(2, 0, 5), v.narrow(2, 0, 5), {4, 4}), doctest::Contains("the same length"), ShapeError);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k, v.narrow(2, 0, 5), {4, 4}), doctest::Contains("mlr_attention"), ShapeError);
  CHECK_THROWS_WITH_AS(mlr_attention(q, k, v, {4, 4}, Tensor::zeros({1, 9})), doctest::Contains("key_padding_mask must be bool"),
                       ShapeError);
  CHECK_THROWS_WITH_AS(mlr_attention_weights(q, k, {4, 2, 1}), doctest::Contains("mlr_attention_weights: ranks 4|2|1"),
                       std::invalid_argument);
  // an empty sequence has nothing to cut: any number of levels, an empty output
  const Tensor q0 = Tensor::zeros({2, 2, 0, 8}, kFloat64), v0 = Tensor::zeros({2, 2, 0, 3}, kFloat64);
  for (bool fused : {true, false}) CHECK(mlr_attention(q0, q0, v0, {4, 2, 1, 1}, Tensor(), false, {}, 0, fused).shape() == Shape{2, 2, 0, 3});
}
