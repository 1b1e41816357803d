// Causal attention: the chunked prefix op against its masked composite reference, gradient
// checks, causality (nothing at position t depends on a later token), and the refusal of
// mechanisms that have no causal form.
#include <doctest/doctest.h>

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
// d loss / d inputs (the inputs' .grad is cleared first).
V grad(const Tensor& loss, const V& inputs) {
  for (const auto& t : inputs) t.zero_grad();
  loss.backward();
  V out;
  for (const auto& t : inputs) out.push_back(t.grad().defined() ? t.grad().clone() : Tensor::zeros(t.shape(), t.dtype()));
  return out;
}
nn::AttentionOptions causal_opts(const std::string& name, std::map<std::string, double> knobs = {}) {
  nn::AttentionOptions o;
  o.name = name;
  o.n_heads = 2;
  o.knobs = knobs;
  o.causal = true;
  return o;
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
    return grad(l, {q, k, v});
  }();
  for (int64_t C : {1, 2, 3, 7, 64}) {  // 2, 3: chunks that do not divide n
    INFO("chunk " << C);
    const Tensor y = causal_linear_prefix(q, k, v, C);
    CHECK(max_abs_diff(y, ref) < 1e-12);
    const V g = grad(sum(mul(causal_linear_prefix(q, k, v, C), r)), {q, k, v});
    for (size_t i = 0; i < 3; ++i) CHECK(max_abs_diff(g[i], ref_g[i]) < 1e-12);
    CHECK_GRAD([&](const V& x) { return causal_linear_prefix(x[0], x[1], x[2], C); }, {q, k, v});
  }
  // a view as input, and one tensor used twice (q = k)
  Tensor big = leaf({2, 2, n, 6}, 4);
  CHECK_GRAD([&](const V& x) { return causal_linear_prefix(x[0].narrow(-1, 0, 3), x[0].narrow(-1, 0, 3), x[0], 3); }, {big});
  CHECK_THROWS_AS(causal_linear_prefix(q, k, v, 0), std::invalid_argument);
  CHECK_THROWS_AS(causal_linear_prefix(q, k.narrow(2, 0, 5), v), ShapeError);
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
    CHECK(max_abs_diff(o, matmul(A, vv)) < 1e-12);
    CHECK(A.at({0, 0, 1, 4}) == 0.0);  // no weight on a later token
    // changing tokens after t changes nothing at positions <= t, values and gradients
    Tensor x2 = x.detach().clone();
    x2.narrow(1, t + 1, n - t - 1).copy_(mul(randn({B, n - t - 1, 8}, g).to(kFloat64), 5.0));
    const Tensor y = mha.forward(x), y2 = mha.forward(x2);
    CHECK(max_abs_diff(y.narrow(1, 0, t + 1), y2.narrow(1, 0, t + 1)) == 0.0);
    const V gx = grad(sum(mha.forward(x).narrow(1, 0, t + 1)), {x});
    CHECK(max_abs_diff(gx[0].narrow(1, t + 1, n - t - 1), Tensor::zeros({B, n - t - 1, 8}, kFloat64)) == 0.0);
    GradcheckOptions go;
    go.max_checks_per_input = 24;
    Tensor mask = Tensor::from_vector(std::vector<bool>{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1}, {B, n});
    CHECK_GRAD([&](const V& v) { return mha.forward(v[0], mask); }, {x, mha.qkv->weight}, go);
  }
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
      CHECK(std::string(e.what()).find("no causal form") != std::string::npos);
      CHECK(std::string(e.what()).find(s.caps.why_not_causal) != std::string::npos);
    }
  }
  CHECK_THROWS_WITH_AS(nn::MultiHeadAttention(8, causal_opts("lotformer"), g),
                       doctest::Contains("a lower-triangular doubly-stochastic matrix is the identity"), std::invalid_argument);
}
