// LOTFormer and Sinkformer: the properties the notes derive (doubly stochastic, rank ≤ r,
// capacity bound, mean pooling), padding, fused vs composite, gradients in both modes.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/nn/attention_lotformer.h>
#include <lotgrad/nn/probe.h>
#include <lotgrad/ops/heads.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::nn;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {
AttentionOptions lot(int64_t r, double eps, int64_t T, double grad = 1, double tol = 0) {
  AttentionOptions o;
  o.name = "lotformer";
  o.n_heads = 2;
  o.d_head = 4;
  o.knobs = {{"r", (double)r}, {"eps", eps}, {"half_steps", (double)T}, {"grad", grad}, {"tol", tol}, {"init_std", 0.5}};
  return o;
}
Tensor qkv(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return randn(s, g, kFloat64);
}
Tensor tail_mask(int64_t B, int64_t n, int64_t pad) {
  std::vector<bool> m(B * n, false);
  for (int64_t j = n - pad; j < n; ++j) m[(B - 1) * n + j] = true;
  return Tensor::from_vector(m, {B, n});
}
}  // namespace

TEST_CASE("lotformer: A is doubly stochastic, non-negative, rank <= r and equals the explicit product") {
  for (int64_t pad : {0, 3}) {
    INFO("pad " << pad);
    Generator g(1);
    LOTFormerAttention att(lot(3, 0.5, 400, 1, 1e-12), g);
    att.to_(kFloat64);
    {
      NoGradGuard ng;
      att.mass_logits.detach().copy_(Tensor::from_vector(std::vector<double>{0.3, -0.2, 0.5, 0.0, 0.1, -0.4}, {2, 3}));
    }
    const int64_t B = 2, n = 10;
    Tensor q = qkv({B, 2, n, 4}, 2), k = qkv({B, 2, n, 4}, 3), v = qkv({B, 2, n, 4}, 4);
    Tensor mask = pad ? tail_mask(B, n, pad) : Tensor();
    Tensor A = att.attention_matrix(q, k, mask);
    // explicit: n · Γ1 diag(1/b) Γ2
    Tensor G1, G2, b;
    att.plans(q, k, mask, G1, G2, b);
    Tensor y = att.forward(q, k, v, mask);
    const int64_t last = B - 1, L = n - pad;
    for (int64_t h = 0; h < 2; ++h) {
      for (int64_t i = 0; i < L; ++i) {
        double rs = 0, cs = 0;
        for (int64_t j = 0; j < n; ++j) {
          const double a = A.at({last, h, i, j});
          CHECK(a >= 0.0);
          rs += a;
          cs += A.at({last, h, j, i});
          if (j >= L) CHECK(a == 0.0);  // padded keys: zero weight
        }
        CHECK(rs == doctest::Approx(1.0).epsilon(1e-8));
        CHECK(cs == doctest::Approx(1.0).epsilon(1e-8));
      }
    }
    // A v equals the O(n r d) forward on valid rows
    Tensor Av = matmul(A, v);
    CHECK(max_abs_diff(Av.select(0, 0), y.select(0, 0)) < 1e-10);
    CHECK(max_abs_diff(Av.select(0, last).narrow(1, 0, L), y.select(0, last).narrow(1, 0, L)) < 1e-10);
    // rank <= r
    AttentionStats st = attention_stats(A, mask, 1e-9);
    CHECK(st.rank.at({0, 0}) <= 3.0);
    CHECK(st.rank.at({last, 1}) <= 3.0);
    // capacity bound: every weight <= 1 / (n_valid · min b)
    std::vector<double> bv = b.to_vector();
    for (int64_t h = 0; h < 2; ++h) {
      double minb = 1;
      for (int t = 0; t < 3; ++t) minb = std::min(minb, bv[h * 3 + t]);
      for (int64_t i = 0; i < L; ++i) CHECK(st.row_max.at({last, h, i}) <= 1.0 / (L * minb) + 1e-12);
    }
    // mean pooling of the output equals the mean of the values (columns sum to 1)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t c = 0; c < 4; ++c) {
        double my = 0, mv = 0;
        for (int64_t i = 0; i < L; ++i) {
          my += y.at({last, h, i, c}) / L;
          mv += v.at({last, h, i, c}) / L;
        }
        CHECK(my == doctest::Approx(mv).epsilon(1e-9));
      }
  }
}

TEST_CASE("lotformer: with finite half-steps the side updated last is exact") {
  Generator g(5);
  Tensor q = qkv({1, 2, 12, 4}, 6), k = qkv({1, 2, 12, 4}, 7);
  for (int64_t T : {5, 6}) {
    INFO("half-steps " << T);
    LOTFormerAttention att(lot(4, 0.1, T), g);
    att.to_(kFloat64);
    Tensor A = att.attention_matrix(q, k, Tensor());
    AttentionStats st = attention_stats(A);
    double row_err = 0, col_err = 0;
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 12; ++i) {
        row_err = std::max(row_err, std::abs(st.row_sum.at({0, h, i}) - 1));
        col_err = std::max(col_err, std::abs(st.col_sum.at({0, h, i}) - 1));
      }
    if (T % 2) {
      CHECK(row_err < 1e-12);  // odd: last step on rows, like softmax
      CHECK(col_err > 1e-6);
    } else {
      CHECK(col_err < 1e-12);  // even: columns exact
      CHECK(row_err > 1e-6);
    }
  }
}

TEST_CASE("lotformer: fused equals composite, padding equals the unpadded run, compat is output / r^2") {
  Generator g(8);
  AttentionOptions o = lot(3, 0.3, 21);
  LOTFormerAttention fused(o, g);
  fused.to_(kFloat64);
  o.knobs["fused"] = 0;
  Generator g2(8);
  LOTFormerAttention comp(o, g2);
  comp.to_(kFloat64);
  Tensor q = qkv({2, 2, 9, 4}, 9), k = qkv({2, 2, 9, 4}, 10), v = qkv({2, 2, 9, 4}, 11);
  Tensor mask = tail_mask(2, 9, 4);
  CHECK(max_abs_diff(fused.forward(q, k, v, mask), comp.forward(q, k, v, mask)) < 1e-12);
  // padded batch row == unpadded run on its 5 valid tokens
  Tensor yp = fused.forward(q, k, v, mask).select(0, 1).narrow(1, 0, 5);
  auto valid = [](const Tensor& t) { return t.narrow(0, 1, 1).narrow(2, 0, 5); };
  Tensor yu = fused.forward(valid(q), valid(k), valid(v), Tensor()).select(0, 0);
  CHECK(max_abs_diff(yp, yu) < 1e-12);
  // gradients of pads are zero, and valid gradients match the unpadded problem
  Tensor qa = q.detach().requires_grad_(), ka = k.detach().requires_grad_(), va = v.detach().requires_grad_();
  fused.forward(qa, ka, va, mask).select(0, 1).narrow(1, 0, 5).backward(Tensor::ones({2, 5, 4}, kFloat64));
  for (double x : ka.grad().select(0, 1).narrow(1, 5, 4).to_vector()) CHECK(x == 0.0);
  for (double x : va.grad().select(0, 1).narrow(1, 5, 4).to_vector()) CHECK(x == 0.0);
  // compatibility mode: mask ignored, uniform masses, output scaled by 1/r²
  AttentionOptions oc = lot(3, 0.3, 21);
  oc.knobs["lra_code_compat"] = 1;
  Generator g3(8);
  LOTFormerAttention compat(oc, g3);
  compat.to_(kFloat64);
  CHECK(max_abs_diff(compat.forward(q, k, v, mask), mul(fused.forward(q, k, v, Tensor()), 1.0 / 9.0)) < 1e-12);
}

TEST_CASE("lotformer: gradient checks through q, k, v, pivots and masses, both modes") {
  for (double grad : {0.0, 1.0}) {
    INFO((grad ? "implicit" : "unrolled"));
    Generator g(12);
    // implicit mode differentiates the fixed point: run to convergence
    LOTFormerAttention att(grad ? lot(3, 0.5, 300, 1, 1e-13) : lot(3, 0.5, 7, 0), g);
    att.to_(kFloat64);
    {
      NoGradGuard ng;
      att.mass_logits.detach().copy_(Tensor::from_vector(std::vector<double>{0.2, -0.1, 0.4, 0.0, 0.3, -0.5}, {2, 3}));
    }
    Tensor q = leaf({2, 2, 6, 4}, 13), k = leaf({2, 2, 6, 4}, 14), v = leaf({2, 2, 6, 4}, 15);
    Tensor mask = tail_mask(2, 6, 2);
    GradcheckOptions go;
    go.atol = grad ? 1e-6 : 1e-5;
    CHECK_GRAD([&](const V& x) { return att.forward(x[0], x[1], x[2], mask); }, {q, k, v, att.pivots, att.mass_logits}, go);
  }
}

TEST_CASE("lotformer: unrolled gradients approach implicit ones at convergence") {
  Generator g(16);
  Tensor q = leaf({1, 2, 8, 4}, 17), k = leaf({1, 2, 8, 4}, 18), v = leaf({1, 2, 8, 4}, 19);
  auto grads = [&](double mode, int64_t T) {
    Generator gi(20);
    LOTFormerAttention att(lot(3, 0.5, T, mode), gi);
    att.to_(kFloat64);
    q.zero_grad();
    att.forward(q, k, v, Tensor()).backward(Tensor::ones({1, 2, 8, 4}, kFloat64));
    return std::make_pair(q.grad().to_vector(), att.pivots.grad().to_vector());
  };
  auto imp = grads(1, 301);
  double prev = 1e9;
  for (int64_t T : {11, 41, 161}) {
    auto un = grads(0, T);
    double e = 0;
    for (size_t i = 0; i < un.second.size(); ++i) e = std::max(e, std::abs(un.second[i] - imp.second[i]));
    for (size_t i = 0; i < un.first.size(); ++i) e = std::max(e, std::abs(un.first[i] - imp.first[i]));
    INFO("T " << T << " error " << e);
    CHECK(e < prev);
    prev = e;
  }
  CHECK(prev < 1e-7);
}

TEST_CASE("sinkformer: one half-step equals softmax attention, more make it doubly stochastic") {
  Generator g(21);
  Tensor q = qkv({2, 2, 7, 4}, 22), k = qkv({2, 2, 7, 4}, 23), v = qkv({2, 2, 7, 4}, 24);
  Tensor mask = tail_mask(2, 7, 2);
  AttentionOptions s1;
  s1.name = "sinkformer";
  s1.knobs = {{"half_steps", 1}};
  AttentionOptions sm;
  sm.name = "softmax";
  sm.knobs = {{"fused", 0}};
  auto sink = make_attention(s1, g);
  auto soft = make_attention(sm, g);
  Tensor a = sink->forward(q, k, v, mask), b = soft->forward(q, k, v, mask);
  CHECK(max_abs_diff(a.select(0, 0), b.select(0, 0)) < 1e-12);
  CHECK(max_abs_diff(a.select(0, 1).narrow(1, 0, 5), b.select(0, 1).narrow(1, 0, 5)) < 1e-12);
  AttentionOptions s2 = s1;
  s2.knobs = {{"half_steps", 201}};
  Tensor A = make_attention(s2, g)->attention_matrix(q, k, mask);
  AttentionStats st = attention_stats(A, mask);
  for (int64_t i = 0; i < 5; ++i) {
    CHECK(st.row_sum.at({1, 0, i}) == doctest::Approx(1.0).epsilon(1e-9));
    CHECK(st.col_sum.at({1, 0, i}) == doctest::Approx(1.0).epsilon(1e-6));
  }
  Tensor ql = leaf({1, 2, 5, 4}, 25), kl = leaf({1, 2, 5, 4}, 26), vl = leaf({1, 2, 5, 4}, 27);
  AttentionOptions s3 = s1;
  s3.knobs = {{"half_steps", 4}};
  auto sk = make_attention(s3, g);
  CHECK_GRAD([&](const V& x) { return sk->forward(x[0], x[1], x[2], Tensor()); }, {ql, kl, vl});
}

TEST_CASE("lotformer in MultiHeadAttention: the folded projection equals forming q and k (values, every gradient)") {
  // r = 3 < d_head = 4, so MultiHeadAttention projects x straight to q·Zᵀ/√d and k·Zᵀ/√d.
  Generator g(31);
  AttentionOptions o = lot(3, 0.5, 15);
  MultiHeadAttention mha(8, o, g);
  LayerNorm ln(8);
  mha.to_(kFloat64);
  ln.to_(kFloat64);
  REQUIRE(mha.mechanism->qk_map(kFloat64).defined());
  {
    NoGradGuard ng;  // non-trivial norm parameters and masses
    ln.weight.detach().copy_(qkv({8}, 32));
    ln.bias.detach().copy_(qkv({8}, 33));
    auto* lf = dynamic_cast<LOTFormerAttention*>(mha.mechanism.get());
    lf->mass_logits.detach().copy_(qkv({2, 3}, 34));
  }
  Tensor mask = tail_mask(2, 7, 3);
  Tensor x = qkv({2, 7, 8}, 35).requires_grad_();
  Tensor up = qkv({2, 7, 8}, 36);
  auto params = [&] {
    std::vector<Tensor> p;
    for (auto& [name, t] : mha.named_parameters()) p.push_back(t);
    p.push_back(ln.weight);
    p.push_back(ln.bias);
    p.push_back(x);
    return p;
  };
  auto grads = [&] {
    std::vector<Tensor> gs;
    for (auto& t : params()) {
      gs.push_back(t.grad().clone());
      t.zero_grad();
    }
    return gs;
  };
  Tensor folded = mha.forward(x, mask, &ln);
  folded.backward(up);
  std::vector<Tensor> gf = grads();
  // Reference: q, k, v formed, the mechanism's own forward.
  Tensor q, k, v;
  mha.project(x, q, k, v, &ln);
  Tensor plain = mha.out_proj->forward(merge_heads(zero_padded_rows(mha.mechanism->forward(q, k, v, mask), mask)));
  plain.backward(up);
  std::vector<Tensor> gp = grads();
  CHECK(max_abs_diff(folded, plain) < 1e-12);
  REQUIRE(gf.size() == gp.size());
  for (size_t i = 0; i < gf.size(); ++i) {
    INFO("parameter " << i);
    CHECK(max_abs_diff(gf[i], gp[i]) < 1e-11);
  }
  // and central differences through the folded path (x used by both projections, views of W)
  Tensor xl = leaf({2, 7, 8}, 37);
  GradcheckOptions go;
  go.atol = 1e-6;
  CHECK_GRAD([&](const V& in) { return mha.forward(in[0], mask, &ln); },
             {xl, mha.qkv->weight, mha.qkv->bias, dynamic_cast<LOTFormerAttention*>(mha.mechanism.get())->pivots}, go);
}

TEST_CASE("lotformer_hybrid: its heads are LOTFormer's and softmax's (or the window's) on their own, with a mask") {
  const int64_t B = 2, H = 3, n = 9, d = 4;
  Tensor q = qkv({B, H, n, d}, 31), k = qkv({B, H, n, d}, 32), v = qkv({B, H, n, d}, 33);
  const Tensor mask = tail_mask(B, n, 3);
  for (int64_t window : {0, 2}) {
    INFO("softmax_window " << window);
    AttentionOptions o = lot(3, 0.5, 20);
    o.name = "lotformer_hybrid";
    o.n_heads = H;
    o.knobs["softmax_window"] = (double)window;  // softmax_heads: 1 by default
    Generator g(5), g2(5);
    auto hyb = make_attention(o, g);
    hyb->to_(kFloat64);
    // the references: the same mechanisms built alone from the same generator state
    AttentionOptions lo = lot(3, 0.5, 20);
    lo.n_heads = H - 1;
    auto lot_alone = make_attention(lo, g2);
    lot_alone->to_(kFloat64);
    AttentionOptions so;
    so.name = window ? "window" : "softmax";
    if (window) so.knobs["window"] = (double)window;
    so.n_heads = 1;
    so.d_head = d;
    auto soft_alone = make_attention(so, g2);
    auto part = [](const Tensor& t, int64_t h0, int64_t len) { return t.narrow(1, h0, len); };
    const Tensor y = hyb->forward(q, k, v, mask);
    REQUIRE(y.shape() == Shape{B, H, n, d});
    CHECK(max_abs_diff(part(y, 0, H - 1), lot_alone->forward(part(q, 0, 2), part(k, 0, 2), part(v, 0, 2), mask)) < 1e-12);
    CHECK(max_abs_diff(part(y, 2, 1), soft_alone->forward(part(q, 2, 1), part(k, 2, 1), part(v, 2, 1), mask)) < 1e-12);
    // the map is the two maps side by side, and it is what forward applies
    const Tensor A = hyb->attention_matrix(q, k, mask);
    CHECK(max_abs_diff(matmul(A, v).narrow(2, 0, n - 3).select(0, 1), y.narrow(2, 0, n - 3).select(0, 1)) < 1e-10);
    const std::vector<double> bound = hyb->weight_bound(6);
    REQUIRE(bound.size() == 3u);
    CHECK(bound[0] == doctest::Approx(3.0 / 6));  // uniform masses at the start: 1/(n · 1/r)
    CHECK(bound[2] == 1.0);
  }
  // Gradients through the mixture, a mask on the last positions.
  AttentionOptions o = lot(3, 0.5, 9, 0);
  o.name = "lotformer_hybrid";
  o.n_heads = H;
  Generator g(6);
  auto hyb = make_attention(o, g);
  hyb->to_(kFloat64);
  GradcheckOptions go;
  go.max_checks_per_input = 20;
  Tensor ql = leaf({1, H, 6, d}, 41), kl = leaf({1, H, 6, d}, 42), vl = leaf({1, H, 6, d}, 43);
  CHECK_GRAD([&](const V& in) { return hyb->forward(in[0], in[1], in[2], tail_mask(1, 6, 2)); }, {ql, kl, vl}, go);
  // Every head softmax is refused, naming the counts.
  o.knobs["softmax_heads"] = 3;
  CHECK_THROWS_WITH_AS(make_attention(o, g), doctest::Contains("softmax_heads (3) must be below the 3 heads"),
                       std::invalid_argument);
}
