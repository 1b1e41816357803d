#include "softmax.h"

#include <bit>
#include <cmath>
#include <cstdint>
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

// ---- contiguous-row helpers, written so the compiler vectorises them ------------------
// Reductions keep kLanes independent partial results combined in a fixed order: faster
// than one serial chain and still bit-reproducible.
template <class T> constexpr int kLanes = 64 / sizeof(T);

template <class T>
T lanes_max(const T* p, int64_t n) {
  T acc[kLanes<T>];
  for (int u = 0; u < kLanes<T>; ++u) acc[u] = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  for (; j + kLanes<T> <= n; j += kLanes<T>)
    for (int u = 0; u < kLanes<T>; ++u) acc[u] = p[j + u] > acc[u] ? p[j + u] : acc[u];
  T m = -std::numeric_limits<T>::infinity();
  for (int u = 0; u < kLanes<T>; ++u) m = acc[u] > m ? acc[u] : m;
  for (; j < n; ++j) m = p[j] > m ? p[j] : m;
  return m;
}
template <class T>
T lanes_sum(const T* p, int64_t n) {
  T acc[kLanes<T>] = {};
  int64_t j = 0;
  for (; j + kLanes<T> <= n; j += kLanes<T>)
    for (int u = 0; u < kLanes<T>; ++u) acc[u] += p[j + u];
  T s = 0;
  for (int u = 0; u < kLanes<T>; ++u) s += acc[u];
  for (; j < n; ++j) s += p[j];
  return s;
}
template <class T>
T lanes_dot(const T* a, const T* b, int64_t n) {
  T acc[kLanes<T>] = {};
  int64_t j = 0;
  for (; j + kLanes<T> <= n; j += kLanes<T>)
    for (int u = 0; u < kLanes<T>; ++u) acc[u] += a[j + u] * b[j + u];
  T s = 0;
  for (int u = 0; u < kLanes<T>; ++u) s += acc[u];
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

// exp(x) for x <= 0 (softmax arguments x - max, log-probabilities). float: Cephes-style
// range reduction and degree-6 polynomial (about 1 ulp), branch-free so loops over it
// vectorise; exactly 0 below -87 (so masked -inf entries give exact zeros) and NaN stays
// NaN. double: std::exp.
inline float exp_le0(float x) {
  const float kLog2e = 1.44269504088896341f, kMagic = 12582912.0f;  // 1.5 * 2^23 rounds to nearest
  // NaN and out-of-range arguments never reach the integer conversion below.
  float xc = x >= -87.0f ? x : -87.0f;
  xc = xc <= 88.0f ? xc : 88.0f;
  const float n = (xc * kLog2e + kMagic) - kMagic;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const float scale = std::bit_cast<float>((int32_t)(((int32_t)n + 127) << 23));
  return x >= -87.0f ? y * scale : (x < -87.0f ? 0.0f : x);  // the last case is NaN
}
inline double exp_le0(double x) { return std::exp(x); }

// One row: x, y contiguous when s == 1 (the fast path), else strided.
template <class T>
void softmax_row(const T* x, T* y, int64_t L, int64_t s, bool log) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  T mx = kNegInf;
  if (s == 1) {
    mx = lanes_max(x, L);
  } else {
    for (int64_t j = 0; j < L; ++j) mx = x[j * s] > mx ? x[j * s] : mx;
  }
  if (mx == kNegInf) {
    // A row of all -inf has no distribution: NaN, as in PyTorch. (A NaN entry never wins
    // the max; it reaches every output through the sum.)
    for (int64_t j = 0; j < L; ++j) y[j * s] = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  if (s == 1) {
    for (int64_t j = 0; j < L; ++j) y[j] = exp_le0(x[j] - mx);
    const T sum = lanes_sum(y, L);
    if (log) {
      // (x - max) - log(sum), not x - (max + log(sum)): keeps precision for large logits.
      const T ls = std::log(sum);
      for (int64_t j = 0; j < L; ++j) y[j] = (x[j] - mx) - ls;
    } else {
      const T inv = T(1) / sum;
      for (int64_t j = 0; j < L; ++j) y[j] *= inv;
    }
    return;
  }
  T sum = 0;
  for (int64_t j = 0; j < L; ++j) {
    const T e = exp_le0(x[j * s] - mx);
    if (!log) y[j * s] = e;
    sum += e;
  }
  if (log) {
    const T ls = std::log(sum);
    for (int64_t j = 0; j < L; ++j) y[j * s] = (x[j * s] - mx) - ls;
  } else {
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
        if (s == 1) {
          if (lg) {
            const T acc = lanes_sum(gr, L);
            for (int64_t j = 0; j < L; ++j) dr[j] = gr[j] - exp_le0(yr[j]) * acc;
          } else {
            const T acc = lanes_dot(gr, yr, L);
            for (int64_t j = 0; j < L; ++j) dr[j] = yr[j] * (gr[j] - acc);
          }
          return;
        }
        T acc = 0;
        if (lg) {
          for (int64_t j = 0; j < L; ++j) acc += gr[j * s];
          for (int64_t j = 0; j < L; ++j) dr[j * s] = gr[j * s] - exp_le0(yr[j * s]) * acc;
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
