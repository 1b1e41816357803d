// Performer (FAVOR+) attention: normalisation at every scale of q and k, padding, the fully
// padded batch row, and gradients through its detached stabilisers; the causal form against its
// explicit Σ_{j<=i} definition, and where the non-causal (global) stabiliser would give 0/0.
// The causal checks shared by every mechanism are in test_causal.cpp.
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

// ---- the causal form

namespace {
std::shared_ptr<AttentionMechanism> causal_performer(int64_t d_head, int64_t features, int64_t chunk, uint64_t seed = 3) {
  AttentionOptions o;
  o.name = "performer";
  o.n_heads = 2;
  o.d_head = d_head;
  o.causal = true;
  o.knobs = {{"features", (double)features}, {"feature_seed", (double)seed}, {"chunk", (double)chunk}};
  Generator g(seed);
  return make_attention(o, g);
}
Tensor features_of(const AttentionMechanism& mech) { return mech.named_buffers().at(0).second; }

// W x̃ - |x̃|²/2, x̃ = x d^{-1/4}: the log-features (B, H, n, m), as the mechanism defines them.
Tensor log_features(const Tensor& x, const Tensor& W) {
  const Tensor xs = mul(x, std::pow((double)x.size(-1), -0.25));
  return sub(matmul(xs, W.to(x.dtype()).t()), mul(sum(mul(xs, xs), {-1}, true), 0.5));
}
// (n, n) bool: true above the diagonal (key after query).
Tensor future(int64_t n) { return eq(causal_mask(n, kFloat64), 0.0); }
// num / den with den = 0 (no valid key) replaced by 1, as the mechanism does.
Tensor safe_div(const Tensor& num, const Tensor& den) { return div(num, masked_fill(den, eq(den.detach(), 0.0), 1.0)); }

// The explicit causal map without any stabiliser, A[i, j] ∝ phi(q_i)·phi(k_j) for valid j <= i
// (moderate q, k only: phi is formed as it is).
Tensor explicit_causal_map(const Tensor& q, const Tensor& k, const Tensor& W, const Tensor& mask) {
  Tensor s = matmul(exp(log_features(q, W)), exp(log_features(k, W)).transpose(-2, -1));  // (B, H, n, n)
  s = masked_fill(s, future(q.size(2)), 0.0);
  if (mask.defined()) s = masked_fill(s, mask.unsqueeze(1).unsqueeze(1), 0.0);
  return safe_div(s, sum(s, {-1}, true));
}

// The non-causal scheme's global stabiliser (t[f] = max over every key) fed to the same causal
// prefix op: what the causal form must not do.
Tensor naive_causal(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& W, int64_t chunk) {
  const Tensor lq = log_features(q, W), lk = log_features(k, W);
  const Tensor t = max(lk, -2, true).values;  // (B, H, 1, m)
  const Tensor a = add(lq, t);
  const Tensor pq = exp(sub(a, max(a, -1, true).values)), pk = exp(sub(lk, t));
  Shape ones = v.shape();
  ones.back() = 1;
  const Tensor Y = causal_linear_prefix(pq, pk, cat({v, Tensor::ones(ones, v.dtype())}, -1), chunk);
  const int64_t e = v.size(-1);
  return safe_div(Y.narrow(-1, 0, e), Y.narrow(-1, e, 1));
}

// Largest |a - b|, +inf when an entry is not finite (a NaN must not pass as small).
double max_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector(), y = b.to_vector();
  if (x.size() != y.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::isfinite(x[i] - y[i]) ? std::max(m, std::abs(x[i] - y[i])) : INFINITY;
  return m;
}
// d sum(out * R) / d inputs, R a fixed random upstream gradient.
V grads(const Tensor& out, const V& inputs, uint64_t seed = 77) {
  for (const auto& t : inputs) t.zero_grad();
  Generator g(seed);
  sum(mul(out, randn(out.shape(), g, out.dtype()))).backward();
  V r;
  for (const auto& t : inputs) r.push_back(t.grad().clone());
  return r;
}
// (B, n) mask: batch row 0 padded at the start (its first rows have no valid key), row 1 at the end.
Tensor lead_and_tail_mask(int64_t n, int64_t lead, int64_t tail) {
  std::vector<bool> m((size_t)(2 * n), false);
  for (int64_t j = 0; j < lead; ++j) m[(size_t)j] = true;
  for (int64_t j = n - tail; j < n; ++j) m[(size_t)(n + j)] = true;
  return Tensor::from_vector(m, {2, n});
}
}  // namespace

TEST_CASE("performer causal: equals the explicit Σ_{j<=i} form and its masked map, values and gradients, at several chunk sizes") {
  const int64_t n = 9, d = 4;
  // Long keys first (log-features near -150), short ones after: the running max of the
  // log-features rises by far more than kMaxRise there, so chunks are cut at any chunk size.
  // Batch row 0: its first valid key (position 2) is long; batch row 1: positions 0-3.
  Tensor q = leaf({2, 2, n, d}, 61, 1.5), k = leaf({2, 2, n, d}, 62, 1.5), v = leaf({2, 2, n, 3}, 63);
  {
    NoGradGuard ng;
    k.select(0, 0).narrow(1, 2, 1).mul_(8.0);
    k.select(0, 1).narrow(1, 0, 4).mul_(8.0);
  }
  const Tensor mask = lead_and_tail_mask(n, 2, 3);
  for (int64_t chunk : {1, 2, 3, 4, 64}) {
    INFO("chunk " << chunk);
    auto mech = causal_performer(d, 8, chunk);
    mech->to_(kFloat64);
    const Tensor W = features_of(*mech);
    const Tensor A_ref = explicit_causal_map(q, k, W, mask);
    const Tensor y_ref = zero_padded_rows(matmul(A_ref, v), mask);
    const Tensor y = zero_padded_rows(mech->forward(q, k, v, mask), mask);
    const Tensor A = mech->attention_matrix(q, k, mask);
    CHECK(max_diff(y, y_ref) < 1e-12);
    CHECK(max_diff(A, A_ref) < 1e-12);
    CHECK(max_diff(zero_padded_rows(matmul(A, v), mask), y_ref) < 1e-12);
    CHECK(A.at({0, 0, 0, 0}) == 0.0);  // batch row 0, row 0: no valid key, a zero row
    CHECK(A.at({1, 1, 2, 3}) == 0.0);  // a later key
    const V g = grads(y, {q, k, v}), g_ref = grads(y_ref, {q, k, v});
    for (size_t i = 0; i < 3; ++i) CHECK(max_diff(g[i], g_ref[i]) < 1e-10);
  }
}

TEST_CASE("performer causal: f64 gradient checks, through chunk cuts, a view and a tensor used twice") {
  const int64_t n = 7, d = 4;
  auto mech = causal_performer(d, 8, 3, 5);
  mech->to_(kFloat64);
  Tensor q = leaf({2, 2, n, d}, 71, 1.5), k = leaf({2, 2, n, d}, 72, 1.5), v = leaf({2, 2, n, d}, 73);
  {
    NoGradGuard ng;  // long keys at positions 0 and 1: the stabiliser jumps at 2, a chunk is cut there
    k.narrow(2, 0, 2).mul_(6.0);
  }
  const Tensor mask = lead_and_tail_mask(n, 1, 2);
  CHECK_GRAD([&](const V& x) { return zero_padded_rows(mech->forward(x[0], x[1], x[2], mask), mask); }, {q, k, v});
  CHECK_GRAD([&](const V& x) { return mech->attention_matrix(x[0], x[1], mask); }, {q, k});
  // q = k, a view of x, and v = x itself
  Tensor x = leaf({2, 2, n, 2 * d}, 74, 1.5);
  CHECK_GRAD([&](const V& in) {
    const Tensor qk = in[0].narrow(-1, 0, d);
    return mech->forward(qk, qk, in[0], Tensor());
  }, {x});
  // a fully padded batch row: finite (zero) outputs and gradients, the other row exact
  const Tensor full = lead_and_tail_mask(n, 0, n);
  CHECK(all_finite(mech->forward(q, k, v, full)));
  CHECK_GRAD([&](const V& in) { return zero_padded_rows(mech->forward(in[0], in[1], in[2], full), full); }, {q, k, v});
}

TEST_CASE("performer causal: long keys then short ones, where the global stabiliser gives 0/0: finite, rows sum to 1, f64 values") {
  // f32, d 64, q at scale 5, keys at scale 5 except the last quarter at scale 1: a short key
  // sets the global t[f], far above what the early rows' long keys reach. Under the global
  // scheme the denominators of row 0 in 4 of the 8 heads are e^-104 to e^-128 (in f64): 0 in f32.
  const int64_t B = 4, H = 2, n = 512, d = 64, m = 64;
  Generator g(11);
  std::vector<double> key_scale((size_t)n);
  for (int64_t i = 0; i < n; ++i) key_scale[(size_t)i] = i < 3 * n / 4 ? 5.0 : 1.0;
  const Tensor q = mul(randn({B, H, n, d}, g), 5.0);
  const Tensor k = mul(randn({B, H, n, d}, g), Tensor::from_vector(key_scale, {n, 1}).to(kFloat32));
  const Tensor v = randn({B, H, n, 3}, g), ones = Tensor::ones({B, H, n, 2});
  const Tensor mask = tail_mask(B, n, 100);
  // chunk 512: one chunk unless cut where a stabiliser rises, i.e. the global scheme without the cuts
  for (int64_t chunk : {16, 512}) {
    INFO("chunk " << chunk);
    auto mech = causal_performer(d, m, chunk, 9);
    for (const Tensor& mk : {Tensor(), mask}) {
      INFO("masked " << mk.defined());
      CHECK(worst_off_one(mech->forward(q, k, ones, mk), mk) < 1e-5);
    }
    // the first 48 positions (those rows among them) against the log-domain map in f64
    mech->to_(kFloat64);
    auto first = [](const Tensor& x) { return x.narrow(2, 0, 48).to(kFloat64); };
    const Tensor ref = matmul(mech->attention_matrix(first(q), first(k), Tensor()), first(v));
    mech->to_(kFloat32);
    const Tensor y = mech->forward(q, k, v, Tensor()).narrow(2, 0, 48);
    CHECK(all_finite(y));
    CHECK(max_diff(y, ref) < 1e-4);
  }
  // the same checks catch the global scheme: some early rows are 0/0 there
  const Tensor W = features_of(*causal_performer(d, m, 64, 9));
  const double naive = worst_off_one(naive_causal(q, k, ones, W, 64), Tensor());
  INFO("global scheme: worst |row sum - 1| = " << naive);
  CHECK(naive > 0.5);
}
