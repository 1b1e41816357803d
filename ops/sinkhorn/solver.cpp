// The forward log-domain Sinkhorn iteration, per problem in the canonical layout (detail.h):
//   row half-step     f_i = la_i - LSE_j(g_j - K_ij)
//   column half-step  g_j = lb_j - LSE_i(f_i - K_ij)
// A column step that directly follows a row step takes its sums from the row step's
// exponentials (see row_step), so a full iteration costs one exp per entry.
#include <cmath>
#include <stdexcept>
#include <type_traits>

#include "block.h"
#include "detail.h"

namespace lotgrad::sinkhorn_detail {

namespace {

// Below this a centred column sum has lost accuracy to underflow: redo with a max pass.
template <class T> constexpr double kTinySum = std::is_same_v<T, float> ? 1e-20 : 1e-200;

// sum_i exp(a_i + c - b_i), in double.
template <class T>
LOTGRAD_KERNEL double sum_exp(const T* __restrict a, const T* __restrict b, T c, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += (double)fexp(T(a[i] + c - b[i]));
  return s;
}
// sum_i exp(a_i - b_i - c), in double.
template <class T>
LOTGRAD_KERNEL double sum_exp_sub(const T* __restrict a, const T* __restrict b, T c, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += (double)fexp(T(a[i] - b[i] - c));
  return s;
}
// max_i (a_i - b_i).
template <class T>
LOTGRAD_KERNEL T max_diff(const T* __restrict a, const T* __restrict b, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, T(a[i] - b[i]));
  // All -inf leaves m at the reduction's identity: -inf under GCC, the lowest finite value
  // under clang's OpenMP.
  return m > std::numeric_limits<T>::lowest() ? m : -std::numeric_limits<T>::infinity();
}
// sum_i e_i w_i, in double.
template <class T>
LOTGRAD_KERNEL double dot_ew(const T* __restrict e, const double* __restrict w, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += (double)e[i] * w[i];
  return s;
}

// Reusable buffers of one problem's solve (no allocation per half-step).
template <class T>
struct Work {
  std::vector<T> tmp;
  std::vector<double> part, s, lse;
  std::vector<T> mx;
  std::vector<double> a;      // (N) exp(la): row masses
  std::vector<double> cpart;  // (nchunks, M) column sums left by the last row step
  bool have_cols = false;     // cpart holds the column marginals of the current f, g
};

// What one half-step is asked to do.
struct HalfStep {
  bool measure = false;      // measure this side's marginal error of the current plan first
  double stop_below = -1;    // and skip the update (stop) when the error is below this
  bool cols_next = false;    // row step: leave the next column step's sums in Work::cpart
};
struct StepResult {
  double err = -1;  // relative L1 marginal error, -1 when not measured
  bool stopped = false;
};

// ---- row half-step ---------------------------------------------------------------------
// If `cols_next`, the row step also leaves the next column step's sums, the column
// marginals of the new plan: exp(f'_i + g_j - K_ij) = exp(g_j - K_ij - mx_i) * a_i / s_i
// reuses the row step's exponentials (one exp per entry per full iteration instead of
// two); the sums differ from recomputed ones by float rounding only.

// Adds one block's column marginals of the new plan to acc (M).
template <class T>
void row_block_cols(const Prob<T>& p, const Work<T>& w, const Blk<T>& bk, int64_t i0, int64_t nb, double* acc) {
  alignas(64) double wt[kBlk];
  const double* la = p.la + i0;
  const double* lse = bk.lse;
  const double* a = w.a.data() + i0;
  const double* s = bk.s;
  // exp(f'_i + mx_i) for the f'_i actually stored (rounded to T): a_i / s_i * exp(d_i),
  // d_i = T(x) - x is tiny, so exp(d_i) = 1 + d_i + d_i^2 / 2 to double precision.
#pragma omp simd
  for (int64_t i = 0; i < nb; ++i) {
    const double x = la[i] - lse[i], d = (double)T(x) - x;
    wt[i] = valid(la[i]) ? a[i] / s[i] * (1.0 + d + 0.5 * d * d) : 0.0;
  }
  for (int64_t j = 0; j < p.M; ++j) acc[j] += dot_ew(bk.e.data() + j * kBlk, wt, nb);
}

// Rows of chunk c: new potentials into dst; the measured error into w.part[c].
template <class T>
void row_chunk(const Prob<T>& p, const HalfStep& hs, Work<T>& w, T* dst, int64_t c) {
  Blk<T> bk;
  double e = 0;
  for (int64_t i0 = p.cbeg(c); i0 < p.cend(c); i0 += kBlk) {
    const int64_t nb = std::min(kBlk, p.cend(c) - i0);
    block_lse(p.K, p.N, p.M, p.g, i0, nb, bk, hs.cols_next);
    const double* la = p.la + i0;
    const double* lse = bk.lse;
    if (hs.measure) {
      const T* fo = p.f + i0;
#pragma omp simd reduction(+ : e)
      for (int64_t i = 0; i < nb; ++i)
        e += valid(la[i]) ? std::abs(fexp((double)fo[i] + lse[i]) - fexp(la[i])) : 0.0;
    }
    T* out = dst + i0;
#pragma omp simd
    for (int64_t i = 0; i < nb; ++i) out[i] = valid(la[i]) ? T(la[i] - lse[i]) : -std::numeric_limits<T>::infinity();
    if (hs.cols_next) row_block_cols(p, w, bk, i0, nb, w.cpart.data() + c * p.M);
  }
  if (hs.measure) w.part[c] = e;
}

// f_i = la_i - LSE_j(g_j - K_ij). If `measure`, first measures the row marginal error of the
// current plan and skips the update when it is below stop_below.
template <class T>
StepResult row_step(Prob<T>& p, const HalfStep& hs, Work<T>& w) {
  const int64_t nc = p.nchunks(), M = p.M, N = p.N;
  w.part.assign(hs.measure ? nc : 0, 0.0);
  w.have_cols = false;
  if (hs.cols_next) {
    w.cpart.assign((size_t)(nc * M), 0.0);
    if ((int64_t)w.a.size() != N) {
      w.a.resize(N);
      for (int64_t i = 0; i < N; ++i) w.a[i] = fexp(p.la[i]);
    }
  }
  T* dst = p.f;
  if (hs.measure) {  // the update goes to tmp until the error says whether to keep it
    w.tmp.resize(N);
    dst = w.tmp.data();
  }
  for_chunks(nc, N * M, [&](int64_t c) { row_chunk(p, hs, w, dst, c); });
  StepResult r;
  if (hs.measure) {
    r.err = 0;
    for (double v : w.part) r.err += v;
    r.err /= p.mass;
    if (r.err < hs.stop_below) {
      r.stopped = true;
      return r;
    }
    std::copy(w.tmp.begin(), w.tmp.end(), p.f);
  }
  w.have_cols = hs.cols_next;
  return r;
}

// ---- column half-step ------------------------------------------------------------------
// Sums over rows accumulate in double per chunk. Zero-mass rows (f_i = -inf) and columns
// (g_j = -inf) contribute exact zeros.

// Per-chunk column sums of the current plan into w.part (nchunks, M): left by the row step
// just before, else computed.
template <class T>
void col_sums(const Prob<T>& p, Work<T>& w) {
  const int64_t nc = p.nchunks(), M = p.M, N = p.N;
  std::vector<double>& part = w.part;
  if (w.have_cols) {
    part.swap(w.cpart);
    w.have_cols = false;
    return;
  }
  part.assign((size_t)nc * M, 0.0);
  for_chunks(nc, N * M, [&](int64_t c) {
    double* acc = part.data() + c * M;
    const int64_t i0 = p.cbeg(c), i1 = p.cend(c);
    for (int64_t j = 0; j < M; ++j)
      if (valid(p.lb[j])) acc[j] = sum_exp(p.f + i0, p.K + j * N + i0, p.g[j], i1 - i0);
  });
}

// Centred form: s_j are the column marginals, LSE_i(f_i - K_ij) = log s_j - g_j. Returns
// the unnormalised L1 marginal error.
template <class T>
double col_lse_centred(const Prob<T>& p, Work<T>& w) {
  double err = 0;
  for (int64_t j = 0; j < p.M; ++j) {
    if (!valid(p.lb[j])) continue;
    w.lse[j] = std::log(w.s[j]) - (double)p.g[j];
    err += std::abs(w.s[j] - std::exp(p.lb[j]));
  }
  return err;
}

// Fallback when a centred sum under- or overflowed (cold starts): column maxima, then
// shifted sums. Returns the unnormalised L1 marginal error.
template <class T>
double col_lse_two_pass(const Prob<T>& p, Work<T>& w) {
  const int64_t nc = p.nchunks(), M = p.M, N = p.N;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  std::vector<double>& part = w.part;
  std::vector<T> mpart((size_t)nc * M, ninf);
  for_chunks(nc, N * M, [&](int64_t c) {
    T* mx = mpart.data() + c * M;
    const int64_t i0 = p.cbeg(c), i1 = p.cend(c);
    for (int64_t j = 0; j < M; ++j) mx[j] = max_diff(p.f + i0, p.K + j * N + i0, i1 - i0);
  });
  std::vector<T>& mx = w.mx;
  mx.assign(M, ninf);
  for (int64_t c = 0; c < nc; ++c)
    for (int64_t j = 0; j < M; ++j) mx[j] = std::max(mx[j], mpart[c * M + j]);
  std::fill(part.begin(), part.end(), 0.0);
  for_chunks(nc, N * M, [&](int64_t c) {
    double* acc = part.data() + c * M;
    const int64_t i0 = p.cbeg(c), i1 = p.cend(c);
    for (int64_t j = 0; j < M; ++j)
      if (valid(p.lb[j]) && mx[j] != ninf) acc[j] = sum_exp_sub(p.f + i0, p.K + j * N + i0, mx[j], i1 - i0);
  });
  std::fill(w.s.begin(), w.s.end(), 0.0);
  add_chunks(part, nc, M, w.s.data());
  double err = 0;
  for (int64_t j = 0; j < M; ++j) {
    if (!valid(p.lb[j])) continue;
    w.lse[j] = (double)mx[j] + std::log(w.s[j]);
    err += std::abs(std::exp((double)p.g[j] + w.lse[j]) - std::exp(p.lb[j]));
  }
  return err;
}

// g_j = lb_j - LSE_i(f_i - K_ij). The error is measured for free from the sums.
template <class T>
StepResult col_step(Prob<T>& p, const HalfStep& hs, Work<T>& w) {
  const int64_t M = p.M;
  col_sums(p, w);
  w.s.assign(M, 0.0);
  w.lse.assign(M, -kInf);
  add_chunks(w.part, p.nchunks(), M, w.s.data());
  bool ok = true;
  for (int64_t j = 0; j < M; ++j)
    if (valid(p.lb[j]) && !(std::isfinite(w.s[j]) && w.s[j] > kTinySum<T> * p.mass)) ok = false;
  StepResult r;
  r.err = (ok ? col_lse_centred(p, w) : col_lse_two_pass(p, w)) / p.mass;
  r.stopped = hs.measure && r.err < hs.stop_below;
  if (r.stopped) return r;
  for (int64_t j = 0; j < M; ++j) {
    if (!valid(p.lb[j])) continue;
    if (!std::isfinite(w.lse[j]))
      throw std::runtime_error("sinkhorn: column log-sum-exp is not finite (cost/eps out of range?)");
    p.g[j] = T(p.lb[j] - w.lse[j]);
  }
  if (!hs.measure) r.err = -1;
  return r;
}

// ---- driver ------------------------------------------------------------------------------
// Initial potentials (shifted, scaled units). Zero potentials in cost units unless warm.
template <class T>
void init_potentials(State<T>& st, const SinkhornOptions& o, T* f, T* g) {
  const Dims& d = st.d;
  std::vector<double> fi = expand_vec(o.f_init, d, d.n, 0.0), gi = expand_vec(o.g_init, d, d.m, 0.0);
  const std::vector<double>& fc = d.tr ? gi : fi;
  const std::vector<double>& gc = d.tr ? fi : gi;
  for (int64_t k = 0; k < d.B * d.N; ++k) {
    if (valid(st.la[k]) && !std::isfinite(fc[k])) throw ShapeError("sinkhorn: warm-start potentials must be finite on entries with mass");
    f[k] = valid(st.la[k]) ? T((fc[k] - st.rs[k]) / st.eps) : -std::numeric_limits<T>::infinity();
  }
  for (int64_t k = 0; k < d.B * d.M; ++k) {
    if (valid(st.lb[k]) && !std::isfinite(gc[k])) throw ShapeError("sinkhorn: warm-start potentials must be finite on entries with mass");
    g[k] = valid(st.lb[k]) ? T((gc[k] - st.cs[k]) / st.eps) : -std::numeric_limits<T>::infinity();
  }
}

// Allocates the potentials (and in unrolled mode the snapshots), sets them to their start.
template <class T>
void start_solve(State<T>& st, const SinkhornOptions& o) {
  const Dims& d = st.d;
  st.H = o.max_half_steps;
  st.last_rows = (o.last == SinkhornSide::rows) != d.tr;
  st.fh = make_tensor({d.B, d.N}, dtype_of<T>::value);
  st.gh = make_tensor({d.B, d.M}, dtype_of<T>::value);
  init_potentials(st, o, st.fh.template data_ptr<T>(), st.gh.template data_ptr<T>());
  if (st.mode == SinkhornGrad::unrolled) {
    st.f0 = st.fh.clone();
    st.g0 = st.gh.clone();
    st.snaps = make_tensor({d.B, st.H / 2 + 2, d.M}, dtype_of<T>::value);
  }
  st.steps.assign(d.B, 0);
  st.ncol.assign(d.B, 0);
  st.err.assign(d.B, -1.0);
}

// Problem b's half-steps. Unrolled mode snapshots g after every column step (sn row 0:
// the start), which is all the unrolled backward needs.
template <class T>
void solve_one(State<T>& st, const T* K, const SinkhornOptions& o, int64_t b) {
  const Dims& d = st.d;
  Prob<T> p;
  p.N = d.N;
  p.M = d.M;
  p.K = K + b * d.N * d.M;
  p.la = &st.la[b * d.N];
  p.lb = &st.lb[b * d.M];
  p.f = st.fh.template data_ptr<T>() + b * d.N;
  p.g = st.gh.template data_ptr<T>() + b * d.M;
  p.mass = st.mass[b];
  if (p.mass == 0) return;  // empty problem
  T* sn = st.mode == SinkhornGrad::unrolled ? st.snaps.template data_ptr<T>() + b * st.snap_stride() : nullptr;
  if (sn) std::copy(p.g, p.g + d.M, sn);
  Work<T> w;
  bool did_last = false;
  int64_t k = 0, nc = 0;
  for (; k < st.H; ++k) {
    const bool is_last = st.is_last(k);
    const bool rows = st.is_row_step(k);
    HalfStep hs;
    // Without a tolerance only the last measurement is reported (k = H - 2 is the last
    // half-step of the other side), so earlier ones are skipped.
    hs.measure = !is_last && (o.tol > 0 || k == st.H - 2);
    hs.stop_below = (did_last && o.tol > 0) ? o.tol : -1.0;
    hs.cols_next = rows && k + 1 < st.H;
    const StepResult r = rows ? row_step(p, hs, w) : col_step(p, hs, w);
    if (hs.measure) st.err[b] = r.err;
    if (r.stopped) break;
    if (!rows) {
      ++nc;
      if (sn) std::copy(p.g, p.g + d.M, sn + nc * d.M);
    }
    did_last |= is_last;
  }
  st.steps[b] = k;
  st.ncol[b] = nc;
}

}  // namespace

template <class T>
void solve_all(State<T>& st, const Tensor& K, const SinkhornOptions& o) {
  start_solve(st, o);
  const T* kp = K.data_ptr<T>();
  for_problems(st.d.B, [&](int64_t b) { solve_one(st, kp, o, b); });
}

template void solve_all<float>(State<float>&, const Tensor&, const SinkhornOptions&);
template void solve_all<double>(State<double>&, const Tensor&, const SinkhornOptions&);

}  // namespace lotgrad::sinkhorn_detail
