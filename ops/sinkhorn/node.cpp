// The autograd node of sinkhorn() and sinkhorn_apply(). Per problem it seeds
//   R = dL/dP o P + dL/dlogP            (sinkhorn)
//   R = P o (dA X^T + Y dB^T)           (sinkhorn_apply, A = P_c X, Bo = P_c^T Y canonical)
// into Kb (canonical, (M, N) per problem), recomputing P row block by row block, runs the
// implicit or unrolled backward, and maps dL/dK and the weight and potential adjoints back
// to the inputs C, log_a, log_b, eps, f_init, g_init (and W, V).
#include <cmath>

#include "block.h"
#include "detail.h"

namespace lotgrad::sinkhorn_detail {

namespace {

// ---- sinkhorn_apply's seed over a block of rows --------------------------------------------
// Pointers are offset to the block's first row; the block has nb rows. Members are
// restrict and the struct is passed by value, so the kernels see no aliasing.
template <class T>
struct SeedBlock {
  T* __restrict Kb;                 // out: R_ij at Kb[j N + i]
  int64_t N, M, nb;
  const T* __restrict P;            // (M, kBlk) the block's plan
  const double* __restrict la;      // (nb) row log-weights
  const T* __restrict GA;           // (nb, dA) adjoint of A, or null
  const double* __restrict Xd;      // (M, dA) X in double
  const T* __restrict Y;            // (nb, dB) Y, or null (then GB is unused)
  const double* __restrict GBd;     // (M, dB) adjoint of Bo in double
  int64_t dA, dB;
  double* __restrict dx;            // (M, dA) dX partial sums (+=), or null
  T* __restrict dY;                 // (nb, dB) out, or null
  double* __restrict gad;           // (dA) scratch: a row of GA in double
  double* __restrict yrow;          // (dB) scratch
  const double* __restrict Xt;      // (dA, Mp) X transposed, zero-padded
  const double* __restrict GBt;     // (dB, Mp) GB transposed, zero-padded
  int64_t Mp;                       // a multiple of W
  double* __restrict S;             // (nb, Mp) scores
};

// Column padding of seed_scores' tiles for M columns.
inline int64_t seed_pad(int64_t M) { return M <= 4 ? 4 : (M + 7) / 8 * 8; }

// S_ij = GA_i . X_j + Y_i . GB_j for rows [0, nb) of a block: four rows and W columns per
// register tile (no horizontal sums); Xt (dA, Mp), GBt (dB, Mp) are X, GB transposed and
// zero-padded to Mp, a multiple of W (W = 4 when M <= 4: LOTFormer's r = 4 wastes no lanes).
// The two t loops stay written out: folding them into one helper changes GCC's register tiling.
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

// R_ij = P_ij S_ij, dX_j += P_ij GA_i, dY_i = sum_j P_ij GB_j. Zero-mass rows: all 0.
template <class T>
LOTGRAD_KERNEL void blk_seed(SeedBlock<T> a) {
  if (a.Mp % 8) seed_scores<T, 4>(a.GA, a.dA, a.Y, a.dB, a.nb, a.Xt, a.GBt, a.Mp, a.S);
  else seed_scores<T, 8>(a.GA, a.dA, a.Y, a.dB, a.nb, a.Xt, a.GBt, a.Mp, a.S);
  const int64_t N = a.N, M = a.M, dA = a.dA, dB = a.dB, Mp = a.Mp;
  for (int64_t i = 0; i < a.nb; ++i) {
    if (!valid(a.la[i])) {
      for (int64_t j = 0; j < M; ++j) a.Kb[j * N + i] = T(0);
      if (a.dY)
        for (int64_t t = 0; t < dB; ++t) a.dY[i * dB + t] = T(0);
      continue;
    }
    if (a.GA)
#pragma omp simd
      for (int64_t t = 0; t < dA; ++t) a.gad[t] = (double)a.GA[i * dA + t];
    for (int64_t j = 0; j < M; ++j) a.Kb[j * N + i] = T((double)a.P[j * kBlk + i] * a.S[i * Mp + j]);
    if (a.dx)
      for (int64_t j = 0; j < M; ++j) {
        const double pij = (double)a.P[j * kBlk + i];
        double* aj = a.dx + j * dA;
#pragma omp simd
        for (int64_t t = 0; t < dA; ++t) aj[t] += pij * a.gad[t];
      }
    if (a.dY) {
      for (int64_t t = 0; t < dB; ++t) a.yrow[t] = 0;
      for (int64_t j = 0; j < M; ++j) {
        const double pij = (double)a.P[j * kBlk + i];
        const double* gj = a.GBd + j * dB;
#pragma omp simd
        for (int64_t t = 0; t < dB; ++t) a.yrow[t] += pij * gj[t];
      }
#pragma omp simd
      for (int64_t t = 0; t < dB; ++t) a.dY[i * dB + t] = T(a.yrow[t]);
    }
  }
}

// ---- the node's inputs ------------------------------------------------------------------------
// Upstream gradients, in the output order of each op, and the saved apply operands.
struct Upstream {
  Tensor Gf, Gg;   // dL/df, dL/dg (original orientation)
  Tensor Gp, Glp;  // sinkhorn: dL/dplan, dL/dlog_plan (contiguous)
  Tensor GA, GB;   // sinkhorn_apply: adjoints of A = P_c X (B.., N, dA), Bo = P_c^T Y (B.., M, dB)
  Tensor Xc, Yc;   // sinkhorn_apply: X (B.., M, dA), Y (B.., N, dB), canonical
  int64_t dA = 0, dB = 0;
};

template <class T>
Upstream upstream(const SinkhornBackwardT<T>& node, std::vector<Tensor>& grads) {
  Upstream u;
  if (!node.is_apply) {
    u.Gf = grads[0], u.Gg = grads[1], u.Gp = contig_or_empty(grads[2]), u.Glp = contig_or_empty(grads[3]);
    return u;
  }
  const bool tr = node.st->d.tr;
  u.Gf = grads[2], u.Gg = grads[3];
  Tensor gpw = contig_or_empty(grads[0]), gptv = contig_or_empty(grads[1]);
  u.GA = tr ? gptv : gpw;
  u.GB = tr ? gpw : gptv;
  if (node.X.defined()) u.Xc = node.X.unpack(&node), u.dA = u.Xc.size(-1);
  if (node.Y.defined()) u.Yc = node.Y.unpack(&node), u.dB = u.Yc.size(-1);
  if (!u.Xc.defined()) u.GA = Tensor();
  if (!u.Yc.defined()) u.GB = Tensor();
  return u;
}

// Canonical potential adjoint eps * dL/d(potential) (B*K doubles) from an orig-side grad.
std::vector<double> pot_adjoint(const Tensor& G, int64_t count, double eps) {
  std::vector<double> y((size_t)count, 0.0);
  if (!G.defined()) return y;
  std::vector<double> v = G.to_vector();
  for (int64_t k = 0; k < count; ++k) y[k] = eps * v[k];
  return y;
}

template <class T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.template data_ptr<T>() : nullptr;
}

// The backward of all problems as raw pointers (canonical layout; null where absent).
template <class T>
struct Job {
  const State<T>& s;
  const T* K;                    // (B, M, N) working cost
  T* Kb;                         // (B, M, N) R, then dL/dK
  const T* fh;                   // (B, N) final potentials
  const T* gh;                   // (B, M)
  const T* gp;                   // sinkhorn: dL/dplan (B.., n, m)
  const T* glp;                  // sinkhorn: dL/dlog_plan (B.., n, m)
  const T* xa;                   // apply: X (B, M, dA)
  const T* ya;                   // apply: Y (B, N, dB)
  const T* ga;                   // apply: adjoint of A (B, N, dA)
  const T* gbp;                  // apply: adjoint of Bo (B, M, dB)
  T* dxp;                        // apply: dX (B, M, dA)
  T* dyp;                        // apply: dY (B, N, dB)
  int64_t dA, dB;
  bool is_apply;
  const std::vector<double>& yf;  // (B*N) eps dL/df, canonical
  const std::vector<double>& yg;  // (B*M)
  std::vector<BwdOut<T>>& outs;
  std::vector<double>& deps;      // (B) dL/deps per problem
};

// ---- per-problem steps ---------------------------------------------------------------------
// sinkhorn_apply's M-indexed operands of one problem in double, converted once: X (M, dA)
// and GB (M, dB), and their transposes zero-padded to Mp columns for seed_scores' tiles.
struct SeedOperands {
  std::vector<double> xd, gbd, xt, gbt;
  int64_t Mp = 0;
};

template <class T>
SeedOperands seed_operands(const Job<T>& job, int64_t b) {
  const int64_t M = job.s.d.M, dA = job.dA, dB = job.dB;
  SeedOperands so;
  so.xd.resize(job.is_apply && job.ga ? (size_t)(M * dA) : 0);
  so.gbd.resize(job.is_apply && job.gbp ? (size_t)(M * dB) : 0);
  for (size_t q = 0; q < so.xd.size(); ++q) so.xd[q] = (double)job.xa[b * M * dA + q];
  for (size_t q = 0; q < so.gbd.size(); ++q) so.gbd[q] = (double)job.gbp[b * M * dB + q];
  so.Mp = seed_pad(M);
  const int64_t Mp = so.Mp;
  so.xt.assign(so.xd.empty() ? 0 : (size_t)(dA * Mp), 0.0);
  so.gbt.assign(so.gbd.empty() ? 0 : (size_t)(dB * Mp), 0.0);
  for (int64_t j = 0; j < M && !so.xd.empty(); ++j)
    for (int64_t t = 0; t < dA; ++t) so.xt[t * Mp + j] = so.xd[j * dA + t];
  for (int64_t j = 0; j < M && !so.gbd.empty(); ++j)
    for (int64_t t = 0; t < dB; ++t) so.gbt[t * Mp + j] = so.gbd[j * dB + t];
  return so;
}

// sinkhorn's seed for a block: R = dL/dP o P + dL/dlogP (d logP = df + dg - dK), read from
// the original orientation.
template <class T>
void seed_plain_block(const Job<T>& job, int64_t b, const T* P, int64_t i0, int64_t nb) {
  const Dims& d = job.s.d;
  const int64_t N = d.N, M = d.M;
  const double* la = &job.s.la[b * N];
  T* Kb_b = job.Kb + b * N * M;
  for (int64_t j = 0; j < M; ++j) {
    const T* pj = P + j * kBlk;
    T* R = Kb_b + j * N + i0;
    const bool lbv = valid(job.s.lb[b * M + j]);
    // original-orientation offsets of (i0 + i, j): stride 1 or M over i
    const int64_t o0 = b * N * M + (d.tr ? j * N + i0 : i0 * M + j), os = d.tr ? 1 : M;
    for (int64_t i = 0; i < nb; ++i) {
      double r = 0;
      if (job.gp) r += (double)job.gp[o0 + i * os] * (double)pj[i];
      if (job.glp && lbv) r += (double)job.glp[o0 + i * os];
      R[i] = valid(la[i0 + i]) ? T(r) : T(0);
    }
  }
}

// One chunk of problem b's seed; sinkhorn_apply's dX partial sums go to dxpart (nc, M, dA).
template <class T>
void seed_chunk(const Job<T>& job, int64_t b, const SeedOperands& so, std::vector<double>& dxpart, int64_t c) {
  const int64_t N = job.s.d.N, M = job.s.d.M, dA = job.dA, dB = job.dB;
  const Prob<T> p = chunking<T>(N, M);
  const T* K_b = job.K + b * N * M;
  const double* la = &job.s.la[b * N];
  std::vector<T> P((size_t)(M * kBlk));
  std::vector<double> yrow((size_t)dB), gad((size_t)dA), S((size_t)(kBlk * so.Mp));
  for (int64_t i0 = p.cbeg(c); i0 < p.cend(c); i0 += kBlk) {
    const int64_t nb = std::min(kBlk, p.cend(c) - i0);
    block_plan(K_b, N, M, job.fh + b * N, job.gh + b * M, i0, nb, P.data());  // 0 on zero-mass rows (f = -inf)
    if (!job.is_apply) {
      seed_plain_block(job, b, P.data(), i0, nb);
      continue;
    }
    blk_seed(SeedBlock<T>{.Kb = job.Kb + b * N * M + i0, .N = N, .M = M, .nb = nb,
                          .P = P.data(), .la = la + i0,
                          .GA = job.ga ? job.ga + (b * N + i0) * dA : nullptr, .Xd = so.xd.data(),
                          .Y = job.gbp ? job.ya + (b * N + i0) * dB : nullptr, .GBd = so.gbd.data(),
                          .dA = dA, .dB = dB,
                          .dx = job.dxp ? dxpart.data() + c * M * dA : nullptr,
                          .dY = job.dyp ? job.dyp + (b * N + i0) * dB : nullptr,
                          .gad = gad.data(), .yrow = yrow.data(),
                          .Xt = so.xt.data(), .GBt = so.gbt.data(), .Mp = so.Mp, .S = S.data()});
  }
}

// Seeds problem b's R into Kb (and sinkhorn_apply's direct dX, dY). An empty problem has a
// zero plan and gets zeros.
template <class T>
void seed_problem(const Job<T>& job, int64_t b) {
  const int64_t N = job.s.d.N, M = job.s.d.M, dA = job.dA, dB = job.dB;
  const int64_t nc = chunking<T>(N, M).nchunks();
  const bool empty = job.s.mass[b] == 0;
  if (empty) {
    T* Kb_b = job.Kb + b * N * M;
    std::fill(Kb_b, Kb_b + N * M, T(0));
    if (job.dyp) std::fill(job.dyp + b * N * dB, job.dyp + (b + 1) * N * dB, T(0));
    if (job.dxp) std::fill(job.dxp + b * M * dA, job.dxp + (b + 1) * M * dA, T(0));
  }
  std::vector<double> dxpart(job.dxp ? (size_t)nc * M * dA : 0, 0.0);
  const SeedOperands so = seed_operands(job, b);
  if (!empty) for_chunks(nc, N * M, [&](int64_t c) { seed_chunk(job, b, so, dxpart, c); });
  if (job.dxp && !empty) sum_chunks_to(dxpart, nc, M * dA, job.dxp + b * M * dA);
}

// dL/deps of problem b at fixed shifts: K = (C - shifts) / eps, outputs f = eps fh + rs,
// warm start fh0 = (f_init - rs) / eps.
template <class T>
double eps_grad(const Job<T>& job, int64_t b, const BwdOut<T>& o) {
  const State<T>& s = job.s;
  const int64_t N = s.d.N, M = s.d.M;
  const double eps = s.eps;
  const T* K_b = job.K + b * N * M;
  const T* Kb_b = job.Kb + b * N * M;
  const T* f = job.fh + b * N;
  const T* g = job.gh + b * M;
  const double* la = &s.la[b * N];
  const double* lb = &s.lb[b * M];
  double kk = 0;
#pragma omp simd reduction(+ : kk)
  for (int64_t i = 0; i < N * M; ++i) kk += (double)Kb_b[i] * (double)K_b[i];
  double de = -kk / eps;
  for (int64_t i = 0; i < N; ++i)
    if (valid(la[i])) de += job.yf[b * N + i] / eps * (double)f[i];
  for (int64_t j = 0; j < M; ++j)
    if (valid(lb[j])) de += job.yg[b * M + j] / eps * (double)g[j];
  if (s.mode == SinkhornGrad::unrolled) {
    const T* f0 = s.f0.template data_ptr<T>() + b * N;
    const T* g0 = s.g0.template data_ptr<T>() + b * M;
    for (int64_t i = 0; i < N; ++i)
      if (valid(la[i])) de -= o.df0[i] * (double)f0[i] / eps;
    for (int64_t j = 0; j < M; ++j)
      if (valid(lb[j])) de -= o.dg0[j] * (double)g0[j] / eps;
  }
  return de;
}

// Problem b's whole backward: seed, implicit or unrolled sweep, dL/deps.
template <class T>
void backward_problem(const Job<T>& job, int64_t b) {
  const int64_t N = job.s.d.N, M = job.s.d.M;
  seed_problem(job, b);
  BwdOut<T>& o = job.outs[b];
  if (job.s.mass[b] == 0) {
    o.dla.assign(N, 0.0);
    o.dlb.assign(M, 0.0);
    o.df0.assign(N, 0.0);
    o.dg0.assign(M, 0.0);
    return;
  }
  const BwdIn<T> in{job.s, b, job.K + b * N * M, job.Kb + b * N * M, &job.yf[b * N], &job.yg[b * M]};
  if (job.s.mode == SinkhornGrad::implicit)
    backward_implicit(in, o);
  else
    backward_unrolled(in, o);
  job.deps[b] = eps_grad(job, b, o);
}

// ---- mapping back to the inputs -------------------------------------------------------------
// dC = Kb / eps in the original orientation. Kb is (M, N) per problem: the original layout
// when transposed, then scaled in place and returned.
template <class T>
Tensor grad_cost(const State<T>& s, Tensor& Kb) {
  const Dims& d = s.d;
  const int64_t N = d.N, M = d.M, B = d.B;
  Shape sc = d.batch;
  sc.push_back(d.n);
  sc.push_back(d.m);
  const T ie = T(1.0 / s.eps);
  T* kb = Kb.data_ptr<T>();
  if (d.tr) {
    parallel_for(0, B * N * M, kParallelGrain, [&](int64_t k0, int64_t k1) {
#pragma omp simd
      for (int64_t k = k0; k < k1; ++k) kb[k] *= ie;
    });
    return Kb.view(sc);
  }
  Tensor dC = make_tensor(sc, dtype_of<T>::value);
  T* q = dC.data_ptr<T>();
  parallel_for(0, B * N, std::max<int64_t>(1, kParallelGrain / M), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / N, i = r % N;
      for (int64_t j = 0; j < M; ++j) q[r * M + j] = kb[(b * M + j) * N + i] * ie;
    }
  });
  return dC;
}

// Adjoints of the log-weights as given (canonical, B*N and B*M): undoes the rebalancing
// lb_eff = lb + LSE(la) - LSE(lb).
template <class T>
void log_weight_grads(const State<T>& s, const std::vector<BwdOut<T>>& outs, std::vector<double>& dla,
                      std::vector<double>& dlb) {
  const int64_t N = s.d.N, M = s.d.M, B = s.d.B;
  dla.assign((size_t)(B * N), 0.0);
  dlb.assign((size_t)(B * M), 0.0);
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
}

// Adjoint of a warm start on the canonical rows (or columns), B*k doubles: the start is
// fh0 = (f_init - rs) / eps.
template <class T>
std::vector<double> warm_grad(const State<T>& s, const std::vector<BwdOut<T>>& outs, bool rows_side) {
  const int64_t kk = rows_side ? s.d.N : s.d.M;
  std::vector<double> v((size_t)(s.d.B * kk));
  for (int64_t b = 0; b < s.d.B; ++b)
    for (int64_t i = 0; i < kk; ++i) {
      const double x = rows_side ? (outs[b].df0.empty() ? 0.0 : outs[b].df0[i]) : (outs[b].dg0.empty() ? 0.0 : outs[b].dg0[i]);
      v[b * kk + i] = x / s.eps;
    }
  return v;
}

// A (B.., k) tensor from B*k doubles.
template <class T>
Tensor batch_vec(const Dims& d, const std::vector<double>& v, int64_t k) {
  Shape sh = d.batch;
  sh.push_back(k);
  Tensor t = make_tensor(sh, dtype_of<T>::value);
  T* q = t.data_ptr<T>();
  for (size_t i = 0; i < v.size(); ++i) q[i] = T(v[i]);
  return t;
}

}  // namespace

template <class T>
std::vector<Tensor> SinkhornBackwardT<T>::apply(std::vector<Tensor>& grads) {
  State<T>& s = *st;
  const Dims& d = s.d;
  const int64_t B = d.B;
  Tensor Cin = C.unpack(this);
  Tensor K = build_K<T>(Cin, s);
  Tensor Kb = make_tensor({B, d.M, d.N}, dtype_of<T>::value);
  const Upstream u = upstream(*this, grads);
  const std::vector<double> yfo = pot_adjoint(u.Gf, B * d.n, s.eps), ygo = pot_adjoint(u.Gg, B * d.m, s.eps);
  Tensor dX, dY;  // direct gradients of the apply operands
  if (u.Xc.defined() && u.GA.defined()) dX = make_tensor(u.Xc.shape(), dtype_of<T>::value);
  if (u.Yc.defined() && u.GB.defined()) dY = make_tensor(u.Yc.shape(), dtype_of<T>::value);
  std::vector<BwdOut<T>> outs(B);
  std::vector<double> deps(B, 0.0);
  const Job<T> job{.s = s, .K = K.data_ptr<T>(), .Kb = Kb.data_ptr<T>(),
                   .fh = s.fh.template data_ptr<T>(), .gh = s.gh.template data_ptr<T>(),
                   .gp = ptr_or_null<T>(u.Gp), .glp = ptr_or_null<T>(u.Glp),
                   .xa = ptr_or_null<T>(u.Xc), .ya = ptr_or_null<T>(u.Yc),
                   .ga = ptr_or_null<T>(u.GA), .gbp = ptr_or_null<T>(u.GB),
                   .dxp = ptr_or_null<T>(dX), .dyp = ptr_or_null<T>(dY), .dA = u.dA, .dB = u.dB,
                   .is_apply = is_apply, .yf = d.tr ? ygo : yfo, .yg = d.tr ? yfo : ygo,
                   .outs = outs, .deps = deps};
  for_problems(B, [&](int64_t b) { backward_problem(job, b); });
  K = Tensor();  // free before allocating outputs
  std::vector<Tensor> res(next.size());
  if (needs_grad(0)) res[0] = grad_cost(s, Kb);
  if (needs_grad(1) || needs_grad(2)) {
    std::vector<double> dla, dlb;
    log_weight_grads(s, outs, dla, dlb);
    if (needs_grad(1)) res[1] = d.tr ? batch_vec<T>(d, dlb, d.n) : batch_vec<T>(d, dla, d.n);
    if (needs_grad(2)) res[2] = d.tr ? batch_vec<T>(d, dla, d.m) : batch_vec<T>(d, dlb, d.m);
  }
  if (needs_grad(3)) {
    double de = 0;
    for (double v : deps) de += v;
    res[3] = Tensor::scalar(de, dtype_of<T>::value).view(next[3].shape);
  }
  // Warm starts get a gradient in unrolled mode only (implicit treats them as constants).
  if ((needs_grad(4) || needs_grad(5)) && s.mode == SinkhornGrad::unrolled) {
    if (needs_grad(4)) res[4] = batch_vec<T>(d, warm_grad(s, outs, !d.tr), d.n);
    if (needs_grad(5)) res[5] = batch_vec<T>(d, warm_grad(s, outs, d.tr), d.m);
  }
  // sinkhorn_apply's W, V are inputs 6 and 7: canonical X = W unless transposed.
  if (is_apply && next.size() > 7) {
    if (needs_grad(6)) res[6] = d.tr ? dY : dX;
    if (needs_grad(7)) res[7] = d.tr ? dX : dY;
  }
  return res;
}

template struct SinkhornBackwardT<float>;
template struct SinkhornBackwardT<double>;

}  // namespace lotgrad::sinkhorn_detail
