// Shape ops: values, gradient checks (contiguous, views, reuse such as cat({x, x})),
// scatter-add determinism, and error messages that name every operand.
#include <doctest/doctest.h>

#include <string>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {
Tensor dvec(std::vector<double> v, const Shape& s) { return Tensor::from_vector(v, s); }
Tensor ivec(std::vector<int64_t> v, const Shape& s) { return Tensor::from_vector(v, s); }
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}
bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("cat: values, dims, gradients, reuse") {
  Tensor a = dvec({1, 2, 3, 4}, {2, 2}), b = dvec({5, 6}, {1, 2}), c = dvec({7, 8}, {2, 1});
  CHECK(cat({a, b}).to_vector() == std::vector<double>{1, 2, 3, 4, 5, 6});
  CHECK(cat({a, b}, 0).shape() == Shape{3, 2});
  CHECK(cat({a, c}, 1).to_vector() == std::vector<double>{1, 2, 7, 3, 4, 8});
  CHECK(cat({a, c}, -1).shape() == Shape{2, 3});
  CHECK(cat({a.t(), c}, 1).to_vector() == std::vector<double>{1, 3, 7, 2, 4, 8});
  CHECK(cat({a, Tensor::zeros({0, 2}, kFloat64)}).shape() == Shape{2, 2});
  CHECK(cat({ivec({1, 2}, {2}), ivec({3}, {1})}).to_vector() == std::vector<double>{1, 2, 3});  // int64 too

  Tensor x = leaf({2, 3}, 1), y = leaf({2, 4}, 2), z = leaf({1, 3}, 3);
  CHECK_GRAD([](const V& v) { return cat({v[0], v[1]}, 1); }, {x, y});
  CHECK_GRAD([](const V& v) { return cat({v[0], v[1]}, 0); }, {x, z});
  CHECK_GRAD([](const V& v) { return cat({v[0], v[0]}, 0); }, {x});  // same tensor twice
  CHECK_GRAD([](const V& v) { return cat({v[0], v[1], v[0]}, -1); }, {x, y});
  Tensor nc = noncontig_leaf({3, 2}, 4);  // transposed
  CHECK_GRAD([](const V& v) { return cat({v[0], mul(v[0], 2.0)}, 1); }, {nc});
  Tensor n3 = noncontig_leaf({2, 3, 2}, 5);
  CHECK_GRAD([](const V& v) { return cat({v[0], mul(v[0], v[0])}, 1); }, {n3});
  // only some inputs need a gradient
  Tensor fixed = dvec({1, 2, 3}, {1, 3});
  CHECK_GRAD([&](const V& v) { return cat({fixed, v[0]}); }, {x});
}

TEST_CASE("cat / stack errors name every operand shape") {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({2, 4}), c = Tensor::zeros({2, 3}, kFloat64);
  std::string m = error_of([&] { cat({a, b}, 0); });
  CHECK(has(m, "cat"));
  CHECK(has(m, "(2, 3)"));
  CHECK(has(m, "(2, 4)"));
  CHECK(has(m, "dim 1: 3 vs 4"));
  CHECK_THROWS_AS(cat({a, b}, 0), ShapeError);
  CHECK_NOTHROW(cat({a, b}, 1));
  m = error_of([&] { cat({a, c}); });
  CHECK(has(m, "dtype"));
  CHECK(has(m, "f32"));
  CHECK(has(m, "f64"));
  CHECK_THROWS_AS(cat({a, c}), DTypeError);
  CHECK_THROWS_AS(cat({a, Tensor::zeros({2, 3, 1})}), ShapeError);
  CHECK_THROWS_AS(cat({a, a}, 2), ShapeError);
  CHECK_THROWS_AS(cat({}), ShapeError);
  CHECK_THROWS_AS(cat({Tensor::scalar(1.0), Tensor::scalar(2.0)}), ShapeError);
  m = error_of([&] { stack({a, a, b}); });
  CHECK(has(m, "stack"));
  CHECK(has(m, "tensors[2] (2, 4)"));
  CHECK(has(m, "tensors[0] (2, 3)"));
  CHECK_THROWS_AS(stack({a, a}, 3), ShapeError);
}

TEST_CASE("stack: values and gradients") {
  Tensor a = dvec({1, 2}, {2}), b = dvec({3, 4}, {2});
  CHECK(stack({a, b}).shape() == Shape{2, 2});
  CHECK(stack({a, b}).to_vector() == std::vector<double>{1, 2, 3, 4});
  CHECK(stack({a, b}, 1).to_vector() == std::vector<double>{1, 3, 2, 4});
  CHECK(stack({a, b}, -1).shape() == Shape{2, 2});
  CHECK(stack({Tensor::scalar(1.0), Tensor::scalar(2.0)}).shape() == Shape{2});
  Tensor x = leaf({2, 3}, 11), y = leaf({2, 3}, 12);
  for (int64_t d : {0, 1, 2, -1}) {
    INFO("dim " << d);
    CHECK_GRAD([&](const V& v) { return stack({v[0], v[1]}, d); }, {x, y});
  }
  CHECK_GRAD([](const V& v) { return stack({v[0], v[0], v[0]}, 1); }, {x});
  CHECK_GRAD([](const V& v) { return stack({v[0], v[1]}, 0); }, {noncontig_leaf({2, 3}, 13), y});
}

TEST_CASE("split: views, sizes, gradients") {
  Tensor x = Tensor::arange(0.0, 10.0, 1.0, kFloat64).view({5, 2});
  std::vector<Tensor> p = split(x, 2);
  REQUIRE(p.size() == 3);
  CHECK(p[0].shape() == Shape{2, 2});
  CHECK(p[2].shape() == Shape{1, 2});
  CHECK(p[2].to_vector() == std::vector<double>{8, 9});
  CHECK(p[1].shares_storage(x));
  std::vector<Tensor> q = split(x, {1, 4});  // sizes overload
  REQUIRE(q.size() == 2);
  CHECK(q[1].shape() == Shape{4, 2});
  CHECK(q[1].to_vector()[0] == 2.0);
  std::vector<Tensor> r = split(x, std::vector<int64_t>{1, 1}, -1);
  CHECK(r[1].to_vector() == std::vector<double>{1, 3, 5, 7, 9});
  CHECK(split(x, 5).size() == 1);
  CHECK(split(x, 7).size() == 1);
  CHECK(split(x, {0, 5}).at(0).shape() == Shape{0, 2});

  Tensor a = leaf({5, 4}, 21);
  // pieces recombined in a new order (each piece gets its own gradient)
  CHECK_GRAD([](const V& v) {
    std::vector<Tensor> s = split(v[0], 2, 0);
    return cat({s[2], mul(s[0], s[1]), s[0]}, 0);
  }, {a});
  CHECK_GRAD([](const V& v) {
    std::vector<Tensor> s = split(v[0], {1, 3}, 1);
    return mul(s[0], s[1]);  // (5, 1) * (5, 3): broadcast
  }, {a});
  CHECK_GRAD([](const V& v) { return split(v[0], 3, 1)[1]; }, {noncontig_leaf({5, 4}, 22)});

  CHECK_THROWS_AS(split(x, {2, 2}), ShapeError);
  std::string m = error_of([&] { split(x, std::vector<int64_t>{2, 2}, 0); });
  CHECK(has(m, "sum to 4"));
  CHECK(has(m, "(5, 2)"));
  CHECK_THROWS_AS(split(x, 0), ShapeError);
  CHECK_THROWS_AS(split(x, {-1, 6}), ShapeError);
  CHECK_THROWS_AS(split(x, 2, 2), ShapeError);
}

TEST_CASE("index_select: values, repeated indices, gradients") {
  Tensor x = dvec({1, 2, 3, 4, 5, 6}, {3, 2});
  Tensor i = ivec({2, 0, 2}, {3});
  CHECK(index_select(x, 0, i).to_vector() == std::vector<double>{5, 6, 1, 2, 5, 6});
  CHECK(index_select(x, 1, ivec({1}, {1})).to_vector() == std::vector<double>{2, 4, 6});
  CHECK(index_select(x.t(), -1, i).to_vector() == std::vector<double>{5, 1, 5, 6, 2, 6});
  CHECK(index_select(x, 0, ivec({}, {0})).shape() == Shape{0, 2});
  CHECK(index_select(ivec({7, 8, 9}, {3}), 0, ivec({2, 2}, {2})).to_vector() == std::vector<double>{9, 9});

  // backward accumulates repeated rows
  Tensor xl = x.detach().clone().requires_grad_();
  index_select(xl, 0, i).backward(Tensor::ones({3, 2}, kFloat64));
  CHECK(xl.grad().to_vector() == std::vector<double>{1, 1, 0, 0, 2, 2});

  Tensor a = leaf({4, 3, 5}, 31);
  Tensor idx = ivec({3, 1, 3, 0, 1}, {5});
  for (int64_t d : {0, 1, 2}) {
    INFO("dim " << d);
    Tensor id = d == 1 ? ivec({2, 2, 0}, {3}) : idx;
    CHECK_GRAD([&](const V& v) { return index_select(v[0], d, id); }, {a});
  }
  CHECK_GRAD([&](const V& v) { return index_select(v[0], 1, ivec({0, 2, 2}, {3})); }, {noncontig_leaf({3, 4}, 32)});
  CHECK_GRAD([&](const V& v) { return mul(index_select(v[0], 0, idx), index_select(v[0], 0, idx)); }, {a});

  std::string m = error_of([&] { index_select(x, 0, ivec({0, 3}, {2})); });
  CHECK(has(m, "index[1] = 3"));
  CHECK(has(m, "(3, 2)"));
  CHECK_THROWS_AS(index_select(x, 0, ivec({-1}, {1})), ShapeError);
  CHECK_THROWS_AS(index_select(x, 0, dvec({0}, {1})), DTypeError);
  CHECK_THROWS_AS(index_select(x, 0, ivec({0, 1}, {1, 2})), ShapeError);
  CHECK_THROWS_AS(index_select(x, 2, i), ShapeError);
}

TEST_CASE("gather and scatter_add: PyTorch semantics, gradients") {
  Tensor x = dvec({1, 2, 3, 4, 5, 6}, {2, 3});
  // out[i][j] = x[i][index[i][j]]
  Tensor g1 = gather(x, 1, ivec({2, 0, 1, 1}, {2, 2}));
  CHECK(g1.to_vector() == std::vector<double>{3, 1, 5, 5});
  // out[i][j] = x[index[i][j]][j], index smaller than x along dim 1
  Tensor g0 = gather(x, 0, ivec({1, 0, 0, 0}, {2, 2}));
  CHECK(g0.to_vector() == std::vector<double>{4, 2, 1, 2});
  CHECK(gather(x.t(), -1, ivec({1, 0, 1}, {3, 1})).to_vector() == std::vector<double>{4, 2, 6});
  // scatter_add is gather's adjoint
  Tensor s = scatter_add(Tensor::zeros({2, 3}, kFloat64), 1, ivec({2, 0, 1, 1}, {2, 2}), dvec({10, 20, 30, 40}, {2, 2}));
  CHECK(s.to_vector() == std::vector<double>{20, 0, 10, 0, 70, 0});

  Tensor a = leaf({3, 4, 2}, 41);
  Generator gen(42);
  for (int64_t d : {0, 1, 2}) {
    INFO("dim " << d);
    Shape is = {3, 3, 2};
    is[d] = 5;  // more picks than the dim holds: repeats are certain
    Tensor idx = randint(0, a.shape()[d], is, gen);
    CHECK_GRAD([&](const V& v) { return gather(v[0], d, idx); }, {a});
    Tensor src = leaf(is, 43 + d);
    CHECK_GRAD([&](const V& v) { return scatter_add(v[0], d, idx, v[1]); }, {a, src});
  }
  Tensor idx = randint(0, 4, {3, 2}, gen);
  CHECK_GRAD([&](const V& v) { return gather(v[0], 1, idx); }, {noncontig_leaf({3, 4}, 44)});
  CHECK_GRAD([&](const V& v) { return mul(gather(v[0], 1, idx), gather(v[0], 1, idx)); }, {leaf({3, 4}, 45)});
  CHECK_GRAD([&](const V& v) { return scatter_add(v[0], 1, idx, v[0].narrow(1, 0, 2)); }, {leaf({3, 4}, 46)});

  std::string m = error_of([&] { gather(x, 1, ivec({0, 3}, {2, 1})); });
  CHECK(has(m, "index value 3 out of range"));
  CHECK(has(m, "(2, 3)"));
  m = error_of([&] { gather(x, 1, ivec({0, 0, 0}, {3, 1})); });
  CHECK(has(m, "index.size(0) = 3 exceeds self.size(0) = 2"));
  CHECK_THROWS_AS(gather(x, 1, ivec({0}, {1})), ShapeError);  // rank mismatch
  CHECK_THROWS_AS(gather(x, 1, dvec({0}, {1, 1})), DTypeError);
  CHECK_THROWS_AS(scatter_add(x, 1, ivec({0}, {1, 1}), dvec({1, 2}, {1, 2})), ShapeError);
  CHECK_THROWS_AS(scatter_add(x, 1, ivec({0}, {1, 1}), Tensor::ones({1, 1})), DTypeError);
}

TEST_CASE("pad: F.pad order, values, gradients, errors") {
  Tensor x = dvec({1, 2, 3, 4}, {2, 2});
  Tensor p = pad(x, {1, 0});  // last dim: one on the left
  CHECK(p.shape() == Shape{2, 3});
  CHECK(p.to_vector() == std::vector<double>{0, 1, 2, 0, 3, 4});
  Tensor q = pad(x, {0, 1, 1, 1}, -1.0);  // last dim right 1; first dim 1 each side
  CHECK(q.shape() == Shape{4, 3});
  CHECK(q.to_vector() == std::vector<double>{-1, -1, -1, 1, 2, -1, 3, 4, -1, -1, -1, -1});
  CHECK(pad(x, {}).to_vector() == x.to_vector());
  CHECK(pad(x.t(), {0, 1}).to_vector() == std::vector<double>{1, 3, 0, 2, 4, 0});
  CHECK(pad(ivec({5}, {1}), {2, 0}, 9).to_vector() == std::vector<double>{9, 9, 5});

  Tensor a = leaf({2, 3, 4}, 51);
  CHECK_GRAD([](const V& v) { return pad(v[0], {1, 2}); }, {a});
  CHECK_GRAD([](const V& v) { return pad(v[0], {0, 1, 2, 0, 1, 1}, 3.0); }, {a});
  CHECK_GRAD([](const V& v) { return pad(v[0], {2, 1, 0, 3}); }, {noncontig_leaf({3, 4}, 52)});
  CHECK_GRAD([](const V& v) { return add(pad(v[0], {1, 0}), pad(v[0], {0, 1})); }, {leaf({3, 4}, 53)});

  std::string m = error_of([&] { pad(x, {-1, 0}); });
  CHECK(has(m, "negative"));
  CHECK(has(m, "(2, 2)"));
  CHECK_THROWS_AS(pad(x, {1}), ShapeError);
  CHECK_THROWS_AS(pad(x, {1, 1, 1, 1, 1, 1}), ShapeError);
}

TEST_CASE("index gradients are deterministic and thread-count independent") {
  const int prev = get_num_threads();
  Generator gen(61);
  Tensor w = randn({1000, 64}, gen);  // embedding-like table, f32
  Tensor idx = randint(0, 1000, {4096}, gen);
  Tensor up = randn({4096, 64}, gen);
  Tensor gi = randint(0, 1000, {64, 64}, gen);
  Tensor gup = randn({64, 64}, gen);
  auto run = [&] {
    Tensor wl = w.detach().clone().requires_grad_();
    index_select(wl, 0, idx).backward(up);
    std::vector<double> a = wl.grad().to_vector();
    Tensor wt = w.detach().t().contiguous().requires_grad_();  // (64, 1000): gather along dim 1
    gather(wt, 1, gi).backward(gup);
    std::vector<double> b = wt.grad().to_vector();
    a.insert(a.end(), b.begin(), b.end());
    std::vector<double> c = cat({w, w, w}, 1).to_vector();
    a.insert(a.end(), c.begin(), c.end());
    return a;
  };
  set_num_threads(2);
  std::vector<double> p = run(), p2 = run();
  set_num_threads(1);
  std::vector<double> s = run();
  set_num_threads(prev);
  CHECK(p == p2);
  CHECK(p == s);
}

TEST_CASE("linear_qkv_heads: equals split_qkv_heads(linear(...)), gradient checks, partial use, errors") {
  using lotgrad::testing::leaf;
  using lotgrad::testing::noncontig_leaf;
  for (DType dt : {kFloat64, kFloat32}) {
    Generator g(3);
    Tensor x = randn({3, 3000, 8}, g, dt), w = randn({24, 8}, g, dt), b = randn({24}, g, dt);  // two blocks
    std::vector<Tensor> ups;
    for (int p = 0; p < 3; ++p) ups.push_back(randn({3, 2, 3000, 4}, g, dt));
    for (Tensor* t : {&x, &w, &b}) t->requires_grad_();
    auto run = [&](bool fused) {
      for (Tensor* t : {&x, &w, &b}) t->zero_grad();
      std::array<Tensor, 3> h = fused ? linear_qkv_heads(x, w, b, 2) : split_qkv_heads(linear(x, w, b), 2);
      Tensor loss = add(add(sum(mul(h[0], ups[0])), sum(mul(h[1], ups[1]))), sum(mul(h[2], ups[2])));
      loss.backward();
      return std::vector<Tensor>{h[0].detach(), h[1].detach(), h[2].detach(), x.grad(), w.grad(), b.grad()};
    };
    const auto f = run(true), c = run(false);
    const double tol = dt == kFloat64 ? 1e-12 : 1e-5;
    for (size_t i = 0; i < f.size(); ++i) {
      INFO(dtype_name(dt), " output ", i);
      double scale = 0;  // weight and bias gradients sum 9000 rows
      for (double v : c[i].to_vector()) scale = std::max(scale, std::abs(v));
      CHECK(lotgrad::testing::max_abs_diff(f[i], c[i]) < tol * (1.0 + scale));
    }
  }
  CHECK_GRAD([](const std::vector<Tensor>& v) {
    auto s = linear_qkv_heads(v[0], v[1], v[2], 2);
    return add(mul(s[0], s[2]), s[1]);
  }, {leaf({2, 3, 4}, 1), leaf({12, 4}, 2), leaf({12}, 3)});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return exp(linear_qkv_heads(v[0], v[1], Tensor(), 2)[1]); },
             {noncontig_leaf({2, 3, 4}, 4), noncontig_leaf({12, 4}, 5)});  // k only, no bias, strided inputs
  CHECK_GRAD([](const std::vector<Tensor>& v) {  // x used twice; a transposed gradient comes back
    auto s = linear_qkv_heads(v[0], v[1], v[2], 1);
    return add(sum(matmul(s[0], s[1].transpose(-2, -1))), sum(mul(v[0], v[0])));
  }, {leaf({2, 3, 4}, 6), leaf({12, 4}, 7), leaf({12}, 8)});
  CHECK_THROWS_WITH_AS(linear_qkv_heads(Tensor::zeros({2, 3, 4}), Tensor::zeros({10, 4}), Tensor(), 2),
                       doctest::Contains("weight (10, 4)"), ShapeError);
}

TEST_CASE("linear_qkv_heads with a pre-norm: equals the composite with layer_norm, gradient checks") {
  using lotgrad::testing::leaf;
  for (DType dt : {kFloat64, kFloat32}) {
    Generator g(4);
    // 3 sequences of 3000 rows: blocks of two sequences and one (a partial last block).
    Tensor x = randn({3, 3000, 8}, g, dt), w = randn({24, 8}, g, dt), b = randn({24}, g, dt), lw = randn({8}, g, dt),
           lb = randn({8}, g, dt);
    std::vector<Tensor> ups;
    for (int p = 0; p < 3; ++p) ups.push_back(randn({3, 2, 3000, 4}, g, dt));
    std::vector<Tensor*> ps = {&x, &w, &b, &lw, &lb};
    for (Tensor* t : ps) t->requires_grad_();
    auto run = [&](bool fused) {
      for (Tensor* t : ps) t->zero_grad();
      PreNorm pn{lw, lb, 1e-5};
      std::array<Tensor, 3> h = fused ? linear_qkv_heads(x, w, b, 2, &pn) : split_qkv_heads(linear(layer_norm(x, {8}, lw, lb), w, b), 2);
      Tensor loss = add(add(sum(mul(h[0], ups[0])), sum(mul(h[1], ups[1]))), sum(mul(h[2], ups[2])));
      loss.backward();
      std::vector<Tensor> r = {h[0].detach(), h[1].detach(), h[2].detach()};
      for (Tensor* t : ps) r.push_back(t->grad());
      return r;
    };
    const auto f = run(true), c = run(false);
    const double tol = dt == kFloat64 ? 1e-11 : 1e-4;
    for (size_t i = 0; i < f.size(); ++i) {
      INFO(dtype_name(dt), " output ", i);
      double scale = 0;
      for (double v : c[i].to_vector()) scale = std::max(scale, std::abs(v));
      CHECK(lotgrad::testing::max_abs_diff(f[i], c[i]) < tol * (1.0 + scale));
    }
  }
  CHECK_GRAD([](const std::vector<Tensor>& v) {
    PreNorm pn;
    pn.weight = v[3];
    pn.bias = v[4];
    auto s = linear_qkv_heads(v[0], v[1], v[2], 2, &pn);
    return add(mul(s[0], s[2]), mul(s[1], s[1]));
  }, {leaf({2, 3, 4}, 11), leaf({12, 4}, 12), leaf({12}, 13), leaf({4}, 14), leaf({4}, 15)});
  CHECK_GRAD([](const std::vector<Tensor>& v) {  // norm without affine parameters; x used twice
    PreNorm pn;
    auto s = linear_qkv_heads(v[0], v[1], Tensor(), 1, &pn);
    return add(sum(s[2]), sum(mul(v[0], v[0])));
  }, {leaf({2, 3, 4}, 16), leaf({12, 4}, 17)});
}

TEST_CASE("linear_heads: parts of different head widths equal the composite, gradient checks, errors") {
  using lotgrad::testing::leaf;
  const std::array<int64_t, 3> wd = {3, 1, 4};  // H = 2: weight (2·8, D) = [3·2 | 1·2 | 4·2]
  // composite: linear, then part p = columns [off_p, off_p + 2·w_p) as (B, 2, n, w_p)
  auto composite = [&](const Tensor& y) {
    std::array<Tensor, 3> out;
    int64_t off = 0;
    for (int p = 0; p < 3; ++p) {
      out[p] = y.narrow(-1, off, 2 * wd[p]).reshape({y.size(0), y.size(1), 2, wd[p]}).transpose(1, 2);
      off += 2 * wd[p];
    }
    return out;
  };
  for (DType dt : {kFloat64, kFloat32}) {
    Generator g(5);
    // 3 sequences of 3000 rows: blocks of two sequences and one (a partial last block).
    Tensor x = randn({3, 3000, 8}, g, dt), w = randn({16, 8}, g, dt), b = randn({16}, g, dt), lw = randn({8}, g, dt),
           lb = randn({8}, g, dt);
    std::vector<Tensor> ups;
    for (int p = 0; p < 3; ++p) ups.push_back(randn({3, 2, 3000, wd[p]}, g, dt));
    std::vector<Tensor*> ps = {&x, &w, &b, &lw, &lb};
    for (Tensor* t : ps) t->requires_grad_();
    for (bool normed : {false, true}) {
      auto run = [&](bool fused) {
        for (Tensor* t : ps) t->zero_grad();
        PreNorm pn{lw, lb, 1e-5};
        std::array<Tensor, 3> h = fused ? linear_heads(x, w, b, 2, wd, normed ? &pn : nullptr)
                                        : composite(linear(normed ? layer_norm(x, {8}, lw, lb) : x, w, b));
        Tensor loss = add(add(sum(mul(h[0], ups[0])), sum(mul(h[1], ups[1]))), sum(mul(h[2], ups[2])));
        loss.backward();
        std::vector<Tensor> r = {h[0].detach(), h[1].detach(), h[2].detach(), x.grad(), w.grad(), b.grad()};
        if (normed) r.push_back(lw.grad()), r.push_back(lb.grad());
        return r;
      };
      const auto f = run(true), c = run(false);
      const double tol = dt == kFloat64 ? 1e-11 : 1e-4;
      for (size_t i = 0; i < f.size(); ++i) {
        INFO(dtype_name(dt), " normed ", normed, " output ", i);
        REQUIRE(f[i].shape() == c[i].shape());
        double scale = 0;
        for (double v : c[i].to_vector()) scale = std::max(scale, std::abs(v));
        CHECK(lotgrad::testing::max_abs_diff(f[i], c[i]) < tol * (1.0 + scale));
      }
    }
  }
  CHECK_GRAD([&](const std::vector<Tensor>& v) {  // x used twice, every part, a pre-norm
    PreNorm pn;
    pn.weight = v[3];
    pn.bias = v[4];
    auto s = linear_heads(v[0], v[1], v[2], 2, wd, &pn);
    return add(add(sum(mul(s[0], s[0])), sum(s[1])), add(sum(mul(s[2], s[2])), sum(mul(v[0], v[0]))));
  }, {leaf({2, 3, 4}, 21), leaf({16, 4}, 22), leaf({16}, 23), leaf({4}, 24), leaf({4}, 25)});
  CHECK_THROWS_WITH_AS(linear_heads(Tensor::zeros({2, 3, 4}), Tensor::zeros({15, 4}), Tensor(), 2, wd),
                       doctest::Contains("widths (3, 1, 4)"), ShapeError);
}

TEST_CASE("split_qkv_heads and merge_heads: values against views, gradient checks, partial use") {
  using lotgrad::testing::leaf;
  Tensor x = leaf({2, 3, 12}, 91);  // B 2, n 3, heads 2, dh 2
  auto h = split_qkv_heads(x, 2);
  Tensor ref = x.detach().view({2, 3, 3, 2, 2}).permute({2, 0, 3, 1, 4});
  for (int p = 0; p < 3; ++p) {
    CHECK(h[p].shape() == Shape{2, 2, 3, 2});
    CHECK(h[p].to_vector() == ref.select(0, p).to_vector());
  }
  CHECK(merge_heads(h[1]).to_vector() == x.detach().narrow(2, 4, 4).to_vector());
  CHECK_GRAD([](const std::vector<Tensor>& v) {
    auto s = split_qkv_heads(v[0], 2);
    return add(mul(s[0], s[2]), merge_heads(s[1]).view({2, 2, 3, 2}));
  }, {x});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return exp(split_qkv_heads(v[0], 2)[1]); }, {x});  // k only
  Tensor nc = lotgrad::testing::noncontig_leaf({2, 3, 12}, 92);
  CHECK_GRAD([](const std::vector<Tensor>& v) { return merge_heads(split_qkv_heads(v[0], 2)[2]); }, {nc});
  // Gradients and inputs that arrive as transposed or broadcast views are read in place.
  CHECK_GRAD([](const std::vector<Tensor>& v) {
    auto s = split_qkv_heads(v[0], 2);
    return matmul(v[1], s[1].transpose(-2, -1));  // (2, 3) x (B, H, dh, n): k's gradient comes back transposed
  }, {x, leaf({3, 2}, 93)});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return merge_heads(v[0].transpose(-2, -1)); }, {leaf({2, 2, 2, 3}, 94)});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return merge_heads(v[0].expand({2, 2, 3, 2})); }, {leaf({1, 2, 1, 2}, 95)});
  CHECK(merge_heads(h[0].transpose(-2, -1).contiguous().transpose(-2, -1)).to_vector() == merge_heads(h[0]).to_vector());
  CHECK_THROWS_AS(split_qkv_heads(x, 5), ShapeError);
}
