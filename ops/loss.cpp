#include "loss.h"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"
#include "softmax.h"

namespace lotgrad {

namespace {

enum class Reduction { None, Mean, Sum };
Reduction parse_reduction(const std::string& r, const char* op) {
  if (r == "mean") return Reduction::Mean;
  if (r == "sum") return Reduction::Sum;
  if (r == "none") return Reduction::None;
  throw std::invalid_argument(std::string(op) + ": reduction must be \"mean\", \"sum\" or \"none\", got \"" + r + "\"");
}

// Sum of v[0..n) in double: fixed 4096-element blocks (parallel), combined in order, so the
// bits do not depend on the thread count.
template <class F>
double det_sum(int64_t n, F&& term) {
  constexpr int64_t kBlock = 4096;
  const int64_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part((size_t)nb, 0.0);
  parallel_for(0, nb, std::max<int64_t>(1, kParallelGrain / kBlock), [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      double s = 0;
      for (int64_t i = k * kBlock, end = std::min(n, (k + 1) * kBlock); i < end; ++i) s += term(i);
      part[(size_t)k] = s;
    }
  });
  double s = 0;
  for (double v : part) s += v;
  return s;
}

// ---- cross entropy ------------------------------------------------------------------
// Contiguous logits viewed as (outer, C, inner); sample r = (o, i) has target[o*inner + i].
struct CrossEntropyBackward : Node {
  SavedTensor logp, target;
  int64_t outer = 1, C = 1, inner = 1, ignore = -100;
  double eps = 0, count = 0;
  Reduction red = Reduction::Mean;
  const char* name() const override { return "CrossEntropyBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor lp = logp.unpack(this), tg = target.unpack(this);
    const Tensor g = grads[0].contiguous();
    Tensor dx = make_tensor(lp.shape(), lp.dtype());
    dispatch_float(lp.dtype(), name(), [&]<class T>() {
      const T* lpp = lp.data_ptr<T>();
      const T* gp = g.data_ptr<T>();
      const int64_t* tp = tg.data_ptr<int64_t>();
      T* dp = dx.data_ptr<T>();
      const int64_t n = outer * inner, c = C, in = inner, ign = ignore;
      const T on = T(1.0 - eps), off = T(eps / (double)C);
      const T scale = red == Reduction::Mean ? T(g.item() / count) : red == Reduction::Sum ? T(g.item()) : T(0);
      const bool per_sample = red == Reduction::None;
      parallel_for(0, n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(c, 1)), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t o = r / in, i = r % in, base = o * c * in + i;
          const int64_t t = tp[r];
          if (t == ign) continue;  // dx is zero-initialised
          const T w = per_sample ? gp[r] : scale;
          for (int64_t k = 0; k < c; ++k) dp[base + k * in] = w * (std::exp(lpp[base + k * in]) - off);
          dp[base + t * in] -= w * on;
        }
      });
    });
    return {dx, Tensor()};
  }
  void release() override { logp.reset(); target.reset(); }
};

Tensor cross_entropy_impl(const Tensor& logits, const Tensor& target, int64_t ignore_index, double eps, Reduction red) {
  const char* op = "cross_entropy";
  if (!logits.defined() || !target.defined()) throw ShapeError("cross_entropy: undefined tensor");
  if (!is_floating(logits.dtype())) throw_dtype(op, "logits must be floating (f32 or f64)", {{"logits", &logits}, {"target", &target}});
  if (target.dtype() != kInt64) throw_dtype(op, "target must hold int64 class indices", {{"logits", &logits}, {"target", &target}});
  if (!(eps >= 0.0 && eps <= 1.0)) throw std::invalid_argument("cross_entropy: label_smoothing must be in [0, 1], got " + std::to_string(eps));
  // Expected target shape: logits' shape without the class dim (dim 1, or dim 0 if 1-d).
  if (logits.dim() == 0) throw_shape(op, "logits must be at least 1-d", {{"logits", &logits}, {"target", &target}});
  const int64_t cdim = logits.dim() == 1 ? 0 : 1;
  Shape want = logits.shape();
  want.erase(want.begin() + cdim);
  if (target.shape() != want)
    throw_shape(op, "target must have shape " + shape_str(want) + " (logits' shape without the class dim)",
                {{"logits", &logits}, {"target", &target}});
  const int64_t C = logits.size(cdim);
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < logits.dim(); ++i)
    if (i < cdim) outer *= logits.size(i);
    else if (i > cdim) inner *= logits.size(i);
  const Tensor tc = target.detach().contiguous();
  const int64_t n = tc.numel();
  const int64_t* tp = tc.data_ptr<int64_t>();
  int64_t count = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (tp[r] == ignore_index) continue;
    if (tp[r] < 0 || tp[r] >= C)
      throw_shape(op,
                  "target " + std::to_string(tp[r]) + " (at flat position " + std::to_string(r) + ") is out of range for " +
                      std::to_string(C) + " classes (and is not ignore_index " + std::to_string(ignore_index) + ")",
                  {{"logits", &logits}, {"target", &target}});
    ++count;
  }
  const Tensor xc = logits.detach().contiguous();
  Tensor logp = make_tensor(logits.shape(), logits.dtype());
  Tensor out = dispatch_float(logits.dtype(), op, [&]<class T>() {
    detail::softmax_rows<T>(xc.data_ptr<T>(), logp.data_ptr<T>(), outer, C, inner, true);
    const T* lp = logp.data_ptr<T>();
    const double on = 1.0 - eps, off = eps / (double)C;
    // Per-sample loss (0 where ignored), in double.
    auto term = [&](int64_t r) -> double {
      const int64_t t = tp[r];
      if (t == ignore_index) return 0.0;
      const int64_t o = r / inner, i = r % inner, base = o * C * inner + i;
      double l = -on * (double)lp[base + t * inner];
      if (off != 0.0) {
        double s = 0;
        for (int64_t k = 0; k < C; ++k) s += (double)lp[base + k * inner];
        l -= off * s;
      }
      return l;
    };
    if (red == Reduction::None) {
      Tensor o = make_tensor(target.shape(), logits.dtype());
      T* op_ = o.data_ptr<T>();
      parallel_for(0, n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(C, 1)), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) op_[r] = (T)term(r);
      });
      return o;
    }
    const double s = det_sum(n, term);
    const double v = red == Reduction::Sum ? s : (count ? s / (double)count : std::numeric_limits<double>::quiet_NaN());
    return Tensor::scalar(v, logits.dtype());
  });
  if (auto node = make_node<CrossEntropyBackward>({logits, Tensor()})) {
    node->logp = save(logp);
    node->target = save(tc);
    node->outer = outer;
    node->C = C;
    node->inner = inner;
    node->ignore = ignore_index;
    node->eps = eps;
    node->count = (double)count;
    node->red = red;
    set_history(out, node);
  }
  return out;
}

// ---- mse ----------------------------------------------------------------------------
struct MseBackward : Node {
  SavedTensor x, y;  // contiguous
  Reduction red = Reduction::Mean;
  const char* name() const override { return "MseLossBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor xv = x.unpack(this), yv = y.unpack(this);
    const Tensor g = grads[0].contiguous();
    Tensor dx = make_tensor(xv.shape(), xv.dtype());
    dispatch_float(xv.dtype(), name(), [&]<class T>() {
      const T* xp = xv.data_ptr<T>();
      const T* yp = yv.data_ptr<T>();
      const T* gp = g.data_ptr<T>();
      T* dp = dx.data_ptr<T>();
      const int64_t n = xv.numel();
      const bool per = red == Reduction::None;
      const T s = per ? T(2) : T(2.0 * g.item() / (red == Reduction::Mean ? (double)n : 1.0));
      parallel_for(0, n, kParallelGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) dp[i] = (per ? s * gp[i] : s) * (xp[i] - yp[i]);
      });
    });
    Tensor dy;
    if (needs_grad(1)) dy = neg_copy(dx);
    return {needs_grad(0) ? dx : Tensor(), dy};
  }
  static Tensor neg_copy(const Tensor& t) {
    Tensor o = t.clone();
    o.mul_(-1.0);
    return o;
  }
  void release() override { x.reset(); y.reset(); }
};

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index, const std::string& reduction,
                     double label_smoothing) {
  return cross_entropy_impl(logits, target, ignore_index, label_smoothing, parse_reduction(reduction, "cross_entropy"));
}
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index, double label_smoothing,
                     const std::string& reduction) {
  return cross_entropy_impl(logits, target, ignore_index, label_smoothing, parse_reduction(reduction, "cross_entropy"));
}

Tensor mse_loss(const Tensor& input, const Tensor& target, const std::string& reduction) {
  const char* op = "mse_loss";
  const Reduction red = parse_reduction(reduction, op);
  if (!input.defined() || !target.defined()) throw ShapeError("mse_loss: undefined tensor");
  if (!is_floating(input.dtype()) || input.dtype() != target.dtype())
    throw_dtype(op, "input and target must share a floating dtype", {{"input", &input}, {"target", &target}});
  if (input.shape() != target.shape())
    throw_shape(op, "input and target must have the same shape", {{"input", &input}, {"target", &target}});
  const Tensor xc = input.detach().contiguous(), yc = target.detach().contiguous();
  const int64_t n = xc.numel();
  Tensor out = dispatch_float(input.dtype(), op, [&]<class T>() {
    const T* xp = xc.data_ptr<T>();
    const T* yp = yc.data_ptr<T>();
    if (red == Reduction::None) {
      Tensor o = make_tensor(input.shape(), input.dtype());
      T* p = o.data_ptr<T>();
      parallel_for(0, n, kParallelGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) p[i] = (xp[i] - yp[i]) * (xp[i] - yp[i]);
      });
      return o;
    }
    const double s = det_sum(n, [&](int64_t i) {
      const double d = (double)xp[i] - (double)yp[i];
      return d * d;
    });
    return Tensor::scalar(red == Reduction::Sum ? s : s / (double)n, input.dtype());
  });
  if (auto node = make_node<MseBackward>({input, target})) {
    node->x = save(xc);
    node->y = save(yc);
    node->red = red;
    set_history(out, node);
  }
  return out;
}

}  // namespace lotgrad
