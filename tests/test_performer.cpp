// Performer (FAVOR+) attention: normalisation at every scale of q and k, padding, the fully
// padded batch row, and gradients through its detached stabilisers.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/nn/attention.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::nn;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {
std::shared_ptr<AttentionMechanism> performer(int64_t d_head, int64_t features, uint64_t seed = 3, int64_t heads = 2) {
  AttentionOptions o;
  o.name = "performer";
  o.n_heads = heads;
  o.d_head = d_head;
  o.knobs = {{"features", (double)features}, {"feature_seed", (double)seed}};
  Generator g(seed);
  return make_attention(o, g);
}
// (B, n) mask: the last `pad` positions of batch row 1 padded (all of them when pad == n).
Tensor tail_mask(int64_t B, int64_t n, int64_t pad) {
  std::vector<bool> m((size_t)(B * n), false);
  for (int64_t j = n - pad; j < n; ++j) m[(size_t)(1 * n + j)] = true;
  return Tensor::from_vector(m, {B, n});
}
bool is_pad(const Tensor& mask, int64_t b, int64_t j) { return mask.defined() && mask.at({b, j}) != 0.0; }

// Largest |x - 1| over the rows of valid queries of a (B, H, n, c) tensor, every entry.
double worst_off_one(const Tensor& y, const Tensor& mask) {
  double w = 0;
  for (int64_t b = 0; b < y.size(0); ++b)
    for (int64_t h = 0; h < y.size(1); ++h)
      for (int64_t i = 0; i < y.size(2); ++i) {
        if (is_pad(mask, b, i)) continue;
        for (int64_t c = 0; c < y.size(3); ++c) {
          const double x = y.at({b, h, i, c});
          w = std::max(w, std::isfinite(x) ? std::abs(x - 1.0) : INFINITY);
        }
      }
  return w;
}
bool all_finite(const Tensor& t) {
  for (double x : t.to_vector())
    if (!std::isfinite(x)) return false;
  return true;
}
}  // namespace

TEST_CASE("performer: rows sum to 1 at every scale of q and k, with and without padding") {
  const int64_t B = 2, H = 2, n = 9, pad = 4;
  for (int64_t d : {16, 32})
    for (int64_t m : {64, 128})
      for (double scale : {0.1, 1.0, 3.0, 10.0})
        for (bool masked : {false, true}) {
          INFO("d_head " << d << ", features " << m << ", scale " << scale << ", masked " << masked);
          auto mech = performer(d, m, 7 + (uint64_t)d + (uint64_t)m);
          Generator g(100 + (uint64_t)d + (uint64_t)m + (uint64_t)(10 * scale));
          Tensor q = mul(randn({B, H, n, d}, g), scale), k = mul(randn({B, H, n, d}, g), scale);
          Tensor mask = masked ? tail_mask(B, n, pad) : Tensor();
          // training forward with v = ones: every output entry is a row sum of the attention
          mech->train();
          Tensor y = mech->forward(q, k, Tensor::ones({B, H, n, 5}), mask);
          double wf = worst_off_one(y, mask);
          INFO("forward: worst |row sum - 1| = " << wf);
          CHECK(wf < 1e-4);
          // attention_matrix: nonnegative, padded keys get exactly 0, valid rows sum to 1
          Tensor A = mech->attention_matrix(q, k, mask);
          REQUIRE(A.shape() == Shape{B, H, n, n});
          CHECK(all_finite(A));
          double neg = 0, padw = 0;
          for (int64_t b = 0; b < B; ++b)
            for (int64_t h = 0; h < H; ++h)
              for (int64_t i = 0; i < n; ++i)
                for (int64_t j = 0; j < n; ++j) {
                  const double a = A.at({b, h, i, j});
                  neg = std::min(neg, a);
                  if (is_pad(mask, b, j)) padw = std::max(padw, std::abs(a));
                }
          CHECK(neg >= 0.0);
          CHECK(padw == 0.0);
          double wa = worst_off_one(sum(A, {-1}, true), mask);
          INFO("attention_matrix: worst |row sum - 1| = " << wa);
          CHECK(wa < 1e-4);
        }
}

TEST_CASE("performer: a fully padded batch row gives finite outputs and leaves the other row intact") {
  const int64_t B = 2, H = 2, n = 6, d = 16;
  auto mech = performer(d, 64);
  for (double scale : {1.0, 10.0}) {
    INFO("scale " << scale);
    Generator g(21);
    Tensor q = mul(randn({B, H, n, d}, g), scale), k = mul(randn({B, H, n, d}, g), scale);
    Tensor v = randn({B, H, n, d}, g);
    Tensor full = tail_mask(B, n, n);  // batch row 1: every key padded
    Tensor y = mech->forward(q, k, v, full);
    CHECK(all_finite(y));
    Tensor A = mech->attention_matrix(q, k, full);
    CHECK(all_finite(A));
    CHECK(worst_off_one(sum(A.narrow(0, 0, 1), {-1}, true), Tensor()) < 1e-4);
    // batch row 0 (no padding) is what it is without a mask
    Tensor y0 = mech->forward(q, k, v, Tensor());
    CHECK(max_abs_diff(y.narrow(0, 0, 1), y0.narrow(0, 0, 1)) < 1e-5);
  }
}

TEST_CASE("performer: padded content, however large, changes no valid output") {
  const int64_t B = 2, H = 2, n = 7, d = 16, pad = 3;
  auto mech = performer(d, 64);
  Generator g(31);
  Tensor q = randn({B, H, n, d}, g), k = randn({B, H, n, d}, g), v = randn({B, H, n, d}, g);
  Tensor mask = tail_mask(B, n, pad);
  Tensor y = mech->forward(q, k, v, mask);
  Tensor k2 = k.clone(), v2 = v.clone();
  k2.select(0, 1).narrow(1, n - pad, pad).copy_(mul(randn({H, pad, d}, g), 100.0));
  v2.select(0, 1).narrow(1, n - pad, pad).copy_(mul(randn({H, pad, d}, g), 100.0));
  Tensor y2 = mech->forward(q, k2, v2, mask);
  CHECK(all_finite(y2));
  CHECK(max_abs_diff(y.select(0, 1).narrow(1, 0, n - pad), y2.select(0, 1).narrow(1, 0, n - pad)) < 1e-5);
  CHECK(max_abs_diff(y.select(0, 0), y2.select(0, 0)) == 0.0);
}

TEST_CASE("performer: f64 gradient check with a mask, directly and through multi-head attention") {
  // q and k at scale 1.5: the stabilisers are far from 0 and change with the inputs, so a
  // stabiliser that does not cancel exactly shows up as a wrong gradient.
  auto mech = performer(4, 8, 5);
  mech->to_(kFloat64);
  Tensor q = leaf({2, 2, 5, 4}, 51, 1.5), k = leaf({2, 2, 5, 4}, 52, 1.5), v = leaf({2, 2, 5, 4}, 53);
  Tensor mask = tail_mask(2, 5, 2);
  CHECK_GRAD([&](const V& x) { return zero_padded_rows(mech->forward(x[0], x[1], x[2], mask), mask); }, {q, k, v});
  CHECK_GRAD([&](const V& x) { return mech->attention_matrix(x[0], x[1], mask); }, {q, k});
  // a fully padded batch row: its gradients are finite (zero) and the other row's are right
  Tensor full = tail_mask(2, 5, 5);
  CHECK_GRAD([&](const V& x) { return zero_padded_rows(mech->forward(x[0], x[1], x[2], full), full); }, {q, k, v});

  AttentionOptions o;
  o.name = "performer";
  o.n_heads = 2;
  o.knobs = {{"features", 16}};
  Generator g(4);
  MultiHeadAttention mha(8, o, g);
  mha.to_(kFloat64);
  Tensor x = leaf({2, 5, 8}, 41, 1.5);
  GradcheckOptions go;
  go.max_checks_per_input = 40;
  CHECK_GRAD([&](const V& in) { return mha.forward(in[0], mask); }, {x, mha.qkv->weight, mha.out_proj->bias}, go);
}
