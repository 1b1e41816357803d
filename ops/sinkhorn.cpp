// Log-domain Sinkhorn with unrolled and implicit backward passes. Derivations and the
// test list are in /work/shared/reference/sinkhorn.md; the student page is docs/sinkhorn.md.
//
// Internally every problem is put in a canonical "tall" layout: rows are the larger side
// (N = max(n, m)) and columns the smaller side (M = min(n, m)); a problem with n < m is
// transposed while the working cost is built. The working cost is
//   K_ij = (C_ij - rs_i - cs_j) / eps    (rs: row minima, cs: column minima after that)
// so that in f32 the entries that carry mass are small numbers. The iteration is exactly
// equivariant under such shifts (the potentials absorb them), so nothing downstream
// depends on them. Potentials fh, gh are in these shifted, scaled units.
// K is stored column by column, (M, N) per problem (K_ij at K[j N + i]), and the kernels
// process rows kBlk at a time with the short side as the outer loop, so the inner loops run
// over rows and vectorise even for M = 4 (LOTFormer's r). exp / log are the vectorisable
// ones of fastmath.h. A column step that directly follows a row step takes its sums from
// the row step's exponentials (see row_step).
// GCC will not if-convert the float compares in fexp (so no loop over it vectorises) while
// it must assume compares can trap. Nothing here relies on FP traps; values are unchanged.
// It is set before the includes because the kernels' loops are inlined into parallel_for's
// outlined OpenMP bodies, which take the options in force where parallel.h is read.
#pragma GCC optimize("no-trapping-math")
#include "sinkhorn.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"
#include "fastmath.h"


namespace lotgrad {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kBalanceTol = 1e-4;  // relative disagreement allowed between the totals

using fastmath::fexp;
using fastmath::flog;

// Below this a centred column sum has lost accuracy to underflow: redo with a max pass.
template <class T> constexpr double kTinySum = std::is_same_v<T, float> ? 1e-20 : 1e-200;

inline bool valid(double lw) { return lw != -kInf; }

// Fixed row chunks (independent of the thread count, so sums are bit-reproducible).
inline int64_t chunk_rows(int64_t M) { return std::max<int64_t>(8, 32768 / std::max<int64_t>(M, 1)); }

template <class F>
void for_chunks(int64_t nchunks, int64_t work, F&& f) {
  parallel_for(0, nchunks, work >= kParallelGrain ? 1 : nchunks + 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) f(c);
  });
}

// ---- per-problem view --------------------------------------------------------------
template <class T>
struct Prob {
  int64_t N = 0, M = 0;
  const T* K = nullptr;        // (M, N) working cost, column-major in (i, j): K_ij = K[j N + i]
  const double* la = nullptr;  // (N) effective log-weights (canonical rows)
  const double* lb = nullptr;  // (M)
  T* f = nullptr;              // (N) potentials, shifted scaled units
  T* g = nullptr;              // (M)
  double mass = 0;             // total mass (both sides after rebalancing)
  int64_t nchunks() const { return (N + chunk_rows(M) - 1) / chunk_rows(M); }
  int64_t cbeg(int64_t c) const { return c * chunk_rows(M); }
  int64_t cend(int64_t c) const { return std::min(N, (c + 1) * chunk_rows(M)); }
};

// Rows are processed kBlk at a time: every inner loop runs over rows (contiguous in the
// (M, N) layout, vectorised) with the M columns as the outer loop, so a short M (LOTFormer's
// r = 4) still fills the vector lanes. Block scratch stays in L1.
constexpr int64_t kBlk = 256;

// Per-thread scratch for one block of rows.
template <class T>
struct Blk {
  alignas(64) T mx[kBlk];
  alignas(64) double s[kBlk], lse[kBlk];
  std::vector<T> e;  // (M, kBlk) exponentials, when asked for
};

// Hot loops as functions of restrict pointers passed by value: inside the chunk lambdas,
// pointers captured by reference are reloaded per iteration (GCC then gathers) and simd
// reduction accumulators spill to the stack. Kept out of line: inlined, GCC falls back to
// the scalar loop of its alias versioning.
#define LOTGRAD_KERNEL __attribute__((noinline))
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
  return m;
}
// mx_i = max(mx_i, c - k_i).
template <class T>
LOTGRAD_KERNEL void max_acc(T* __restrict mx, const T* __restrict k, T c, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T v = c - k[i], m = mx[i];
    mx[i] = m < v ? v : m;  // std::max's reference return becomes a branchy conditional store
  }
}
// e_i = exp(c - k_i - mx_i) (if e), s_i += e_i.
template <class T>
LOTGRAD_KERNEL void exp_acc(double* __restrict s, T* __restrict e, const T* __restrict k, const T* __restrict mx, T c, int64_t n) {
  if (e) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      e[i] = fexp(T(c - k[i] - mx[i]));
      s[i] += (double)e[i];
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) s[i] += (double)fexp(T(c - k[i] - mx[i]));
  }
}
// lse_i = mx_i + log s_i (-inf where mx_i = -inf). s_i >= 1 where mx_i is finite; for f32
// the result is rounded to float, so a 1e-12 log suffices.
template <class T>
LOTGRAD_KERNEL void lse_fin(double* __restrict lse, const T* __restrict mx, const double* __restrict s, int64_t n) {
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  if constexpr (std::is_same_v<T, float>) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) lse[i] = mx[i] == ninf ? -kInf : (double)mx[i] + fastmath::flog_fast(s[i] >= 1 ? s[i] : 1.0);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) lse[i] = mx[i] == ninf ? -kInf : (double)mx[i] + flog(s[i]);
  }
}

// sinkhorn_apply's plan products over a block of rows, P (M, kBlk) the block's plan; sums in
// double. A_i = sum_j P_ij X_j (Xd (M, d) in double) written to A (nb, d).
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
// S_ij = GA_i . X_j + Y_i . GB_j for rows [0, nb) of a block: four rows and W columns per
// register tile (no horizontal sums); Xt (dA, Mp), GBt (dB, Mp) are X, GB transposed and
// zero-padded to Mp, a multiple of W (W = 4 when M <= 4: LOTFormer's r = 4 wastes no lanes).
template <class T, int W>
LOTGRAD_KERNEL void seed_scores(const T* __restrict GA, int64_t dA, const T* __restrict Y, int64_t dB, int64_t nb,
                                const double* __restrict Xt, const double* __restrict GBt, int64_t Mp, double* __restrict S) {
  for (int64_t i = 0; i < nb; i += 4) {
    const int64_t r1 = std::min(i + 1, nb - 1), r2 = std::min(i + 2, nb - 1), r3 = std::min(i + 3, nb - 1);
    for (int64_t jb = 0; jb < Mp; jb += W) {
      double a0[W] = {}, a1[W] = {}, a2[W] = {}, a3[W] = {};
      for (int64_t t = 0; t < (GA ? dA : 0); ++t) {
        const double* bt = Xt + t * Mp + jb;
        const double g0 = (double)GA[i * dA + t], g1 = (double)GA[r1 * dA + t], g2 = (double)GA[r2 * dA + t],
                     g3 = (double)GA[r3 * dA + t];
#pragma omp simd
        for (int l = 0; l < W; ++l) a0[l] += g0 * bt[l], a1[l] += g1 * bt[l], a2[l] += g2 * bt[l], a3[l] += g3 * bt[l];
      }
      for (int64_t t = 0; t < (Y ? dB : 0); ++t) {
        const double* bt = GBt + t * Mp + jb;
        const double g0 = (double)Y[i * dB + t], g1 = (double)Y[r1 * dB + t], g2 = (double)Y[r2 * dB + t],
                     g3 = (double)Y[r3 * dB + t];
#pragma omp simd
        for (int l = 0; l < W; ++l) a0[l] += g0 * bt[l], a1[l] += g1 * bt[l], a2[l] += g2 * bt[l], a3[l] += g3 * bt[l];
      }
      for (int l = 0; l < W; ++l) {
        S[i * Mp + jb + l] = a0[l];
        if (i + 1 < nb) S[(i + 1) * Mp + jb + l] = a1[l];
        if (i + 2 < nb) S[(i + 2) * Mp + jb + l] = a2[l];
        if (i + 3 < nb) S[(i + 3) * Mp + jb + l] = a3[l];
      }
    }
  }
}
// Column padding of seed_scores' tiles for M columns.
inline int64_t seed_pad(int64_t M) { return M <= 4 ? 4 : (M + 7) / 8 * 8; }

// Backward seed of sinkhorn_apply over a block of rows: R_ij = P_ij (GA_i . X_j + Y_i . GB_j)
// into Kb (stride N per column), dX_j += P_ij GA_i (dx (M, dA), double), dY_i = sum_j P_ij GB_j.
// GA (nb, dA) and Y (nb, dB) may be null (then X / GB are unused). Zero-mass rows: all 0.
template <class T>
LOTGRAD_KERNEL void blk_seed(T* __restrict Kb, int64_t N, const T* __restrict P, const double* __restrict la, int64_t M,
                             int64_t nb, const T* __restrict GA, const double* __restrict Xd, int64_t dA,
                             const T* __restrict Y, const double* __restrict GBd, int64_t dB, double* __restrict dx,
                             T* __restrict dY, double* __restrict gad, double* __restrict yrow,
                             const double* __restrict Xt, const double* __restrict GBt, int64_t Mp, double* __restrict S) {
  if (Mp % 8) seed_scores<T, 4>(GA, dA, Y, dB, nb, Xt, GBt, Mp, S);
  else seed_scores<T, 8>(GA, dA, Y, dB, nb, Xt, GBt, Mp, S);
  for (int64_t i = 0; i < nb; ++i) {
    if (!valid(la[i])) {
      for (int64_t j = 0; j < M; ++j) Kb[j * N + i] = T(0);
      if (dY)
        for (int64_t t = 0; t < dB; ++t) dY[i * dB + t] = T(0);
      continue;
    }
    if (GA)
#pragma omp simd
      for (int64_t t = 0; t < dA; ++t) gad[t] = (double)GA[i * dA + t];
    for (int64_t j = 0; j < M; ++j) Kb[j * N + i] = T((double)P[j * kBlk + i] * S[i * Mp + j]);
    if (dx)
      for (int64_t j = 0; j < M; ++j) {
        const double pij = (double)P[j * kBlk + i];
        double* aj = dx + j * dA;
#pragma omp simd
        for (int64_t t = 0; t < dA; ++t) aj[t] += pij * gad[t];
      }
    if (dY) {
      for (int64_t t = 0; t < dB; ++t) yrow[t] = 0;
      for (int64_t j = 0; j < M; ++j) {
        const double pij = (double)P[j * kBlk + i];
        const double* gj = GBd + j * dB;
#pragma omp simd
        for (int64_t t = 0; t < dB; ++t) yrow[t] += pij * gj[t];
      }
#pragma omp simd
      for (int64_t t = 0; t < dB; ++t) dY[i * dB + t] = T(yrow[t]);
    }
  }
}

// Row LSEs over rows [i0, i0 + nb) of a problem: lse_i = LSE_j(g_j - K_ij) with an exact max
// (mx_i) and the shifted sum s_i >= 1 in double. Columns with g_j = -inf (zero mass) add 0
// and are skipped. If `keep`, b.e holds exp(g_j - K_ij - mx_i) as (M, kBlk).
template <class T>
inline void block_lse(const T* K, int64_t N, int64_t M, const T* g, int64_t i0, int64_t nb, Blk<T>& b, bool keep) {
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < nb; ++i) b.mx[i] = ninf, b.s[i] = 0;
  for (int64_t j = 0; j < M; ++j)
    if (g[j] != ninf) max_acc(b.mx, K + j * N + i0, g[j], nb);
  if (keep && b.e.size() < (size_t)(M * kBlk)) b.e.resize((size_t)(M * kBlk));
  for (int64_t j = 0; j < M; ++j) {
    T* e = keep ? b.e.data() + j * kBlk : nullptr;
    if (g[j] != ninf) exp_acc(b.s, e, K + j * N + i0, b.mx, g[j], nb);
    else if (e) std::fill(e, e + nb, T(0));
  }
  lse_fin(b.lse, b.mx, b.s, nb);
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

// Row half-step: f_i = la_i - LSE_j(g_j - K_ij). If `measure`, also measures the row
// marginal error of the current plan and skips the update when it is below stop_below.
// Returns the relative L1 error (or -1 when not measured) and sets stopped.
// If `cols`, it also leaves the next column step's sums, the column marginals of the new
// plan: exp(f'_i + g_j - K_ij) = exp(g_j - K_ij - mx_i) * a_i / s_i reuses the row step's
// exponentials (one exp per entry per full iteration instead of two); the sums differ
// from recomputed ones by float rounding only.
template <class T>
double row_step(Prob<T>& p, bool measure, double stop_below, bool& stopped, Work<T>& w, bool cols) {
  const int64_t nc = p.nchunks(), M = p.M, N = p.N;
  w.part.assign(measure ? nc : 0, 0.0);
  w.have_cols = false;
  if (cols) {
    w.cpart.assign((size_t)(nc * M), 0.0);
    if ((int64_t)w.a.size() != N) {
      w.a.resize(N);
      for (int64_t i = 0; i < N; ++i) w.a[i] = fexp(p.la[i]);
    }
  }
  T* dst = p.f;
  if (measure) {
    w.tmp.resize(N);
    dst = w.tmp.data();
  }
  for_chunks(nc, N * M, [&](int64_t c) {
    Blk<T> bk;
    alignas(64) double wt[kBlk];
    double e = 0;
    for (int64_t i0 = p.cbeg(c); i0 < p.cend(c); i0 += kBlk) {
      const int64_t nb = std::min(kBlk, p.cend(c) - i0);
      block_lse(p.K, N, M, p.g, i0, nb, bk, cols);
      const double* la = p.la + i0;
      const double* lse = bk.lse;
      if (measure) {
        const T* fo = p.f + i0;
#pragma omp simd reduction(+ : e)
        for (int64_t i = 0; i < nb; ++i)
          e += valid(la[i]) ? std::abs(fexp((double)fo[i] + lse[i]) - fexp(la[i])) : 0.0;
      }
      T* out = dst + i0;
#pragma omp simd
      for (int64_t i = 0; i < nb; ++i) out[i] = valid(la[i]) ? T(la[i] - lse[i]) : -std::numeric_limits<T>::infinity();
      if (cols) {
        const double* a = w.a.data() + i0;
        const double* s = bk.s;
        // exp(f'_i + mx_i) for the f'_i actually stored (rounded to T): a_i / s_i * exp(d_i),
        // d_i = T(x) - x is tiny, so exp(d_i) = 1 + d_i + d_i^2 / 2 to double precision.
#pragma omp simd
        for (int64_t i = 0; i < nb; ++i) {
          const double x = la[i] - lse[i], d = (double)T(x) - x;
          wt[i] = valid(la[i]) ? a[i] / s[i] * (1.0 + d + 0.5 * d * d) : 0.0;
        }
        double* acc = w.cpart.data() + c * M;
        for (int64_t j = 0; j < M; ++j) acc[j] += dot_ew(bk.e.data() + j * kBlk, wt, nb);
      }
    }
    if (measure) w.part[c] = e;
  });
  stopped = false;
  double err = -1;
  if (measure) {
    err = 0;
    for (double v : w.part) err += v;
    err /= p.mass;
    if (err < stop_below) {
      stopped = true;
      return err;
    }
    std::copy(w.tmp.begin(), w.tmp.end(), p.f);
  }
  w.have_cols = cols;
  return err;
}

// Column half-step: g_j = lb_j - LSE_i(f_i - K_ij). Centred form first (the sums are the
// current column marginals, no max pass); falls back to a two-pass LSE when a sum
// under- or overflowed (cold starts). Sums over rows accumulate in double per chunk.
// Zero-mass rows (f_i = -inf) and columns (g_j = -inf) contribute exact zeros.
template <class T>
double col_step(Prob<T>& p, bool measure, double stop_below, bool& stopped, Work<T>& w) {
  const int64_t nc = p.nchunks(), M = p.M, N = p.N;
  constexpr T ninf = -std::numeric_limits<T>::infinity();
  std::vector<double>& part = w.part;
  const T* f = p.f;
  if (w.have_cols) {  // left by the row step just before
    part.swap(w.cpart);
    w.have_cols = false;
  } else {
    part.assign((size_t)nc * M, 0.0);
    for_chunks(nc, N * M, [&](int64_t c) {
      double* acc = part.data() + c * M;
      const int64_t i0 = p.cbeg(c), i1 = p.cend(c);
      for (int64_t j = 0; j < M; ++j)
        if (valid(p.lb[j])) acc[j] = sum_exp(f + i0, p.K + j * N + i0, p.g[j], i1 - i0);
    });
  }
  std::vector<double>& s = w.s;
  std::vector<double>& lse = w.lse;
  s.assign(M, 0.0);
  lse.assign(M, -kInf);
  for (int64_t c = 0; c < nc; ++c)
    for (int64_t j = 0; j < M; ++j) s[j] += part[c * M + j];
  bool ok = true;
  for (int64_t j = 0; j < M; ++j)
    if (valid(p.lb[j]) && !(std::isfinite(s[j]) && s[j] > kTinySum<T> * p.mass)) ok = false;
  double err = 0;
  if (ok) {
    for (int64_t j = 0; j < M; ++j) {
      if (!valid(p.lb[j])) continue;
      lse[j] = std::log(s[j]) - (double)p.g[j];  // LSE_i(f_i - K_ij)
      err += std::abs(s[j] - std::exp(p.lb[j]));
    }
  } else {
    // Two passes: column maxima, then shifted sums.
    std::vector<T> mpart((size_t)nc * M, ninf);
    for_chunks(nc, N * M, [&](int64_t c) {
      T* mx = mpart.data() + c * M;
      const int64_t i0 = p.cbeg(c), i1 = p.cend(c);
      for (int64_t j = 0; j < M; ++j) mx[j] = max_diff(f + i0, p.K + j * N + i0, i1 - i0);
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
        if (valid(p.lb[j]) && mx[j] != ninf) acc[j] = sum_exp_sub(f + i0, p.K + j * N + i0, mx[j], i1 - i0);
    });
    std::fill(s.begin(), s.end(), 0.0);
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t j = 0; j < M; ++j) s[j] += part[c * M + j];
    for (int64_t j = 0; j < M; ++j) {
      if (!valid(p.lb[j])) continue;
      lse[j] = (double)mx[j] + std::log(s[j]);
      err += std::abs(std::exp((double)p.g[j] + lse[j]) - std::exp(p.lb[j]));
    }
  }
  err /= p.mass;
  stopped = measure && err < stop_below;
  if (stopped) return err;
  for (int64_t j = 0; j < M; ++j) {
    if (!valid(p.lb[j])) continue;
    if (!std::isfinite(lse[j]))
      throw std::runtime_error("sinkhorn: column log-sum-exp is not finite (cost/eps out of range?)");
    p.g[j] = T(p.lb[j] - lse[j]);
  }
  return measure ? err : -1;
}

// ---- shared setup ---------------------------------------------------------------------
struct Dims {
  Shape batch;        // C.shape[:-2]
  int64_t B = 1, n = 0, m = 0, N = 0, M = 0;
  bool tr = false;    // canonical = transposed
};

// Expands a (..., k) log-weight (or warm start) to (B, k) doubles; undefined -> fill.
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

// Everything the forward computes and the backward reuses (no n x m arrays).
template <class T>
struct State {
  Dims d;
  double eps = 1;
  int64_t H = 0;
  bool last_rows = true;  // canonical side updated last
  SinkhornGrad mode = SinkhornGrad::implicit;
  std::vector<double> la0, lb0;  // canonical log-weights as given (B*N, B*M)
  std::vector<double> la, lb;    // effective (rebalanced)
  std::vector<double> rs, cs;    // canonical shifts in cost units
  std::vector<double> mass;      // per problem
  Tensor fh, gh;                 // (B, N), (B, M) final potentials
  Tensor f0, g0;                 // (B, N), (B, M) initial potentials (unrolled)
  Tensor snaps;                  // (B, H/2 + 2, M) g after each column step (unrolled)
  std::vector<int64_t> steps, ncol;
  std::vector<double> err;
  int64_t snap_stride() const { return (H / 2 + 2) * d.M; }
};

// One problem's working cost in place: kb (M, N) holds the raw canonical costs on entry.
// First shift: minima over the original rows (canonical rows unless transposed), over
// entries of valid opposite side; second: minima of what is left over the other side.
// Rows / columns without valid entries get shift 0. Minima are exact, so any loop order
// gives the same shifts; the subtraction order is fixed (first shift, then second).
template <class T>
LOTGRAD_KERNEL void build_K_one(T* __restrict kb, int64_t N, int64_t M, bool tr, const double* __restrict la,
                                const double* __restrict lb, double ie, double* __restrict rs, double* __restrict cs) {
  if (!tr) {
    for (int64_t i = 0; i < N; ++i) rs[i] = kInf;
    for (int64_t j = 0; j < M; ++j) {
      if (!valid(lb[j])) continue;
      const T* kj = kb + j * N;
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) rs[i] = std::min(rs[i], (double)kj[i]);
    }
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) rs[i] = rs[i] < kInf ? rs[i] : 0.0;
    for (int64_t j = 0; j < M; ++j) {
      const T* kj = kb + j * N;
      double mn = kInf;
#pragma omp simd reduction(min : mn)
      for (int64_t i = 0; i < N; ++i) mn = std::min(mn, valid(la[i]) ? (double)kj[i] - rs[i] : kInf);
      cs[j] = std::isfinite(mn) ? mn : 0.0;
    }
    for (int64_t j = 0; j < M; ++j) {
      T* kj = kb + j * N;
      const double cj = cs[j];
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) kj[i] = T(((double)kj[i] - rs[i] - cj) * ie);
    }
  } else {
    for (int64_t j = 0; j < M; ++j) {
      const T* kj = kb + j * N;
      double mn = kInf;
#pragma omp simd reduction(min : mn)
      for (int64_t i = 0; i < N; ++i) mn = std::min(mn, valid(la[i]) ? (double)kj[i] : kInf);
      cs[j] = std::isfinite(mn) ? mn : 0.0;
    }
    for (int64_t i = 0; i < N; ++i) rs[i] = kInf;
    for (int64_t j = 0; j < M; ++j) {
      if (!valid(lb[j])) continue;
      const T* kj = kb + j * N;
      const double cj = cs[j];
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) rs[i] = std::min(rs[i], (double)kj[i] - cj);
    }
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) rs[i] = rs[i] < kInf ? rs[i] : 0.0;
    for (int64_t j = 0; j < M; ++j) {
      T* kj = kb + j * N;
      const double cj = cs[j];
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) kj[i] = T(((double)kj[i] - cj - rs[i]) * ie);
    }
  }
}

// Builds K (B, M, N) from C (validated, contiguous copy), filling rs, cs.
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
      const T* cb = c + b * d.n * d.m;
      // Canonical K_ij at kb[j N + i]: the original layout when transposed, else its transpose.
      T* kb = k + b * d.N * d.M;
      if (d.tr) {
        std::copy(cb, cb + d.n * d.m, kb);
      } else {
        for (int64_t i0 = 0; i0 < d.n; i0 += 64)  // tiles keep both sides in cache
          for (int64_t j = 0; j < d.m; ++j)
            for (int64_t i = i0; i < std::min(d.n, i0 + 64); ++i) kb[j * d.n + i] = cb[i * d.m + j];
      }
      build_K_one(kb, d.N, d.M, d.tr, &st.la[b * d.N], &st.lb[b * d.M], ie, &st.rs[b * d.N], &st.cs[b * d.M]);
    }
  });
  return K;
}

double lse_vec(const double* x, int64_t k) {
  double mx = -kInf;
  for (int64_t i = 0; i < k; ++i) mx = std::max(mx, x[i]);
  if (mx == -kInf) return -kInf;
  double s = 0;
  for (int64_t i = 0; i < k; ++i) s += std::exp(x[i] - mx);
  return mx + std::log(s);
}

// ---- input validation ------------------------------------------------------------------
void check_inputs(const char* op, const Tensor& C, const Tensor& la, const Tensor& lb, const Tensor& eps,
                  const SinkhornOptions& o, Dims& d) {
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
  auto check_vec = [&](const Tensor& t, const char* name, int64_t k, const char* side) {
    if (!t.defined()) return;
    if (t.dtype() != C.dtype())
      throw_dtype(op, std::string(name) + " must have the cost's dtype", {{"C", &C}, {name, &t}});
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
  };
  check_vec(la, "log_a", d.n, "n");
  check_vec(lb, "log_b", d.m, "m");
  check_vec(o.f_init, "f_init", d.n, "n");
  check_vec(o.g_init, "g_init", d.m, "m");
  if (!eps.defined() || eps.numel() != 1)
    throw_shape(op, "eps must be a one-element tensor", {{"C", &C}, {"eps", eps.defined() ? &eps : nullptr}});
  if (eps.dtype() != C.dtype()) throw_dtype(op, "eps must have the cost's dtype", {{"C", &C}, {"eps", &eps}});
  const double e = eps.item();
  if (!(e > 0) || !std::isfinite(e)) throw_shape(op, "eps must be finite and > 0, got " + std::to_string(e), {{"eps", &eps}});
  if (o.max_half_steps < 1) throw ShapeError(std::string(op) + ": max_half_steps must be >= 1");
  if (!(o.tol >= 0)) throw ShapeError(std::string(op) + ": tol must be >= 0");
}

// Fills log-weights (canonical, effective), masses, checks values and totals.
template <class T>
void setup_weights(const char* op, const Tensor& C, const Tensor& la_t, const Tensor& lb_t, State<T>& st) {
  const Dims& d = st.d;
  std::vector<double> la = expand_vec(la_t, d, d.n, -std::log((double)d.n));
  std::vector<double> lb = expand_vec(lb_t, d, d.m, -std::log((double)d.m));
  for (double v : la)
    if (std::isnan(v) || v == kInf) throw_shape(op, "log_a must not contain NaN or +inf", {{"log_a", &la_t}});
  for (double v : lb)
    if (std::isnan(v) || v == kInf) throw_shape(op, "log_b must not contain NaN or +inf", {{"log_b", &lb_t}});
  st.la0 = d.tr ? lb : la;
  st.lb0 = d.tr ? la : lb;
  st.la = st.la0;
  st.lb = st.lb0;
  st.mass.assign(d.B, 0.0);
  // Total masses per problem on the threads (B*N exps: 131k per LOTFormer layer); checked after.
  std::vector<double> tot_a((size_t)d.B), tot_b((size_t)d.B);
  parallel_for(0, d.B, std::max<int64_t>(1, kParallelGrain / (4 * (d.N + d.M))), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      tot_a[(size_t)b] = lse_vec(&st.la0[b * d.N], d.N);
      tot_b[(size_t)b] = lse_vec(&st.lb0[b * d.M], d.M);
    }
  });
  for (int64_t b = 0; b < d.B; ++b) {
    const double A = tot_a[(size_t)b], Bm = tot_b[(size_t)b];
    if (A == -kInf && Bm == -kInf) continue;  // empty problem: zero plan
    if (A == -kInf || Bm == -kInf || std::abs(std::expm1(A - Bm)) > kBalanceTol) {
      throw_shape(op,
                  "marginals must have equal total mass (sum exp(log_a) = " + std::to_string(std::exp(d.tr ? Bm : A)) +
                      ", sum exp(log_b) = " + std::to_string(std::exp(d.tr ? A : Bm)) + " in batch entry " +
                      std::to_string(b) + ")",
                  {{"C", &C}, {"log_a", &la_t}, {"log_b", &lb_t}});
    }
    for (int64_t j = 0; j < d.M; ++j) st.lb[b * d.M + j] += A - Bm;
    st.mass[b] = std::exp(A);
  }
}

template <class T>
void check_cost(const char* op, const Tensor& C) {
  Tensor Cc = C.detach().contiguous();
  const T* c = Cc.data_ptr<T>();
  const int64_t n = Cc.numel();
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) bad |= !std::isfinite(c[i]);
  if (bad) throw_shape(op, "cost must be finite (found NaN or inf)", {{"C", &C}});
}

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

// Runs the solver for every problem. K must be built. Fills fh, gh (and snaps, f0, g0).
template <class T>
void solve_all(State<T>& st, const Tensor& K, const SinkhornOptions& o) {
  const Dims& d = st.d;
  st.H = o.max_half_steps;
  st.last_rows = (o.last == SinkhornSide::rows) != d.tr;
  st.fh = make_tensor({d.B, d.N}, dtype_of<T>::value);
  st.gh = make_tensor({d.B, d.M}, dtype_of<T>::value);
  T* fh = st.fh.template data_ptr<T>();
  T* gh = st.gh.template data_ptr<T>();
  init_potentials(st, o, fh, gh);
  const bool unrolled = st.mode == SinkhornGrad::unrolled;
  T* snaps = nullptr;
  if (unrolled) {
    st.f0 = st.fh.clone();
    st.g0 = st.gh.clone();
    st.snaps = make_tensor({d.B, st.H / 2 + 2, d.M}, dtype_of<T>::value);
    snaps = st.snaps.template data_ptr<T>();
  }
  st.steps.assign(d.B, 0);
  st.ncol.assign(d.B, 0);
  st.err.assign(d.B, -1.0);
  const T* kp = K.data_ptr<T>();
  // Many problems: one per thread, serial inside. Few: serial over problems, parallel rows.
  const bool outer = d.B >= get_num_threads() && d.B > 1;
  auto run = [&](int64_t b) {
    Prob<T> p;
    p.N = d.N;
    p.M = d.M;
    p.K = kp + b * d.N * d.M;
    p.la = &st.la[b * d.N];
    p.lb = &st.lb[b * d.M];
    p.f = fh + b * d.N;
    p.g = gh + b * d.M;
    p.mass = st.mass[b];
    if (p.mass == 0) return;  // empty problem
    T* sn = snaps ? snaps + b * st.snap_stride() : nullptr;
    if (sn) std::copy(p.g, p.g + d.M, sn);
    Work<T> w;
    bool did_last = false;
    int64_t k = 0, nc = 0;
    for (; k < st.H; ++k) {
      const bool is_last = ((st.H - 1 - k) % 2) == 0;
      const bool rows = is_last == st.last_rows;
      // Without a tolerance only the last measurement is reported (k = H - 2 is the last
      // half-step of the other side), so earlier ones are skipped.
      const bool measure = !is_last && (o.tol > 0 || k == st.H - 2);
      const double thr = (did_last && o.tol > 0) ? o.tol : -1.0;
      bool stopped = false;
      const bool cols_next = rows && k + 1 < st.H;
      const double e = rows ? row_step(p, measure, thr, stopped, w, cols_next) : col_step(p, measure, thr, stopped, w);
      if (measure) st.err[b] = e;
      if (stopped) break;
      if (!rows) {
        ++nc;
        if (sn) std::copy(p.g, p.g + d.M, sn + nc * d.M);
      }
      did_last |= is_last;
    }
    st.steps[b] = k;
    st.ncol[b] = nc;
  };
  if (outer) {
    parallel_for(0, d.B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) run(b);
    });
  } else {
    for (int64_t b = 0; b < d.B; ++b) run(b);
  }
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

// ---- Laplacian solve -------------------------------------------------------------------
// Solves (S + c 1 1^T) v = rhs on the valid columns, S = diag(Moff 1) - Moff built from the
// off-diagonal of Mm (the graph Laplacian of sec. 4.3), so S 1 = 0 holds to rounding.
// Tiny pivots (disconnected components) are treated as null directions (v component 0).
void laplacian_solve(const std::vector<double>& Mm, const std::vector<double>& rhs_in, const double* lb, int64_t M,
                     std::vector<double>& v) {
  std::vector<int64_t> idx;
  for (int64_t j = 0; j < M; ++j)
    if (valid(lb[j])) idx.push_back(j);
  const int64_t k = (int64_t)idx.size();
  v.assign(M, 0.0);
  if (k <= 1) return;
  std::vector<double> A((size_t)(k * k), 0.0), r(k);
  double rmean = 0;
  for (int64_t a = 0; a < k; ++a) rmean += rhs_in[idx[a]];
  rmean /= (double)k;
  double diag_sum = 0;
  for (int64_t a = 0; a < k; ++a) {
    double s = 0;
    for (int64_t c = 0; c < k; ++c) {
      if (c == a) continue;
      const double w = Mm[idx[a] * M + idx[c]];
      A[a * k + c] = -w;
      s += w;
    }
    A[a * k + a] = s;
    diag_sum += s;
    r[a] = rhs_in[idx[a]] - rmean;  // exact rhs sums to zero; drop rounding drift
  }
  const double cc = diag_sum > 0 ? diag_sum / (double)(k * k) : 1.0;
  for (auto& x : A) x += cc;
  // Cholesky, lower triangle in place.
  double maxd = 0;
  for (int64_t a = 0; a < k; ++a) maxd = std::max(maxd, A[a * k + a]);
  std::vector<char> null(k, 0);
  for (int64_t j = 0; j < k; ++j) {
    double djj = A[j * k + j];
    for (int64_t q = 0; q < j; ++q) djj -= A[j * k + q] * A[j * k + q];
    if (djj <= 1e-13 * maxd) {
      null[j] = 1;
      for (int64_t i = j; i < k; ++i) A[i * k + j] = 0;
      continue;
    }
    const double l = std::sqrt(djj);
    A[j * k + j] = l;
    for (int64_t i = j + 1; i < k; ++i) {
      double s = A[i * k + j];
      for (int64_t q = 0; q < j; ++q) s -= A[i * k + q] * A[j * k + q];
      A[i * k + j] = s / l;
    }
  }
  for (int64_t i = 0; i < k; ++i) {  // L y = r
    if (null[i]) { r[i] = 0; continue; }
    double s = r[i];
    for (int64_t q = 0; q < i; ++q) s -= A[i * k + q] * r[q];
    r[i] = s / A[i * k + i];
  }
  for (int64_t i = k - 1; i >= 0; --i) {  // L^T x = y
    if (null[i]) { r[i] = 0; continue; }
    double s = r[i];
    for (int64_t q = i + 1; q < k; ++q) s -= A[q * k + i] * r[q];
    r[i] = s / A[i * k + i];
  }
  for (int64_t a = 0; a < k; ++a) v[idx[a]] = r[a];
}

// ---- backward core -------------------------------------------------------------------
// Inputs per problem: R = dL/dP o P (+ dL/dlogP) in Kb (canonical, N x M), potential
// adjoints yf0 = eps * dL/df (N), yg0 = eps * dL/dg (M) in canonical orientation.
// Outputs: Kb becomes dL/dK; dla, dlb (adjoints of the effective log-weights); df0, dg0
// (adjoints of the initial shifted potentials, unrolled only).
template <class T>
struct BwdOut {
  std::vector<double> dla, dlb, df0, dg0;
};

// Plan block: P_ij = exp(f_i + g_j - K_ij) for rows [i0, i0 + nb), as (M, kBlk).
template <class T>
inline void block_plan(const T* K, int64_t N, int64_t M, const T* f, const T* g, int64_t i0, int64_t nb, T* P) {
  for (int64_t j = 0; j < M; ++j) {
    const T gj = g[j];
    const T* k = K + j * N + i0;
    const T* fi = f + i0;
    T* pj = P + j * kBlk;
#pragma omp simd
    for (int64_t i = 0; i < nb; ++i) pj[i] = fexp(T(fi[i] + gj - k[i]));
  }
}

template <class T>
void backward_implicit(const State<T>& st, int64_t b, const T* K, T* Kb, const double* yf0, const double* yg0,
                       BwdOut<T>& out) {
  const int64_t N = st.d.N, M = st.d.M;
  const double* la = &st.la[b * N];
  const double* lb = &st.lb[b * M];
  const T* f = st.fh.template data_ptr<T>() + b * N;
  const T* g = st.gh.template data_ptr<T>() + b * M;
  Prob<T> p;
  p.N = N;
  p.M = M;
  const int64_t nc = p.nchunks();
  // Project the potential adjoints onto the consistent (gauge-invariant) subspace.
  double sf = 0, sg = 0;
  int64_t nv = 0, mv = 0;
  for (int64_t i = 0; i < N; ++i)
    if (valid(la[i])) sf += yf0[i], ++nv;
  for (int64_t j = 0; j < M; ++j)
    if (valid(lb[j])) sg += yg0[j], ++mv;
  const double delta = (nv + mv) ? (sf - sg) / (double)(nv + mv) : 0.0;
  std::vector<double> alpha(N, 0.0), yf(N, 0.0);
  // Pass 1: alpha, rho, kappa, rhs part, M = P~^T P~ (upper triangle; all in double).
  // Zero-mass rows have R = 0 and P = 0, so they add exact zeros.
  std::vector<double> pk((size_t)nc * M, 0.0), prhs((size_t)nc * M, 0.0), pM((size_t)nc * M * M, 0.0);
  for_chunks(nc, N * M, [&](int64_t c) {
    std::vector<T> P((size_t)(M * kBlk));
    std::vector<double> pt((size_t)(M * kBlk));
    alignas(64) double a[kBlk], rho[kBlk], w[kBlk], isa[kBlk];
    double* kap = pk.data() + c * M;
    double* rh = prhs.data() + c * M;
    double* Mm = pM.data() + c * M * M;
    for (int64_t i0 = p.cbeg(c); i0 < p.cend(c); i0 += kBlk) {
      const int64_t nb = std::min(kBlk, p.cend(c) - i0);
      block_plan(K, N, M, f, g, i0, nb, P.data());
      for (int64_t i = 0; i < nb; ++i) a[i] = 0, rho[i] = 0;
      for (int64_t j = 0; j < M; ++j) {
        const T* pj = P.data() + j * kBlk;
        const T* R = Kb + j * N + i0;
        double kj = 0;
#pragma omp simd reduction(+ : kj)
        for (int64_t i = 0; i < nb; ++i) {
          a[i] += (double)pj[i];
          rho[i] += (double)R[i];
          kj += (double)R[i];
        }
        kap[j] += kj;
      }
      // A row whose mass underflowed entirely (or a zero-mass row) carries nothing.
#pragma omp simd
      for (int64_t i = 0; i < nb; ++i) {
        const bool ok = valid(la[i0 + i]) && a[i] > 0;
        const double y = rho[i] + yf0[i0 + i] - delta;
        alpha[i0 + i] = ok ? a[i] : 0.0;
        yf[i0 + i] = ok ? y : 0.0;
        w[i] = ok ? y / a[i] : 0.0;
        isa[i] = ok ? 1.0 / std::sqrt(a[i]) : 0.0;
      }
      for (int64_t j = 0; j < M; ++j) {
        const T* pj = P.data() + j * kBlk;
        double* tj = pt.data() + j * kBlk;
        double r = 0;
#pragma omp simd reduction(+ : r)
        for (int64_t i = 0; i < nb; ++i) {
          r += (double)pj[i] * w[i];
          tj[i] = (double)pj[i] * isa[i];
        }
        rh[j] += r;
      }
      for (int64_t j = 0; j < M; ++j) {
        const double* tj = pt.data() + j * kBlk;
        for (int64_t q = j; q < M; ++q) {
          const double* tq = pt.data() + q * kBlk;
          double r = 0;
#pragma omp simd reduction(+ : r)
          for (int64_t i = 0; i < nb; ++i) r += tj[i] * tq[i];
          Mm[j * M + q] += r;
        }
      }
    }
  });
  std::vector<double> rhs(M, 0.0), Mm((size_t)M * M, 0.0);
  for (int64_t c = 0; c < nc; ++c) {
    for (int64_t j = 0; j < M; ++j) rhs[j] += pk[c * M + j] - prhs[c * M + j];
    for (int64_t q = 0; q < M * M; ++q) Mm[q] += pM[c * M * M + q];
  }
  for (int64_t j = 0; j < M; ++j)
    for (int64_t q = 0; q < j; ++q) Mm[j * M + q] = Mm[q * M + j];
  for (int64_t j = 0; j < M; ++j) rhs[j] = valid(lb[j]) ? rhs[j] + yg0[j] + delta : 0.0;
  std::vector<double> v;
  laplacian_solve(Mm, rhs, lb, M, v);
  // Pass 2: u, dL/dK = P o (u + v) - R.
  out.dla.assign(N, 0.0);
  for_chunks(nc, N * M, [&](int64_t c) {
    std::vector<T> P((size_t)(M * kBlk));
    alignas(64) double pv[kBlk], u[kBlk];
    for (int64_t i0 = p.cbeg(c); i0 < p.cend(c); i0 += kBlk) {
      const int64_t nb = std::min(kBlk, p.cend(c) - i0);
      block_plan(K, N, M, f, g, i0, nb, P.data());
      for (int64_t i = 0; i < nb; ++i) pv[i] = 0;
      for (int64_t j = 0; j < M; ++j) {
        const T* pj = P.data() + j * kBlk;
        const double vj = v[j];
#pragma omp simd
        for (int64_t i = 0; i < nb; ++i) pv[i] += (double)pj[i] * vj;
      }
      const double* al = alpha.data() + i0;
      const double* yfi = yf.data() + i0;
      double* dla = out.dla.data() + i0;
#pragma omp simd
      for (int64_t i = 0; i < nb; ++i) {
        const bool ok = al[i] != 0;  // zero for zero-mass rows too
        u[i] = ok ? (yfi[i] - pv[i]) / al[i] : 0.0;
        dla[i] = ok ? fexp(la[i0 + i]) * u[i] : 0.0;
      }
      for (int64_t j = 0; j < M; ++j) {
        const T* pj = P.data() + j * kBlk;
        const double vj = v[j];
        T* R = Kb + j * N + i0;
#pragma omp simd
        for (int64_t i = 0; i < nb; ++i) R[i] = al[i] != 0 ? T((double)pj[i] * (u[i] + vj) - (double)R[i]) : T(0);
      }
    }
  });
  out.dlb.assign(M, 0.0);
  for (int64_t j = 0; j < M; ++j)
    if (valid(lb[j])) out.dlb[j] = std::exp(lb[j]) * v[j];
}

// Unrolled backward, column step: kb_i += q_i g, t_i += q_i g with q_i = exp(f_i + go - k_i - lb).
template <class T>
LOTGRAD_KERNEL void col_undo_exp(T* __restrict kb, double* __restrict t, const T* __restrict fi, const T* __restrict k,
                                 T go, T lbj, double g, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const double q = (double)fexp(T(fi[i] + go - k[i] - lbj)) * g;
    kb[i] = T((double)kb[i] + q);
    t[i] += q;
  }
}
// The same with q_i g = e_i w_i cg.
template <class T>
LOTGRAD_KERNEL void col_undo_e(T* __restrict kb, double* __restrict t, const T* __restrict e, const double* __restrict w,
                               double cg, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const double q = (double)e[i] * w[i] * cg;
    kb[i] = T((double)kb[i] + q);
    t[i] += q;
  }
}
// Row step: kb_i += e_i w_i; returns sum_i e_i w_i.
template <class T>
LOTGRAD_KERNEL double row_undo(T* __restrict kb, const T* __restrict e, const double* __restrict w, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const double rr = (double)e[i] * w[i];  // fbar_i * Rr_ij
    kb[i] = T((double)kb[i] + rr);
    s += rr;
  }
  return s;
}

template <class T>
void backward_unrolled(const State<T>& st, int64_t b, const T* K, T* Kb, const double* yf0, const double* yg0,
                       BwdOut<T>& out) {
  const int64_t N = st.d.N, M = st.d.M;
  const double* la = &st.la[b * N];
  const double* lb = &st.lb[b * M];
  const T* f0 = st.f0.template data_ptr<T>() + b * N;
  const T* sn = st.snaps.template data_ptr<T>() + b * st.snap_stride();
  Prob<T> p;
  p.N = N;
  p.M = M;
  const int64_t nc = p.nchunks();
  // Seed: Kb = -R, fbar = R 1 + yf0, gbar = R^T 1 + yg0 (zero-mass rows: R = 0, fbar = 0).
  std::vector<double> fb(N, 0.0), gb(M, 0.0), part((size_t)nc * M, 0.0);
  for_chunks(nc, N * M, [&](int64_t c) {
    double* acc = part.data() + c * M;
    const int64_t i0 = p.cbeg(c), i1 = p.cend(c);
    for (int64_t j = 0; j < M; ++j) {
      T* R = Kb + j * N;
      double sacc = 0;
#pragma omp simd reduction(+ : sacc)
      for (int64_t i = i0; i < i1; ++i) {
        const T r = valid(la[i]) ? R[i] : T(0);
        fb[i] += (double)r;
        sacc += (double)r;
        R[i] = T(0) - r;
      }
      acc[j] = sacc;
    }
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) fb[i] = valid(la[i]) ? fb[i] + yf0[i] : 0.0;
  });
  for (int64_t c = 0; c < nc; ++c)
    for (int64_t j = 0; j < M; ++j) gb[j] += part[c * M + j];
  for (int64_t j = 0; j < M; ++j) gb[j] = valid(lb[j]) ? gb[j] + yg0[j] : 0.0;
  out.dla.assign(N, 0.0);
  out.dlb.assign(M, 0.0);
  const int64_t T_b = st.steps[b];
  int64_t cidx = st.ncol[b];
  auto is_rows = [&](int64_t k) { return (((st.H - 1 - k) % 2) == 0) == st.last_rows; };
  // Undo a row step that used column potentials gin: Kb += fbar Rr, gbar -= Rr^T fbar,
  // dla += fbar, fbar = 0. If `col` (a column step follows it, producing gout, with
  // adjoint gb_col), undo that first in the same pass: f is the row step's output.
  // Zero-mass rows have fbar = 0 and f = -inf, so every update they see is an exact zero.
  std::vector<double> gnew((size_t)nc * M), gbc;
  // Row masses for the column-step plan written via the row step's exponentials.
  std::vector<double> ea(N);
  for (int64_t i = 0; i < N; ++i) ea[i] = fexp(la[i]);
  std::vector<double> cq(M);
  auto undo = [&](const T* gin, bool row, bool col, const T* gout, const T* fin) {
    std::fill(gnew.begin(), gnew.end(), 0.0);
    gbc = gb;  // adjoint of the column step's output
    // Qc_ij = exp(f_i + gout_j - K_ij - lb_j) = e_ij * exp(f_i + mx_i) * exp(gout_j - gin_j - lb_j)
    // with e the row step's exponentials: no second exp per entry. Entries whose e underflowed
    // are below 1e-38 of their row's largest; a column factor above 1e15 could lift them, and
    // then that column is recomputed directly.
    for (int64_t j = 0; j < M; ++j)
      cq[j] = (row && col && gbc[j] != 0) ? fexp((double)gout[j] - (double)gin[j] - lb[j]) : kInf;
    for_chunks(nc, N * M, [&](int64_t c) {
      double* acc = gnew.data() + c * M;
      Blk<T> bk;
      alignas(64) T fi[kBlk];
      alignas(64) double fbi[kBlk], t[kBlk], wt[kBlk];
      for (int64_t i0 = p.cbeg(c); i0 < p.cend(c); i0 += kBlk) {
        const int64_t nb = std::min(kBlk, p.cend(c) - i0);
        if (row) {
          block_lse(K, N, M, gin, i0, nb, bk, true);
#pragma omp simd
          for (int64_t i = 0; i < nb; ++i) {
            const double x = la[i0 + i] - bk.lse[i];
            fi[i] = T(x);
            const double d = (double)fi[i] - x;  // exp(f_i + mx_i) for the rounded f_i
            wt[i] = valid(la[i0 + i]) ? ea[i0 + i] / bk.s[i] * (1.0 + d + 0.5 * d * d) : 0.0;
          }
        } else {
          for (int64_t i = 0; i < nb; ++i) fi[i] = fin[i0 + i];
        }
        for (int64_t i = 0; i < nb; ++i) fbi[i] = fb[i0 + i];
        if (col) {
          for (int64_t i = 0; i < nb; ++i) t[i] = 0;
          for (int64_t j = 0; j < M; ++j) {
            const double gj = gbc[j];
            if (gj == 0) continue;
            if (cq[j] <= 1e15)
              col_undo_e(Kb + j * N + i0, t, bk.e.data() + j * kBlk, wt, cq[j] * gj, nb);
            else
              col_undo_exp(Kb + j * N + i0, t, fi, K + j * N + i0, gout[j], T(lb[j]), gj, nb);
          }
          for (int64_t i = 0; i < nb; ++i) fbi[i] -= t[i];
        }
        if (row) {
          double* w = t;
#pragma omp simd
          for (int64_t i = 0; i < nb; ++i) w[i] = valid(la[i0 + i]) ? fbi[i] / bk.s[i] : 0.0;
          for (int64_t j = 0; j < M; ++j) acc[j] -= row_undo(Kb + j * N + i0, bk.e.data() + j * kBlk, w, nb);
          for (int64_t i = 0; i < nb; ++i) {
            out.dla[i0 + i] += fbi[i];
            fbi[i] = 0;
          }
        }
        for (int64_t i = 0; i < nb; ++i) fb[i0 + i] = fbi[i];
      }
    });
    if (col) {
      for (int64_t j = 0; j < M; ++j) out.dlb[j] += gbc[j];
      std::fill(gb.begin(), gb.end(), 0.0);
    }
    if (row)
      for (int64_t c = 0; c < nc; ++c)
        for (int64_t j = 0; j < M; ++j) gb[j] += gnew[c * M + j];
    for (int64_t j = 0; j < M; ++j)
      if (!valid(lb[j])) gb[j] = 0;
  };
  int64_t k = T_b - 1;
  while (k >= 0) {
    if (is_rows(k)) {
      undo(sn + cidx * M, true, false, nullptr, nullptr);
      k -= 1;
    } else if (k >= 1) {
      undo(sn + (cidx - 1) * M, true, true, sn + cidx * M, nullptr);
      cidx -= 1;
      k -= 2;
    } else {
      undo(nullptr, false, true, sn + cidx * M, f0);
      cidx -= 1;
      k -= 1;
    }
  }
  out.df0 = fb;
  out.dg0 = gb;
}

// ---- autograd node ------------------------------------------------------------------
// Seeds R (canonical) per problem into Kb; returns nothing. For the plain op R = dL/dP o P
// + dL/dlogP; for sinkhorn_apply R = P o (dA X^T + Y dB^T).
template <class T>
struct SinkhornBackwardT : Node {
  std::shared_ptr<State<T>> st;
  SavedTensor C, X, Y;  // X, Y: canonical product operands (apply only)
  bool is_apply = false;
  const char* name() const override { return is_apply ? "SinkhornApplyBackward" : "SinkhornBackward"; }
  void release() override {
    C.reset();
    X.reset();
    Y.reset();
    st.reset();
  }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override;
};

template <class T>
Tensor contig_or_empty(const Tensor& t) {
  return t.defined() ? t.detach().contiguous() : Tensor();
}

// Canonical potential adjoint eps * dL/d(potential) (B*K doubles) from an orig-side grad.
template <class T>
std::vector<double> pot_adjoint(const Tensor& G, int64_t count, double eps) {
  std::vector<double> y((size_t)count, 0.0);
  if (!G.defined()) return y;
  std::vector<double> v = G.to_vector();
  for (int64_t k = 0; k < count; ++k) y[k] = eps * v[k];
  return y;
}

template <class T>
std::vector<Tensor> SinkhornBackwardT<T>::apply(std::vector<Tensor>& grads) {
  State<T>& s = *st;
  const Dims& d = s.d;
  const int64_t N = d.N, M = d.M, B = d.B;
  const double eps = s.eps;
  Tensor Cin = C.unpack(this);
  Tensor K = build_K<T>(Cin, s);
  Tensor Kb = make_tensor({B, M, N}, dtype_of<T>::value);
  const T* kp = K.data_ptr<T>();
  T* kb = Kb.data_ptr<T>();
  const T* fh = s.fh.template data_ptr<T>();
  const T* gh = s.gh.template data_ptr<T>();
  // Upstream gradients, in the output order of each op.
  Tensor Gf, Gg, Gp, Glp, GA, GB;
  Tensor Xc, Yc;
  int64_t dA = 0, dB = 0;
  if (!is_apply) {
    Gf = grads[0], Gg = grads[1], Gp = contig_or_empty<T>(grads[2]), Glp = contig_or_empty<T>(grads[3]);
  } else {
    Gf = grads[2], Gg = grads[3];
    Tensor gpw = contig_or_empty<T>(grads[0]), gptv = contig_or_empty<T>(grads[1]);
    GA = d.tr ? gptv : gpw;  // adjoint of A = P_c X
    GB = d.tr ? gpw : gptv;  // adjoint of Bo = P_c^T Y
    if (X.defined()) Xc = X.unpack(this), dA = Xc.size(-1);
    if (Y.defined()) Yc = Y.unpack(this), dB = Yc.size(-1);
    if (!Xc.defined()) GA = Tensor();
    if (!Yc.defined()) GB = Tensor();
  }
  // Canonical potential adjoints.
  std::vector<double> yfo = pot_adjoint<T>(Gf, B * d.n, eps), ygo = pot_adjoint<T>(Gg, B * d.m, eps);
  const std::vector<double>& yf = d.tr ? ygo : yfo;
  const std::vector<double>& yg = d.tr ? yfo : ygo;
  // Direct gradients of the apply operands.
  Tensor dX, dY;
  if (Xc.defined() && GA.defined()) dX = make_tensor(Xc.shape(), dtype_of<T>::value);
  if (Yc.defined() && GB.defined()) dY = make_tensor(Yc.shape(), dtype_of<T>::value);
  // Seed R into Kb (and the apply direct terms), one pass per problem.
  const T* gp = Gp.defined() ? Gp.template data_ptr<T>() : nullptr;
  const T* glp = Glp.defined() ? Glp.template data_ptr<T>() : nullptr;
  const T* xa = Xc.defined() ? Xc.template data_ptr<T>() : nullptr;
  const T* ya = Yc.defined() ? Yc.template data_ptr<T>() : nullptr;
  const T* ga = GA.defined() ? GA.template data_ptr<T>() : nullptr;
  const T* gbp = GB.defined() ? GB.template data_ptr<T>() : nullptr;
  T* dxp = dX.defined() ? dX.template data_ptr<T>() : nullptr;
  T* dyp = dY.defined() ? dY.template data_ptr<T>() : nullptr;
  std::vector<BwdOut<T>> outs(B);
  std::vector<double> deps_part(B, 0.0);
  auto one = [&](int64_t b) {
    Prob<T> p;
    p.N = N;
    p.M = M;
    const int64_t nc = p.nchunks();
    const T* K_b = kp + b * N * M;
    T* Kb_b = kb + b * N * M;
    const T* f = fh + b * N;
    const T* g = gh + b * M;
    const double* la = &s.la[b * N];
    if (s.mass[b] == 0) {  // empty problem: zero plan, zero gradients
      std::fill(Kb_b, Kb_b + N * M, T(0));
      if (dyp) std::fill(dyp + b * N * dB, dyp + (b + 1) * N * dB, T(0));
      if (dxp) std::fill(dxp + b * M * dA, dxp + (b + 1) * M * dA, T(0));
    }
    std::vector<double> dxpart(dxp ? (size_t)nc * M * dA : 0, 0.0);
    // The M-indexed operands in double, converted once: X (M, dA), GB (M, dB).
    std::vector<double> xd(is_apply && ga ? (size_t)(M * dA) : 0), gbd(is_apply && gbp ? (size_t)(M * dB) : 0);
    for (size_t q = 0; q < xd.size(); ++q) xd[q] = (double)xa[b * M * dA + q];
    for (size_t q = 0; q < gbd.size(); ++q) gbd[q] = (double)gbp[b * M * dB + q];
    const int64_t Mp = seed_pad(M);  // transposed, zero-padded copies for blk_seed's tiles
    std::vector<double> xt(xd.empty() ? 0 : (size_t)(dA * Mp), 0.0), gbt(gbd.empty() ? 0 : (size_t)(dB * Mp), 0.0);
    for (int64_t j = 0; j < M && !xd.empty(); ++j)
      for (int64_t t = 0; t < dA; ++t) xt[t * Mp + j] = xd[j * dA + t];
    for (int64_t j = 0; j < M && !gbd.empty(); ++j)
      for (int64_t t = 0; t < dB; ++t) gbt[t * Mp + j] = gbd[j * dB + t];
    if (s.mass[b] != 0) for_chunks(nc, N * M, [&](int64_t c) {
      std::vector<T> P((size_t)(M * kBlk));
      std::vector<double> yrow((size_t)dB), gad((size_t)dA), S((size_t)(kBlk * Mp));
      for (int64_t i0 = p.cbeg(c); i0 < p.cend(c); i0 += kBlk) {
        const int64_t nb = std::min(kBlk, p.cend(c) - i0);
        block_plan(K_b, N, M, f, g, i0, nb, P.data());  // 0 on zero-mass rows (f = -inf)
        if (!is_apply) {
          for (int64_t j = 0; j < M; ++j) {
            const T* pj = P.data() + j * kBlk;
            T* R = Kb_b + j * N + i0;
            const bool lbv = valid(s.lb[b * M + j]);
            // original-orientation offsets of (i0 + i, j): stride 1 or M over i
            const int64_t o0 = b * N * M + (d.tr ? j * N + i0 : i0 * M + j), os = d.tr ? 1 : M;
            for (int64_t i = 0; i < nb; ++i) {
              double r = 0;
              if (gp) r += (double)gp[o0 + i * os] * (double)pj[i];
              if (glp && lbv) r += (double)glp[o0 + i * os];  // d logP = df + dg - dK
              R[i] = valid(la[i0 + i]) ? T(r) : T(0);
            }
          }
          continue;
        }
        blk_seed(Kb_b + i0, N, P.data(), la + i0, M, nb, ga ? ga + (b * N + i0) * dA : nullptr, xd.data(), dA,
                 gbp ? ya + (b * N + i0) * dB : nullptr, gbd.data(), dB, dxp ? dxpart.data() + c * M * dA : nullptr,
                 dyp ? dyp + (b * N + i0) * dB : nullptr, gad.data(), yrow.data(), xt.data(), gbt.data(), Mp, S.data());
      }
    });
    if (dxp && s.mass[b] != 0) {
      for (int64_t q = 0; q < M * dA; ++q) {
        double sacc = 0;
        for (int64_t c = 0; c < nc; ++c) sacc += dxpart[c * M * dA + q];
        dxp[b * M * dA + q] = T(sacc);
      }
    }
    BwdOut<T>& o = outs[b];
    if (s.mass[b] == 0) {
      o.dla.assign(N, 0.0);
      o.dlb.assign(M, 0.0);
      o.df0.assign(N, 0.0);
      o.dg0.assign(M, 0.0);
      return;
    }
    if (s.mode == SinkhornGrad::implicit)
      backward_implicit(s, b, K_b, Kb_b, &yf[b * N], &yg[b * M], o);
    else
      backward_unrolled(s, b, K_b, Kb_b, &yf[b * N], &yg[b * M], o);
    // d/d eps at fixed shifts: K = (C - shifts)/eps, outputs f = eps fh + rs, init fh0 = (f_init - rs)/eps.
    double kk = 0;
#pragma omp simd reduction(+ : kk)
    for (int64_t i = 0; i < N * M; ++i) kk += (double)Kb_b[i] * (double)K_b[i];
    double de = -kk / eps;
    const double* lb = &s.lb[b * M];
    for (int64_t i = 0; i < N; ++i)
      if (valid(la[i])) de += yf[b * N + i] / eps * (double)f[i];
    for (int64_t j = 0; j < M; ++j)
      if (valid(lb[j])) de += yg[b * M + j] / eps * (double)g[j];
    if (s.mode == SinkhornGrad::unrolled) {
      const T* f0 = s.f0.template data_ptr<T>() + b * N;
      const T* g0 = s.g0.template data_ptr<T>() + b * M;
      for (int64_t i = 0; i < N; ++i)
        if (valid(la[i])) de -= o.df0[i] * (double)f0[i] / eps;
      for (int64_t j = 0; j < M; ++j)
        if (valid(lb[j])) de -= o.dg0[j] * (double)g0[j] / eps;
    }
    deps_part[b] = de;
  };
  if (B >= get_num_threads() && B > 1) {
    parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) one(b);
    });
  } else {
    for (int64_t b = 0; b < B; ++b) one(b);
  }
  K = Tensor();  // free before allocating outputs
  std::vector<Tensor> res(next.size());
  // dC = Kb / eps in the original orientation (Kb is (M, N) per problem: the original
  // layout when transposed).
  if (needs_grad(0)) {
    Shape sc = d.batch;
    sc.push_back(d.n);
    sc.push_back(d.m);
    const T ie = T(1.0 / eps);
    if (d.tr) {
      T* q = Kb.data_ptr<T>();
      parallel_for(0, B * N * M, kParallelGrain, [&](int64_t k0, int64_t k1) {
#pragma omp simd
        for (int64_t k = k0; k < k1; ++k) q[k] *= ie;
      });
      res[0] = Kb.view(sc);
    } else {
      Tensor dC = make_tensor(sc, dtype_of<T>::value);
      T* q = dC.data_ptr<T>();
      parallel_for(0, B * N, std::max<int64_t>(1, kParallelGrain / M), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / N, i = r % N;
          for (int64_t j = 0; j < M; ++j) q[r * M + j] = kb[(b * M + j) * N + i] * ie;
        }
      });
      res[0] = dC;
    }
  }
  // Log-weights: undo the rebalancing lb_eff = lb + LSE(la) - LSE(lb).
  if (needs_grad(1) || needs_grad(2)) {
    std::vector<double> dla((size_t)(B * N), 0.0), dlb((size_t)(B * M), 0.0);
    for (int64_t b = 0; b < B; ++b) {
      if (s.mass[b] == 0) continue;
      double sb = 0;
      for (int64_t j = 0; j < M; ++j) sb += outs[b].dlb[j];
      const double A = lse_vec(&s.la0[b * N], N), Bm = lse_vec(&s.lb0[b * M], M);
      for (int64_t i = 0; i < N; ++i)
        if (valid(s.la0[b * N + i])) dla[b * N + i] = outs[b].dla[i] + sb * std::exp(s.la0[b * N + i] - A);
      for (int64_t j = 0; j < M; ++j)
        if (valid(s.lb0[b * M + j])) dlb[b * M + j] = outs[b].dlb[j] - sb * std::exp(s.lb0[b * M + j] - Bm);
    }
    auto to_tensor = [&](const std::vector<double>& v, int64_t k) {
      Shape sh = d.batch;
      sh.push_back(k);
      Tensor t = make_tensor(sh, dtype_of<T>::value);
      T* q = t.data_ptr<T>();
      for (size_t i = 0; i < v.size(); ++i) q[i] = T(v[i]);
      return t;
    };
    if (needs_grad(1)) res[1] = d.tr ? to_tensor(dlb, d.n) : to_tensor(dla, d.n);
    if (needs_grad(2)) res[2] = d.tr ? to_tensor(dla, d.m) : to_tensor(dlb, d.m);
  }
  if (needs_grad(3)) {
    double de = 0;
    for (double v : deps_part) de += v;
    res[3] = Tensor::scalar(de, dtype_of<T>::value).view(next[3].shape);
  }
  // Warm starts (unrolled only): fh0 = (f_init - rs) / eps.
  if ((needs_grad(4) || needs_grad(5)) && s.mode == SinkhornGrad::unrolled) {
    auto warm = [&](bool rows_side, int64_t k) {
      Shape sh = d.batch;
      sh.push_back(k);
      Tensor t = make_tensor(sh, dtype_of<T>::value);
      T* q = t.data_ptr<T>();
      const int64_t kk = rows_side ? N : M;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < kk; ++i) {
          const double v = rows_side ? (outs[b].df0.empty() ? 0.0 : outs[b].df0[i]) : (outs[b].dg0.empty() ? 0.0 : outs[b].dg0[i]);
          q[b * kk + i] = T(v / eps);
        }
      return t;
    };
    if (needs_grad(4)) res[4] = warm(!d.tr, d.n);
    if (needs_grad(5)) res[5] = warm(d.tr, d.m);
  }
  if (is_apply) {
    // X, Y are inputs 6 (W) and 7 (V): canonical X = W unless transposed.
    if (next.size() > 7) {
      Tensor dW = d.tr ? dY : dX, dV = d.tr ? dX : dY;
      if (needs_grad(6)) res[6] = dW;
      if (needs_grad(7)) res[7] = dV;
    }
  }
  return res;
}

// Shared front half of both public ops: validation, setup, solve.
template <class T>
std::shared_ptr<State<T>> forward_common(const char* op, const Tensor& C, const Tensor& la, const Tensor& lb,
                                         const Tensor& eps, const SinkhornOptions& o, Tensor& K) {
  auto st = std::make_shared<State<T>>();
  Dims d;
  check_inputs(op, C, la, lb, eps, o, d);
  check_cost<T>(op, C);
  st->d = d;
  st->eps = eps.item();
  st->mode = o.grad;
  setup_weights<T>(op, C, la, lb, *st);
  K = build_K<T>(C, *st);
  solve_all<T>(*st, K, o);
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

template <class T>
SinkhornResult sinkhorn_impl(const Tensor& C, const Tensor& la, const Tensor& lb, const Tensor& eps,
                             const SinkhornOptions& o) {
  Tensor K;
  auto st = forward_common<T>("sinkhorn", C, la, lb, eps, o, K);
  SinkhornResult r;
  export_potentials(*st, r.f, r.g);
  if (o.return_plan) r.plan = export_plan(*st, K, false);
  if (o.return_log_plan) r.log_plan = export_plan(*st, K, true);
  K = Tensor();
  fill_info(*st, o.tol, r.half_steps, r.error, r.converged);
  if (o.grad == SinkhornGrad::none) return r;
  if (auto n = make_node<SinkhornBackwardT<T>>({C, la, lb, eps, o.f_init, o.g_init})) {
    n->C = save(C);
    n->st = st;
    set_history(r.f, n, 0);
    set_history(r.g, n, 1);
    if (r.plan.defined()) set_history(r.plan, n, 2);
    if (r.log_plan.defined()) set_history(r.log_plan, n, 3);
    n->num_outputs = 4;
  }
  return r;
}

template <class T>
SinkhornApplyResult apply_impl(const Tensor& C, const Tensor& la, const Tensor& lb, const Tensor& eps,
                               const Tensor& W, const Tensor& V, const SinkhornOptions& o) {
  const char* op = "sinkhorn_apply";
  // Shape checks for W (..., m, d1) and V (..., n, d2) before solving.
  {
    Dims d;
    check_inputs(op, C, la, lb, eps, o, d);
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
  Tensor K;
  auto st = forward_common<T>(op, C, la, lb, eps, o, K);
  const Dims& d = st->d;
  const int64_t N = d.N, M = d.M, B = d.B;
  Tensor Xc = d.tr ? contig_or_empty<T>(V) : contig_or_empty<T>(W);  // M-indexed operand
  Tensor Yc = d.tr ? contig_or_empty<T>(W) : contig_or_empty<T>(V);  // N-indexed operand
  const int64_t dA = Xc.defined() ? Xc.size(-1) : 0, dB = Yc.defined() ? Yc.size(-1) : 0;
  Tensor A, Bo;
  Shape sa = d.batch, sb = d.batch;
  sa.push_back(N);
  sa.push_back(dA);
  sb.push_back(M);
  sb.push_back(dB);
  if (Xc.defined()) A = make_tensor(sa, dtype_of<T>::value);
  if (Yc.defined()) Bo = make_tensor(sb, dtype_of<T>::value);
  const T* kp = K.data_ptr<T>();
  const T* fh = st->fh.template data_ptr<T>();
  const T* gh = st->gh.template data_ptr<T>();
  const T* xp = Xc.defined() ? Xc.template data_ptr<T>() : nullptr;
  const T* yp = Yc.defined() ? Yc.template data_ptr<T>() : nullptr;
  T* ap = A.defined() ? A.template data_ptr<T>() : nullptr;
  T* bp = Bo.defined() ? Bo.template data_ptr<T>() : nullptr;
  auto one = [&](int64_t b) {
    Prob<T> p;
    p.N = N;
    p.M = M;
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
    if (bp)
      for (int64_t q = 0; q < M * dB; ++q) {
        double sacc = 0;
        for (int64_t c = 0; c < nc; ++c) sacc += bpart[c * M * dB + q];
        bp[b * M * dB + q] = T(sacc);
      }
  };
  if (B >= get_num_threads() && B > 1) {
    parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) one(b);
    });
  } else {
    for (int64_t b = 0; b < B; ++b) one(b);
  }
  K = Tensor();
  SinkhornApplyResult r;
  r.PW = d.tr ? Bo : A;
  r.PtV = d.tr ? A : Bo;
  export_potentials(*st, r.f, r.g);
  fill_info(*st, o.tol, r.half_steps, r.error, r.converged);
  if (o.grad == SinkhornGrad::none) return r;
  if (auto n = make_node<SinkhornBackwardT<T>>({C, la, lb, eps, o.f_init, o.g_init, W, V})) {
    n->is_apply = true;
    n->C = save(C);
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

SinkhornResult sinkhorn(const Tensor& C, const Tensor& log_a, const Tensor& log_b, const Tensor& eps,
                        const SinkhornOptions& opts) {
  if (!C.defined()) throw ShapeError("sinkhorn: cost C is undefined");
  return dispatch_float(C.dtype(), "sinkhorn", [&]<class T>() { return sinkhorn_impl<T>(C, log_a, log_b, eps, opts); });
}
SinkhornResult sinkhorn(const Tensor& C, const Tensor& log_a, const Tensor& log_b, double eps,
                        const SinkhornOptions& opts) {
  if (!C.defined()) throw ShapeError("sinkhorn: cost C is undefined");
  return sinkhorn(C, log_a, log_b, Tensor::scalar(eps, C.dtype()), opts);
}
SinkhornApplyResult sinkhorn_apply(const Tensor& C, const Tensor& log_a, const Tensor& log_b, const Tensor& eps,
                                   const Tensor& W, const Tensor& V, const SinkhornOptions& opts) {
  if (!C.defined()) throw ShapeError("sinkhorn_apply: cost C is undefined");
  return dispatch_float(C.dtype(), "sinkhorn_apply",
                        [&]<class T>() { return apply_impl<T>(C, log_a, log_b, eps, W, V, opts); });
}
SinkhornApplyResult sinkhorn_apply(const Tensor& C, const Tensor& log_a, const Tensor& log_b, double eps,
                                   const Tensor& W, const Tensor& V, const SinkhornOptions& opts) {
  if (!C.defined()) throw ShapeError("sinkhorn_apply: cost C is undefined");
  return sinkhorn_apply(C, log_a, log_b, Tensor::scalar(eps, C.dtype()), W, V, opts);
}

}  // namespace lotgrad
