#include "free_energy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/autograd.h"
#include "../core/error.h"
#include "../core/iter.h"
#include "../core/parallel.h"
#include "fastmath.h"

namespace lotgrad {

namespace {
using fastmath::fexp;
using fastmath::flog;

constexpr int64_t kRowBlock = 512;  // positions per task, and per partial sum of dβ

// A (B, H, n, d) problem cut into blocks of positions: the tasks depend on the sizes alone,
// so the partial sums of dβ, added in task order, give the same bits on any thread count.
struct Blocks {
  int64_t B, H, n, d;
  int64_t per_head() const { return (n + kRowBlock - 1) / kRowBlock; }
  int64_t tasks() const { return B * H * per_head(); }
  // f(b, h, t0, t1, task) for every block [t0, t1) of positions of head (b, h).
  template <class F>
  void run(F&& f) const {
    const int64_t nb = per_head(), grain = std::max<int64_t>(1, kParallelGrain / (kRowBlock * std::max<int64_t>(d, 1)));
    parallel_for(0, tasks(), grain, [&](int64_t lo, int64_t hi) {
      for (int64_t task = lo; task < hi; ++task) {
        const int64_t bh = task / nb, t0 = (task % nb) * kRowBlock;
        f(bh / H, bh % H, t0, std::min(n, t0 + kRowBlock), task);
      }
    });
  }
  // out (H, d) = Σ over b and blocks of part (tasks, d), in task order.
  template <class T>
  void sum_heads(const std::vector<double>& part, T* out) const {
    std::vector<double> acc((size_t)(H * d), 0.0);
    for (int64_t task = 0; task < tasks(); ++task) {
      const int64_t h = (task / per_head()) % H;
      for (int64_t c = 0; c < d; ++c) acc[(size_t)(h * d + c)] += part[(size_t)(task * d + c)];
    }
    for (size_t i = 0; i < acc.size(); ++i) out[i] = (T)acc[i];
  }
};

template <class T>
T clip(T x, T lim) {
  return std::min(std::max(x, -lim), lim);
}

// ---- free_energy_values --------------------------------------------------------------------

// M (B, H, 1, d): the max of βv̂ over the valid positions per channel, 0 where there is none.
template <class T>
void values_max(const Blocks& s, const T* v, const T* beta, const bool* mask, T cap, T* M) {
  std::vector<T> part((size_t)(s.tasks() * s.d), -std::numeric_limits<T>::infinity());
  s.run([&](int64_t b, int64_t h, int64_t t0, int64_t t1, int64_t task) {
    T* m = part.data() + task * s.d;
    const T* bt = beta + h * s.d;
    for (int64_t t = t0; t < t1; ++t) {
      if (mask && mask[b * s.n + t]) continue;
      const T* vr = v + ((b * s.H + h) * s.n + t) * s.d;
      for (int64_t c = 0; c < s.d; ++c) m[c] = std::max(m[c], bt[c] * clip(vr[c], cap / bt[c]));
    }
  });
  const int64_t nb = s.per_head();
  for (int64_t bh = 0; bh < s.B * s.H; ++bh)
    for (int64_t c = 0; c < s.d; ++c) {
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t k = 0; k < nb; ++k) m = std::max(m, part[(size_t)((bh * nb + k) * s.d + c)]);
      M[bh * s.d + c] = std::isinf(m) && m < 0 ? T(0) : m;
    }
}

// w (B, H, n, W) = [v̂, exp(βv̂ − M), (1)].
template <class T>
void values_kernel(const Blocks& s, const T* v, const T* beta, const T* M, T cap, bool ones, T* w) {
  const int64_t d = s.d, W = 2 * d + ones;
  s.run([&](int64_t b, int64_t h, int64_t t0, int64_t t1, int64_t) {
    const T* bt = beta + h * d;
    const T* m = M + (b * s.H + h) * d;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row = (b * s.H + h) * s.n + t;
      const T* vr = v + row * d;
      T* wr = w + row * W;
      for (int64_t c = 0; c < d; ++c) {
        const T vh = clip(vr[c], cap / bt[c]);
        wr[c] = vh;
        wr[d + c] = fexp(bt[c] * vh - m[c]);
      }
      if (ones) wr[2 * d] = T(1);
    }
  });
}

// dv = [inside] (g1 + β e g2); dβ = Σ [inside] e v̂ g2 + [clipped] ∓(cap/β²) g1 (βv̂ = ±cap is
// constant where clipped), with e = exp(βv̂ − M) recomputed.
template <class T>
void values_backward(const Blocks& s, const T* v, const T* beta, const T* M, T cap, const T* g, int64_t W, T* dv,
                     T* dbeta) {
  const int64_t d = s.d;
  std::vector<double> part(dbeta ? (size_t)(s.tasks() * d) : 0, 0.0);
  s.run([&](int64_t b, int64_t h, int64_t t0, int64_t t1, int64_t task) {
    const T* bt = beta + h * d;
    const T* m = M + (b * s.H + h) * d;
    double* pb = dbeta ? part.data() + task * d : nullptr;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row = (b * s.H + h) * s.n + t;
      const T *vr = v + row * d, *gr = g + row * W;
      for (int64_t c = 0; c < d; ++c) {
        const T lim = cap / bt[c], vh = clip(vr[c], lim);
        const T e = fexp(bt[c] * vh - m[c]), g1 = gr[c], g2 = gr[d + c];
        const bool inside = vr[c] > -lim && vr[c] < lim;
        if (dv) dv[row * d + c] = inside ? g1 + bt[c] * e * g2 : T(0);
        if (pb) pb[c] += inside ? (double)(e * vh * g2) : (double)(vr[c] > 0 ? -lim / bt[c] * g1 : lim / bt[c] * g1);
      }
    }
  });
  if (dbeta) s.sum_heads(part, dbeta);
}

struct FreeEnergyValuesBackward : Node {
  SavedTensor v, beta, M;
  double cap = 0;
  const char* name() const override { return "FreeEnergyValuesBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    const Tensor V = v.unpack(this), Bt = beta.unpack(this), Mx = M.unpack(this), G = g[0].contiguous();
    const Blocks s{V.size(0), V.size(1), V.size(2), V.size(3)};
    Tensor dv = needs_grad(0) ? make_tensor_uninit(V.shape(), V.dtype()) : Tensor();
    Tensor db = needs_grad(1) ? make_tensor_uninit(Bt.shape(), V.dtype()) : Tensor();
    dispatch_float(V.dtype(), "free_energy_values", [&]<class T>() {
      values_backward<T>(s, V.data_ptr<T>(), Bt.data_ptr<T>(), Mx.data_ptr<T>(), (T)cap, G.data_ptr<T>(), G.size(3),
                         dv.defined() ? dv.data_ptr<T>() : nullptr, db.defined() ? db.data_ptr<T>() : nullptr);
    });
    return {dv, db};
  }
  void release() override { v.reset(); beta.reset(); M.reset(); }
};

void check_values(const Tensor& v, const Tensor& beta, double cap, const Tensor& mask) {
  const char* op = "free_energy_values";
  if (!v.defined() || !beta.defined()) throw ShapeError(std::string(op) + ": v and beta must be defined");
  if (v.dim() != 4 || beta.shape() != Shape{v.size(1), v.size(3)})
    throw_shape(op, "needs v (B, H, n, d) and beta (H, d)", {{"v", &v}, {"beta", &beta}});
  if (!is_floating(v.dtype()) || beta.dtype() != v.dtype())
    throw_dtype(op, "v and beta must share one float dtype", {{"v", &v}, {"beta", &beta}});
  if (mask.defined() && (mask.dtype() != kBool || mask.shape() != Shape{v.size(0), v.size(2)}))
    throw_shape(op, "key_padding_mask must be bool (B, n)", {{"v", &v}, {"key_padding_mask", &mask}});
  if (!(cap > 0)) throw std::invalid_argument(std::string(op) + ": cap must be > 0 (+inf: no clipping), got " + std::to_string(cap));
}
}  // namespace

FreeEnergyValues free_energy_values(const Tensor& v, const Tensor& beta, double cap, const Tensor& key_padding_mask,
                                    bool ones_column) {
  check_values(v, beta, cap, key_padding_mask);
  const Tensor V = v.detach().contiguous(), Bt = beta.detach().contiguous();
  const Tensor mask = key_padding_mask.defined() ? key_padding_mask.contiguous() : Tensor();
  const Blocks s{V.size(0), V.size(1), V.size(2), V.size(3)};
  FreeEnergyValues r;
  r.M = make_tensor_uninit({s.B, s.H, 1, s.d}, v.dtype());
  r.w = make_tensor_uninit({s.B, s.H, s.n, 2 * s.d + ones_column}, v.dtype());
  dispatch_float(v.dtype(), "free_energy_values", [&]<class T>() {
    values_max<T>(s, V.data_ptr<T>(), Bt.data_ptr<T>(), mask.defined() ? mask.data_ptr<bool>() : nullptr, (T)cap,
                  r.M.data_ptr<T>());
    values_kernel<T>(s, V.data_ptr<T>(), Bt.data_ptr<T>(), r.M.data_ptr<T>(), (T)cap, ones_column, r.w.data_ptr<T>());
  });
  if (auto n = make_node<FreeEnergyValuesBackward>({v, beta})) {
    n->v = save(V);
    n->beta = save(Bt);
    n->M = save(r.M);
    n->cap = cap;
    set_history(r.w, n);
  }
  return r;
}

// ---- free_energy_read ----------------------------------------------------------------------

namespace {

// logaddexp(a, b) for finite a, b.
template <class T>
T logaddexp(T a, T b) {
  return std::max(a, b) + flog(T(1) + fexp(-std::abs(a - b)));
}

// lse = logaddexp(log Z̃, fl) where Z̃ > 0, else fl (a row that sees no key). Computed
// unconditionally and selected, so that the loops over channels vectorise.
template <class T>
T log_sum(T Z, T fl) {
  const T lse = logaddexp(flog(Z > 0 ? Z : T(1)), fl);
  return Z > 0 ? lse : fl;
}

// μ = y1/s, F = (lse(y2/s) + M)/β per row, s the clamped normaliser (1 without one).
template <class T>
void read_kernel(const Blocks& s, const T* y, int64_t W, const T* M, const T* beta, bool norm, T* mu, T* F) {
  const int64_t d = s.d;
  s.run([&](int64_t b, int64_t h, int64_t t0, int64_t t1, int64_t) {
    const T log_tiny = std::log(std::numeric_limits<T>::min());
    const T* __restrict bt = beta + h * d;
    const T* __restrict m = M + (b * s.H + h) * d;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row = (b * s.H + h) * s.n + t;
      const T* __restrict yr = y + row * W;
      T* __restrict mr = mu + row * d;
      T* __restrict Fr = F + row * d;
      const T den = norm ? std::max(yr[2 * d], T(kFreeEnergyMinDenominator)) : T(1);
      for (int64_t c = 0; c < d; ++c) {
        mr[c] = yr[c] / den;
        Fr[c] = (log_sum(yr[d + c] / den, log_tiny - m[c]) + m[c]) / bt[c];
      }
    }
  });
}

// dy1 = gμ/s, dy2 = (gF/β)/(Z + e^fl)/s where Z > 0 (dlse/dZ = σ(log Z − fl)/Z), the
// normaliser's dy = −Σ_c (gμ μ + dZ Z)/s where it is not clamped; dβ = −Σ gF F/β.
// gmu, gF: (B, H, n, d) (zeros for an output that got no gradient).
template <class T>
void read_backward(const Blocks& s, const T* y, int64_t W, const T* M, const T* beta, bool norm, const T* gmu,
                   const T* gF, T* dy, T* dbeta) {
  const int64_t d = s.d;
  std::vector<double> part((size_t)(s.tasks() * d), 0.0);
  s.run([&](int64_t b, int64_t h, int64_t t0, int64_t t1, int64_t task) {
    const T log_tiny = std::log(std::numeric_limits<T>::min());
    const T* __restrict bt = beta + h * d;
    const T* __restrict m = M + (b * s.H + h) * d;
    double* __restrict pb = part.data() + task * d;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row = (b * s.H + h) * s.n + t;
      const T* __restrict yr = y + row * W;
      const T* __restrict gm = gmu + row * d;
      const T* __restrict gf = gF + row * d;
      T* __restrict dr = dy + row * W;
      const T raw = norm ? yr[2 * d] : T(1), den = std::max(raw, T(kFreeEnergyMinDenominator));
      T dden = 0;
      for (int64_t c = 0; c < d; ++c) {
        const T Z = yr[d + c] / den, fl = log_tiny - m[c], mu = yr[c] / den;
        const T dZ = Z > 0 ? gf[c] / bt[c] / (Z + fexp(fl)) : T(0);
        dr[c] = gm[c] / den;
        dr[d + c] = dZ / den;
        dden -= (gm[c] * mu + dZ * Z) / den;
        pb[c] -= (double)(gf[c] * ((log_sum(Z, fl) + m[c]) / bt[c]) / bt[c]);
      }
      if (norm) dr[2 * d] = raw >= T(kFreeEnergyMinDenominator) ? dden : T(0);
    }
  });
  s.sum_heads(part, dbeta);
}

struct FreeEnergyReadBackward : Node {
  SavedTensor y, M, beta;
  bool norm = false;
  const char* name() const override { return "FreeEnergyReadBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    const Tensor Y = y.unpack(this), Mx = M.unpack(this), Bt = beta.unpack(this);
    const Blocks s{Y.size(0), Y.size(1), Y.size(2), Bt.size(1)};
    auto grad = [&](size_t i) {
      return g[i].defined() ? g[i].contiguous() : Tensor::zeros({s.B, s.H, s.n, s.d}, Y.dtype());
    };
    const Tensor gmu = grad(0), gF = grad(1);
    Tensor dy = make_tensor_uninit(Y.shape(), Y.dtype()), db = make_tensor_uninit(Bt.shape(), Y.dtype());
    dispatch_float(Y.dtype(), "free_energy_read", [&]<class T>() {
      read_backward<T>(s, Y.data_ptr<T>(), Y.size(3), Mx.data_ptr<T>(), Bt.data_ptr<T>(), norm, gmu.data_ptr<T>(),
                       gF.data_ptr<T>(), dy.data_ptr<T>(), db.data_ptr<T>());
    });
    return {needs_grad(0) ? dy : Tensor(), needs_grad(1) ? db : Tensor()};
  }
  void release() override { y.reset(); M.reset(); beta.reset(); }
};

void check_read(const Tensor& y, const Tensor& M, const Tensor& beta, bool norm) {
  const char* op = "free_energy_read";
  if (!y.defined() || !M.defined() || !beta.defined()) throw ShapeError(std::string(op) + ": y, M and beta must be defined");
  if (y.dim() != 4 || beta.dim() != 2 || beta.size(0) != y.size(1) || y.size(3) != 2 * beta.size(1) + norm ||
      M.shape() != Shape{y.size(0), y.size(1), 1, beta.size(1)})
    throw_shape(op,
                std::string("needs y (B, H, n, 2d") + (norm ? " + 1" : "") + "), M (B, H, 1, d) and beta (H, d)",
                {{"y", &y}, {"M", &M}, {"beta", &beta}});
  if (!is_floating(y.dtype()) || M.dtype() != y.dtype() || beta.dtype() != y.dtype())
    throw_dtype(op, "y, M and beta must share one float dtype", {{"y", &y}, {"M", &M}, {"beta", &beta}});
  if (M.requires_grad()) throw std::invalid_argument(std::string(op) + ": M is a constant (detach it); it requires grad");
}
}  // namespace

FreeEnergyOut free_energy_read(const Tensor& y, const Tensor& M, const Tensor& beta, bool normaliser_column) {
  check_read(y, M, beta, normaliser_column);
  const Tensor Y = y.detach().contiguous(), Mx = M.contiguous(), Bt = beta.detach().contiguous();
  const Blocks s{Y.size(0), Y.size(1), Y.size(2), Bt.size(1)};
  FreeEnergyOut r;
  r.mu = make_tensor_uninit({s.B, s.H, s.n, s.d}, y.dtype());
  r.F = make_tensor_uninit({s.B, s.H, s.n, s.d}, y.dtype());
  dispatch_float(y.dtype(), "free_energy_read", [&]<class T>() {
    read_kernel<T>(s, Y.data_ptr<T>(), Y.size(3), Mx.data_ptr<T>(), Bt.data_ptr<T>(), normaliser_column,
                   r.mu.data_ptr<T>(), r.F.data_ptr<T>());
  });
  if (auto n = make_node<FreeEnergyReadBackward>({y, beta})) {
    n->y = save(Y);
    n->M = save(Mx);
    n->beta = save(Bt);
    n->norm = normaliser_column;
    set_history(r.mu, n, 0);
    set_history(r.F, n, 1);
    n->num_outputs = 2;
  }
  return r;
}

}  // namespace lotgrad
