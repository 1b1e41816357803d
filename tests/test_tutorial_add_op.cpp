// The code of docs/tutorial_add_op.md, "Add an op in three places": squareplus,
// y = (x + sqrt(x² + b)) / 2 (Barron 2021, arXiv:2112.11687), a smooth ReLU. The tutorial shows
// the regions between the snippet markers verbatim; tests/tutorial_docs_test.sh checks that.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/core/autograd.h>
#include <lotgrad/core/iter.h>
#include <lotgrad/core/parallel.h>
#include <lotgrad/lotgrad.h>

#include "support/gradcheck.h"

using namespace lotgrad;

// [snippet kernel]
namespace tutorial {
namespace {
// 1. The kernel: y from x, both contiguous, n elements, in parallel chunks (each element is
// written by one thread: deterministic).
template <class T>
void squareplus_kernel(const T* x, T* y, int64_t n, T b) {
  parallel_for(0, n, kParallelGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = (x[i] + std::sqrt(x[i] * x[i] + b)) / 2;
  });
}
// [end kernel]

// [snippet backward]
// 2. The backward node: dy/dx = (1 + x / sqrt(x² + b)) / 2 = y / sqrt(x² + b). It saves x
// (the input) and recomputes the root: one saved tensor instead of two.
struct SquareplusBackward : Node {
  SavedTensor x;
  double b = 0;
  const char* name() const override { return "SquareplusBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor X = x.unpack(this), G = grads[0].contiguous();
    Tensor dx = make_tensor_uninit(X.shape(), X.dtype());
    dispatch_float(X.dtype(), name(), [&]<class T>() {
      const T *xp = X.data_ptr<T>(), *g = G.data_ptr<T>();
      T* d = dx.data_ptr<T>();
      parallel_for(0, X.numel(), kParallelGrain, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) d[i] = g[i] * (1 + xp[i] / std::sqrt(xp[i] * xp[i] + (T)b)) / 2;
      });
    });
    return {dx};
  }
  void release() override { x.reset(); }
};
}  // namespace
// [end backward]

// [snippet function]
// 3. The public function: checks its arguments (an exception naming the op and the values),
// runs the kernel, and records the node when x requires a gradient.
Tensor squareplus(const Tensor& x, double b = 4.0) {
  if (!(b > 0) || !std::isfinite(b))
    throw std::invalid_argument("squareplus: b must be finite and > 0, got " + std::to_string(b));
  const Tensor X = x.contiguous();
  Tensor y = make_tensor_uninit(X.shape(), X.dtype());
  dispatch_float(X.dtype(), "squareplus", [&]<class T>() {
    squareplus_kernel(X.data_ptr<T>(), y.data_ptr<T>(), X.numel(), (T)b);
  });
  if (auto node = make_node<SquareplusBackward>({x})) {
    node->x = save(X);
    node->b = b;
    set_history(y, node);
  }
  return y;
}
}  // namespace tutorial
// [end function]

// [snippet tests]
TEST_CASE("tutorial squareplus: its gradient matches central differences in f64") {
  Generator g(1);
  Tensor x = mul(randn({3, 5}, g, kFloat64), 3.0).requires_grad_();
  CHECK_GRAD([](const std::vector<Tensor>& in) { return tutorial::squareplus(in[0], 2.0); }, {x});
  // a non-contiguous input (a transposed view) takes the same path through contiguous()
  Tensor xt = randn({5, 3}, g, kFloat64).requires_grad_();
  CHECK_GRAD([](const std::vector<Tensor>& in) { return tutorial::squareplus(in[0].transpose(0, 1)); }, {xt});
}

TEST_CASE("tutorial squareplus: the kernel equals the composite of existing ops") {
  Generator g(2);
  const Tensor x = mul(randn({1000}, g), 4.0);  // f32
  const Tensor composite = mul(add(x, sqrt(add(mul(x, x), 4.0))), 0.5);
  CHECK(max(abs(sub(tutorial::squareplus(x), composite))).item() < 1e-5);
  // a smooth ReLU: ≈ 0 far below zero, ≈ x far above
  CHECK(tutorial::squareplus(Tensor::from_vector(std::vector<double>{-100.0}, {1})).item() < 0.02);
  CHECK(tutorial::squareplus(Tensor::from_vector(std::vector<double>{100.0}, {1})).item() == doctest::Approx(100.0).epsilon(1e-3));
}

TEST_CASE("tutorial squareplus: a bad b is an exception naming the op and the value") {
  const Tensor x = Tensor::ones({2});
  CHECK_THROWS_WITH_AS(tutorial::squareplus(x, -1.0), doctest::Contains("squareplus: b must be finite and > 0, got -1"),
                       std::invalid_argument);
}
// [end tests]
