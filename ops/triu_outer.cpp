#include "triu_outer.h"

#include <algorithm>

#include "../core/autograd.h"
#include "../core/error.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {

int64_t packed_width(int64_t m) { return m * (m + 1) / 2; }

// y (R, P) from x (R, m), both contiguous.
template <class T>
void triu_outer_forward(const T* x, T* y, int64_t R, int64_t m, T c) {
  const int64_t P = packed_width(m);
  parallel_for(0, R, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(P, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * m;
      T* yr = y + r * P;
      for (int64_t i = 0; i < m; ++i) {
        const T xi = xr[i], cxi = c * xi;
        *yr++ = xi * xi;
        for (int64_t j = i + 1; j < m; ++j) *yr++ = cxi * xr[j];
      }
    }
  });
}

// dx (R, m) from g (R, P) and x (R, m).
template <class T>
void triu_outer_backward(const T* g, const T* x, T* dx, int64_t R, int64_t m, T c) {
  const int64_t P = packed_width(m);
  parallel_for(0, R, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(P, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * m;
      const T* gr = g + r * P;
      T* d = dx + r * m;
      std::fill(d, d + m, T(0));
      for (int64_t i = 0; i < m; ++i) {
        const T xi = xr[i];
        T acc = 2 * gr[0] * xi;
        for (int64_t j = i + 1; j < m; ++j) {
          const T cg = c * gr[j - i];
          acc += cg * xr[j];
          d[j] += cg * xi;
        }
        d[i] += acc;
        gr += m - i;
      }
    }
  });
}

struct TriuOuterBackward : Node {
  SavedTensor x;  // contiguous
  double c = 0;
  const char* name() const override { return "TriuOuterBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor X = x.unpack(this), G = grads[0].contiguous();
    const int64_t m = X.dim() ? X.size(-1) : 0, R = m ? X.numel() / m : 0;
    Tensor dx = make_tensor_uninit(X.shape(), X.dtype());
    dispatch_float(X.dtype(), name(), [&]<class T>() {
      triu_outer_backward(G.data_ptr<T>(), X.data_ptr<T>(), dx.data_ptr<T>(), R, m, (T)c);
    });
    return {dx};
  }
  void release() override { x.reset(); }
};

}  // namespace

Tensor triu_outer(const Tensor& x, double off_diagonal) {
  if (x.dim() < 1) throw_shape("triu_outer", "expects x with a last dim (..., m)", {{"x", &x}});
  if (!std::isfinite(off_diagonal))
    throw std::invalid_argument("triu_outer: off_diagonal must be finite, got " + std::to_string(off_diagonal));
  const Tensor X = x.contiguous();
  const int64_t m = X.size(-1), R = m ? X.numel() / m : 0;
  Shape out_shape = X.shape();
  out_shape.back() = packed_width(m);
  Tensor y = make_tensor_uninit(out_shape, X.dtype());
  dispatch_float(X.dtype(), "triu_outer", [&]<class T>() {
    triu_outer_forward(X.data_ptr<T>(), y.data_ptr<T>(), R, m, (T)off_diagonal);
  });
  if (auto node = make_node<TriuOuterBackward>({x})) {
    node->x = save(X);
    node->c = off_diagonal;
    set_history(y, node);
  }
  return y;
}

}  // namespace lotgrad
