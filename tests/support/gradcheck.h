// Gradient checking for tests: f64 central differences against the analytic gradient of
// sum(f(inputs) * R), R a seeded random upstream gradient (a plain sum can hide errors that
// cancel). PyTorch's gradcheck tolerances. Inputs may be non-contiguous leaves: elements are
// perturbed through their strides.
#pragma once
#include <lotgrad/lotgrad.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace lotgrad::testing {

struct GradcheckOptions {
  double eps = 1e-6, atol = 1e-5, rtol = 1e-3;
  uint64_t seed = 1234;
  int64_t max_checks_per_input = -1;  // -1: every element; else a seeded sample
};

struct GradcheckResult {
  bool ok = true;
  std::string message;  // on failure: input, flat index, analytic, numeric, worst error
};

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

inline double weighted_sum(const Tensor& out, const std::vector<double>& r) {
  std::vector<double> v = out.to_vector();
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) s += v[i] * r[i];
  return s;
}

// Offsets (in elements) of every element of t, in row-major order.
inline std::vector<int64_t> element_offsets(const Tensor& t) {
  std::vector<int64_t> offs;
  offs.reserve((size_t)t.numel());
  Shape idx(t.dim(), 0);
  for (int64_t k = 0; k < t.numel(); ++k) {
    int64_t o = t.offset();
    for (int64_t d = 0; d < t.dim(); ++d) o += idx[d] * t.strides()[d];
    offs.push_back(o);
    for (int64_t d = t.dim() - 1; d >= 0; --d) {
      if (++idx[d] < t.shape()[d]) break;
      idx[d] = 0;
    }
  }
  return offs;
}

inline GradcheckResult gradcheck(const Fn& f, std::vector<Tensor> inputs, GradcheckOptions opt = {}) {
  GradcheckResult res;
  for (auto& x : inputs) {
    if (x.dtype() != kFloat64) {
      res.ok = false;
      res.message = "gradcheck: inputs must be f64, got " + describe(x);
      return res;
    }
    x.zero_grad();
  }
  Tensor out = f(inputs);
  Generator gen(opt.seed);
  Tensor R = randn(out.shape(), gen, kFloat64);
  const std::vector<double> r = R.to_vector();
  out.backward(R);
  NoGradGuard ng;
  double worst = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor& x = inputs[i];
    if (!x.requires_grad()) continue;
    std::vector<double> analytic = x.grad().defined() ? x.grad().to_vector() : std::vector<double>((size_t)x.numel(), 0.0);
    std::vector<int64_t> offs = element_offsets(x);
    std::vector<int64_t> which;
    if (opt.max_checks_per_input < 0 || opt.max_checks_per_input >= x.numel()) {
      for (int64_t k = 0; k < x.numel(); ++k) which.push_back(k);
    } else {
      Generator pick(opt.seed + 17 * i);
      for (int64_t k = 0; k < opt.max_checks_per_input; ++k) which.push_back(pick.randint(0, x.numel()));
    }
    double* base = static_cast<double*>(x.impl()->storage->data);
    for (int64_t k : which) {
      const int64_t o = offs[k];
      const double orig = base[o];
      base[o] = orig + opt.eps;
      const double fp = weighted_sum(f(inputs), r);
      base[o] = orig - opt.eps;
      const double fm = weighted_sum(f(inputs), r);
      base[o] = orig;
      const double numeric = (fp - fm) / (2 * opt.eps);
      const double a = analytic[k];
      const double err = std::abs(a - numeric);
      worst = std::max(worst, err);
      if (err > opt.atol + opt.rtol * std::abs(numeric) && res.ok) {
        std::ostringstream os;
        os.precision(10);
        os << "gradcheck failed: input " << i << " " << describe(x) << ", flat index " << k << ": analytic " << a
           << ", numeric " << numeric << ", error " << err;
        res.ok = false;
        res.message = os.str();
      }
    }
  }
  if (!res.ok) res.message += " (worst error " + std::to_string(worst) + ")";
  return res;
}

// Largest |x| over a tensor; +inf when an entry is not finite (a NaN must not pass as small).
inline double max_abs(const Tensor& x) {
  double m = 0;
  for (double v : x.to_vector()) m = std::isfinite(v) ? std::max(m, std::abs(v)) : INFINITY;
  return m;
}

// Largest |a - b| over two tensors of the same number of elements (any dtype, any layout);
// +inf when the sizes differ or a difference is not finite (a NaN must not pass as small).
inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector(), y = b.to_vector();
  if (x.size() != y.size()) return INFINITY;
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) d = std::isfinite(x[i] - y[i]) ? std::max(d, std::abs(x[i] - y[i])) : INFINITY;
  return d;
}

// d loss / d inputs (each input's .grad is cleared first; zeros where no gradient flows).
inline std::vector<Tensor> input_grads(const Tensor& loss, const std::vector<Tensor>& inputs) {
  for (const auto& t : inputs) t.zero_grad();
  loss.backward();
  std::vector<Tensor> out;
  for (const auto& t : inputs) out.push_back(t.grad().defined() ? t.grad().clone() : Tensor::zeros(t.shape(), t.dtype()));
  return out;
}

// A seeded f64 leaf that requires grad.
inline Tensor leaf(const Shape& s, uint64_t seed, double scale = 1.0, double shift = 0.0) {
  Generator g(seed);
  Tensor t = randn(s, g, kFloat64);
  {
    NoGradGuard ng;
    t.mul_(scale);
    if (shift != 0.0) t.add_(Tensor::scalar(shift, kFloat64));
  }
  t.requires_grad_();
  return t;
}
// A non-contiguous f64 leaf of shape s: the transpose of a (s[1], s[0]) tensor (2-d), or
// every other element along the last dim for other ranks.
inline Tensor noncontig_leaf(const Shape& s, uint64_t seed, double scale = 1.0, double shift = 0.0) {
  Tensor t;
  if (s.size() == 2) {
    t = leaf({s[1], s[0]}, seed, scale, shift).detach().t();
  } else {
    Shape big = s;
    big.back() *= 2;
    t = leaf(big, seed, scale, shift).detach().slice(-1, 0, big.back(), 2);
  }
  t.requires_grad_();
  return t;
}

}  // namespace lotgrad::testing

#define CHECK_GRAD(f, ...)                                             \
  do {                                                                 \
    auto _r = ::lotgrad::testing::gradcheck((f), __VA_ARGS__);         \
    INFO(_r.message);                                                  \
    CHECK(_r.ok);                                                      \
  } while (0)
