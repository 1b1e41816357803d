// ESPFormer: gradients (f64) through q, k, v; approximately doubly stochastic; padding
// semantics; the probe matrix applied to v equals forward; options.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/nn/probe.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::nn;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {
std::shared_ptr<AttentionMechanism> esp(double tau = 1e-3, double T = 10) {
  AttentionOptions o;
  o.name = "espformer";
  o.n_heads = 2;
  o.d_head = 4;
  o.knobs = {{"tau", tau}, {"T", T}};
  Generator g(0);
  return make_attention(o, g);
}
Tensor rnd(const Shape& s, uint64_t seed, double scale = 1.0) {
  Generator g(seed);
  return mul(randn(s, g, kFloat64), scale);
}
// Largest |sum - 1| over the rows (dim -1) or columns (dim -2) of A (B, H, n, n).
double sum_err(const Tensor& A, int64_t dim) {
  double e = 0;
  for (double s : sum(A, {dim}).to_vector()) e = std::max(e, std::abs(s - 1.0));
  return e;
}
}  // namespace

TEST_CASE("espformer: gradient checks through q, k, v (contiguous, views, shared input, padding)") {
  // tau = 0.05 makes the soft sort genuinely soft at this scale (the default 1e-3 is nearly a
  // permutation, whose gradients are close to zero); both are checked.
  for (double tau : {1e-3, 0.05}) {
    INFO("tau = " << tau);
    auto att = esp(tau, 10);
    Tensor q = leaf({2, 2, 5, 4}, 1), k = leaf({2, 2, 5, 4}, 2), v = leaf({2, 2, 5, 3}, 3);
    CHECK_GRAD([&](const V& x) { return att->forward(x[0], x[1], x[2], Tensor()); }, {q, k, v});
    Tensor qn = noncontig_leaf({2, 2, 5, 4}, 4), kn = noncontig_leaf({2, 2, 5, 4}, 5), vn = noncontig_leaf({2, 2, 5, 3}, 6);
    CHECK_GRAD([&](const V& x) { return att->forward(x[0], x[1], x[2], Tensor()); }, {qn, kn, vn});
    // the same tensor as queries, keys and values (C has zeros on its diagonal then)
    CHECK_GRAD([&](const V& x) { return att->forward(x[0], x[0], x[0], Tensor()); }, {q});
    Tensor mask = Tensor::from_vector(std::vector<bool>{false, false, false, false, false, false, true, false, true, false}, {2, 5});
    CHECK_GRAD([&](const V& x) { return att->forward(x[0], x[1], x[2], mask); }, {q, k, v});
  }
}

TEST_CASE("espformer: rows and columns sum to about 1, near-hard sort makes them exact") {
  // n = 16, d = 4: the soft sort leaks mass between tokens whose slice values lie within a
  // few √tau of each other, so sums are only approximately 1 (measured: row 0.065, column 0.047
  // here at the default tau = 1e-3; 0.15 is the stated tolerance).
  Tensor q = rnd({2, 2, 16, 4}, 10), k = rnd({2, 2, 16, 4}, 11);
  Tensor A = esp()->attention_matrix(q, k, Tensor());
  MESSAGE("tau=1e-3: row error " << sum_err(A, -1) << ", column error " << sum_err(A, -2));
  CHECK(sum_err(A, -1) < 0.15);
  CHECK(sum_err(A, -2) < 0.15);
  for (double a : A.to_vector()) CHECK(a >= 0.0);
  // with tau far below the squared gaps each soft sort is a permutation: exact
  Tensor Ah = esp(1e-9)->attention_matrix(q, k, Tensor());
  CHECK(sum_err(Ah, -1) < 1e-9);
  CHECK(sum_err(Ah, -2) < 1e-9);
  // the sum of the slice weights is 1 whatever T: T = 0 is the plain mean over slices
  Tensor A0 = esp(1e-3, 0)->attention_matrix(q, k, Tensor());
  CHECK(std::abs(sum(A0).item() - 2 * 2 * 16) < 1e-9);
}

TEST_CASE("espformer: the probe matrix applied to v equals forward, f32 agrees with f64") {
  auto att = esp();
  Tensor q = rnd({2, 2, 7, 4}, 20), k = rnd({2, 2, 7, 4}, 21), v = rnd({2, 2, 7, 3}, 22);
  Tensor mask = Tensor::from_vector(std::vector<bool>{false, false, false, false, false, false, false,
                                                      false, true, false, false, true, false, true},
                                    {2, 7});
  for (const Tensor& m : {Tensor(), mask}) {
    Tensor A = att->attention_matrix(q, k, m);
    Tensor y = att->forward(q, k, v, m);
    Tensor Av = matmul(A, v);
    if (m.defined()) {  // padded query rows may be anything: compare valid rows
      Av = zero_padded_rows(Av, m);
      y = zero_padded_rows(y, m);
    }
    CHECK(max_abs_diff(Av, y) < 1e-12);
  }
  Tensor y32 = att->forward(q.to(kFloat32), k.to(kFloat32), v.to(kFloat32), mask);
  CHECK(max_abs_diff(y32.to(kFloat64), att->forward(q, k, v, mask)) < 1e-3);
  // through MultiHeadAttention and the probe
  AttentionOptions o;
  o.name = "espformer";
  o.n_heads = 2;
  Generator g(3);
  MultiHeadAttention mha(8, o, g);
  Tensor x = rnd({1, 6, 8}, 23).to(kFloat32);
  Tensor P = probe_attention(mha, x);
  CHECK(P.size(-1) == 6);
  AttentionStats st = attention_stats(P);
  CHECK(st.max_weight > 0.0);
}

TEST_CASE("espformer: padding — pads get zero weight and their content never reaches valid outputs") {
  auto att = esp();
  const int64_t n = 8;
  Tensor q = rnd({2, 2, n, 4}, 30), k = rnd({2, 2, n, 4}, 31), v = rnd({2, 2, n, 4}, 32);
  std::vector<bool> mv(2 * n, false);
  for (int64_t j : {1, 4, 7}) mv[n + j] = true;  // pads in the middle and at the end of row 1
  Tensor mask = Tensor::from_vector(mv, {2, n});
  Tensor y = zero_padded_rows(att->forward(q, k, v, mask), mask);
  // changing the pads' content changes nothing valid
  Tensor pads = mask.to(kFloat64).unsqueeze(1).unsqueeze(-1);  // (2, 1, n, 1)
  auto perturb = [&](const Tensor& t, uint64_t s) { return add(t, mul(rnd(t.shape(), s, 100.0), pads)); };
  Tensor y2 = zero_padded_rows(att->forward(perturb(q, 40), perturb(k, 41), perturb(v, 42), mask), mask);
  CHECK(max_abs_diff(y, y2) == 0.0);
  // padded keys get zero weight
  Tensor A = att->attention_matrix(q, k, mask);
  for (int64_t j : {1, 4, 7})
    for (double a : A.select(0, 1).select(-1, j).to_vector()) CHECK(a == 0.0);
  // the padded row equals the unpadded run on its valid tokens
  Tensor idx = Tensor::from_vector(std::vector<int64_t>{0, 2, 3, 5, 6}, {5});
  auto valid = [&](const Tensor& t) { return index_select(t.narrow(0, 1, 1), 2, idx); };
  Tensor yu = att->forward(valid(q), valid(k), valid(v), Tensor());
  CHECK(max_abs_diff(index_select(y.narrow(0, 1, 1), 2, idx), yu) < 1e-14);
  // the unpadded batch row is unaffected by the other row's mask
  CHECK(max_abs_diff(y.narrow(0, 0, 1), att->forward(q.narrow(0, 0, 1), k.narrow(0, 0, 1), v.narrow(0, 0, 1), Tensor())) < 1e-14);
  // pads get zero gradient
  Tensor ka = k.detach().requires_grad_(), va = v.detach().requires_grad_();
  zero_padded_rows(att->forward(q, ka, va, mask), mask).backward(rnd({2, 2, n, 4}, 50));
  for (int64_t j : {1, 4, 7}) {
    for (double x : ka.grad().select(0, 1).select(1, j).to_vector()) CHECK(x == 0.0);
    for (double x : va.grad().select(0, 1).select(1, j).to_vector()) CHECK(x == 0.0);
  }
  // a row with no valid token gives zeros, not NaN
  Tensor all = Tensor::from_vector(std::vector<bool>(2 * n, true), {2, n});
  for (double x : att->forward(q, k, v, all).to_vector()) CHECK(x == 0.0);
}

TEST_CASE("espformer: options and shape errors") {
  AttentionOptions o;
  o.name = "espformer";
  o.knobs = {{"taux", 1.0}};
  Generator g(0);
  CHECK_THROWS_AS(make_attention(o, g), std::invalid_argument);
  o.knobs = {{"tau", 0.0}};
  CHECK_THROWS_AS(make_attention(o, g), std::invalid_argument);
  auto att = esp();
  CHECK_THROWS_AS(att->forward(rnd({1, 2, 5, 4}, 1), rnd({1, 2, 6, 4}, 2), rnd({1, 2, 5, 4}, 3), Tensor()), ShapeError);
}
