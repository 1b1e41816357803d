#include "norm.h"

#include <cmath>
#include <vector>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {

int64_t row_grain(int64_t N) { return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(N, 1)); }

// Sum of f(j), j in [0, N), in a fixed order: 16 lane sums, then the lanes pairwise. The
// lane-wise adds vectorise without -ffast-math, the order never depends on threads, and the
// error is that of a 16-way pairwise sum (a single running sum is both slower and worse).
constexpr int64_t kLanes = 16;
template <class T, class F>
inline T lane_sum(int64_t N, F&& f) {
  T acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= N; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += f(j + l);
  for (int64_t l = 0; j + l < N; ++l) acc[l] += f(j + l);
  for (int64_t w = kLanes / 2; w >= 1; w /= 2)
    for (int64_t l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// x (rows, N) contiguous -> y, mean (rows), rstd (rows). Two passes per row (mean, then
// the centred variance) for stability.
template <class T>
void layer_norm_fwd(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t rows, int64_t N, double eps) {
  parallel_for(0, rows, row_grain(N), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * N;
      T* yr = y + r * N;
      const T m = N ? lane_sum<T>(N, [&](int64_t j) { return xr[j]; }) / (T)N : T(0);
      const T v = N ? lane_sum<T>(N, [&](int64_t j) { return (xr[j] - m) * (xr[j] - m); }) / (T)N : T(0);
      const T rt = (T)(1.0 / std::sqrt((double)v + eps));
      if (mean) mean[r] = m;  // null when a fused op only recomputes the rows
      if (rstd) rstd[r] = rt;
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

// Rows per block of the weight/bias gradient: each block sums its rows into its own partial
// (in T), the partials are then added in block order (in double). Fixed blocks keep the bits
// independent of the thread count; one pass over x and g serves dx, dw and db together.
constexpr int64_t kRowBlock = 256;

// dx (if dp) for rows [0, R) of contiguous (R, n) data, and the weight/bias gradient sums
// added into sw/sb (if given): per fixed row block in T, then blocks in order in double.
template <class T>
void layer_norm_bwd(const T* xp, const T* gp, const T* mp, const T* rp, const T* wp, T* dp, double* sw, double* sb,
                    int64_t R, int64_t n) {
  const int64_t nblk = (R + kRowBlock - 1) / kRowBlock;
  // partial[k] = (dw partial (n), db partial (n)) of row block k
  std::vector<T> part(sw || sb ? (size_t)(nblk * 2 * n) : 0, T(0));
  parallel_for(0, nblk, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(kRowBlock * n, 1)), [&](int64_t k0, int64_t k1) {
    std::vector<T> gw((size_t)n), xh((size_t)n);
    for (int64_t k = k0; k < k1; ++k) {
      T* pw = part.empty() ? nullptr : part.data() + k * 2 * n;
      T* pb = pw ? pw + n : nullptr;
      for (int64_t r = k * kRowBlock; r < std::min(R, (k + 1) * kRowBlock); ++r) {
        const T* gr = gp + r * n;
        const T rs = rp[r];
        if (xp) {  // x is given whenever dx or dw is needed
          const T* xr = xp + r * n;
          const T m = mp[r];
          for (int64_t j = 0; j < n; ++j) xh[j] = (xr[j] - m) * rs;
        }
        if (pw && sw)
          for (int64_t j = 0; j < n; ++j) pw[j] += gr[j] * xh[j];
        if (pb && sb)
          for (int64_t j = 0; j < n; ++j) pb[j] += gr[j];
        if (!dp) continue;
        // dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), gw = g * w.
        for (int64_t j = 0; j < n; ++j) gw[j] = wp ? gr[j] * wp[j] : gr[j];
        const T am = lane_sum<T>(n, [&](int64_t j) { return gw[j]; }) / (T)n;
        const T cm = lane_sum<T>(n, [&](int64_t j) { return gw[j] * xh[j]; }) / (T)n;
        T* dr = dp + r * n;
        for (int64_t j = 0; j < n; ++j) dr[j] = rs * (gw[j] - am - xh[j] * cm);
      }
    }
  });
  for (int64_t k = 0; k < nblk && !part.empty(); ++k)
    for (int64_t j = 0; j < n; ++j) {
      if (sw) sw[j] += (double)part[(size_t)(k * 2 * n + j)];
      if (sb) sb[j] += (double)part[(size_t)(k * 2 * n + n + j)];
    }
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
    const bool need_x = needs_grad(0), need_w = needs_grad(1), need_b = needs_grad(2);
    dispatch_float(dt, name(), [&]<class T>() {
      if (need_x) dx = make_tensor_uninit(xv.shape(), dt);
      std::vector<double> sw(need_w ? (size_t)N : 0, 0.0), sb(need_b ? (size_t)N : 0, 0.0);
      layer_norm_bwd<T>(xv.defined() ? xv.data_ptr<T>() : nullptr, g.data_ptr<T>(), mv.data_ptr<T>(), rv.data_ptr<T>(),
                        wv.defined() ? wv.data_ptr<T>() : nullptr, need_x ? dx.data_ptr<T>() : nullptr,
                        need_w ? sw.data() : nullptr, need_b ? sb.data() : nullptr, rows, N);
      if (need_w) dw = Tensor::from_vector(sw, {N}).to(dt);
      if (need_b) db = Tensor::from_vector(sb, {N}).to(dt);
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
  Tensor out = make_tensor_uninit(x.shape(), x.dtype());
  Tensor mean = make_tensor_uninit({rows}, x.dtype()), rstd = make_tensor_uninit({rows}, x.dtype());
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

namespace detail {
template <class T>
void layer_norm_rows(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t rows, int64_t N, double eps) {
  layer_norm_fwd<T>(x, w, b, y, mean, rstd, rows, N, eps);
}
template <class T>
void layer_norm_rows_backward(const T* x, const T* g, const T* mean, const T* rstd, const T* w, T* dx, double* dw,
                              double* db, int64_t rows, int64_t N) {
  layer_norm_bwd<T>(x, g, mean, rstd, w, dx, dw, db, rows, N);
}
template void layer_norm_rows<float>(const float*, const float*, const float*, float*, float*, float*, int64_t, int64_t, double);
template void layer_norm_rows<double>(const double*, const double*, const double*, double*, double*, double*, int64_t, int64_t,
                                      double);
template void layer_norm_rows_backward<float>(const float*, const float*, const float*, const float*, const float*, float*,
                                              double*, double*, int64_t, int64_t);
template void layer_norm_rows_backward<double>(const double*, const double*, const double*, const double*, const double*,
                                               double*, double*, double*, int64_t, int64_t);
}  // namespace detail

}  // namespace lotgrad
