#include "softmax.h"

#include <cmath>
#include <limits>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {

// Rows per parallel chunk so that a chunk holds about kParallelGrain elements.
int64_t row_grain(int64_t L) { return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(L, 1)); }

// Visits the rows of contiguous (outer, L, inner) data: f(element offset of the row's
// first entry, stride along the row). Row r is (o, i) = (r / inner, r % inner).
template <class F>
void for_rows(int64_t outer, int64_t L, int64_t inner, F&& f) {
  parallel_for(0, outer * inner, row_grain(L), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t o = r / inner, i = r % inner;
      f(o * L * inner + i, inner);
    }
  });
}

template <class T>
void softmax_row(const T* x, T* y, int64_t L, int64_t s, bool log) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < L; ++j) mx = x[j * s] > mx ? x[j * s] : mx;
  if (mx == -std::numeric_limits<T>::infinity()) {
    // A row of all -inf has no distribution: NaN, as in PyTorch. (A NaN entry never wins
    // the max; it reaches every output through the sum.)
    for (int64_t j = 0; j < L; ++j) y[j * s] = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  T sum = 0;
  if (log) {
    for (int64_t j = 0; j < L; ++j) sum += std::exp(x[j * s] - mx);
    // (x - max) - log(sum), not x - (max + log(sum)): keeps precision for large logits.
    const T ls = std::log(sum);
    for (int64_t j = 0; j < L; ++j) y[j * s] = (x[j * s] - mx) - ls;
  } else {
    for (int64_t j = 0; j < L; ++j) {
      const T e = std::exp(x[j * s] - mx);
      y[j * s] = e;
      sum += e;
    }
    const T inv = T(1) / sum;
    for (int64_t j = 0; j < L; ++j) y[j * s] *= inv;
  }
}

struct SoftmaxBackward : Node {
  SavedTensor y;
  int64_t outer = 1, L = 1, inner = 1;
  bool log = false;
  const char* name() const override { return log ? "LogSoftmaxBackward" : "SoftmaxBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor yv = y.unpack(this);
    const Tensor g = grads[0].contiguous();
    Tensor dx = make_tensor(yv.shape(), yv.dtype());
    dispatch_float(yv.dtype(), name(), [&]<class T>() {
      const T* gp = g.data_ptr<T>();
      const T* yp = yv.data_ptr<T>();
      T* dp = dx.data_ptr<T>();
      const bool lg = log;
      for_rows(outer, L, inner, [&](int64_t base, int64_t s) {
        const T* gr = gp + base;
        const T* yr = yp + base;
        T* dr = dp + base;
        T acc = 0;
        if (lg) {
          for (int64_t j = 0; j < L; ++j) acc += gr[j * s];
          for (int64_t j = 0; j < L; ++j) dr[j * s] = gr[j * s] - std::exp(yr[j * s]) * acc;
        } else {
          for (int64_t j = 0; j < L; ++j) acc += gr[j * s] * yr[j * s];
          for (int64_t j = 0; j < L; ++j) dr[j * s] = yr[j * s] * (gr[j * s] - acc);
        }
      });
    });
    return {dx};
  }
  void release() override { y.reset(); }
};

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  if (!x.defined()) throw ShapeError(std::string(op) + ": undefined tensor");
  if (!is_floating(x.dtype())) throw_dtype(op, "expects a floating tensor (f32 or f64)", {{"x", &x}});
  const int64_t d = wrap_dim(dim, std::max<int64_t>(x.dim(), 1), op, &x);
  int64_t outer = 1, L = 1, inner = 1;
  for (int64_t i = 0; i < x.dim(); ++i) (i < d ? outer : i == d ? L : inner) *= x.size(i);
  const Tensor xc = x.detach().contiguous();
  Tensor out = make_tensor(x.shape(), x.dtype());
  dispatch_float(x.dtype(), op, [&]<class T>() { detail::softmax_rows<T>(xc.data_ptr<T>(), out.data_ptr<T>(), outer, L, inner, log); });
  if (auto n = make_node<SoftmaxBackward>({x})) {
    n->y = save(out);
    n->outer = outer;
    n->L = L;
    n->inner = inner;
    n->log = log;
    set_history(out, n);
  }
  return out;
}

}  // namespace

namespace detail {
template <class T>
void softmax_rows(const T* x, T* y, int64_t outer, int64_t L, int64_t inner, bool log) {
  if (L == 0) return;
  for_rows(outer, L, inner, [&](int64_t base, int64_t s) { softmax_row<T>(x + base, y + base, L, s, log); });
}
template void softmax_rows<float>(const float*, float*, int64_t, int64_t, int64_t, bool);
template void softmax_rows<double>(const double*, double*, int64_t, int64_t, int64_t, bool);
}  // namespace detail

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, true); }

}  // namespace lotgrad
