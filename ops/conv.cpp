#include "conv.h"

#include <algorithm>
#include <vector>

#include "../core/autograd.h"
#include "../core/error.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {

// Direct form, O(B·n·K·C): rows (b, t) in parallel, channels innermost (contiguous, vectorised).
// wt is the weight transposed, (K, C), so each lag's taps are one contiguous row.
template <class T>
void conv_forward(const T* x, const T* wt, const T* bias, T* y, int64_t B, int64_t n, int64_t C, int64_t K) {
  parallel_for(0, B * n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(C * K, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % n;
      T* yr = y + r * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = bias ? bias[c] : T(0);
      for (int64_t m = 0; m < std::min(K, t + 1); ++m) {
        const T* xr = x + (r - m) * C;
        const T* w = wt + m * C;
        for (int64_t c = 0; c < C; ++c) yr[c] += w[c] * xr[c];
      }
    }
  });
}

// dx[b, s, c] = Σ_m weight[c, m] · g[b, s + m, c] (s + m < n): the same loop looking ahead.
template <class T>
void conv_backward_input(const T* g, const T* wt, T* dx, int64_t B, int64_t n, int64_t C, int64_t K) {
  parallel_for(0, B * n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(C * K, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t s = r % n;
      T* dr = dx + r * C;
      std::fill(dr, dr + C, T(0));
      for (int64_t m = 0; m < std::min(K, n - s); ++m) {
        const T* gr = g + (r + m) * C;
        const T* w = wt + m * C;
        for (int64_t c = 0; c < C; ++c) dr[c] += w[c] * gr[c];
      }
    }
  });
}

// dweight[c, m] = Σ_{b, t} g[b, t, c] · x[b, t − m, c] and dbias[c] = Σ g[b, t, c], as (K + 1, C)
// rows (the last one the bias). Lags in parallel: each (m, c) is summed by one thread in
// (b, t) order, so the result does not depend on the thread count.
template <class T>
void conv_backward_weight(const T* g, const T* x, double* acc, int64_t B, int64_t n, int64_t C, int64_t K) {
  parallel_for(0, K + 1, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(B * n * C, 1)), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      double* a = acc + m * C;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = (m == K ? 0 : m); t < n; ++t) {
          const T* gr = g + (b * n + t) * C;
          if (m == K) {
            for (int64_t c = 0; c < C; ++c) a[c] += gr[c];
          } else {
            const T* xr = x + (b * n + t - m) * C;
            for (int64_t c = 0; c < C; ++c) a[c] += (double)gr[c] * xr[c];
          }
        }
    }
  });
}

struct CausalConv1dBackward : Node {
  SavedTensor x, wt;  // contiguous (B, n, C) and (K, C)
  bool has_bias = false;
  const char* name() const override { return "CausalConv1dBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor X = x.unpack(this), WT = wt.unpack(this), G = grads[0].contiguous();
    const int64_t B = X.size(0), n = X.size(1), C = X.size(2), K = WT.size(0);
    Tensor dx, dw, db;
    dispatch_float(X.dtype(), name(), [&]<class T>() {
      if (needs_grad(0)) {
        dx = make_tensor_uninit({B, n, C}, X.dtype());
        conv_backward_input(G.data_ptr<T>(), WT.data_ptr<T>(), dx.data_ptr<T>(), B, n, C, K);
      }
      if (needs_grad(1) || (has_bias && needs_grad(2))) {
        std::vector<double> acc((size_t)((K + 1) * C), 0.0);
        conv_backward_weight(G.data_ptr<T>(), X.data_ptr<T>(), acc.data(), B, n, C, K);
        dw = make_tensor_uninit({C, K}, X.dtype());
        db = make_tensor_uninit({C}, X.dtype());
        T* w = dw.data_ptr<T>();
        T* bb = db.data_ptr<T>();
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t m = 0; m < K; ++m) w[c * K + m] = (T)acc[(size_t)(m * C + c)];
          bb[c] = (T)acc[(size_t)(K * C + c)];
        }
      }
    });
    return {dx, needs_grad(1) ? dw : Tensor(), has_bias && needs_grad(2) ? db : Tensor()};
  }
  void release() override { x.reset(); wt.reset(); }
};

}  // namespace

Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (x.dim() != 3 || weight.dim() != 2 || weight.size(0) != x.size(2) || weight.size(1) < 1 || x.dtype() != weight.dtype() ||
      (bias.defined() && (bias.shape() != Shape{x.size(2)} || bias.dtype() != x.dtype())))
    throw_shape("causal_conv1d", "expects x (B, n, C), weight (C, K) with K >= 1 and bias (C) or none, of one float dtype",
                {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
  const int64_t B = x.size(0), n = x.size(1), C = x.size(2), K = weight.size(1);
  const Tensor X = x.contiguous(), WT = weight.transpose(0, 1).contiguous();
  const Tensor Bc = bias.defined() ? bias.contiguous() : Tensor();
  Tensor y = make_tensor_uninit({B, n, C}, x.dtype());
  dispatch_float(x.dtype(), "causal_conv1d", [&]<class T>() {
    conv_forward(X.data_ptr<T>(), WT.data_ptr<T>(), Bc.defined() ? Bc.data_ptr<T>() : (const T*)nullptr, y.data_ptr<T>(),
                 B, n, C, K);
  });
  std::vector<Tensor> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  if (auto node = make_node<CausalConv1dBackward>(inputs)) {
    node->x = save(X);
    node->wt = save(WT);
    node->has_bias = bias.defined();
    set_history(y, node);
  }
  return y;
}

}  // namespace lotgrad
