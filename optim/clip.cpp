#include "clip.h"

#include <cmath>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {

constexpr int64_t kBlock = 4096;  // fixed reduction blocks: the sum order never depends on threads

enum class NormKind { l1, l2, linf };

NormKind norm_kind(double norm_type) {
  if (norm_type == 2.0) return NormKind::l2;
  if (norm_type == 1.0) return NormKind::l1;
  if (std::isinf(norm_type) && norm_type > 0) return NormKind::linf;
  throw std::invalid_argument("clip_grad_norm_: norm_type must be 1, 2 or inf, got " + std::to_string(norm_type));
}

// Per-tensor partial result: sum of |x| or x² in double, or max |x| (NaN-propagating).
template <class T> double tensor_partial(const T* x, int64_t n, NormKind k) {
  const int64_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part((size_t)nb);
  parallel_for(0, nb, std::max<int64_t>(1, kParallelGrain / kBlock), [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t lo = blk * kBlock, hi = std::min(n, lo + kBlock);
      double acc = 0.0;
      if (k == NormKind::l2) {
        for (int64_t i = lo; i < hi; ++i) acc += (double)x[i] * (double)x[i];
      } else if (k == NormKind::l1) {
        for (int64_t i = lo; i < hi; ++i) acc += std::fabs((double)x[i]);
      } else {
        for (int64_t i = lo; i < hi; ++i) {
          const double a = std::fabs((double)x[i]);
          if (!(a <= acc)) acc = a;  // NaN wins and sticks
          if (std::isnan(acc)) break;
        }
      }
      part[(size_t)blk] = acc;
    }
  });
  double total = 0.0;
  for (double v : part) {
    if (k == NormKind::linf) {
      if (!(v <= total)) total = v;
    } else {
      total += v;
    }
  }
  return total;
}

double total_norm(const std::vector<Tensor>& params, NormKind k) {
  NoGradGuard ng;
  double total = 0.0;
  for (const auto& p : params) {
    if (!p.defined()) continue;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    g = g.contiguous();
    const double part = dispatch_float(g.dtype(), "clip_grad_norm_",
                                       [&]<class T>() { return tensor_partial(g.data_ptr<T>(), g.numel(), k); });
    if (k == NormKind::linf) {
      if (!(part <= total)) total = part;
    } else {
      total += part;
    }
  }
  return k == NormKind::l2 ? std::sqrt(total) : total;
}

}  // namespace

double grad_norm(const std::vector<Tensor>& params, double norm_type) {
  return total_norm(params, norm_kind(norm_type));
}

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type, bool error_if_nonfinite) {
  if (!(max_norm >= 0.0)) throw std::invalid_argument("clip_grad_norm_: max_norm must be >= 0");
  const double total = total_norm(params, norm_kind(norm_type));
  if (!std::isfinite(total) && error_if_nonfinite)
    throw NonFiniteError("clip_grad_norm_: the total gradient norm is " + std::to_string(total) +
                         " (run check_finite(params, names, FiniteCheck::grads) to find the parameter)");
  const double coef = max_norm / (total + 1e-6);
  if (!(coef < 1.0) && std::isfinite(total)) return total;  // nothing to scale
  NoGradGuard ng;
  for (const auto& p : params) {
    if (!p.defined()) continue;
    Tensor g = p.grad();
    if (!g.defined()) continue;
    dispatch_float(g.dtype(), "clip_grad_norm_", [&]<class T>() {
      const T c = (T)coef;
      T* d = g.data_ptr<T>();
      strided_loop<1>(g.shape(), {g.strides()}, kParallelGrain, [&](auto off, int64_t len, auto in) {
        for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] *= c;
      });
    });
    g.bump_version();
  }
  return total;
}

// ---------------------------------------------------------------------------------------
// finite checks
// ---------------------------------------------------------------------------------------

std::string NonFiniteReport::message(const std::string& tensor_desc) const {
  std::string s = std::string(in_grad ? "gradient of '" : "value of '") + name + "' ";
  if (!tensor_desc.empty()) s += tensor_desc + " ";
  s += std::string("holds ") +
                  (std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf")) + " at index " + shape_str(index) +
                  " (flat " + std::to_string(flat_index) + ")";
  return s;
}

namespace {
// First non-finite element of t in row-major order, or -1.
int64_t first_nonfinite(const Tensor& t0) {
  Tensor t = t0.contiguous();
  const int64_t n = t.numel();
  return dispatch_float(t.dtype(), "check_finite", [&]<class T>() -> int64_t {
    const T* x = t.data_ptr<T>();
    const int64_t nb = (n + kBlock - 1) / kBlock;
    // Each block records its first bad index; the smallest wins (deterministic).
    std::vector<int64_t> first((size_t)nb, -1);
    parallel_for(0, nb, std::max<int64_t>(1, kParallelGrain / kBlock), [&](int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t lo = blk * kBlock, hi = std::min(n, lo + kBlock);
        for (int64_t i = lo; i < hi; ++i)
          if (!std::isfinite(x[i])) {
            first[(size_t)blk] = i;
            break;
          }
      }
    });
    for (int64_t f : first)
      if (f >= 0) return f;
    return -1;
  });
}
}  // namespace

std::optional<NonFiniteReport> find_nonfinite(const std::vector<Tensor>& tensors, const std::vector<std::string>& names,
                                              FiniteCheck what) {
  if (!names.empty() && names.size() != tensors.size())
    throw std::invalid_argument("check_finite: " + std::to_string(names.size()) + " names for " +
                                std::to_string(tensors.size()) + " tensors");
  NoGradGuard ng;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const Tensor& t = tensors[k];
    if (!t.defined()) continue;
    for (int pass = 0; pass < 2; ++pass) {
      const bool grad = pass == 1;
      if (grad ? what == FiniteCheck::values : what == FiniteCheck::grads) continue;
      Tensor x = grad ? t.grad() : t;
      if (!x.defined() || !is_floating(x.dtype())) continue;
      const int64_t f = first_nonfinite(x);
      if (f < 0) continue;
      NonFiniteReport r;
      r.tensor_index = (int64_t)k;
      if (names.empty()) {
        r.name = "#";
        r.name += std::to_string(k);
      } else {
        r.name = names[k];
      }
      r.in_grad = grad;
      r.flat_index = f;
      r.index.assign(x.dim(), 0);
      int64_t rem = f;
      for (int64_t d = x.dim() - 1; d >= 0; --d) {
        r.index[d] = rem % x.size(d);
        rem /= x.size(d);
      }
      r.value = x.at(r.index);
      return r;
    }
  }
  return std::nullopt;
}

std::vector<NonFiniteTensor> list_nonfinite(const std::vector<Tensor>& tensors, const std::vector<std::string>& names,
                                            FiniteCheck what) {
  if (!names.empty() && names.size() != tensors.size())
    throw std::invalid_argument("list_nonfinite: " + std::to_string(names.size()) + " names for " +
                                std::to_string(tensors.size()) + " tensors");
  NoGradGuard ng;
  std::vector<NonFiniteTensor> bad;
  for (size_t k = 0; k < tensors.size(); ++k) {
    if (!tensors[k].defined()) continue;
    for (bool grad : {false, true}) {
      if (grad ? what == FiniteCheck::values : what == FiniteCheck::grads) continue;
      const Tensor x = grad ? tensors[k].grad() : tensors[k];
      const NonFiniteCount c = count_nonfinite(x);
      if (c.total() == 0) continue;
      std::string name = names.empty() ? "#" : names[k];
      if (names.empty()) name += std::to_string(k);  // not "#" + ...: g++ 12 warns (-Wrestrict) on that form
      bad.push_back({(int64_t)k, name, grad, c, x.numel()});
    }
  }
  return bad;
}

void check_finite(const std::vector<Tensor>& tensors, const std::vector<std::string>& names, FiniteCheck what) {
  if (auto r = find_nonfinite(tensors, names, what)) {
    const Tensor& t = tensors[(size_t)r->tensor_index];
    const Tensor x = r->in_grad ? t.grad() : t;
    throw NonFiniteError("check_finite: " + r->message(describe(x)));
  }
}

}  // namespace lotgrad
