#include "norm.h"

#include <cmath>
#include <vector>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {

int64_t row_grain(int64_t N) { return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(N, 1)); }

// x (rows, N) contiguous -> y, mean (rows), rstd (rows). Statistics accumulate in double.
template <class T>
void layer_norm_fwd(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t rows, int64_t N, double eps) {
  parallel_for(0, rows, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * N;
      T* yr = y + r * N;
      double s = 0;
      for (int64_t j = 0; j < N; ++j) s += xr[j];
      const double mu = N ? s / (double)N : 0.0;
      double v = 0;
      for (int64_t j = 0; j < N; ++j) {
        const double d = xr[j] - mu;
        v += d * d;
      }
      const double rs = 1.0 / std::sqrt((N ? v / (double)N : 0.0) + eps);
      const T m = (T)mu, rt = (T)rs;
      mean[r] = m;
      rstd[r] = rt;
      if (w && b)
        for (int64_t j = 0; j < N; ++j) yr[j] = (xr[j] - m) * rt * w[j] + b[j];
      else if (w)
        for (int64_t j = 0; j < N; ++j) yr[j] = (xr[j] - m) * rt * w[j];
      else if (b)
        for (int64_t j = 0; j < N; ++j) yr[j] = (xr[j] - m) * rt + b[j];
      else
        for (int64_t j = 0; j < N; ++j) yr[j] = (xr[j] - m) * rt;
    }
  });
}

struct LayerNormBackward : Node {
  SavedTensor x, w, mean, rstd;  // x contiguous (rows, N)
  int64_t rows = 0, N = 0;
  const char* name() const override { return "LayerNormBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor xv = x.defined() ? x.unpack(this) : Tensor(), mv = mean.unpack(this), rv = rstd.unpack(this);
    const Tensor wv = w.defined() ? w.unpack(this).contiguous() : Tensor();
    const Tensor g = grads[0].contiguous();
    Tensor dx, dw, db;
    const DType dt = g.dtype();
    dispatch_float(dt, name(), [&]<class T>() {
      const T* xp = xv.defined() ? xv.data_ptr<T>() : nullptr;
      const T* gp = g.data_ptr<T>();
      const T* mp = mv.data_ptr<T>();
      const T* rp = rv.data_ptr<T>();
      const int64_t R = rows, n = N;
      if (needs_grad(0)) {
        // dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), gw = g * w.
        dx = make_tensor(xv.shape(), dt);
        T* dp = dx.data_ptr<T>();
        const T* wp = wv.defined() ? wv.data_ptr<T>() : nullptr;
        parallel_for(0, R, row_grain(n), [&](int64_t r0, int64_t r1) {
          std::vector<T> gw((size_t)n);
          for (int64_t r = r0; r < r1; ++r) {
            const T* xr = xp + r * n;
            const T* gr = gp + r * n;
            T* dr = dp + r * n;
            const T m = mp[r], rs = rp[r];
            double a = 0, c = 0;
            for (int64_t j = 0; j < n; ++j) {
              gw[j] = wp ? gr[j] * wp[j] : gr[j];
              a += gw[j];
              c += gw[j] * ((xr[j] - m) * rs);
            }
            const T am = (T)(a / (double)n), cm = (T)(c / (double)n);
            for (int64_t j = 0; j < n; ++j) dr[j] = rs * (gw[j] - am - (xr[j] - m) * rs * cm);
          }
        });
      }
      const bool need_w = needs_grad(1), need_b = needs_grad(2);
      if (need_w || need_b) {
        // Column blocks in parallel; each column sums its rows in order (in double).
        if (need_w) dw = make_tensor({n}, dt);
        if (need_b) db = make_tensor({n}, dt);
        T* dwp = need_w ? dw.data_ptr<T>() : nullptr;
        T* dbp = need_b ? db.data_ptr<T>() : nullptr;
        parallel_for(0, n, std::max<int64_t>(16, kParallelGrain / std::max<int64_t>(R, 1)), [&](int64_t j0, int64_t j1) {
          std::vector<double> sw((size_t)(j1 - j0), 0.0), sb((size_t)(j1 - j0), 0.0);
          for (int64_t r = 0; r < R; ++r) {
            const T* gr = gp + r * n;
            if (need_w) {
              const T* xr = xp + r * n;
              const T m = mp[r], rs = rp[r];
              for (int64_t j = j0; j < j1; ++j) sw[j - j0] += (double)(gr[j] * ((xr[j] - m) * rs));
            }
            if (need_b)
              for (int64_t j = j0; j < j1; ++j) sb[j - j0] += (double)gr[j];
          }
          for (int64_t j = j0; j < j1; ++j) {
            if (dwp) dwp[j] = (T)sw[j - j0];
            if (dbp) dbp[j] = (T)sb[j - j0];
          }
        });
      }
    });
    // Weight/bias gradients come back in the normalized shape.
    if (dw.defined()) dw = dw.view(next[1].shape);
    if (db.defined()) db = db.view(next[2].shape);
    if (dx.defined()) dx = dx.view(next[0].shape);
    return {dx, dw, db};
  }
  void release() override { x.reset(); w.reset(); mean.reset(); rstd.reset(); }
};

}  // namespace

Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias, double eps) {
  const char* op = "layer_norm";
  if (!x.defined()) throw ShapeError("layer_norm: undefined tensor");
  if (!is_floating(x.dtype())) throw_dtype(op, "expects a floating tensor (f32 or f64)", {{"x", &x}});
  const int64_t k = (int64_t)normalized_shape.size();
  bool ok = k >= 1 && k <= x.dim();
  for (int64_t i = 0; ok && i < k; ++i) ok = x.size(x.dim() - k + i) == normalized_shape[i];
  if (!ok)
    throw_shape(op, "input's trailing dims must equal normalized_shape " + shape_str(normalized_shape), {{"x", &x}});
  for (auto [t, nm] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    if (!t->defined()) continue;
    if (t->dtype() != x.dtype())
      throw_dtype(op, std::string(nm) + " must share the input's dtype", {{"x", &x}, {nm, t}});
    if (t->shape() != normalized_shape)
      throw_shape(op, std::string(nm) + " must have shape normalized_shape " + shape_str(normalized_shape), {{"x", &x}, {nm, t}});
  }
  const int64_t N = shape_numel(normalized_shape);
  const int64_t rows = N ? x.numel() / N : 0;
  const Tensor xc = x.detach().contiguous();
  const Tensor wc = weight.defined() ? weight.detach().contiguous() : Tensor();
  const Tensor bc = bias.defined() ? bias.detach().contiguous() : Tensor();
  Tensor out = make_tensor(x.shape(), x.dtype());
  Tensor mean = make_tensor({rows}, x.dtype()), rstd = make_tensor({rows}, x.dtype());
  dispatch_float(x.dtype(), op, [&]<class T>() {
    layer_norm_fwd<T>(xc.data_ptr<T>(), wc.defined() ? wc.data_ptr<T>() : nullptr, bc.defined() ? bc.data_ptr<T>() : nullptr,
                      out.data_ptr<T>(), mean.data_ptr<T>(), rstd.data_ptr<T>(), rows, N, eps);
  });
  if (auto n = make_node<LayerNormBackward>({x, weight, bias})) {
    n->rows = rows;
    n->N = N;
    n->mean = save(mean);
    n->rstd = save(rstd);
    if (n->needs_grad(0) || n->needs_grad(1)) n->x = save(xc);
    if (n->needs_grad(0) && weight.defined()) n->w = save(weight);
    set_history(out, n);
  }
  return out;
}

}  // namespace lotgrad
