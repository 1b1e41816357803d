// matmul / mm / bmm / linear: values against a naive triple loop for every transpose
// combination and batch-broadcast case (f32 and f64), GEMM folding, f64 gradient checks
// and error messages.
#include <doctest/doctest.h>

#include "support/gradcheck.h"
#include <lotgrad/ops/matmul_kernel.h>

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {

// Reference: torch.matmul semantics written out with plain loops over row-major copies.
std::vector<double> naive_matmul(const Tensor& a, const Tensor& b, Shape& out_shape) {
  Shape as = a.shape(), bs = b.shape();
  const bool a1 = as.size() == 1, b1 = bs.size() == 1;
  if (a1) as.insert(as.begin(), 1);
  if (b1) bs.push_back(1);
  const int64_t n = as[as.size() - 2], k = as.back(), m = bs.back();
  Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
  const size_t nb = std::max(ab.size(), bb.size());
  while (ab.size() < nb) ab.insert(ab.begin(), 1);
  while (bb.size() < nb) bb.insert(bb.begin(), 1);
  Shape S(nb);
  for (size_t i = 0; i < nb; ++i) S[i] = std::max(ab[i], bb[i]);
  const std::vector<double> av = a.to_vector(), bv = b.to_vector();
  const int64_t nbatch = shape_numel(S);
  std::vector<double> out((size_t)(nbatch * n * m), 0.0);
  for (int64_t bi = 0; bi < nbatch; ++bi) {
    // batch multi-index -> offsets into a and b (broadcast dims index 0)
    int64_t rem = bi, oa = 0, ob = 0, sa = 1, sb = 1;
    for (int64_t d = (int64_t)nb - 1; d >= 0; --d) {
      const int64_t i = rem % S[d];
      rem /= S[d];
      oa += (ab[d] == 1 ? 0 : i) * sa;
      ob += (bb[d] == 1 ? 0 : i) * sb;
      sa *= ab[d];
      sb *= bb[d];
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        double s = 0;
        for (int64_t p = 0; p < k; ++p) s += av[(size_t)((oa * n + i) * k + p)] * bv[(size_t)((ob * k + p) * m + j)];
        out[(size_t)((bi * n + i) * m + j)] = s;
      }
  }
  out_shape = S;
  if (!a1) out_shape.push_back(n);
  if (!b1) out_shape.push_back(m);
  return out;
}

void check_against_naive(const Tensor& a, const Tensor& b, double tol) {
  INFO("a ", describe(a), ", b ", describe(b));
  Shape want_shape;
  const std::vector<double> want = naive_matmul(a, b, want_shape);
  Tensor c = matmul(a, b);
  CHECK(c.shape() == want_shape);
  CHECK(c.dtype() == a.dtype());
  const std::vector<double> got = c.to_vector();
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]) / (1.0 + std::abs(want[i])));
  CHECK(worst < tol);
}

Tensor rnd(const Shape& s, uint64_t seed, DType dt) {
  Generator g(seed);
  return randn(s, g, dt);
}
// A (r, c) matrix stored transposed: the .t() of a contiguous (c, r) tensor.
Tensor rnd_t(const Shape& s, uint64_t seed, DType dt) {
  Shape st = s;
  std::swap(st[st.size() - 1], st[st.size() - 2]);
  return rnd(st, seed, dt).transpose(-1, -2);
}

}  // namespace

TEST_CASE("matmul: 2-d values for every transpose combination, f32 and f64") {
  for (DType dt : {kFloat32, kFloat64}) {
    const double tol = dt == kFloat32 ? 1e-5 : 1e-12;
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        Tensor a = ta ? rnd_t({5, 7}, 1, dt) : rnd({5, 7}, 1, dt);
        Tensor b = tb ? rnd_t({7, 3}, 2, dt) : rnd({7, 3}, 2, dt);
        check_against_naive(a, b, tol);
      }
    // Operands BLAS cannot read directly (no unit stride; stride 0) are copied first.
    Tensor strided = rnd({5, 14}, 3, dt).slice(1, 0, 14, 2);        // (5, 7), column stride 2
    Tensor expanded = rnd({1, 3}, 4, dt).expand({7, 3});            // row stride 0
    check_against_naive(strided, expanded, tol);
    check_against_naive(rnd({4, 9}, 5, dt).slice(0, 1, 4).slice(1, 2, 9), rnd({7, 6}, 6, dt), tol);  // offset view
    // Size-1 dims and empty products.
    check_against_naive(rnd({1, 7}, 7, dt), rnd({7, 1}, 8, dt), tol);
    check_against_naive(rnd({3, 1}, 7, dt), rnd({1, 4}, 8, dt), tol);
    Tensor z = matmul(rnd({3, 0}, 9, dt), rnd({0, 4}, 10, dt));
    CHECK(z.shape() == Shape{3, 4});
    for (double v : z.to_vector()) CHECK(v == 0.0);
  }
}

TEST_CASE("matmul: 1-d operands follow torch.matmul") {
  for (DType dt : {kFloat32, kFloat64}) {
    const double tol = dt == kFloat32 ? 1e-5 : 1e-12;
    check_against_naive(rnd({6}, 1, dt), rnd({6}, 2, dt), tol);        // dot -> 0-d
    check_against_naive(rnd({6}, 1, dt), rnd({6, 4}, 2, dt), tol);     // (6) x (6, 4) -> (4)
    check_against_naive(rnd({3, 6}, 1, dt), rnd({6}, 2, dt), tol);     // mv -> (3)
    check_against_naive(rnd({2, 3, 6}, 1, dt), rnd({6}, 2, dt), tol);  // -> (2, 3)
    check_against_naive(rnd({6}, 1, dt), rnd({2, 6, 4}, 2, dt), tol);  // -> (2, 4)
    check_against_naive(rnd_t({3, 6}, 1, dt), rnd({6}, 2, dt), tol);
    check_against_naive(rnd({12}, 1, dt).slice(0, 0, 12, 2), rnd({6, 4}, 2, dt), tol);
  }
  CHECK(matmul(rnd({6}, 1, kFloat64), rnd({6}, 2, kFloat64)).dim() == 0);
}

TEST_CASE("matmul: batched with broadcast batch dims, f32 and f64") {
  for (DType dt : {kFloat32, kFloat64}) {
    const double tol = dt == kFloat32 ? 1e-5 : 1e-12;
    check_against_naive(rnd({4, 5, 7}, 1, dt), rnd({4, 7, 3}, 2, dt), tol);     // plain batch
    check_against_naive(rnd({4, 5, 7}, 1, dt), rnd({7, 3}, 2, dt), tol);        // b broadcast, narrow
    check_against_naive(rnd({4, 5, 7}, 1, dt), rnd({7, 16}, 2, dt), tol);       // b broadcast (folded)
    check_against_naive(rnd({2, 3, 5, 7}, 1, dt), rnd_t({7, 16}, 2, dt), tol);  // folded, transposed b
    check_against_naive(rnd({5, 7}, 1, dt), rnd({4, 7, 3}, 2, dt), tol);        // a broadcast
    check_against_naive(rnd({2, 1, 5, 7}, 1, dt), rnd({3, 7, 3}, 2, dt), tol);  // (2,1)x(3) -> (2,3)
    check_against_naive(rnd({2, 3, 5, 7}, 1, dt), rnd({1, 3, 7, 4}, 2, dt), tol);
    check_against_naive(rnd({1, 5, 7}, 1, dt), rnd({4, 7, 3}, 2, dt), tol);
    // transposed batched operands, every combination
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        Tensor a = ta ? rnd_t({3, 5, 7}, 3, dt) : rnd({3, 5, 7}, 3, dt);
        Tensor b = tb ? rnd_t({3, 7, 2}, 4, dt) : rnd({3, 7, 2}, 4, dt);
        check_against_naive(a, b, tol);
        Tensor b2 = tb ? rnd_t({7, 2}, 5, dt) : rnd({7, 2}, 5, dt);
        check_against_naive(a, b2, tol);
        check_against_naive(b2.transpose(-1, -2), a.transpose(-1, -2), tol);
      }
    // non-contiguous batch dims: a permuted (B, H, n, d) view and a sliced batch
    Tensor perm = rnd({2, 5, 3, 4}, 6, dt).permute({0, 2, 1, 3});  // (2, 3, 5, 4)
    check_against_naive(perm, rnd({4, 6}, 7, dt), tol);
    check_against_naive(perm, rnd({2, 3, 4, 2}, 8, dt), tol);
    check_against_naive(rnd({6, 5, 7}, 9, dt).slice(0, 0, 6, 2), rnd({7, 3}, 10, dt), tol);
    // broadcast via an expanded (stride-0) batch dim
    check_against_naive(rnd({1, 5, 7}, 11, dt).expand({3, 5, 7}), rnd({3, 7, 2}, 12, dt), tol);
  }
}

TEST_CASE("matmul: a shared operand is folded into one GEMM, forward and backward") {
  Tensor x = leaf({4, 6, 16}, 1), w = leaf({16, 16}, 2);
  const int64_t c0 = detail::gemm_call_count();
  Tensor y = matmul(x, w);
  CHECK(detail::gemm_call_count() - c0 == 1);  // (24, 16) x (16, 16)
  const int64_t c1 = detail::gemm_call_count();
  y.backward(Tensor::ones(y.shape(), kFloat64));
  CHECK(detail::gemm_call_count() - c1 == 2);  // dX one GEMM; dW = Xᵀ dY one GEMM over 24 rows
  // linear over (B, n, in): one GEMM forward, two backward
  Tensor wt = leaf({16, 16}, 3), bias = leaf({16}, 4);
  const int64_t c2 = detail::gemm_call_count();
  Tensor z = linear(x, wt, bias);
  CHECK(detail::gemm_call_count() - c2 == 1);
  const int64_t c3 = detail::gemm_call_count();
  z.backward(Tensor::ones(z.shape(), kFloat64));
  CHECK(detail::gemm_call_count() - c3 == 2);
  // a plain batch needs one GEMM per entry; so does a very narrow shared operand
  const int64_t c4 = detail::gemm_call_count();
  matmul(x.detach(), rnd({4, 16, 2}, 5, kFloat64));
  CHECK(detail::gemm_call_count() - c4 == 4);
  const int64_t c5 = detail::gemm_call_count();
  matmul(x.detach(), rnd({16, 4}, 6, kFloat64));
  CHECK(detail::gemm_call_count() - c5 == 4);
}

TEST_CASE("matmul: gradient checks (f64)") {
  auto mmf = [](const V& v) { return matmul(v[0], v[1]); };
  CHECK_GRAD(mmf, {leaf({3, 4}, 1), leaf({4, 2}, 2)});
  CHECK_GRAD(mmf, {noncontig_leaf({3, 4}, 3), leaf({4, 2}, 4)});        // transposed a
  CHECK_GRAD(mmf, {leaf({3, 4}, 5), noncontig_leaf({4, 2}, 6)});        // transposed b
  CHECK_GRAD(mmf, {noncontig_leaf({3, 4}, 7), noncontig_leaf({4, 2}, 8)});
  CHECK_GRAD(mmf, {noncontig_leaf({2, 3, 4}, 9), leaf({4, 3}, 10)});     // column-strided (copied)
  // 1-d cases
  CHECK_GRAD(mmf, {leaf({4}, 11), leaf({4}, 12)});
  CHECK_GRAD(mmf, {leaf({4}, 11), leaf({4, 3}, 12)});
  CHECK_GRAD(mmf, {leaf({3, 4}, 11), leaf({4}, 12)});
  CHECK_GRAD(mmf, {leaf({2, 3, 4}, 11), leaf({4}, 12)});
  CHECK_GRAD(mmf, {leaf({4}, 11), leaf({2, 4, 3}, 12)});
  // batched, broadcasting on each side and both
  CHECK_GRAD(mmf, {leaf({2, 3, 4}, 13), leaf({2, 4, 2}, 14)});
  CHECK_GRAD(mmf, {leaf({2, 3, 4}, 15), leaf({4, 2}, 16)});
  CHECK_GRAD(mmf, {leaf({3, 4}, 17), leaf({2, 4, 2}, 18)});
  CHECK_GRAD(mmf, {leaf({2, 1, 3, 4}, 19), leaf({3, 4, 2}, 20)});
  CHECK_GRAD(mmf, {leaf({1, 3, 4}, 21), leaf({2, 4, 2}, 22)});
  // batched transposed operands
  CHECK_GRAD([](const V& v) { return matmul(v[0].transpose(-1, -2), v[1]); }, {leaf({2, 4, 3}, 23), leaf({4, 2}, 24)});
  CHECK_GRAD([](const V& v) { return matmul(v[0], v[1].transpose(-1, -2)); }, {leaf({2, 3, 4}, 25), leaf({2, 2, 4}, 26)});
  CHECK_GRAD([](const V& v) { return matmul(v[0].permute({1, 0, 2}), v[1]); }, {leaf({3, 2, 4}, 27), leaf({2, 4, 2}, 28)});
  // a column-major operand broadcast over the batch (its gradient is made in its own layout and
  // summed over the batch): Z · kᵀ with a shared Z, and the mirror case
  CHECK_GRAD([](const V& v) { return matmul(v[0], v[1].transpose(-1, -2)); }, {leaf({3, 4}, 35), leaf({2, 5, 4}, 36)});
  CHECK_GRAD([](const V& v) { return matmul(v[0].transpose(-1, -2), v[1]); }, {leaf({4, 3}, 37), leaf({2, 2, 4, 5}, 38)});
  CHECK_GRAD([](const V& v) { return matmul(v[0], v[1].t()); }, {leaf({2, 3, 4}, 39), leaf({5, 4}, 40)});
  // the same tensor used twice
  CHECK_GRAD([](const V& v) { return matmul(v[0], v[0].t()); }, {leaf({3, 4}, 29)});
  CHECK_GRAD([](const V& v) { return matmul(v[0].t(), v[0]); }, {leaf({3, 4}, 30)});
  CHECK_GRAD([](const V& v) { return matmul(v[0], v[0]); }, {leaf({2, 3, 3}, 31)});
  CHECK_GRAD([](const V& v) { return matmul(v[0], v[0].transpose(-1, -2)); }, {leaf({2, 3, 4}, 32)});
  // upstream gradient that is not contiguous (the output is transposed before use)
  CHECK_GRAD([](const V& v) { return matmul(v[0], v[1]).t(); }, {leaf({3, 4}, 33), leaf({4, 2}, 34)});
  // bmm and mm
  CHECK_GRAD([](const V& v) { return bmm(v[0], v[1]); }, {leaf({2, 3, 4}, 35), noncontig_leaf({2, 4, 2}, 36)});
  CHECK_GRAD([](const V& v) { return mm(v[0], v[1]); }, {noncontig_leaf({3, 4}, 37), leaf({4, 2}, 38)});
}

TEST_CASE("linear: values and gradient checks (f64)") {
  Tensor x = rnd({2, 3, 4}, 1, kFloat64), w = rnd({5, 4}, 2, kFloat64), b = rnd({5}, 3, kFloat64);
  std::vector<double> got = linear(x, w, b).to_vector(), want = add(matmul(x, w.t()), b).to_vector();
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-12));
  CHECK(linear(rnd({4}, 4, kFloat64), w).shape() == Shape{5});
  CHECK(linear(x.to(kFloat32), w.to(kFloat32), b.to(kFloat32)).dtype() == kFloat32);

  auto lin = [](const V& v) { return linear(v[0], v[1], v[2]); };
  CHECK_GRAD(lin, {leaf({3, 4}, 4), leaf({5, 4}, 5), leaf({5}, 6)});
  CHECK_GRAD(lin, {leaf({2, 3, 4}, 7), leaf({5, 4}, 8), leaf({5}, 9)});
  CHECK_GRAD(lin, {leaf({4}, 10), leaf({5, 4}, 11), leaf({5}, 12)});
  CHECK_GRAD(lin, {noncontig_leaf({3, 4}, 13), noncontig_leaf({5, 4}, 14), leaf({5}, 15)});
  CHECK_GRAD(lin, {noncontig_leaf({2, 3, 4}, 16), leaf({5, 4}, 17), noncontig_leaf({5}, 18)});
  CHECK_GRAD([](const V& v) { return linear(v[0], v[1]); }, {leaf({2, 3, 4}, 19), leaf({5, 4}, 20)});
  CHECK_GRAD([](const V& v) { return linear(v[0], v[0]); }, {leaf({4, 4}, 21)});  // same tensor twice
}

// The direct f32 kernel (ops/matmul_kernel.h) against a double-precision loop: row tails of
// every size below the 12-row tile, one and two 16-lane column panels, depths that take one
// and two 256-deep passes, A row-major and transposed, B row-major and transposed (packed),
// accumulation into C and a bias row.
TEST_CASE("small_sgemm: every tile shape, stride, depth and epilogue against a double loop") {
  Generator g(7);
  for (int64_t M : {1, 5, 11, 12, 13, 25, 40})
    for (int64_t N : {16, 32, 48, 64})
      for (int64_t K : {1, 7, 64, 300})
        for (int mode = 0; mode < 4; ++mode) {
          const bool ta = mode & 1, tb = mode & 2;
          const bool acc = (M + N + K + mode) % 3 == 0, with_bias = !acc && (M + K) % 2 == 0;
          INFO("M ", M, " N ", N, " K ", K, " transposed A ", ta, " transposed B ", tb, " accumulate ", acc, " bias ", with_bias);
          std::vector<float> A(M * K), B(K * N), C(M * N + 7), bias(N);
          for (auto* v : {&A, &B, &C, &bias})
            for (auto& e : *v) e = (float)g.normal();
          const std::vector<float> C0 = C;
          // A(i, k), B(k, j) through the strides the kernel is given
          const int64_t a_rs = ta ? 1 : K, a_cs = ta ? M : 1, b_rs = tb ? 1 : N, b_cs = tb ? K : 1;
          const int64_t ldc = N + (M > 1 ? 0 : 7);
          detail::small_sgemm(M, N, K, A.data(), a_rs, a_cs, B.data(), b_rs, b_cs, C.data(), ldc, acc,
                              with_bias ? bias.data() : nullptr);
          double worst = 0;
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
              double want = acc ? C0[i * ldc + j] : with_bias ? bias[j] : 0.0;
              for (int64_t k = 0; k < K; ++k) want += (double)A[i * a_rs + k * a_cs] * (double)B[k * b_rs + j * b_cs];
              worst = std::max(worst, std::abs(C[i * ldc + j] - want) / (1.0 + std::abs(want)));
            }
          CHECK(worst < 2e-5);
          // Padding past the rows of C is never written.
          for (int64_t e = (M - 1) * ldc + N; e < (int64_t)C.size(); ++e) CHECK(C[e] == C0[e]);
        }
}

TEST_CASE("small_sgemm: a C larger than the caches is streamed, with a row tail and a bias") {
  // 65541 x 64 floats = 16.8 MB: past the streaming threshold; the storage is 64-byte aligned.
  const int64_t M = 65541, N = 64, K = 9;
  Generator g(8);
  Tensor A = randn({M, K}, g, kFloat32), B = randn({K, N}, g, kFloat32), bias = randn({N}, g, kFloat32);
  Tensor C = Tensor::zeros({M, N}, kFloat32);
  detail::small_sgemm(M, N, K, A.data_ptr<float>(), K, 1, B.data_ptr<float>(), N, 1, C.data_ptr<float>(), N, false,
                      bias.data_ptr<float>());
  const float *a = A.data_ptr<float>(), *b = B.data_ptr<float>(), *c = C.data_ptr<float>(), *bi = bias.data_ptr<float>();
  double worst = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double want = bi[j];
      for (int64_t k = 0; k < K; ++k) want += (double)a[i * K + k] * (double)b[k * N + j];
      worst = std::max(worst, std::abs(c[i * N + j] - want) / (1.0 + std::abs(want)));
    }
  CHECK(worst < 2e-6);
}

TEST_CASE("matmul and linear: the direct kernel agrees with BLAS, forward and backward (f32)") {
  // LRA-like skinny shapes: (B, n, 64) activations, (192, 64) weight; the weight gradient
  // reduces over all B*n rows (a 600-deep pass count) and goes through the kernel too.
  REQUIRE(detail::small_gemm_applies(2 * 300, 192, 64));
  REQUIRE(detail::small_gemm_applies(192, 64, 2 * 300));
  auto run = [](bool direct) {
    detail::set_small_gemm_enabled(direct);
    Tensor x = rnd({2, 300, 64}, 11, kFloat32), w = rnd({192, 64}, 12, kFloat32), b = rnd({192}, 13, kFloat32);
    Tensor w2 = rnd({64, 48}, 14, kFloat32), up = rnd({2, 300, 48}, 15, kFloat32);
    for (Tensor* t : {&x, &w, &b, &w2}) t->requires_grad_();
    Tensor y = matmul(linear(x, w, b).slice(2, 0, 64), w2);  // a sliced (strided-row) operand
    y.backward(up);
    detail::set_small_gemm_enabled(true);
    return std::vector<Tensor>{y.detach(), x.grad(), w.grad(), b.grad(), w2.grad()};
  };
  const std::vector<Tensor> fast = run(true), blas = run(false);
  for (size_t i = 0; i < fast.size(); ++i) {
    INFO("output ", i);
    const std::vector<double> f = fast[i].to_vector(), r = blas[i].to_vector();
    REQUIRE(f.size() == r.size());
    double worst = 0, scale = 0;
    for (size_t e = 0; e < f.size(); ++e) {
      worst = std::max(worst, std::abs(f[e] - r[e]));
      scale = std::max(scale, std::abs(r[e]));
    }
    CHECK(worst <= 1e-5 * (1.0 + scale));
  }
  // The result does not depend on the thread count (each element sums in one fixed order).
  const int nt = get_num_threads();
  set_num_threads(1);
  const std::vector<Tensor> one = run(true);
  set_num_threads(std::max(2, nt));
  const std::vector<Tensor> two = run(true);
  set_num_threads(nt);
  for (size_t i = 0; i < one.size(); ++i) CHECK(one[i].to_vector() == two[i].to_vector());
}

TEST_CASE("matmul: errors name the op, both shapes and the rule") {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4, 5});
  try {
    matmul(a, b);
    FAIL("no error");
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    CHECK(m.find("matmul") != std::string::npos);
    CHECK(m.find("(2, 3)") != std::string::npos);
    CHECK(m.find("(4, 5)") != std::string::npos);
    CHECK(m.find("3 vs 4") != std::string::npos);
  }
  try {
    matmul(Tensor::zeros({2, 3, 4}), Tensor::zeros({3, 4, 5}));
    FAIL("no error");
  } catch (const ShapeError& e) {
    const std::string m = e.what();
    CHECK(m.find("batch") != std::string::npos);
    CHECK(m.find("(2, 3, 4)") != std::string::npos);
    CHECK(m.find("(3, 4, 5)") != std::string::npos);
  }
  CHECK_THROWS_AS(matmul(Tensor::zeros({3}), Tensor::zeros({4})), ShapeError);
  CHECK_THROWS_AS(matmul(Tensor::zeros({}), Tensor::zeros({4})), ShapeError);
  CHECK_THROWS_AS(matmul(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}, kFloat64)), DTypeError);
  CHECK_THROWS_AS(matmul(Tensor::zeros({2, 3}, kInt64), Tensor::zeros({3, 2}, kInt64)), DTypeError);
  CHECK_THROWS_AS(bmm(Tensor::zeros({2, 3}), Tensor::zeros({3, 2})), ShapeError);
  CHECK_THROWS_AS(bmm(Tensor::zeros({2, 2, 3}), Tensor::zeros({3, 3, 2})), ShapeError);
  CHECK_THROWS_AS(mm(Tensor::zeros({2, 2, 3}), Tensor::zeros({3, 2})), ShapeError);
  CHECK_THROWS_WITH_AS(linear(Tensor::zeros({2, 3}), Tensor::zeros({4, 5})),
                       doctest::Contains("(4, 5)"), ShapeError);
  CHECK_THROWS_AS(linear(Tensor::zeros({2, 5}), Tensor::zeros({4, 5}), Tensor::zeros({3})), ShapeError);
}
