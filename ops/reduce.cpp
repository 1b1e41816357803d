#include "reduce.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"
#include "elementwise.h"
#include "shape.h"

namespace lotgrad {

namespace {
void check_float(const Tensor& x, const char* op) {
  if (!x.defined()) throw ShapeError(std::string(op) + ": undefined tensor");
  if (!is_floating(x.dtype())) throw_dtype(op, "expects a floating tensor (f32 or f64)", {{"x", &x}});
}

// Which dims of x are reduced. Empty dims means all. Throws on out-of-range or repeats.
std::vector<bool> reduce_mask(const Tensor& x, const std::vector<int64_t>& dims, const char* op) {
  const int64_t n = x.dim(), lim = std::max<int64_t>(n, 1);
  std::vector<bool> m((size_t)n, dims.empty());
  std::vector<bool> seen((size_t)lim, false);
  for (auto d : dims) {
    if (d < -lim || d >= lim)
      throw_shape(op, "dim " + std::to_string(d) + " out of range for a tensor of rank " + std::to_string(n) +
                          " (dims " + shape_str(dims) + ")", {{"x", &x}});
    const int64_t w = d < 0 ? d + lim : d;
    if (seen[w])
      throw_shape(op, "dim " + std::to_string(w) + " appears more than once in dims " + shape_str(dims), {{"x", &x}});
    seen[w] = true;
    if (n > 0) m[w] = true;
  }
  return m;
}

// A reduction seen as (kept dims) x (reduced dims), each group collapsed to as few
// strided dims as possible. Output element o (row-major over the kept dims) reduces the
// n_red elements at x + offset(o, kept) + offset(r, reduced).
struct Plan {
  Shape out_shape;   // kept dims (keepdim = false)
  Shape keep_shape;  // reduced dims as size 1 (keepdim = true)
  Shape ksz, kst, rsz, rst;
  int64_t n_out = 1, n_red = 1;
};

void collapse(std::vector<std::pair<int64_t, int64_t>> d, Shape& sz, Shape& st) {
  for (auto [s, t] : d) {
    if (!sz.empty() && st.back() == s * t) {
      sz.back() *= s;
      st.back() = t;
    } else {
      sz.push_back(s);
      st.push_back(t);
    }
  }
  if (sz.empty()) {
    sz = {1};
    st = {0};
  }
}

Plan make_plan(const Tensor& x, const std::vector<bool>& red) {
  Plan p;
  std::vector<std::pair<int64_t, int64_t>> kd, rd;  // (size, stride), size-1 dims dropped
  for (int64_t d = 0; d < x.dim(); ++d) {
    const int64_t s = x.shape()[d], t = x.strides()[d];
    if (red[d]) {
      p.keep_shape.push_back(1);
      p.n_red *= s;
      if (s != 1) rd.push_back({s, t});
    } else {
      p.out_shape.push_back(s);
      p.keep_shape.push_back(s);
      p.n_out *= s;
      if (s != 1) kd.push_back({s, t});
    }
  }
  // Walk the reduced elements in memory order (largest stride outermost). Only sums
  // care about the order, and only for rounding; max/argmax reduce a single dim.
  std::stable_sort(rd.begin(), rd.end(), [](auto a, auto b) { return a.second > b.second; });
  collapse(kd, p.ksz, p.kst);
  collapse(rd, p.rsz, p.rst);
  return p;
}

int64_t offset_of(int64_t lin, const Shape& sz, const Shape& st) {
  int64_t off = 0;
  for (int64_t d = (int64_t)sz.size() - 1; d >= 0 && lin; --d) {
    off += (lin % sz[d]) * st[d];
    lin /= sz[d];
  }
  return off;
}

// Calls f(off, len, stride, r0) for the innermost runs covering reduced indices [b, e).
template <class F>
void for_runs(const Shape& sz, const Shape& st, int64_t b, int64_t e, F&& f) {
  const int64_t nd = (int64_t)sz.size();
  if (nd == 1) {
    f(b * st[0], e - b, st[0], b);
    return;
  }
  std::vector<int64_t> idx((size_t)nd);
  int64_t rem = b, off = 0;
  for (int64_t d = nd - 1; d >= 0; --d) {
    idx[d] = rem % sz[d];
    rem /= sz[d];
    off += idx[d] * st[d];
  }
  const int64_t inner = sz[nd - 1], ist = st[nd - 1];
  int64_t pos = b;
  while (pos < e) {
    const int64_t len = std::min(inner - idx[nd - 1], e - pos);
    f(off, len, ist, pos);
    pos += len;
    idx[nd - 1] += len;
    off += len * ist;
    for (int64_t d = nd - 1; d > 0 && idx[d] == sz[d]; --d) {
      off += st[d - 1] - sz[d] * st[d];
      idx[d] = 0;
      ++idx[d - 1];
    }
  }
}

// Whole-tensor reductions are cut into chunks of this many elements whatever the thread
// count, and the chunk results combined in order: same bits on 1 or 16 threads.
constexpr int64_t kChunk = 1 << 15;

// Runs reducer r over plan p. A reducer provides Acc, init(o), run(acc, ptr, n, stride, r0)
// for a strided run whose first reduced index is r0, step(acc, v, r) for one element,
// combine(acc, later) and finish(o, acc).
template <class T, class R>
void reduce_run(const T* x, const Plan& p, const R& r) {
  using Acc = typename R::Acc;
  if (p.n_out == 0) return;
  if (p.n_red == 0) {
    for (int64_t o = 0; o < p.n_out; ++o) r.finish(o, r.init(o));
    return;
  }
  if (p.n_out == 1 && p.n_red > 2 * kChunk) {
    const int64_t nch = (p.n_red + kChunk - 1) / kChunk;
    std::vector<Acc> part((size_t)nch);
    const int64_t koff = offset_of(0, p.ksz, p.kst);
    parallel_for(0, nch, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        Acc a = r.init(0);
        for_runs(p.rsz, p.rst, c * kChunk, std::min(p.n_red, (c + 1) * kChunk),
                 [&](int64_t off, int64_t len, int64_t s, int64_t r0) { r.run(a, x + koff + off, len, s, r0); });
        part[c] = a;
      }
    });
    Acc a = part[0];
    for (int64_t c = 1; c < nch; ++c) r.combine(a, part[c]);
    r.finish(0, a);
    return;
  }
  const int64_t kin = p.ksz.back();
  if (p.rst.back() != 1 && p.kst.back() == 1 && kin > 1) {
    // Kept inner dim is contiguous and the reduced one is not (e.g. sum over dim 0 of a
    // (N, M) tensor): reduce a block of adjacent outputs together, row by row.
    constexpr int64_t B = 64;
    const int64_t nb = (kin + B - 1) / B, outer = p.n_out / kin;
    Shape osz(p.ksz.begin(), p.ksz.end() - 1), ost(p.kst.begin(), p.kst.end() - 1);
    const int64_t grain = std::max<int64_t>(1, kParallelGrain / (B * p.n_red));
    parallel_for(0, outer * nb, grain, [&](int64_t b, int64_t e) {
      Acc acc[B];
      for (int64_t it = b; it < e; ++it) {
        const int64_t oo = it / nb, j0 = (it % nb) * B, L = std::min(B, kin - j0);
        const int64_t koff = (osz.empty() ? 0 : offset_of(oo, osz, ost)) + j0;
        const int64_t o0 = oo * kin + j0;
        for (int64_t k = 0; k < L; ++k) acc[k] = r.init(o0 + k);
        for_runs(p.rsz, p.rst, 0, p.n_red, [&](int64_t off, int64_t len, int64_t s, int64_t r0) {
          for (int64_t i = 0; i < len; ++i) {
            const T* q = x + koff + off + i * s;
            for (int64_t k = 0; k < L; ++k) r.step(acc[k], q[k], r0 + i);
          }
        });
        for (int64_t k = 0; k < L; ++k) r.finish(o0 + k, acc[k]);
      }
    });
    return;
  }
  // One output at a time: the reduced run is contiguous (the common last-dim case) or
  // nothing is.
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / p.n_red);
  parallel_for(0, p.n_out, grain, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      const int64_t koff = offset_of(o, p.ksz, p.kst);
      Acc a = r.init(o);
      for_runs(p.rsz, p.rst, 0, p.n_red,
               [&](int64_t off, int64_t len, int64_t s, int64_t r0) { r.run(a, x + koff + off, len, s, r0); });
      r.finish(o, a);
    }
  });
}

// ---- reducers ------------------------------------------------------------------------------
// Sum in double; out[o] = scale * sum. Eight partial sums in the contiguous case break
// the add dependency chain (fixed order, so still deterministic).
template <class T, class O>
struct SumR {
  using Acc = double;
  O* out;
  double scale = 1.0;
  Acc init(int64_t) const { return 0.0; }
  void step(Acc& a, T v, int64_t) const { a += (double)v; }
  void run(Acc& a, const T* p, int64_t n, int64_t s, int64_t) const {
    if (s == 1) {
      double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k) l[k] += (double)p[i + k];
      for (; i < n; ++i) l[0] += (double)p[i];
      a += ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    } else {
      for (int64_t i = 0; i < n; ++i) a += (double)p[i * s];
    }
  }
  void combine(Acc& a, const Acc& b) const { a += b; }
  void finish(int64_t o, const Acc& a) const { out[o] = static_cast<O>(a * scale); }
};

// Sum of squared deviations from a precomputed per-output mean, / divisor.
template <class T>
struct SqDevR {
  struct Acc {
    double s = 0, m = 0;
  };
  T* out;
  const double* mean;
  double divisor;
  Acc init(int64_t o) const { return {0.0, mean[o]}; }
  void step(Acc& a, T v, int64_t) const {
    const double d = (double)v - a.m;
    a.s += d * d;
  }
  void run(Acc& a, const T* p, int64_t n, int64_t s, int64_t) const {
    double l[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
      for (int k = 0; k < 4; ++k) {
        const double d = (double)p[(i + k) * s] - a.m;
        l[k] += d * d;
      }
    for (; i < n; ++i) {
      const double d = (double)p[i * s] - a.m;
      l[0] += d * d;
    }
    a.s += (l[0] + l[1]) + (l[2] + l[3]);
  }
  void combine(Acc& a, const Acc& b) const { a.s += b.s; }
  void finish(int64_t o, const Acc& a) const { out[o] = static_cast<T>(a.s / divisor); }
};

// First max (IsMax) or min and its reduced index; NaN wins, as in PyTorch.
template <class T, class O, bool IsMax>
struct ExtremeR {
  struct Acc {
    T v = T(0);
    int64_t i = -1;
  };
  O* values = nullptr;
  int64_t* indices = nullptr;
  static bool better(T v, T best) {
    if (std::isnan(best)) return false;
    if (std::isnan(v)) return true;
    return IsMax ? v > best : v < best;
  }
  // First i with p[i] == m (m occurs in p): blocks scanned with a vectorised test.
  static int64_t first_equal(const T* p, int64_t n, T m) {
    for (int64_t b = 0; b < n; b += 64) {
      const int64_t e = std::min(n, b + 64);
      int hit = 0;
#pragma omp simd reduction(| : hit)
      for (int64_t i = b; i < e; ++i) hit |= (p[i] == m);
      if (hit)
        for (int64_t i = b; i < e; ++i)
          if (p[i] == m) return i;
    }
    return 0;
  }
  Acc init(int64_t) const { return {}; }
  void step(Acc& a, T v, int64_t r) const {
    if (a.i < 0 || better(v, a.v)) a = {v, r};
  }
  void run(Acc& a, const T* p, int64_t n, int64_t s, int64_t r0) const {
    if (s == 1 && n >= 16) {
      // Contiguous: a vectorised extreme plus zs = sum(v - v), which is NaN iff some v is
      // NaN or infinite (then the careful loop below decides). The extreme is exact in any
      // order, so the simd reductions stay deterministic.
      T m = p[0], zs = 0;
      if constexpr (IsMax) {
#pragma omp simd reduction(max : m) reduction(+ : zs)
        for (int64_t i = 0; i < n; ++i) {
          zs += p[i] - p[i];
          m = p[i] > m ? p[i] : m;
        }
      } else {
#pragma omp simd reduction(min : m) reduction(+ : zs)
        for (int64_t i = 0; i < n; ++i) {
          zs += p[i] - p[i];
          m = p[i] < m ? p[i] : m;
        }
      }
      if (zs == 0) {
        if (a.i >= 0 && !better(m, a.v)) return;  // an earlier run holds it (ties: first wins)
        a = {m, r0 + first_equal(p, n, m)};
        return;
      }
    }
    for (int64_t i = 0; i < n; ++i) step(a, p[i * s], r0 + i);
  }
  void combine(Acc& a, const Acc& b) const {
    if (b.i >= 0 && (a.i < 0 || better(b.v, a.v))) a = b;
  }
  void finish(int64_t o, const Acc& a) const {
    if (values) values[o] = static_cast<O>(a.v);
    if (indices) indices[o] = a.i;
  }
};

// sum(exp(x - m)) around a precomputed per-output max m; out = m + log(sum).
template <class T>
struct LseR {
  struct Acc {
    double s = 0, m = 0;
  };
  T* out;
  const double* mx;
  Acc init(int64_t o) const { return {0.0, mx[o]}; }
  // exp in T (expf for f32: x - m <= 0, so full relative accuracy), sums in double.
  void step(Acc& a, T v, int64_t) const { a.s += (double)std::exp(v - (T)a.m); }
  void run(Acc& a, const T* p, int64_t n, int64_t s, int64_t) const {
    const T m = (T)a.m;
    double l[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
      for (int k = 0; k < 4; ++k) l[k] += (double)std::exp(p[(i + k) * s] - m);
    for (; i < n; ++i) l[0] += (double)std::exp(p[i * s] - m);
    a.s += (l[0] + l[1]) + (l[2] + l[3]);
  }
  void combine(Acc& a, const Acc& b) const { a.s += b.s; }
  void finish(int64_t o, const Acc& a) const {
    // All -inf (or empty): -inf. A +inf max: +inf (exp(inf - inf) would be NaN).
    if (std::isinf(a.m)) {
      out[o] = static_cast<T>(a.m);
      return;
    }
    out[o] = static_cast<T>(a.m + std::log(a.s));
  }
};

// ---- kernels with plans ------------------------------------------------------------------
// out (keepdim ? keep_shape : out_shape) = scale * sum over the plan.
Tensor sum_kernel(const Tensor& x, const Plan& p, bool keepdim, double scale) {
  Tensor out = make_tensor(keepdim ? p.keep_shape : p.out_shape, x.dtype());
  dispatch_float(x.dtype(), "sum", [&]<class T>() {
    SumR<T, T> r{out.data_ptr<T>(), scale};
    reduce_run<T>(x.data_ptr<T>(), p, r);
  });
  return out;
}

// Reduced dims of the plan's input, as a list (for recomputing in backward).
std::vector<int64_t> dims_of(const std::vector<bool>& m) {
  std::vector<int64_t> d;
  for (size_t i = 0; i < m.size(); ++i)
    if (m[i]) d.push_back((int64_t)i);
  return d;
}

// g in the reduced shape (keepdim = false) seen with the reduced dims back as size 1
// (a view; the core view() cannot yet reshape a 0-d tensor to (1, 1)).
Tensor restore_dims(const Tensor& g, const std::vector<bool>& red, const Shape& keep_shape) {
  if (g.dim() == (int64_t)keep_shape.size()) return g;
  Shape st(keep_shape.size(), 0);
  for (size_t d = 0, j = 0; d < keep_shape.size(); ++d)
    if (!red[d]) st[d] = g.strides()[j++];
  return make_view(g, keep_shape, st, g.offset());
}

// ---- backward nodes ----------------------------------------------------------------------
// sum / mean: the gradient is g (with reduced dims restored) broadcast back over x.
struct SumBackward : Node {
  Shape x_shape, keep_shape;
  std::vector<bool> red;
  double scale = 1.0;
  bool is_mean = false;
  const char* name() const override { return is_mean ? "MeanBackward" : "SumBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor gk = restore_dims(g[0], red, keep_shape);
    if (scale != 1.0) gk = mul(gk, scale);
    return {gk.expand(x_shape)};
  }
};
struct VarBackward : Node {
  SavedTensor x;
  std::vector<int64_t> dims;
  std::vector<bool> red;
  Shape keep_shape;
  double divisor = 1.0;
  const char* name() const override { return "VarBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor xv = x.unpack(this);
    Tensor m = mean(xv, dims, /*keepdim=*/true);
    return {mul(sub(xv, m), mul(restore_dims(g[0], red, keep_shape), 2.0 / divisor))};
  }
  void release() override { x.reset(); }
};
// max/min along a dim: g goes to the recorded index.
struct ExtremeDimBackward : Node {
  SavedTensor indices;
  Shape x_shape;
  int64_t dim = 0;
  bool keepdim = false, is_max = true;
  const char* name() const override { return is_max ? "MaxBackward" : "MinBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    if (x_shape.empty()) return {g[0]};
    Tensor idx = indices.unpack(this), gk = g[0];
    if (!keepdim) {
      std::vector<bool> red(x_shape.size(), false);
      red[dim] = true;
      Shape ks = x_shape;
      ks[dim] = 1;
      idx = restore_dims(idx, red, ks);
      gk = restore_dims(gk, red, ks);
    }
    return {scatter_add(Tensor::zeros(x_shape, gk.dtype()), dim, idx, gk)};
  }
  void release() override { indices.reset(); }
};
// max/min over everything: tied extremes share the gradient equally (PyTorch's rule).
struct ExtremeAllBackward : Node {
  SavedTensor x, out;
  bool is_max = true;
  const char* name() const override { return is_max ? "MaxAllBackward" : "MinAllBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor xv = x.unpack(this), ov = out.unpack(this);
    Tensor mask = eq(xv, ov).to(xv.dtype());
    return {mul(mask, div(g[0], sum(mask)))};
  }
  void release() override { x.reset(); out.reset(); }
};
// d logsumexp / dx = exp(x - out): the softmax over the reduced dims.
struct LogsumexpBackward : Node {
  SavedTensor x, out;
  Shape keep_shape;
  std::vector<bool> red;
  const char* name() const override { return "LogsumexpBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor xv = x.unpack(this), ov = restore_dims(out.unpack(this), red, keep_shape);
    return {mul(exp(sub(xv, ov)), restore_dims(g[0], red, keep_shape))};
  }
  void release() override { x.reset(); out.reset(); }
};
}  // namespace

// ---- sum / mean / var ----------------------------------------------------------------------
Tensor sum(const Tensor& x) { return sum(x, {}, false); }
Tensor mean(const Tensor& x) { return mean(x, {}, false); }

namespace {
Tensor sum_impl(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim, bool is_mean) {
  const char* op = is_mean ? "mean" : "sum";
  check_float(x, op);
  const std::vector<bool> m = reduce_mask(x, dims, op);
  const Plan p = make_plan(x, m);
  const double scale = is_mean ? 1.0 / (double)p.n_red : 1.0;
  Tensor out = sum_kernel(x, p, keepdim, scale);
  if (auto n = make_node<SumBackward>({x})) {
    n->x_shape = x.shape();
    n->keep_shape = p.keep_shape;
    n->red = m;
    n->scale = scale;
    n->is_mean = is_mean;
    set_history(out, n);
  }
  return out;
}
}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) { return sum_impl(x, dims, keepdim, false); }
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) { return sum_impl(x, dims, keepdim, true); }

Tensor var(const Tensor& x, const std::vector<int64_t>& dims, double correction, bool keepdim) {
  check_float(x, "var");
  const std::vector<bool> m = reduce_mask(x, dims, "var");
  const Plan p = make_plan(x, m);
  const double divisor = std::max(0.0, (double)p.n_red - correction);
  Tensor out = make_tensor(keepdim ? p.keep_shape : p.out_shape, x.dtype());
  dispatch_float(x.dtype(), "var", [&]<class T>() {
    // Two passes (mean, then squared deviations) in double: no cancellation.
    std::vector<double> mu((size_t)p.n_out);
    reduce_run<T>(x.data_ptr<T>(), p, SumR<T, double>{mu.data(), 1.0 / (double)p.n_red});
    reduce_run<T>(x.data_ptr<T>(), p, SqDevR<T>{out.data_ptr<T>(), mu.data(), divisor});
  });
  if (auto n = make_node<VarBackward>({x})) {
    n->x = save(x);
    n->dims = dims_of(m);
    n->red = m;
    n->keep_shape = p.keep_shape;
    n->divisor = divisor;
    set_history(out, n);
  }
  return out;
}
Tensor var(const Tensor& x) { return var(x, {}, 1.0, false); }

// ---- max / min / argmax ----------------------------------------------------------------------
namespace {
template <bool IsMax>
ValuesIndices extreme_dim(const Tensor& x, int64_t dim, bool keepdim, bool want_values, const char* op) {
  check_float(x, op);
  const std::vector<bool> m = reduce_mask(x, {dim}, op);
  const Plan p = make_plan(x, m);
  if (p.n_red == 0)
    throw_shape(op, "cannot reduce over a zero-size dim " + std::to_string(dim) + " (no identity)", {{"x", &x}});
  const Shape& os = keepdim ? p.keep_shape : p.out_shape;
  ValuesIndices r;
  r.indices = make_tensor(os, kInt64);
  if (want_values) r.values = make_tensor(os, x.dtype());
  dispatch_float(x.dtype(), op, [&]<class T>() {
    ExtremeR<T, T, IsMax> red{want_values ? r.values.template data_ptr<T>() : nullptr,
                              r.indices.template data_ptr<int64_t>()};
    reduce_run<T>(x.data_ptr<T>(), p, red);
  });
  return r;
}
template <bool IsMax>
ValuesIndices extreme_dim_grad(const Tensor& x, int64_t dim, bool keepdim, const char* op) {
  ValuesIndices r = extreme_dim<IsMax>(x, dim, keepdim, true, op);
  if (auto n = make_node<ExtremeDimBackward>({x})) {
    n->indices = save(r.indices);
    n->x_shape = x.shape();
    n->dim = x.dim() == 0 ? 0 : (dim < 0 ? dim + x.dim() : dim);
    n->keepdim = keepdim;
    n->is_max = IsMax;
    set_history(r.values, n);
  }
  return r;
}
template <bool IsMax>
Tensor extreme_all(const Tensor& x, const char* op) {
  check_float(x, op);
  if (x.numel() == 0) throw_shape(op, "cannot reduce an empty tensor (no identity)", {{"x", &x}});
  const Plan p = make_plan(x, reduce_mask(x, {}, op));
  Tensor out = make_tensor({}, x.dtype());
  dispatch_float(x.dtype(), op, [&]<class T>() {
    reduce_run<T>(x.data_ptr<T>(), p, ExtremeR<T, T, IsMax>{out.data_ptr<T>(), nullptr});
  });
  if (auto n = make_node<ExtremeAllBackward>({x})) {
    n->x = save(x);
    n->out = save(out);
    n->is_max = IsMax;
    set_history(out, n);
  }
  return out;
}
}  // namespace

ValuesIndices max(const Tensor& x, int64_t dim, bool keepdim) { return extreme_dim_grad<true>(x, dim, keepdim, "max"); }
ValuesIndices min(const Tensor& x, int64_t dim, bool keepdim) { return extreme_dim_grad<false>(x, dim, keepdim, "min"); }
Tensor max(const Tensor& x) { return extreme_all<true>(x, "max"); }
Tensor min(const Tensor& x) { return extreme_all<false>(x, "min"); }
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  return extreme_dim<true>(x, dim, keepdim, false, "argmax").indices;
}
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim) {
  return extreme_dim<false>(x, dim, keepdim, false, "argmin").indices;
}
Tensor argmax(const Tensor& x) {
  check_float(x, "argmax");
  if (x.dim() == 0) return Tensor::zeros({}, kInt64);  // reshape of 0-d is not supported by the core yet
  return argmax(x.detach().reshape({-1}), 0, false);
}

// ---- logsumexp ---------------------------------------------------------------------------------
Tensor logsumexp(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  check_float(x, "logsumexp");
  const std::vector<bool> m = reduce_mask(x, dims, "logsumexp");
  const Plan p = make_plan(x, m);
  Tensor out = make_tensor(keepdim ? p.keep_shape : p.out_shape, x.dtype());
  dispatch_float(x.dtype(), "logsumexp", [&]<class T>() {
    std::vector<double> mx((size_t)p.n_out, -std::numeric_limits<double>::infinity());
    if (p.n_red > 0) reduce_run<T>(x.data_ptr<T>(), p, ExtremeR<T, double, true>{mx.data(), nullptr});
    reduce_run<T>(x.data_ptr<T>(), p, LseR<T>{out.data_ptr<T>(), mx.data()});
  });
  if (auto n = make_node<LogsumexpBackward>({x})) {
    n->x = save(x);
    n->out = save(out);
    n->keep_shape = p.keep_shape;
    n->red = m;
    set_history(out, n);
  }
  return out;
}

// ---- cumsum --------------------------------------------------------------------------------------
namespace {
// out (outer, n, inner) = inclusive prefix sums of x along the middle dim, from the end
// when reverse (the gradient). Running sums in double; blocks of `inner` are independent.
Tensor cumsum_kernel(const Tensor& x_in, int64_t dim, bool reverse) {
  Tensor x = x_in.contiguous();
  Tensor out = make_tensor(x.shape(), x.dtype());
  if (x.numel() == 0) return out;
  const Shape& s = x.shape();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= s[d];
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= s[d];
  const int64_t n = x.dim() == 0 ? 1 : s[dim];
  dispatch_float(x.dtype(), "cumsum", [&]<class T>() {
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    constexpr int64_t B = 256;  // columns scanned together when inner > 1
    const int64_t nb = (inner + B - 1) / B;
    const int64_t grain = std::max<int64_t>(1, kParallelGrain / (n * std::min(inner, B)));
    if (inner == 1) {  // scan along contiguous rows
      parallel_for(0, outer, std::max<int64_t>(1, kParallelGrain / n), [&](int64_t b, int64_t e) {
        for (int64_t o = b; o < e; ++o) {
          const T* xr = xp + o * n;
          T* orow = op + o * n;
          double acc = 0.0;
          if (reverse) {
            for (int64_t j = n - 1; j >= 0; --j) orow[j] = static_cast<T>(acc += (double)xr[j]);
          } else {
            for (int64_t j = 0; j < n; ++j) orow[j] = static_cast<T>(acc += (double)xr[j]);
          }
        }
      });
      return;
    }
    parallel_for(0, outer * nb, grain, [&](int64_t b, int64_t e) {
      double acc[B];
      for (int64_t it = b; it < e; ++it) {
        const int64_t o = it / nb, i0 = (it % nb) * B, L = std::min(B, inner - i0);
        for (int64_t k = 0; k < L; ++k) acc[k] = 0.0;
        for (int64_t jj = 0; jj < n; ++jj) {
          const int64_t j = reverse ? n - 1 - jj : jj;
          const int64_t base = (o * n + j) * inner + i0;
          for (int64_t k = 0; k < L; ++k) {
            acc[k] += (double)xp[base + k];
            op[base + k] = static_cast<T>(acc[k]);
          }
        }
      }
    });
  });
  return out;
}
struct CumsumBackward : Node {
  int64_t dim = 0;
  const char* name() const override { return "CumsumBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override { return {cumsum_kernel(g[0], dim, true)}; }
};
}  // namespace

Tensor cumsum(const Tensor& x, int64_t dim) {
  check_float(x, "cumsum");
  dim = wrap_dim(dim, x.dim(), "cumsum", &x);
  if (x.dim() == 0) dim = 0;
  Tensor out = cumsum_kernel(x, dim, false);
  if (auto n = make_node<CumsumBackward>({x})) {
    n->dim = dim;
    set_history(out, n);
  }
  return out;
}

}  // namespace lotgrad
