// Implicit-gradient backward: the gradient of the exact fixed point, for one problem in the
// canonical layout (detail.h). With R = dL/dP o P, alpha = P 1 and the potential adjoints
// projected onto the gauge-invariant subspace, it solves the small side's Laplacian system
//   S v = kappa - P^T (rho / alpha),   S = diag(beta) - P^T diag(1 / alpha) P
// and sets u = (y_f - P v) / alpha, dL/dK = P o (u 1^T + 1 v^T) - R. Derivation and the gauge:
// docs/sinkhorn.md, "Mode 2: implicit". Cost two passes over the plan plus an M x M solve.
#include <cmath>

#include "block.h"
#include "detail.h"

namespace lotgrad::sinkhorn_detail {

namespace {

// ---- Laplacian solve -------------------------------------------------------------------
// A = S + c 1 1^T (k, k) on the valid columns idx, S = diag(Moff 1) - Moff built from the
// off-diagonal of Mm, so S 1 = 0 holds to rounding; r the right side, centred.
void laplacian_system(const std::vector<double>& Mm, const std::vector<double>& rhs_in, const std::vector<int64_t>& idx,
                      int64_t M, std::vector<double>& A, std::vector<double>& r) {
  const int64_t k = (int64_t)idx.size();
  A.assign((size_t)(k * k), 0.0);
  r.resize(k);
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
  const double cc = diag_sum > 0 ? diag_sum / (double)(k * k) : 1.0;  // c 1 1^T fixes the gauge
  for (auto& x : A) x += cc;
}

// Cholesky factor of A (k, k), lower triangle in place. Tiny pivots (disconnected
// components) are null directions: their column is zeroed and null[j] set.
void cholesky_psd(std::vector<double>& A, int64_t k, std::vector<char>& null) {
  double maxd = 0;
  for (int64_t a = 0; a < k; ++a) maxd = std::max(maxd, A[a * k + a]);
  null.assign(k, 0);
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
}

// L L^T x = r in place, with x = 0 on null directions.
void cholesky_solve(const std::vector<double>& A, int64_t k, const std::vector<char>& null, std::vector<double>& r) {
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
}

// Solves (S + c 1 1^T) v = rhs on the columns with mass (v = 0 on the others).
void laplacian_solve(const std::vector<double>& Mm, const std::vector<double>& rhs_in, const double* lb, int64_t M,
                     std::vector<double>& v) {
  std::vector<int64_t> idx;
  for (int64_t j = 0; j < M; ++j)
    if (valid(lb[j])) idx.push_back(j);
  const int64_t k = (int64_t)idx.size();
  v.assign(M, 0.0);
  if (k <= 1) return;
  std::vector<double> A, r;
  laplacian_system(Mm, rhs_in, idx, M, A, r);
  std::vector<char> null;
  cholesky_psd(A, k, null);
  cholesky_solve(A, k, null, r);
  for (int64_t a = 0; a < k; ++a) v[idx[a]] = r[a];
}

// ---- the two passes over the plan ------------------------------------------------------
// One problem's data and pass 1's per-row results.
template <class T>
struct Implicit {
  Prob<T> p;                      // sizes and row chunks
  const T* K;                     // (M, N) working cost
  T* Kb;                          // (M, N) R on entry, dL/dK after pass 2
  const T* f;                     // (N) final potentials
  const T* g;                     // (M)
  const double* la;               // (N) effective log-weights
  const double* lb;               // (M)
  const double* yf0;              // (N) eps dL/df
  const double* yg0;              // (M) eps dL/dg
  double delta = 0;               // gauge shift of the potential adjoints
  std::vector<double> alpha{}, yf{};  // (N) row sums of P and projected row adjoints (0 on dead rows)
};

// Pass 1's partial sums per chunk: kappa = R^T 1 (nc, M), P^T (y / alpha) (nc, M) and the
// upper triangle of P~^T P~ (nc, M, M), P~ = diag(alpha)^(-1/2) P.
struct Pass1Parts {
  std::vector<double> kap, rhs, gram;
};

// Pass 1 scratch for one block of rows.
template <class T>
struct Pass1Blk {
  std::vector<T> P;        // (M, kBlk) plan
  std::vector<double> pt;  // (M, kBlk) P~
  alignas(64) double a[kBlk], rho[kBlk], w[kBlk], isa[kBlk];  // P 1, R 1, y / alpha, alpha^(-1/2)
};

// Projects the potential adjoints onto the consistent (gauge-invariant) subspace: the
// shift delta that makes the row and column adjoints sum alike.
template <class T>
double gauge_shift(const Implicit<T>& x) {
  double sf = 0, sg = 0;
  int64_t nv = 0, mv = 0;
  for (int64_t i = 0; i < x.p.N; ++i)
    if (valid(x.la[i])) sf += x.yf0[i], ++nv;
  for (int64_t j = 0; j < x.p.M; ++j)
    if (valid(x.lb[j])) sg += x.yg0[j], ++mv;
  return (nv + mv) ? (sf - sg) / (double)(nv + mv) : 0.0;
}

// Row sums a = P 1, rho = R 1 of a block, and kappa += its column sums of R.
template <class T>
void pass1_sums(const Implicit<T>& x, Pass1Blk<T>& s, int64_t i0, int64_t nb, double* kap) {
  const int64_t N = x.p.N, M = x.p.M;
  for (int64_t i = 0; i < nb; ++i) s.a[i] = 0, s.rho[i] = 0;
  for (int64_t j = 0; j < M; ++j) {
    const T* pj = s.P.data() + j * kBlk;
    const T* R = x.Kb + j * N + i0;
    double kj = 0;
#pragma omp simd reduction(+ : kj)
    for (int64_t i = 0; i < nb; ++i) {
      s.a[i] += (double)pj[i];
      s.rho[i] += (double)R[i];
      kj += (double)R[i];
    }
    kap[j] += kj;
  }
}

// One chunk of pass 1: alpha, rho, kappa, the rhs part and the Gram matrix (all in double).
// Zero-mass rows have R = 0 and P = 0, so they add exact zeros.
template <class T>
void pass1_chunk(Implicit<T>& x, Pass1Parts& parts, int64_t c) {
  const int64_t M = x.p.M;
  Pass1Blk<T> s;
  s.P.resize((size_t)(M * kBlk));
  s.pt.resize((size_t)(M * kBlk));
  double* rh = parts.rhs.data() + c * M;
  double* Mm = parts.gram.data() + c * M * M;
  const double* la = x.la;
  const double* yf0 = x.yf0;
  const double delta = x.delta;
  double* alpha = x.alpha.data();
  double* yf = x.yf.data();
  for (int64_t i0 = x.p.cbeg(c); i0 < x.p.cend(c); i0 += kBlk) {
    const int64_t nb = std::min(kBlk, x.p.cend(c) - i0);
    block_plan(x.K, x.p.N, M, x.f, x.g, i0, nb, s.P.data());
    pass1_sums(x, s, i0, nb, parts.kap.data() + c * M);
    // A row whose mass underflowed entirely (or a zero-mass row) carries nothing.
#pragma omp simd
    for (int64_t i = 0; i < nb; ++i) {
      const bool ok = valid(la[i0 + i]) && s.a[i] > 0;
      const double y = s.rho[i] + yf0[i0 + i] - delta;
      alpha[i0 + i] = ok ? s.a[i] : 0.0;
      yf[i0 + i] = ok ? y : 0.0;
      s.w[i] = ok ? y / s.a[i] : 0.0;
      s.isa[i] = ok ? 1.0 / std::sqrt(s.a[i]) : 0.0;
    }
    for (int64_t j = 0; j < M; ++j) {
      const T* pj = s.P.data() + j * kBlk;
      double* tj = s.pt.data() + j * kBlk;
      double r = 0;
#pragma omp simd reduction(+ : r)
      for (int64_t i = 0; i < nb; ++i) {
        r += (double)pj[i] * s.w[i];
        tj[i] = (double)pj[i] * s.isa[i];
      }
      rh[j] += r;
    }
    for (int64_t j = 0; j < M; ++j) {
      const double* tj = s.pt.data() + j * kBlk;
      for (int64_t q = j; q < M; ++q) {
        const double* tq = s.pt.data() + q * kBlk;
        double r = 0;
#pragma omp simd reduction(+ : r)
        for (int64_t i = 0; i < nb; ++i) r += tj[i] * tq[i];
        Mm[j * M + q] += r;
      }
    }
  }
}

// Pass 1 over all chunks, reduced: the Laplacian's Gram matrix Mm (M, M) and right side rhs.
template <class T>
void pass1(Implicit<T>& x, std::vector<double>& rhs, std::vector<double>& Mm) {
  const int64_t N = x.p.N, M = x.p.M, nc = x.p.nchunks();
  x.alpha.assign(N, 0.0);
  x.yf.assign(N, 0.0);
  Pass1Parts parts{std::vector<double>((size_t)nc * M, 0.0), std::vector<double>((size_t)nc * M, 0.0),
                   std::vector<double>((size_t)nc * M * M, 0.0)};
  for_chunks(nc, N * M, [&](int64_t c) { pass1_chunk(x, parts, c); });
  rhs.assign(M, 0.0);
  Mm.assign((size_t)M * M, 0.0);
  for (int64_t c = 0; c < nc; ++c) {
    for (int64_t j = 0; j < M; ++j) rhs[j] += parts.kap[c * M + j] - parts.rhs[c * M + j];
    for (int64_t q = 0; q < M * M; ++q) Mm[q] += parts.gram[c * M * M + q];
  }
  for (int64_t j = 0; j < M; ++j)
    for (int64_t q = 0; q < j; ++q) Mm[j * M + q] = Mm[q * M + j];
  for (int64_t j = 0; j < M; ++j) rhs[j] = valid(x.lb[j]) ? rhs[j] + x.yg0[j] + x.delta : 0.0;
}

// One chunk of pass 2: u = (yf - P v) / alpha, dla = a o u, and dL/dK = P o (u + v) - R in Kb.
template <class T>
void pass2_chunk(const Implicit<T>& x, const std::vector<double>& v, double* dla_all, int64_t c) {
  const int64_t N = x.p.N, M = x.p.M;
  const double* la = x.la;
  std::vector<T> P((size_t)(M * kBlk));
  alignas(64) double pv[kBlk], u[kBlk];
  for (int64_t i0 = x.p.cbeg(c); i0 < x.p.cend(c); i0 += kBlk) {
    const int64_t nb = std::min(kBlk, x.p.cend(c) - i0);
    block_plan(x.K, N, M, x.f, x.g, i0, nb, P.data());
    for (int64_t i = 0; i < nb; ++i) pv[i] = 0;
    for (int64_t j = 0; j < M; ++j) {
      const T* pj = P.data() + j * kBlk;
      const double vj = v[j];
#pragma omp simd
      for (int64_t i = 0; i < nb; ++i) pv[i] += (double)pj[i] * vj;
    }
    const double* al = x.alpha.data() + i0;
    const double* yfi = x.yf.data() + i0;
    double* dla = dla_all + i0;
#pragma omp simd
    for (int64_t i = 0; i < nb; ++i) {
      const bool ok = al[i] != 0;  // zero for zero-mass rows too
      u[i] = ok ? (yfi[i] - pv[i]) / al[i] : 0.0;
      dla[i] = ok ? fexp(la[i0 + i]) * u[i] : 0.0;
    }
    for (int64_t j = 0; j < M; ++j) {
      const T* pj = P.data() + j * kBlk;
      const double vj = v[j];
      T* R = x.Kb + j * N + i0;
#pragma omp simd
      for (int64_t i = 0; i < nb; ++i) R[i] = al[i] != 0 ? T((double)pj[i] * (u[i] + vj) - (double)R[i]) : T(0);
    }
  }
}

}  // namespace

template <class T>
void backward_implicit(const BwdIn<T>& in, BwdOut<T>& out) {
  const State<T>& st = in.st;
  const int64_t N = st.d.N, M = st.d.M, b = in.b;
  Implicit<T> x{.p = chunking<T>(N, M),
                .K = in.K,
                .Kb = in.Kb,
                .f = st.fh.template data_ptr<T>() + b * N,
                .g = st.gh.template data_ptr<T>() + b * M,
                .la = &st.la[b * N],
                .lb = &st.lb[b * M],
                .yf0 = in.yf0,
                .yg0 = in.yg0};
  x.delta = gauge_shift(x);
  std::vector<double> rhs, Mm, v;
  pass1(x, rhs, Mm);
  laplacian_solve(Mm, rhs, x.lb, M, v);
  out.dla.assign(N, 0.0);
  for_chunks(x.p.nchunks(), N * M, [&](int64_t c) { pass2_chunk(x, v, out.dla.data(), c); });
  out.dlb.assign(M, 0.0);
  for (int64_t j = 0; j < M; ++j)
    if (valid(x.lb[j])) out.dlb[j] = std::exp(x.lb[j]) * v[j];
}

template void backward_implicit<float>(const BwdIn<float>&, BwdOut<float>&);
template void backward_implicit<double>(const BwdIn<double>&, BwdOut<double>&);

}  // namespace lotgrad::sinkhorn_detail
