// Sinkhorn setup: input validation, canonical log-weights and masses, and the working cost
// K = (C - rs - cs) / eps in the canonical (M, N) layout (see detail.h).
#include <cmath>
#include <string>

#include "block.h"
#include "detail.h"

namespace lotgrad::sinkhorn_detail {

namespace {

constexpr double kBalanceTol = 1e-4;  // relative disagreement allowed between the totals

// A log-weight or warm start must be (..., k) and broadcast to C's batch dims.
void check_vec(const OpArgs& a, const Dims& d, const Tensor& t, const char* name, int64_t k, const char* side) {
  if (!t.defined()) return;
  const char* op = a.op;
  const Tensor& C = a.C;
  if (t.dtype() != C.dtype()) throw_dtype(op, std::string(name) + " must have the cost's dtype", {{"C", &C}, {name, &t}});
  Shape want = d.batch;
  want.push_back(k);
  bool okb = t.dim() >= 1 && t.size(-1) == k;
  if (okb) {
    try {
      okb = broadcast_shapes(t.shape(), want, op) == want;
    } catch (const ShapeError&) {
      okb = false;
    }
  }
  if (!okb)
    throw_shape(op, std::string(name) + " must be (..., " + side + ") = " + shape_str(want) + " or broadcast to it",
                {{"C", &C}, {name, &t}});
}

void check_eps_and_options(const OpArgs& a) {
  const char* op = a.op;
  const Tensor& C = a.C;
  const Tensor& eps = a.eps;
  if (!eps.defined() || eps.numel() != 1)
    throw_shape(op, "eps must be a one-element tensor", {{"C", &C}, {"eps", eps.defined() ? &eps : nullptr}});
  if (eps.dtype() != C.dtype()) throw_dtype(op, "eps must have the cost's dtype", {{"C", &C}, {"eps", &eps}});
  const double e = eps.item();
  if (!(e > 0) || !std::isfinite(e)) throw_shape(op, "eps must be finite and > 0, got " + std::to_string(e), {{"eps", &eps}});
  if (a.opts.max_half_steps < 1) throw ShapeError(std::string(op) + ": max_half_steps must be >= 1");
  if (!(a.opts.tol >= 0)) throw ShapeError(std::string(op) + ": tol must be >= 0");
}

// Total mass of each side per problem, log domain, on the threads (B*N exps: 131k per
// LOTFormer layer).
template <class T>
void log_totals(const State<T>& st, std::vector<double>& tot_a, std::vector<double>& tot_b) {
  const Dims& d = st.d;
  tot_a.resize((size_t)d.B);
  tot_b.resize((size_t)d.B);
  parallel_for(0, d.B, std::max<int64_t>(1, kParallelGrain / (4 * (d.N + d.M))), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      tot_a[(size_t)b] = lse_vec(&st.la0[b * d.N], d.N);
      tot_b[(size_t)b] = lse_vec(&st.lb0[b * d.M], d.M);
    }
  });
}

// ---- working cost ------------------------------------------------------------------------
// One problem's raw canonical costs kb (M, N), its log-weights la (N), lb (M), 1 / eps, and
// the shifts rs (N), cs (M) that build_K_one computes.
template <class T>
struct KShift {
  T* __restrict kb;
  int64_t N, M;
  const double* __restrict la;
  const double* __restrict lb;
  double ie;
  double* __restrict rs;
  double* __restrict cs;
};

// rs_i = min_j (K_ij - cs_j) over the columns with mass (kSubCs; else min_j K_ij), 0 for a
// row without any.
template <bool kSubCs, class T>
LOTGRAD_KERNEL void row_shifts(KShift<T> a) {
  const int64_t N = a.N, M = a.M;
  for (int64_t i = 0; i < N; ++i) a.rs[i] = kInf;
  for (int64_t j = 0; j < M; ++j) {
    if (!valid(a.lb[j])) continue;
    const T* kj = a.kb + j * N;
    if constexpr (kSubCs) {
      const double cj = a.cs[j];
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) a.rs[i] = std::min(a.rs[i], (double)kj[i] - cj);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) a.rs[i] = std::min(a.rs[i], (double)kj[i]);
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < N; ++i) a.rs[i] = a.rs[i] < kInf ? a.rs[i] : 0.0;
}

// cs_j = min_i (K_ij - rs_i) over the rows with mass (kSubRs; else min_i K_ij), 0 for a
// column without any.
template <bool kSubRs, class T>
LOTGRAD_KERNEL void col_shifts(KShift<T> a) {
  const int64_t N = a.N, M = a.M;
  for (int64_t j = 0; j < M; ++j) {
    const T* kj = a.kb + j * N;
    double mn = kInf;
    if constexpr (kSubRs) {
#pragma omp simd reduction(min : mn)
      for (int64_t i = 0; i < N; ++i) mn = std::min(mn, valid(a.la[i]) ? (double)kj[i] - a.rs[i] : kInf);
    } else {
#pragma omp simd reduction(min : mn)
      for (int64_t i = 0; i < N; ++i) mn = std::min(mn, valid(a.la[i]) ? (double)kj[i] : kInf);
    }
    // No row with mass leaves mn at the reduction's identity: +inf under GCC, the largest
    // finite double under clang's OpenMP (a fully padded problem then gave a NaN plan).
    a.cs[j] = mn < std::numeric_limits<double>::max() ? mn : 0.0;
  }
}

// K_ij = (K_ij - first shift - second shift) / eps, in that order.
template <bool kRowsFirst, class T>
LOTGRAD_KERNEL void subtract_shifts(KShift<T> a) {
  const int64_t N = a.N, M = a.M;
  for (int64_t j = 0; j < M; ++j) {
    T* kj = a.kb + j * N;
    const double cj = a.cs[j];
    if constexpr (kRowsFirst) {
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) kj[i] = T(((double)kj[i] - a.rs[i] - cj) * a.ie);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) kj[i] = T(((double)kj[i] - cj - a.rs[i]) * a.ie);
    }
  }
}

// One problem's working cost in place. The first shift takes minima over the original rows
// (canonical rows unless transposed), over entries whose opposite side has mass; the
// second the minima of what is left over the other side. Minima are exact, so any loop
// order gives the same shifts; the subtraction order is fixed (first shift, then second).
template <class T>
void build_K_one(const KShift<T>& a, bool tr) {
  if (!tr) {
    row_shifts<false>(a);
    col_shifts<true>(a);
    subtract_shifts<true>(a);
  } else {
    col_shifts<false>(a);
    row_shifts<true>(a);
    subtract_shifts<false>(a);
  }
}

// Canonical K_ij at kb[j N + i] from one problem's C (n, m): the original layout when
// transposed, else its transpose.
template <class T>
void canonical_copy(const T* cb, T* kb, const Dims& d) {
  if (d.tr) {
    std::copy(cb, cb + d.n * d.m, kb);
  } else {
    for (int64_t i0 = 0; i0 < d.n; i0 += 64)  // tiles keep both sides in cache
      for (int64_t j = 0; j < d.m; ++j)
        for (int64_t i = i0; i < std::min(d.n, i0 + 64); ++i) kb[j * d.n + i] = cb[i * d.m + j];
  }
}

}  // namespace

void check_inputs(const OpArgs& a, Dims& d) {
  const char* op = a.op;
  const Tensor& C = a.C;
  if (!C.defined()) throw ShapeError(std::string(op) + ": cost C is undefined");
  if (!is_floating(C.dtype())) throw_dtype(op, "cost must be f32 or f64", {{"C", &C}});
  if (C.dim() < 2) throw_shape(op, "cost must be (..., n, m) with at least 2 dims", {{"C", &C}});
  d.n = C.size(-2);
  d.m = C.size(-1);
  d.batch = Shape(C.shape().begin(), C.shape().end() - 2);
  d.B = shape_numel(d.batch);
  d.tr = d.n < d.m;
  d.N = std::max(d.n, d.m);
  d.M = std::min(d.n, d.m);
  if (d.n == 0 || d.m == 0) throw_shape(op, "cost must have n >= 1 and m >= 1", {{"C", &C}});
  check_vec(a, d, a.log_a, "log_a", d.n, "n");
  check_vec(a, d, a.log_b, "log_b", d.m, "m");
  check_vec(a, d, a.opts.f_init, "f_init", d.n, "n");
  check_vec(a, d, a.opts.g_init, "g_init", d.m, "m");
  check_eps_and_options(a);
}

template <class T>
void check_cost(const OpArgs& a) {
  Tensor Cc = a.C.detach().contiguous();
  const T* c = Cc.data_ptr<T>();
  const int64_t n = Cc.numel();
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) bad |= !std::isfinite(c[i]);
  if (bad) throw_shape(a.op, "cost must be finite (found NaN or inf)", {{"C", &a.C}});
}

std::vector<double> expand_vec(const Tensor& t, const Dims& d, int64_t k, double fill) {
  std::vector<double> out((size_t)(d.B * k), fill);
  if (!t.defined()) return out;
  Shape full = d.batch;
  full.push_back(k);
  Tensor e = t.detach().expand(full);
  std::vector<double> v = e.to_vector();
  std::copy(v.begin(), v.end(), out.begin());
  return out;
}

double lse_vec(const double* x, int64_t k) {
  double mx = -kInf;
  for (int64_t i = 0; i < k; ++i) mx = std::max(mx, x[i]);
  if (mx == -kInf) return -kInf;
  double s = 0;
  for (int64_t i = 0; i < k; ++i) s += std::exp(x[i] - mx);
  return mx + std::log(s);
}

// Within kBalanceTol, the smaller side (canonical columns) is rescaled to the rows' total,
// so the op is a smooth function of unconstrained log-weights (ops/sinkhorn.h).
template <class T>
void setup_weights(const OpArgs& a, State<T>& st) {
  const Dims& d = st.d;
  const char* op = a.op;
  std::vector<double> la = expand_vec(a.log_a, d, d.n, -std::log((double)d.n));
  std::vector<double> lb = expand_vec(a.log_b, d, d.m, -std::log((double)d.m));
  for (double v : la)
    if (std::isnan(v) || v == kInf) throw_shape(op, "log_a must not contain NaN or +inf", {{"log_a", &a.log_a}});
  for (double v : lb)
    if (std::isnan(v) || v == kInf) throw_shape(op, "log_b must not contain NaN or +inf", {{"log_b", &a.log_b}});
  st.la0 = d.tr ? lb : la;
  st.lb0 = d.tr ? la : lb;
  st.la = st.la0;
  st.lb = st.lb0;
  st.mass.assign(d.B, 0.0);
  std::vector<double> tot_a, tot_b;
  log_totals(st, tot_a, tot_b);
  for (int64_t b = 0; b < d.B; ++b) {
    const double A = tot_a[(size_t)b], Bm = tot_b[(size_t)b];
    if (A == -kInf && Bm == -kInf) continue;  // empty problem: zero plan
    if (A == -kInf || Bm == -kInf || std::abs(std::expm1(A - Bm)) > kBalanceTol) {
      throw_shape(op,
                  "marginals must have equal total mass (sum exp(log_a) = " + std::to_string(std::exp(d.tr ? Bm : A)) +
                      ", sum exp(log_b) = " + std::to_string(std::exp(d.tr ? A : Bm)) + " in batch entry " +
                      std::to_string(b) + ")",
                  {{"C", &a.C}, {"log_a", &a.log_a}, {"log_b", &a.log_b}});
    }
    for (int64_t j = 0; j < d.M; ++j) st.lb[b * d.M + j] += A - Bm;
    st.mass[b] = std::exp(A);
  }
}

template <class T>
Tensor build_K(const Tensor& C, State<T>& st) {
  const Dims& d = st.d;
  Tensor Cc = C.detach().contiguous();
  const T* c = Cc.data_ptr<T>();
  Tensor K = make_tensor({d.B, d.M, d.N}, dtype_of<T>::value);  // (M, N) per problem
  T* k = K.data_ptr<T>();
  st.rs.assign((size_t)(d.B * d.N), 0.0);
  st.cs.assign((size_t)(d.B * d.M), 0.0);
  const double ie = 1.0 / st.eps;
  parallel_for(0, d.B, std::max<int64_t>(1, kParallelGrain / (d.n * d.m)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* kb = k + b * d.N * d.M;
      canonical_copy(c + b * d.n * d.m, kb, d);
      const KShift<T> a{.kb = kb,
                        .N = d.N,
                        .M = d.M,
                        .la = &st.la[b * d.N],
                        .lb = &st.lb[b * d.M],
                        .ie = ie,
                        .rs = &st.rs[b * d.N],
                        .cs = &st.cs[b * d.M]};
      build_K_one(a, d.tr);
    }
  });
  return K;
}

template void check_cost<float>(const OpArgs&);
template void check_cost<double>(const OpArgs&);
template void setup_weights<float>(const OpArgs&, State<float>&);
template void setup_weights<double>(const OpArgs&, State<double>&);
template Tensor build_K<float>(const Tensor&, State<float>&);
template Tensor build_K<double>(const Tensor&, State<double>&);

}  // namespace lotgrad::sinkhorn_detail
