// Tensor views and autograd semantics.
#include <cstdlib>
#include <doctest/doctest.h>

#include "support/gradcheck.h"
#include "support/same_bits.h"

using namespace lotgrad;
using namespace lotgrad::testing;

TEST_CASE("views share storage and the version counter") {
  Tensor a = Tensor::arange(0.0, 12.0, 1.0, kFloat32).view({3, 4});
  Tensor t = a.t();
  CHECK(t.shares_storage(a));
  CHECK_FALSE(t.is_contiguous());
  CHECK(t.shape() == Shape{4, 3});
  CHECK(t.at({1, 2}) == doctest::Approx(9.0));
  Tensor n = a.narrow(1, 1, 2);
  CHECK(n.shape() == Shape{3, 2});
  CHECK(n.at({2, 0}) == doctest::Approx(9.0));
  Tensor s = a.slice(1, 0, 4, 2);
  CHECK(s.at({1, 1}) == doctest::Approx(6.0));
  Tensor e = a.select(0, 1).unsqueeze(0).expand({5, 4});
  CHECK(e.shape() == Shape{5, 4});
  CHECK(e.at({4, 3}) == doctest::Approx(7.0));
  const uint64_t v0 = a.version();
  n.fill_(-1.0);
  CHECK(a.version() == v0 + 1);
  CHECK(a.at({0, 1}) == doctest::Approx(-1.0));
  Tensor c = t.contiguous();
  CHECK(c.is_contiguous());
  CHECK_FALSE(c.shares_storage(a));
  CHECK(c.at({1, 2}) == doctest::Approx(t.at({1, 2})));
  Tensor p = Tensor::zeros({2, 3, 4}).permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(Tensor::zeros({2, 1, 3}).squeeze().shape() == Shape{2, 3});
  CHECK(a.reshape({2, -1}).shape() == Shape{2, 6});
  CHECK_THROWS_AS(t.view({12}), ShapeError);  // needs a copy
  CHECK(t.reshape({12}).at({1}) == doctest::Approx(t.at({0, 1})));
}

TEST_CASE("storage is 64-byte aligned and printing names shape and dtype") {
  Tensor a = Tensor::zeros({3, 5}, kFloat64);
  CHECK(reinterpret_cast<uintptr_t>(a.impl()->storage->data) % 64 == 0);
  std::string s = a.to_string();
  CHECK(s.find("(3, 5)") != std::string::npos);
  CHECK(s.find("f64") != std::string::npos);
}

TEST_CASE("the storage cache reuses a freed block of n..2n bytes and counts reserved bytes") {
  empty_storage_cache();
  const int64_t base = storage_bytes_reserved();
  CHECK(base == storage_bytes_in_use());  // nothing cached
  { Tensor a = Tensor::empty({1 << 20}, kFloat32); }  // 4 MiB, freed into the cache
  CHECK(storage_bytes_reserved() == base + (4 << 20));
  {
    Tensor b = Tensor::empty({3 << 18}, kFloat32);  // 3 MiB: served by the cached 4 MiB block
    CHECK(storage_bytes_reserved() == base + (4 << 20));
    for (double v : b.narrow(0, 0, 64).to_vector()) CHECK(v == 0.0);  // zero-filled all the same
    Tensor c = Tensor::empty({3 << 17}, kFloat32);  // 1.5 MiB: nothing cached fits, a fresh block
    CHECK(storage_bytes_reserved() == base + (4 << 20) + (3 << 19));
  }
  { Tensor d = Tensor::empty({3 << 17}, kFloat32); }  // 1.5 MiB: the cached 1.5 MiB block, not the 4 MiB
  CHECK(storage_bytes_reserved() == base + (4 << 20) + (3 << 19));
  empty_storage_cache();
  CHECK(storage_bytes_reserved() == storage_bytes_in_use());
}

TEST_CASE("gradients accumulate over uses and across backward calls") {
  Tensor x = leaf({3}, 1);
  Tensor y = mul(x, x);  // the same tensor used twice
  y.backward(Tensor::ones({3}, kFloat64));
  std::vector<double> xv = x.to_vector(), g = x.grad().to_vector();
  for (int i = 0; i < 3; ++i) CHECK(g[i] == doctest::Approx(2 * xv[i]));
  Tensor z = add(x, x);
  z.backward(Tensor::ones({3}, kFloat64));  // accumulates into .grad
  g = x.grad().to_vector();
  for (int i = 0; i < 3; ++i) CHECK(g[i] == doctest::Approx(2 * xv[i] + 2));
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("no_grad records nothing, detach cuts history") {
  Tensor x = leaf({2}, 2);
  {
    NoGradGuard ng;
    Tensor y = exp(x);
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
  }
  CHECK(GradMode::is_enabled());
  Tensor y = exp(x);
  CHECK(y.grad_fn() != nullptr);
  CHECK(std::string(y.grad_fn()->name()) == "ExpBackward");
  Tensor d = y.detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.shares_storage(y));
}

TEST_CASE("a second backward needs retain_graph") {
  Tensor x = leaf({3}, 3);
  Tensor y = exp(x);
  Tensor g = Tensor::ones({3}, kFloat64);
  y.backward(g, /*retain_graph=*/true);
  y.backward(g);  // allowed: the graph was retained
  std::vector<double> ex = exp(x.detach()).to_vector(), gr = x.grad().to_vector();
  for (int i = 0; i < 3; ++i) CHECK(gr[i] == doctest::Approx(2 * ex[i]));
  try {
    y.backward(g);
    FAIL("expected an AutogradError");
  } catch (const AutogradError& e) {
    CHECK(std::string(e.what()).find("ExpBackward") != std::string::npos);
    CHECK(std::string(e.what()).find("retain_graph") != std::string::npos);
  }
}

TEST_CASE("modifying a saved tensor in place is caught and names the op") {
  Tensor x = leaf({4}, 4);
  Tensor h = mul(x, 2.0);  // non-leaf
  Tensor y = mul(h, h);     // saves h
  {
    NoGradGuard ng;
    h.detach().add_(Tensor::ones({4}, kFloat64));
  }
  try {
    y.backward(Tensor::ones({4}, kFloat64));
    FAIL("expected an AutogradError");
  } catch (const AutogradError& e) {
    CHECK(std::string(e.what()).find("MulBackward") != std::string::npos);
    CHECK(std::string(e.what()).find("in-place") != std::string::npos);
  }
}

TEST_CASE("a chain of 100,000 ops backpropagates without recursion") {
  Tensor x = leaf({1}, 5);
  Tensor y = x;
  for (int i = 0; i < 100000; ++i) y = add(y, 1e-6);
  y.backward(Tensor::ones({1}, kFloat64));
  CHECK(x.grad().item() == doctest::Approx(1.0));
}

// Freeing a graph destroyed each node inside the previous one's destructor: 200,000 ops
// overflowed the 8 MB stack in the release build, with or without a backward. The sanitizer
// job (scripts/sanitize.sh) sets LOTGRAD_GRAPH_OPS=10000000 (3.5 GB, over a minute here).
TEST_CASE("a graph of 1,000,000 ops is freed without recursion, with and without backward") {
  const char* env = std::getenv("LOTGRAD_GRAPH_OPS");
  const int64_t ops = env ? std::stoll(env) : 1000000;
  MESSAGE("a chain of " << ops << " ops");
  for (bool backward : {false, true}) {
    CAPTURE(backward);
    Tensor x = leaf({1}, 5);
    Tensor y = x;
    for (int64_t i = 0; i < ops; ++i) y = add(y, 1e-6);
    if (backward) {
      y.backward(Tensor::ones({1}, kFloat64));
      CHECK(x.grad().item() == doctest::Approx(1.0));
    }
    y = Tensor();  // the whole chain dies here
    CHECK(x.defined());
  }
  // a node held twice survives the first holder and is freed with the second
  Tensor x = leaf({1}, 6);
  Tensor shared = add(x, 1.0);
  Tensor a = mul(shared, 2.0), b = mul(shared, 3.0);
  a = Tensor();
  shared = Tensor();
  b.backward(Tensor::ones({1}, kFloat64));
  CHECK(x.grad().item() == doctest::Approx(3.0));
}

TEST_CASE("broadcast gradients are reduced to the input shape") {
  Tensor a = leaf({2, 3}, 6);
  Tensor b = leaf({3}, 7);
  Tensor c = leaf({2, 1}, 8);
  CHECK_GRAD([](const std::vector<Tensor>& v) { return mul(add(v[0], v[1]), v[2]); }, {a, b, c});
  CHECK(b.grad().shape() == Shape{3});
  CHECK(c.grad().shape() == Shape{2, 1});
}

TEST_CASE("sum_to: leading-dim and general reductions against a plain loop, over many row blocks") {
  // (3, 300, 5) = 900 rows: several 256-row blocks of the parallel path plus a partial one.
  for (DType dt : {kFloat64, kFloat32}) {
    Generator gen(3);
    Tensor g = randn({3, 300, 5}, gen, dt);
    const std::vector<double> gv = g.to_vector();
    auto want = [&](const Shape& shape) {  // plain loop, in double
      std::vector<double> w((size_t)shape_numel(shape), 0.0);
      const Shape full = {3, 300, 5};
      const size_t lead = 3 - shape.size();
      for (int64_t a = 0; a < 3; ++a)
        for (int64_t b = 0; b < 300; ++b)
          for (int64_t c = 0; c < 5; ++c) {
            const int64_t idx[3] = {a, b, c};
            int64_t o = 0;
            for (size_t d = 0; d < shape.size(); ++d) o = o * shape[d] + (shape[d] == 1 ? 0 : idx[lead + d]);
            w[(size_t)o] += gv[(size_t)((a * 300 + b) * 5 + c)];
          }
      return w;
    };
    for (const Shape& s : {Shape{5}, Shape{300, 5}, Shape{1, 5}, Shape{1, 1, 5}, Shape{3, 1, 5}, Shape{3, 300, 1}, Shape{1}, Shape{}}) {
      INFO("shape ", shape_str(s), " dtype ", dtype_name(dt));
      const std::vector<double> got = sum_to(g, s).to_vector(), w = want(s);
      REQUIRE(got.size() == w.size());
      for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(w[i]).epsilon(dt == kFloat64 ? 1e-12 : 1e-5));
    }
  }
}

TEST_CASE("gradients flow through every view") {
  Tensor a = leaf({3, 4}, 9);
  CHECK_GRAD([](const std::vector<Tensor>& v) { return mul(v[0].t(), v[0].t()); }, {a});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return exp(v[0].narrow(1, 1, 2)); }, {a});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return exp(v[0].slice(1, 0, 4, 3)); }, {a});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return exp(v[0].select(0, 2)); }, {a});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return exp(v[0].reshape({2, 6}).unsqueeze(1)); }, {a});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return exp(v[0].t().reshape({12})); }, {a});  // copying reshape
  CHECK_GRAD([](const std::vector<Tensor>& v) { return exp(v[0].unsqueeze(0).expand({2, 3, 4})); }, {a});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return exp(v[0].view({3, 2, 2}).permute({2, 0, 1})); }, {a});
  CHECK_GRAD([](const std::vector<Tensor>& v) { return v[0].clone().flatten(); }, {a});
  Tensor nc = noncontig_leaf({3, 4}, 10);
  CHECK_GRAD([](const std::vector<Tensor>& v) { return tanh(v[0].narrow(0, 1, 2)); }, {nc});
}

TEST_CASE("errors name the op, the shapes and the rule") {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4, 5});
  try {
    add(a, b);
    FAIL("expected ShapeError");
  } catch (const ShapeError& e) {
    std::string m = e.what();
    CHECK(m.find("add") != std::string::npos);
    CHECK(m.find("(2, 3)") != std::string::npos);
    CHECK(m.find("(4, 5)") != std::string::npos);
    CHECK(m.find("broadcast") != std::string::npos);
  }
  Tensor d = Tensor::zeros({2, 3}, kFloat64);
  try {
    mul(a, d);
    FAIL("expected DTypeError");
  } catch (const DTypeError& e) {
    std::string m = e.what();
    CHECK(m.find("mul") != std::string::npos);
    CHECK(m.find("f32") != std::string::npos);
    CHECK(m.find("f64") != std::string::npos);
  }
  CHECK_THROWS_AS(a.narrow(1, 2, 2), ShapeError);
  CHECK_THROWS_AS(a.permute({0, 0}), ShapeError);
  CHECK_THROWS_AS(a.expand({3, 3}), ShapeError);
}

TEST_CASE("the generator gives the same bits for the same seed, at any thread count") {
  set_num_threads(1);
  Generator g1(42);
  Tensor a = randn({100001}, g1);
  set_num_threads(2);
  Generator g2(42);
  Tensor b = randn({100001}, g2);
  CHECK(same_bits(a, b));
  Generator g3(43);
  Tensor c = randn({100001}, g3);
  CHECK_FALSE(same_bits(a, c));
  // moments of N(0,1)
  std::vector<double> v = a.to_vector();
  double m = 0, s = 0;
  for (double x : v) m += x;
  m /= v.size();
  for (double x : v) s += (x - m) * (x - m);
  s /= v.size();
  CHECK(std::abs(m) < 0.02);
  CHECK(std::abs(s - 1) < 0.02);
}

TEST_CASE("0-d tensors view, unsqueeze and flatten") {
  Tensor s = Tensor::scalar(3.0);
  CHECK(s.view({1}).shape() == Shape{1});
  CHECK(s.reshape({1, 1}).at({0, 0}) == 3.0);
  CHECK(s.unsqueeze(0).shape() == Shape{1});
  CHECK(s.flatten().shape() == Shape{1});
}

TEST_CASE("a post-accumulate-grad hook runs once per backward after the leaf's last gradient") {
  Tensor w1 = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3}).requires_grad_();
  Tensor w2 = Tensor::from_vector(std::vector<float>{0.5f, -1, 2}, {3}).requires_grad_();
  Tensor unused = Tensor::ones({2}).requires_grad_();
  Tensor x = Tensor::from_vector(std::vector<float>{4, 5, 6}, {3});
  std::vector<std::string> order;
  std::vector<double> seen_w1;
  w1.register_post_accumulate_grad_hook([&](const Tensor& t) {
    order.push_back("w1");
    seen_w1 = t.grad().to_vector();
  });
  w2.register_post_accumulate_grad_hook([&](const Tensor&) { order.push_back("w2"); });
  unused.register_post_accumulate_grad_hook([&](const Tensor&) { order.push_back("unused"); });
  // w1 used twice (two AccumulateGrad nodes): d/dw1 sum(w1*x + w1*w1) = x + 2 w1; w2 is
  // used later in the forward pass, so backward reaches it first.
  Tensor first = add(mul(w1, x), mul(w1, w1));  // named: the order of creation is the order of the statements
  Tensor y = sum(add(first, mul(w2, w2)));
  y.backward();
  REQUIRE(order.size() == 2);
  CHECK(order[0] == "w2");
  CHECK(order[1] == "w1");
  CHECK(seen_w1 == std::vector<double>{6, 9, 12});  // the whole gradient, not one use's
  // Again, without zeroing: the hook sees the sum over both backward passes.
  order.clear();
  sum(mul(w1, x)).backward();
  CHECK(order == std::vector<std::string>{"w1"});
  CHECK(seen_w1 == std::vector<double>{10, 14, 18});
  // Removed: no call.
  w1.register_post_accumulate_grad_hook(nullptr);
  order.clear();
  sum(mul(w1, x)).backward();
  CHECK(order.empty());
  // Only leaves that require grad have one.
  CHECK_THROWS_WITH_AS(mul(w1, x).register_post_accumulate_grad_hook([](const Tensor&) {}),
                       doctest::Contains("not a leaf"), AutogradError);
  CHECK_THROWS_WITH_AS(x.register_post_accumulate_grad_hook([](const Tensor&) {}),
                       doctest::Contains("requires_grad false"), AutogradError);
}
