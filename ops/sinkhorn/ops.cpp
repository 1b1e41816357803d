// The public Sinkhorn functions (ops/sinkhorn.h): validation, setup and the solve shared by
// both, the outputs of sinkhorn() (potentials, plan) and sinkhorn_apply() (P W, P^T V
// without storing P), and the autograd node each attaches.
#include <string>

#include "../../core/iter.h"
#include "block.h"
#include "detail.h"

namespace lotgrad {

namespace sinkhorn_detail {

namespace {

// Validation, setup, solve. Leaves the working cost in K for the outputs.
template <class T>
std::shared_ptr<State<T>> forward_common(const OpArgs& a, Tensor& K) {
  auto st = std::make_shared<State<T>>();
  Dims d;
  check_inputs(a, d);
  check_cost<T>(a);
  st->d = d;
  st->eps = a.eps.item();
  st->mode = a.opts.grad;
  setup_weights<T>(a, *st);
  K = build_K<T>(a.C, *st);
  solve_all<T>(*st, K, a.opts);
  return st;
}

template <class T>
void fill_info(const State<T>& st, double tol, Tensor& half_steps, Tensor& error, bool& converged) {
  std::vector<int64_t> hs(st.steps.begin(), st.steps.end());
  half_steps = Tensor::from_vector(hs, {(int64_t)hs.size()}).view(st.d.batch);
  error = Tensor::from_vector(st.err, {(int64_t)st.err.size()}).view(st.d.batch);
  converged = tol > 0;
  for (size_t b = 0; b < st.err.size(); ++b)
    if (st.mass[b] > 0 && !(st.err[b] >= 0 && st.err[b] < tol)) converged = false;
}

// Potentials in cost units, original orientation.
template <class T>
void export_potentials(const State<T>& st, Tensor& f, Tensor& g) {
  const Dims& d = st.d;
  Shape sf = d.batch, sg = d.batch;
  sf.push_back(d.n);
  sg.push_back(d.m);
  f = make_tensor(sf, dtype_of<T>::value);
  g = make_tensor(sg, dtype_of<T>::value);
  Tensor fc = d.tr ? g : f, gc = d.tr ? f : g;  // canonical rows / cols
  T* fo = fc.template data_ptr<T>();
  T* go = gc.template data_ptr<T>();
  const T* fh = st.fh.template data_ptr<T>();
  const T* gh = st.gh.template data_ptr<T>();
  for (int64_t k = 0; k < d.B * d.N; ++k)
    fo[k] = valid(st.la[k]) ? T(st.eps * (double)fh[k] + st.rs[k]) : -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < d.B * d.M; ++k)
    go[k] = valid(st.lb[k]) ? T(st.eps * (double)gh[k] + st.cs[k]) : -std::numeric_limits<T>::infinity();
}

// Plan or log-plan, original orientation (B.., n, m).
template <class T>
Tensor export_plan(const State<T>& st, const Tensor& K, bool log_space) {
  const Dims& d = st.d;
  Shape s = d.batch;
  s.push_back(d.n);
  s.push_back(d.m);
  Tensor P = make_tensor(s, dtype_of<T>::value);
  T* po = P.data_ptr<T>();
  const T* kp = K.data_ptr<T>();
  const T* fh = st.fh.template data_ptr<T>();
  const T* gh = st.gh.template data_ptr<T>();
  const int64_t N = d.N, M = d.M;
  // One (problem, canonical column) pair per task: K's row of N entries.
  parallel_for(0, d.B * M, std::max<int64_t>(1, kParallelGrain / N), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / M, j = r % M;
      const T* f = fh + b * N;
      const T gj = gh[r];
      const T* k = kp + r * N;
      if (d.tr) {
        T* out = po + r * N;
#pragma omp simd
        for (int64_t i = 0; i < N; ++i) {
          const T lp = T(f[i] + gj - k[i]);  // -inf on padding (f or g is -inf)
          out[i] = log_space ? lp : fexp(lp);
        }
      } else {
        T* out = po + b * N * M + j;
        for (int64_t i = 0; i < N; ++i) {
          const T lp = T(f[i] + gj - k[i]);
          out[i * M] = log_space ? lp : fexp(lp);
        }
      }
    }
  });
  return P;
}

template <class T>
SinkhornResult sinkhorn_impl(const OpArgs& a) {
  Tensor K;
  auto st = forward_common<T>(a, K);
  const SinkhornOptions& o = a.opts;
  SinkhornResult r;
  export_potentials(*st, r.f, r.g);
  if (o.return_plan) r.plan = export_plan(*st, K, false);
  if (o.return_log_plan) r.log_plan = export_plan(*st, K, true);
  K = Tensor();
  fill_info(*st, o.tol, r.half_steps, r.error, r.converged);
  if (o.grad == SinkhornGrad::none) return r;
  if (auto n = make_node<SinkhornBackwardT<T>>({a.C, a.log_a, a.log_b, a.eps, o.f_init, o.g_init})) {
    n->C = save(a.C);
    n->st = st;
    set_history(r.f, n, 0);
    set_history(r.g, n, 1);
    if (r.plan.defined()) set_history(r.plan, n, 2);
    if (r.log_plan.defined()) set_history(r.log_plan, n, 3);
    n->num_outputs = 4;
  }
  return r;
}

// ---- sinkhorn_apply ------------------------------------------------------------------------
// The plan products over a block of rows, P (M, kBlk) the block's plan; sums in double.
// A_i = sum_j P_ij X_j (Xd (M, d) in double) written to A (nb, d).
template <class T>
LOTGRAD_KERNEL void blk_px(T* __restrict A, const T* __restrict P, const double* __restrict Xd, int64_t M, int64_t nb,
                           int64_t d, double* __restrict row) {
  for (int64_t i = 0; i < nb; ++i) {
    for (int64_t t = 0; t < d; ++t) row[t] = 0;
    for (int64_t j = 0; j < M; ++j) {
      const double pij = (double)P[j * kBlk + i];
      if (pij == 0) continue;
      const double* xj = Xd + j * d;
#pragma omp simd
      for (int64_t t = 0; t < d; ++t) row[t] += pij * xj[t];
    }
    T* ai = A + i * d;
#pragma omp simd
    for (int64_t t = 0; t < d; ++t) ai[t] = T(row[t]);
  }
}
// acc_j += sum_i P_ij Y_i, acc (M, d), Y (nb, d).
template <class T>
LOTGRAD_KERNEL void blk_pty(double* __restrict acc, const T* __restrict P, const T* __restrict Y, int64_t M, int64_t nb,
                            int64_t d, double* __restrict yd) {
  for (int64_t i = 0; i < nb; ++i) {
#pragma omp simd
    for (int64_t t = 0; t < d; ++t) yd[t] = (double)Y[i * d + t];
    for (int64_t j = 0; j < M; ++j) {
      const double pij = (double)P[j * kBlk + i];
      if (pij == 0) continue;
      double* aj = acc + j * d;
#pragma omp simd
      for (int64_t t = 0; t < d; ++t) aj[t] += pij * yd[t];
    }
  }
}

// W must be (..., m, d1) and V (..., n, d2) with C's batch dims; checked before solving.
void check_operands(const OpArgs& a, const Tensor& W, const Tensor& V) {
  const char* op = a.op;
  const Tensor& C = a.C;
  Dims d;
  check_inputs(a, d);
  auto chk = [&](const Tensor& t, const char* name, int64_t rows, const char* side) {
    if (!t.defined()) return;
    if (t.dtype() != C.dtype()) throw_dtype(op, std::string(name) + " must have the cost's dtype", {{"C", &C}, {name, &t}});
    Shape want = d.batch;
    want.push_back(rows);
    if (t.dim() != (int64_t)want.size() + 1 || Shape(t.shape().begin(), t.shape().end() - 1) != want)
      throw_shape(op, std::string(name) + " must be (..., " + side + ", d) with C's batch dims", {{"C", &C}, {name, &t}});
  };
  chk(W, "W", d.m, "m");
  chk(V, "V", d.n, "n");
}

// The canonical products A = P_c X (B.., N, dA) and Bo = P_c^T Y (B.., M, dB), each when its
// operand is defined: X is the M-indexed operand, Y the N-indexed one.
template <class T>
void plan_products(const State<T>& st, const Tensor& K, const Tensor& Xc, const Tensor& Yc, Tensor& A, Tensor& Bo) {
  const Dims& d = st.d;
  const int64_t N = d.N, M = d.M;
  const int64_t dA = Xc.defined() ? Xc.size(-1) : 0, dB = Yc.defined() ? Yc.size(-1) : 0;
  Shape sa = d.batch, sb = d.batch;
  sa.push_back(N);
  sa.push_back(dA);
  sb.push_back(M);
  sb.push_back(dB);
  if (Xc.defined()) A = make_tensor(sa, dtype_of<T>::value);
  if (Yc.defined()) Bo = make_tensor(sb, dtype_of<T>::value);
  const T* kp = K.data_ptr<T>();
  const T* fh = st.fh.template data_ptr<T>();
  const T* gh = st.gh.template data_ptr<T>();
  const T* xp = Xc.defined() ? Xc.template data_ptr<T>() : nullptr;
  const T* yp = Yc.defined() ? Yc.template data_ptr<T>() : nullptr;
  T* ap = A.defined() ? A.template data_ptr<T>() : nullptr;
  T* bp = Bo.defined() ? Bo.template data_ptr<T>() : nullptr;
  for_problems(d.B, [&](int64_t b) {
    const Prob<T> p = chunking<T>(N, M);
    const int64_t nc = p.nchunks();
    const T* K_b = kp + b * N * M;
    std::vector<double> bpart(bp ? (size_t)nc * M * dB : 0, 0.0);
    std::vector<double> xd(ap ? (size_t)(M * dA) : 0);  // X in double, converted once
    for (size_t q = 0; q < xd.size(); ++q) xd[q] = (double)xp[b * M * dA + q];
    for_chunks(nc, N * M, [&](int64_t c) {
      std::vector<T> P((size_t)(M * kBlk));
      std::vector<double> arow(dA), yd(dB);
      for (int64_t i0 = p.cbeg(c); i0 < p.cend(c); i0 += kBlk) {
        const int64_t nb = std::min(kBlk, p.cend(c) - i0);
        block_plan(K_b, N, M, fh + b * N, gh + b * M, i0, nb, P.data());
        if (ap) blk_px(ap + (b * N + i0) * dA, P.data(), xd.data(), M, nb, dA, arow.data());
        if (bp) blk_pty(bpart.data() + c * M * dB, P.data(), yp + (b * N + i0) * dB, M, nb, dB, yd.data());
      }
    });
    if (bp) sum_chunks_to(bpart, nc, M * dB, bp + b * M * dB);
  });
}

template <class T>
SinkhornApplyResult apply_impl(const OpArgs& a, const Tensor& W, const Tensor& V) {
  check_operands(a, W, V);
  Tensor K;
  auto st = forward_common<T>(a, K);
  const Dims& d = st->d;
  const SinkhornOptions& o = a.opts;
  Tensor Xc = d.tr ? contig_or_empty(V) : contig_or_empty(W);  // M-indexed operand
  Tensor Yc = d.tr ? contig_or_empty(W) : contig_or_empty(V);  // N-indexed operand
  Tensor A, Bo;
  plan_products(*st, K, Xc, Yc, A, Bo);
  K = Tensor();
  SinkhornApplyResult r;
  r.PW = d.tr ? Bo : A;
  r.PtV = d.tr ? A : Bo;
  export_potentials(*st, r.f, r.g);
  fill_info(*st, o.tol, r.half_steps, r.error, r.converged);
  if (o.grad == SinkhornGrad::none) return r;
  if (auto n = make_node<SinkhornBackwardT<T>>({a.C, a.log_a, a.log_b, a.eps, o.f_init, o.g_init, W, V})) {
    n->is_apply = true;
    n->C = save(a.C);
    if (Xc.defined()) n->X = save(Xc);
    if (Yc.defined()) n->Y = save(Yc);
    n->st = st;
    if (r.PW.defined()) set_history(r.PW, n, 0);
    if (r.PtV.defined()) set_history(r.PtV, n, 1);
    set_history(r.f, n, 2);
    set_history(r.g, n, 3);
    n->num_outputs = 4;
  }
  return r;
}

}  // namespace

}  // namespace sinkhorn_detail

using sinkhorn_detail::OpArgs;

SinkhornResult sinkhorn(const Tensor& C, const Tensor& log_a, const Tensor& log_b, const Tensor& eps,
                        const SinkhornOptions& opts) {
  if (!C.defined()) throw ShapeError("sinkhorn: cost C is undefined");
  const OpArgs a{"sinkhorn", C, log_a, log_b, eps, opts};
  return dispatch_float(C.dtype(), "sinkhorn", [&]<class T>() { return sinkhorn_detail::sinkhorn_impl<T>(a); });
}
SinkhornResult sinkhorn(const Tensor& C, const Tensor& log_a, const Tensor& log_b, double eps,
                        const SinkhornOptions& opts) {
  if (!C.defined()) throw ShapeError("sinkhorn: cost C is undefined");
  return sinkhorn(C, log_a, log_b, Tensor::scalar(eps, C.dtype()), opts);
}
SinkhornApplyResult sinkhorn_apply(const Tensor& C, const Tensor& log_a, const Tensor& log_b, const Tensor& eps,
                                   const Tensor& W, const Tensor& V, const SinkhornOptions& opts) {
  if (!C.defined()) throw ShapeError("sinkhorn_apply: cost C is undefined");
  const OpArgs a{"sinkhorn_apply", C, log_a, log_b, eps, opts};
  return dispatch_float(C.dtype(), "sinkhorn_apply",
                        [&]<class T>() { return sinkhorn_detail::apply_impl<T>(a, W, V); });
}
SinkhornApplyResult sinkhorn_apply(const Tensor& C, const Tensor& log_a, const Tensor& log_b, double eps,
                                   const Tensor& W, const Tensor& V, const SinkhornOptions& opts) {
  if (!C.defined()) throw ShapeError("sinkhorn_apply: cost C is undefined");
  return sinkhorn_apply(C, log_a, log_b, Tensor::scalar(eps, C.dtype()), W, V, opts);
}

}  // namespace lotgrad
