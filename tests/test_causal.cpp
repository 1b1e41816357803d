// Causal attention: the chunked prefix op (plain and with a decayed state) against its
// definition, gradient checks, causality (nothing at position t depends on a later token), the
// generic checks every mechanism with caps.causal passes (looped over the registry), and the
// refusal of mechanisms that have no causal form.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <lotgrad/lotgrad.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {
// The reference: the full score matrix, masked, times v.
Tensor prefix_reference(const Tensor& q, const Tensor& k, const Tensor& v) {
  return matmul(mul(matmul(q, k.transpose(-2, -1)), causal_mask(q.size(2), kFloat64)), v);
}
nn::AttentionOptions causal_opts(const std::string& name, std::map<std::string, double> knobs = {}) {
  nn::AttentionOptions o;
  o.name = name;
  o.n_heads = 2;
  o.knobs = knobs;
  o.causal = true;
  return o;
}
// The general prefix by its definition, element by element (f64, no graph):
//   Y_i = Σ_{j<=i} Σ_f q_i[f] k_j[f] (Π_{c(j) < c <= c(i)} g_c[f]) v_j.
Tensor decayed_prefix_reference(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int64_t>& lengths,
                                const Tensor& decay) {
  const int64_t BH = q.size(0) * q.size(1), n = q.size(2), d = q.size(3), e = v.size(3), nc = (int64_t)lengths.size();
  const std::vector<double> Q = q.to_vector(), K = k.to_vector(), X = v.to_vector(), G = decay.to_vector();
  std::vector<int64_t> chunk_of;
  for (int64_t c = 0; c < nc; ++c) chunk_of.insert(chunk_of.end(), (size_t)lengths[(size_t)c], c);
  std::vector<double> Y((size_t)(BH * n * e), 0.0);
  for (int64_t b = 0; b < BH; ++b)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j) {
        double w = 0;
        for (int64_t f = 0; f < d; ++f) {
          double g = 1;
          for (int64_t c = chunk_of[(size_t)j] + 1; c <= chunk_of[(size_t)i]; ++c) g *= G[(size_t)((b * nc + c) * d + f)];
          w += Q[(size_t)((b * n + i) * d + f)] * K[(size_t)((b * n + j) * d + f)] * g;
        }
        for (int64_t x = 0; x < e; ++x) Y[(size_t)((b * n + i) * e + x)] += w * X[(size_t)((b * n + j) * e + x)];
      }
  return Tensor::from_vector(Y, {q.size(0), q.size(1), n, e});
}
// (B, n) mask with the last `pad` positions of batch row 1 padded.
Tensor tail_pad(int64_t B, int64_t n, int64_t pad) {
  std::vector<bool> m((size_t)(B * n), false);
  for (int64_t j = n - pad; j < n; ++j) m[(size_t)(n + j)] = true;
  return Tensor::from_vector(m, {B, n});
}
double max_diff(const Tensor& a, const Tensor& b) { return max_abs(sub(a, b)); }

// The generic causal checks, on x (B, n, D) through multi-head attention:
// (a) outputs at positions <= t do not change when the tokens after t do (and later ones do);
// (b) d out[<= t] / d x[> t] is exactly 0 (and d / d x[<= t] is not).
void check_causality(nn::MultiHeadAttention& mha, const Tensor& x, int64_t t) {
  const int64_t B = x.size(0), late = x.size(1) - t - 1, D = x.size(2);
  Tensor x2 = x.detach().clone();
  Generator g(32);
  x2.narrow(1, t + 1, late).copy_(mul(randn({B, late, D}, g, kFloat64), 5.0));
  const Tensor y = mha.forward(x), y2 = mha.forward(x2);
  // up to rounding, not bitwise: a detached stabiliser may be shared with later tokens (Performer)
  CHECK(max_diff(y.narrow(1, 0, t + 1), y2.narrow(1, 0, t + 1)) < 1e-12);
  CHECK(max_diff(y.narrow(1, t + 1, late), y2.narrow(1, t + 1, late)) > 1e-3);
  const Tensor R = randn({B, t + 1, D}, g, kFloat64);
  const Tensor gx = input_grads(sum(mul(mha.forward(x).narrow(1, 0, t + 1), R)), {x})[0];
  CHECK(max_abs(gx.narrow(1, t + 1, late)) == 0.0);
  CHECK(max_abs(gx.narrow(1, 0, t + 1)) > 1e-6);
}
// (c) nothing above the diagonal of the map, and forward = attention_matrix @ v on valid rows.
void check_masked_composite(nn::MultiHeadAttention& mha, const Tensor& x, const Tensor& mask) {
  Tensor A;
  if (mha.spec().caps.block_input) {
    A = mha.mechanism->attention_matrix_block(x, mask);  // its values are its own: the map only
  } else {
    Tensor q, k, v;
    mha.project(x, q, k, v);
    A = mha.mechanism->attention_matrix(q, k, mask);
    const Tensor o = nn::zero_padded_rows(mha.mechanism->forward(q, k, v, mask), mask);
    CHECK(max_diff(o, nn::zero_padded_rows(matmul(A, v), mask)) < 1e-12);
    CHECK(max_abs(o) > 1e-3);
  }
  CHECK(max_abs(mul(A, rsub(causal_mask(x.size(1), kFloat64), 1.0))) == 0.0);
}
// (e) with the last `pad` tokens of batch row 1 padded, the valid positions are what they are
// without a mask, whatever the padded tokens hold.
void check_end_padding(nn::MultiHeadAttention& mha, const Tensor& x, int64_t pad) {
  const int64_t n = x.size(1);
  const Tensor mask = tail_pad(x.size(0), n, pad), y = mha.forward(x);
  Tensor x3 = x.detach().clone();
  Generator g(34);
  x3.select(0, 1).narrow(0, n - pad, pad).copy_(mul(randn({pad, x.size(2)}, g, kFloat64), 100.0));
  for (const Tensor& in : {x.detach(), x3}) {
    const Tensor ym = mha.forward(in, mask);
    CHECK(max_diff(ym.select(0, 0), y.select(0, 0)) < 1e-12);
    CHECK(max_diff(ym.select(0, 1).narrow(0, 0, n - pad), y.select(0, 1).narrow(0, 0, n - pad)) < 1e-12);
  }
}
}  // namespace

TEST_CASE("causal_linear_prefix equals the masked composite, values and gradients, at every chunk size") {
  const int64_t n = 7;
  Tensor q = leaf({2, 2, n, 3}, 1), k = leaf({2, 2, n, 3}, 2), v = leaf({2, 2, n, 4}, 3);
  const Tensor ref = prefix_reference(q, k, v);
  Generator gr(9);
  Tensor r = randn({2, 2, n, 4}, gr).to(kFloat64);
  V ref_g = [&] {
    Tensor l = sum(mul(prefix_reference(q, k, v), r));
    return input_grads(l, {q, k, v});
  }();
  for (int64_t C : {1, 2, 3, 7, 64}) {  // 2, 3: chunks that do not divide n
    INFO("chunk " << C);
    const Tensor y = causal_linear_prefix(q, k, v, C);
    CHECK(max_diff(y, ref) < 1e-12);
    const V g = input_grads(sum(mul(causal_linear_prefix(q, k, v, C), r)), {q, k, v});
    for (size_t i = 0; i < 3; ++i) CHECK(max_diff(g[i], ref_g[i]) < 1e-12);
    CHECK_GRAD([&](const V& x) { return causal_linear_prefix(x[0], x[1], x[2], C); }, {q, k, v});
  }
  // a view as input, and one tensor used twice (q = k)
  Tensor big = leaf({2, 2, n, 6}, 4);
  CHECK_GRAD([&](const V& x) { return causal_linear_prefix(x[0].narrow(-1, 0, 3), x[0].narrow(-1, 0, 3), x[0], 3); }, {big});
  CHECK_THROWS_AS(causal_linear_prefix(q, k, v, 0), std::invalid_argument);
  CHECK_THROWS_AS(causal_linear_prefix(q, k.narrow(2, 0, 5), v), ShapeError);
}

TEST_CASE("causal_linear_prefix with chunk lengths and a decayed state equals its definition, values and gradients") {
  const int64_t n = 7, d = 3, e = 2;
  Tensor q = leaf({2, 2, n, d}, 21), k = leaf({2, 2, n, d}, 22), v = leaf({2, 2, n, e}, 23);
  for (const std::vector<int64_t>& lengths : std::vector<std::vector<int64_t>>{{7}, {1, 1, 1, 1, 1, 1, 1}, {2, 3, 1, 1}, {3, 4}}) {
    INFO("chunks " << lengths.size());
    const int64_t nc = (int64_t)lengths.size();
    Generator gd(24);
    Tensor decay = add(mul(rand({2, 2, nc, d}, gd, kFloat64), 0.8), 0.2);  // in [0.2, 1)
    decay.select(0, 1).select(1, 0).fill_(0.0);  // a state row erased (as after a -inf stabiliser)
    const Tensor ref = decayed_prefix_reference(q, k, v, lengths, decay);
    CHECK(max_diff(causal_linear_prefix(q, k, v, lengths, decay), ref) < 1e-12);
    CHECK_GRAD([&](const V& x) { return causal_linear_prefix(x[0], x[1], x[2], lengths, decay); }, {q, k, v});
    // decay undefined = 1: the plain op at the same chunks
    if (lengths == std::vector<int64_t>{3, 4})
      CHECK(max_diff(causal_linear_prefix(q, k, v, lengths, Tensor()), causal_linear_prefix(q, k, v, 3)) < 1e-12);
  }
  // a view as input, and one tensor used twice (q = k), through a decayed state
  Tensor big = leaf({2, 2, n, 6}, 25);
  Generator gd(26);
  const Tensor decay = rand({2, 2, 3, 3}, gd, kFloat64);
  CHECK_GRAD([&](const V& x) {
    const Tensor qk = x[0].narrow(-1, 0, 3);
    return causal_linear_prefix(qk, qk, x[0], {2, 2, 3}, decay);
  }, {big});
  // refused: lengths that do not cover n, an empty chunk, a decay of the wrong shape or one that wants a gradient
  CHECK_THROWS_WITH_AS(causal_linear_prefix(q, k, v, {3, 3}, Tensor()), doctest::Contains("sum to 6, not n = 7"), std::invalid_argument);
  CHECK_THROWS_AS(causal_linear_prefix(q, k, v, {3, 0, 4}, Tensor()), std::invalid_argument);
  CHECK_THROWS_AS(causal_linear_prefix(q, k, v, {3, 4}, Tensor::ones({2, 2, 3, d}, kFloat64)), ShapeError);
  CHECK_THROWS_WITH_AS(causal_linear_prefix(q, k, v, {3, 4}, Tensor::ones({2, 2, 2, d}, kFloat64).requires_grad_()),
                       doctest::Contains("constant"), std::invalid_argument);
}

TEST_CASE("causal linear attention: the masked explicit form, causality of values and gradients, padding") {
  Generator g(5);
  for (int64_t chunk : {1, 3, 64}) {
    INFO("chunk " << chunk);
    nn::MultiHeadAttention mha(8, causal_opts("linear", {{"chunk", (double)chunk}}), g);
    mha.to_(kFloat64);
    const int64_t B = 2, n = 7, t = 3;
    Tensor x = leaf({B, n, 8}, 11);
    Tensor q, k, vv;
    mha.project(x, q, k, vv);
    // the mechanism equals its own (masked, explicit) attention matrix applied to v
    const Tensor o = mha.mechanism->forward(q, k, vv, Tensor());
    const Tensor A = mha.mechanism->attention_matrix(q, k, Tensor());
    CHECK(max_diff(o, matmul(A, vv)) < 1e-12);
    CHECK(A.at({0, 0, 1, 4}) == 0.0);  // no weight on a later token
    // changing tokens after t changes nothing at positions <= t, values and gradients
    Tensor x2 = x.detach().clone();
    x2.narrow(1, t + 1, n - t - 1).copy_(mul(randn({B, n - t - 1, 8}, g).to(kFloat64), 5.0));
    const Tensor y = mha.forward(x), y2 = mha.forward(x2);
    CHECK(max_diff(y.narrow(1, 0, t + 1), y2.narrow(1, 0, t + 1)) == 0.0);
    const V gx = input_grads(sum(mha.forward(x).narrow(1, 0, t + 1)), {x});
    CHECK(max_diff(gx[0].narrow(1, t + 1, n - t - 1), Tensor::zeros({B, n - t - 1, 8}, kFloat64)) == 0.0);
    GradcheckOptions go;
    go.max_checks_per_input = 24;
    Tensor mask = Tensor::from_vector(std::vector<bool>{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1}, {B, n});
    CHECK_GRAD([&](const V& v) { return mha.forward(v[0], mask); }, {x, mha.qkv->weight}, go);
  }
}

// Every registered mechanism with a causal form, at its "tiny" preset, through multi-head
// attention in f64: whatever lands in the registry is covered.
TEST_CASE("every causal mechanism: causality of values and gradients, the masked composite, gradcheck, end padding") {
  std::vector<std::string> tested;
  for (const auto& s : nn::attention_registry()) {
    if (!s.caps.causal) continue;
    INFO(s.name);
    tested.push_back(s.name);
    Generator g(7);
    nn::MultiHeadAttention mha(8, causal_opts(s.name, s.preset("tiny")), g);
    mha.to_(kFloat64);
    const int64_t n = 9, pad = 3;
    Tensor x = leaf({2, n, 8}, 31);
    check_causality(mha, x, 4);                          // (a), (b)
    check_masked_composite(mha, x, tail_pad(2, n, pad));  // (c)
    GradcheckOptions go;                                 // (d)
    go.max_checks_per_input = 24;
    V inputs{x, mha.out_proj->weight};
    if (mha.qkv) inputs.push_back(mha.qkv->weight);
    CHECK_GRAD([&](const V& in) { return mha.forward(in[0], tail_pad(2, n, pad)); }, inputs, go);
    check_end_padding(mha, x, pad);  // (e)
  }
  for (const char* name : {"linear", "performer"}) CHECK(std::count(tested.begin(), tested.end(), name) == 1);
}

TEST_CASE("causal is refused by the mechanisms that have none, saying why") {
  Generator g(1);
  for (const auto& s : nn::attention_registry()) {
    INFO(s.name);
    if (s.caps.causal) {
      CHECK(s.caps.why_not_causal.empty());
      continue;
    }
    try {
      nn::MultiHeadAttention mha(8, causal_opts(s.name, s.preset("tiny")), g);
      FAIL("causal accepted");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find(s.name + " attention has no causal form (--causal)") != std::string::npos);
      CHECK(std::string(e.what()).find(s.caps.why_not_causal) != std::string::npos);
    }
  }
  CHECK_THROWS_WITH_AS(nn::MultiHeadAttention(8, causal_opts("lotformer"), g),
                       doctest::Contains("a lower-triangular doubly-stochastic matrix is the identity"), std::invalid_argument);
}
