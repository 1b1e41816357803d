// causal_conv1d against the composite (pad, shift, multiply, add) in values and gradients,
// f64 gradient checks with a view and a tensor used twice, thread-count independence, refusals;
// run_directions (nn/recurrent.h): a causal core sees valid tokens only, in order or reversed,
// whatever the padding pattern, and its map moves back with the outputs.
#include <doctest/doctest.h>

#include <cmath>

#include <lotgrad/lotgrad.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {
// y[:, t] = bias + Σ_m w[:, m] x[:, t − m], from pad and narrow.
Tensor conv_reference(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t n = x.size(1), K = w.size(1);
  const Tensor xp = pad(x, {0, 0, K - 1, 0});  // K − 1 zeros before t = 0
  Tensor y = bias.defined() ? add(mul(x, 0.0), bias) : mul(x, 0.0);
  for (int64_t m = 0; m < K; ++m) y = add(y, mul(xp.narrow(1, K - 1 - m, n), w.select(1, m)));
  return y;
}
}  // namespace

TEST_CASE("causal_conv1d equals the composite in values and gradients, any kernel length") {
  for (auto [n, K] : std::vector<std::pair<int64_t, int64_t>>{{7, 1}, {7, 4}, {7, 7}, {5, 9}, {33, 4}}) {
    INFO("n " << n << " K " << K);
    Tensor x = leaf({2, n, 3}, 1), w = leaf({3, K}, 2), b = leaf({3}, 3);
    CHECK(max_abs_diff(causal_conv1d(x, w, b), conv_reference(x, w, b)) < 1e-12);
    CHECK(max_abs_diff(causal_conv1d(x, w), conv_reference(x, w, Tensor())) < 1e-12);
    Generator gr(4);
    const Tensor R = randn({2, n, 3}, gr, kFloat64);
    const V g = input_grads(sum(mul(causal_conv1d(x, w, b), R)), {x, w, b});
    const V gref = input_grads(sum(mul(conv_reference(x, w, b), R)), {x, w, b});
    for (size_t i = 0; i < 3; ++i) CHECK(max_abs_diff(g[i], gref[i]) < 1e-12);
    GradcheckOptions o;
    o.max_checks_per_input = 30;
    CHECK_GRAD([&](const V& v) { return causal_conv1d(v[0], v[1], v[2]); }, {x, w, b}, o);
  }
}

TEST_CASE("causal_conv1d: a view as input, a tensor used twice, causality, thread counts, refusals") {
  Tensor base = leaf({2, 3, 6}, 5), w = leaf({3, 3}, 6);
  // x a transposed view (B, n, C) = (2, 6, 3), used twice: conv(x) * x
  CHECK_GRAD([&](const V& v) {
    const Tensor x = v[0].transpose(1, 2);
    return mul(causal_conv1d(x, v[1]), x);
  }, {base, w});
  // causality: changing x after t changes nothing at or before t
  Tensor x = base.detach().transpose(1, 2).contiguous();
  Tensor x2 = x.clone();
  x2.narrow(1, 4, 2).copy_(Tensor::ones({2, 2, 3}, kFloat64));
  CHECK(max_abs_diff(causal_conv1d(x, w.detach()).narrow(1, 0, 4), causal_conv1d(x2, w.detach()).narrow(1, 0, 4)) == 0.0);
  // the same bits on 1 and 2 threads, weight gradient included
  const int nt = get_num_threads();
  Tensor big = leaf({2, 300, 64}, 7), wb = leaf({64, 4}, 8);
  auto run = [&](int t) {
    set_num_threads(t);
    const V g = input_grads(sum(mul(causal_conv1d(big, wb), big)), {big, wb});
    return std::make_pair(g[0].to_vector(), g[1].to_vector());
  };
  CHECK(run(1) == run(2));
  set_num_threads(nt);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, Tensor::zeros({4, 3}, kFloat64)), doctest::Contains("causal_conv1d"), ShapeError);
  CHECK_THROWS_WITH_AS(causal_conv1d(x, Tensor::zeros({3, 0}, kFloat64)), doctest::Contains("K >= 1"), ShapeError);
  CHECK_THROWS_AS(causal_conv1d(x, w.detach(), Tensor::zeros({2}, kFloat64)), ShapeError);
  CHECK_THROWS_AS(causal_conv1d(x, w.detach().to(kFloat32)), ShapeError);
}

namespace {
// A causal core: the running sum over time, (B, n, D) -> (B, 1, n, D), and its map.
Tensor running_sum(const Tensor& x) {
  return causal_conv1d(x, Tensor::ones({x.size(2), x.size(1)}, x.dtype())).unsqueeze(1);
}
Tensor running_sum_map(const Tensor& x) {
  const int64_t B = x.size(0), n = x.size(1);
  return add(mul(sum(x, {2}).unsqueeze(1).unsqueeze(-1), 0.0), causal_mask(n, x.dtype())).expand({B, 1, n, n}).contiguous();
}
Tensor mask_of(const std::vector<bool>& m, int64_t B, int64_t n) { return Tensor::from_vector(m, {B, n}); }
}  // namespace

TEST_CASE("run_directions: valid tokens only, in order and reversed, any padding pattern, and the map moves with them") {
  const int64_t B = 2, n = 6;
  Tensor x = leaf({B, n, 2}, 9);
  // row 0: left padding (pads at 0, 1); row 1: scattered (pads at 1, 4)
  const Tensor mask = mask_of({1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0}, B, n);
  const auto valid = nn::valid_positions(mask, B, n);
  const Tensor yc = nn::run_directions(x, mask, true, running_sum);
  const Tensor yb = nn::run_directions(x, mask, false, running_sum);
  const Tensor X = x.detach();
  for (int64_t b = 0; b < B; ++b) {
    Tensor total = Tensor::zeros({2}, kFloat64), prefix = Tensor::zeros({2}, kFloat64);
    for (int64_t p : valid[(size_t)b]) total = add(total, X.select(0, b).select(0, p));
    for (int64_t p : valid[(size_t)b]) {
      INFO("row " << b << " position " << p);
      prefix = add(prefix, X.select(0, b).select(0, p));
      CHECK(max_abs_diff(yc.select(0, b).select(0, 0).select(0, p), prefix) < 1e-12);  // Σ valid <= p
      // forward Σ_{<= p} plus reversed Σ_{>= p}: the total plus x_p
      CHECK(max_abs_diff(yb.select(0, b).select(0, 0).select(0, p), add(total, X.select(0, b).select(0, p))) < 1e-12);
    }
  }
  // pads change no valid output, in either form
  Tensor x2 = X.clone();
  x2.select(0, 1).select(0, 4).copy_(Tensor::full({2}, 100.0, kFloat64));
  x2.select(0, 0).select(0, 0).copy_(Tensor::full({2}, -50.0, kFloat64));
  for (bool causal : {true, false}) {
    const Tensor a = nn::run_directions(X, mask, causal, running_sum), c = nn::run_directions(x2, mask, causal, running_sum);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t p : valid[(size_t)b]) CHECK(max_abs_diff(a.select(0, b).select(1, p), c.select(0, b).select(1, p)) == 0.0);
  }
  // the map: valid rows weigh valid columns only; two-sided = 1 everywhere valid, 2 on the diagonal
  const Tensor A = nn::run_directions_matrix(X, mask, false, running_sum_map);
  const Tensor Ac = nn::run_directions_matrix(X, mask, true, running_sum_map);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i : valid[(size_t)b])
      for (int64_t j = 0; j < n; ++j) {
        const bool vj = std::count(valid[(size_t)b].begin(), valid[(size_t)b].end(), j) > 0;
        CHECK(A.at({b, 0, i, j}) == (vj ? (i == j ? 2.0 : 1.0) : 0.0));
        CHECK(Ac.at({b, 0, i, j}) == (vj && j <= i ? 1.0 : 0.0));
      }
  // no mask: the plain causal core, and gradients through both directions
  CHECK(max_abs_diff(nn::run_directions(X, Tensor(), true, running_sum), running_sum(X)) == 0.0);
  CHECK(max_abs_diff(nn::run_directions(X, mask_of(std::vector<bool>(12, false), B, n), false, running_sum),
                 nn::run_directions(X, Tensor(), false, running_sum)) == 0.0);
  CHECK_GRAD([&](const V& v) { return nn::run_directions(v[0], mask, false, running_sum); }, {x});
}
