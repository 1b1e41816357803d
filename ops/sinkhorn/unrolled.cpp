// Unrolled backward: the exact gradient of the truncated iteration that was run, for one
// problem in the canonical layout (detail.h). The forward kept only g after each column
// step (State::snaps); walking the half-steps backwards, each row step's softmax is
// recomputed from the g it used, and a column step is undone together with the row step
// before it, whose exponentials it reuses. Formulas: docs/sinkhorn.md, "Mode 1: unrolled".
#include <cmath>

#include "block.h"
#include "detail.h"

namespace lotgrad::sinkhorn_detail {

namespace {

// Column step: kb_i += q_i g, t_i += q_i g with q_i = exp(f_i + go - k_i - lb).
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

// What one backward step undoes: a row step that used column potentials gin (row), the
// column step producing gout (col), or both, the column step first. f is the row step's
// output, or fin when there is no row step (the first half-step was a column step).
template <class T>
struct Undo {
  const T* gin = nullptr;
  bool row = false, col = false;
  const T* gout = nullptr;
  const T* fin = nullptr;
};

// Scratch for one block of rows.
template <class T>
struct UndoBlk {
  Blk<T> bk;                  // the row step's LSEs and exponentials
  alignas(64) T fi[kBlk];     // f after the row step
  alignas(64) double fbi[kBlk], t[kBlk], wt[kBlk];  // fbar; column-step terms; exp(f_i + mx_i)
};

// The backward sweep of one problem. Zero-mass rows have fbar = 0 and f = -inf, so every
// update they see is an exact zero.
template <class T>
struct Unroller {
  const State<T>& st;
  int64_t N, M;
  Prob<T> p;          // row chunks
  const T* K;         // (M, N) working cost
  T* Kb;              // (M, N) -R on entry to the sweep, dL/dK after it
  const double* la;   // (N) effective log-weights
  const double* lb;   // (M)
  BwdOut<T>& out;
  std::vector<double> fb, gb;    // (N), (M) potential adjoints fbar, gbar
  std::vector<double> gnew, gbc; // (nc, M) gbar from the undone row step; (M) adjoint of the column step's output
  std::vector<double> ea, cq;    // (N) row masses exp(la); (M) column factors, see undo

  Unroller(const BwdIn<T>& in, BwdOut<T>& o)
      : st(in.st), N(in.st.d.N), M(in.st.d.M), p(chunking<T>(N, M)), K(in.K), Kb(in.Kb), la(&st.la[in.b * N]),
        lb(&st.lb[in.b * M]), out(o) {}

  // Kb = -R, fbar = R 1 + yf0, gbar = R^T 1 + yg0 (zero-mass rows: R = 0, fbar = 0).
  void seed(const double* yf0, const double* yg0) {
    const int64_t nc = p.nchunks();
    fb.assign(N, 0.0);
    gb.assign(M, 0.0);
    std::vector<double> part((size_t)nc * M, 0.0);
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
    add_chunks(part, nc, M, gb.data());
    for (int64_t j = 0; j < M; ++j) gb[j] = valid(lb[j]) ? gb[j] + yg0[j] : 0.0;
  }

  // Recomputes a block of the row step: its LSEs and exponentials in s.bk, f in s.fi, and
  // s.wt = exp(f_i + mx_i) for the rounded f_i (as in the forward's row_step).
  void row_block(const T* gin, int64_t i0, int64_t nb, UndoBlk<T>& s) {
    block_lse(K, N, M, gin, i0, nb, s.bk, true);
    const double* ea_ = ea.data();
#pragma omp simd
    for (int64_t i = 0; i < nb; ++i) {
      const double x = la[i0 + i] - s.bk.lse[i];
      s.fi[i] = T(x);
      const double d = (double)s.fi[i] - x;
      s.wt[i] = valid(la[i0 + i]) ? ea_[i0 + i] / s.bk.s[i] * (1.0 + d + 0.5 * d * d) : 0.0;
    }
  }

  // Undoes a block of the column step (adjoint gbc): Kb += Qc o gbc, fbar -= Qc gbc.
  void col_block(const Undo<T>& u, int64_t i0, int64_t nb, UndoBlk<T>& s) {
    for (int64_t i = 0; i < nb; ++i) s.t[i] = 0;
    for (int64_t j = 0; j < M; ++j) {
      const double gj = gbc[j];
      if (gj == 0) continue;
      if (cq[j] <= 1e15)
        col_undo_e(Kb + j * N + i0, s.t, s.bk.e.data() + j * kBlk, s.wt, cq[j] * gj, nb);
      else
        col_undo_exp(Kb + j * N + i0, s.t, s.fi, K + j * N + i0, u.gout[j], T(lb[j]), gj, nb);
    }
    for (int64_t i = 0; i < nb; ++i) s.fbi[i] -= s.t[i];
  }

  // Undoes a block of the row step: Kb += fbar Rr, gbar -= Rr^T fbar (into acc),
  // dla += fbar, fbar = 0.
  void row_undo_block(int64_t i0, int64_t nb, UndoBlk<T>& s, double* acc) {
    double* w = s.t;
#pragma omp simd
    for (int64_t i = 0; i < nb; ++i) w[i] = valid(la[i0 + i]) ? s.fbi[i] / s.bk.s[i] : 0.0;
    for (int64_t j = 0; j < M; ++j) acc[j] -= row_undo(Kb + j * N + i0, s.bk.e.data() + j * kBlk, w, nb);
    for (int64_t i = 0; i < nb; ++i) {
      out.dla[i0 + i] += s.fbi[i];
      s.fbi[i] = 0;
    }
  }

  void undo_chunk(const Undo<T>& u, int64_t c) {
    double* acc = gnew.data() + c * M;
    UndoBlk<T> s;
    for (int64_t i0 = p.cbeg(c); i0 < p.cend(c); i0 += kBlk) {
      const int64_t nb = std::min(kBlk, p.cend(c) - i0);
      if (u.row) row_block(u.gin, i0, nb, s);
      else
        for (int64_t i = 0; i < nb; ++i) s.fi[i] = u.fin[i0 + i];
      for (int64_t i = 0; i < nb; ++i) s.fbi[i] = fb[i0 + i];
      if (u.col) col_block(u, i0, nb, s);
      if (u.row) row_undo_block(i0, nb, s, acc);
      for (int64_t i = 0; i < nb; ++i) fb[i0 + i] = s.fbi[i];
    }
  }

  void undo(const Undo<T>& u) {
    const int64_t nc = p.nchunks();
    std::fill(gnew.begin(), gnew.end(), 0.0);
    gbc = gb;
    // Qc_ij = exp(f_i + gout_j - K_ij - lb_j) = e_ij * exp(f_i + mx_i) * exp(gout_j - gin_j - lb_j)
    // with e the row step's exponentials: no second exp per entry. Entries whose e underflowed
    // are below 1e-38 of their row's largest; a column factor above 1e15 could lift them, and
    // then that column is recomputed directly.
    for (int64_t j = 0; j < M; ++j)
      cq[j] = (u.row && u.col && gbc[j] != 0) ? fexp((double)u.gout[j] - (double)u.gin[j] - lb[j]) : kInf;
    for_chunks(nc, N * M, [&](int64_t c) { undo_chunk(u, c); });
    if (u.col) {
      for (int64_t j = 0; j < M; ++j) out.dlb[j] += gbc[j];
      std::fill(gb.begin(), gb.end(), 0.0);
    }
    if (u.row) add_chunks(gnew, nc, M, gb.data());
    for (int64_t j = 0; j < M; ++j)
      if (!valid(lb[j])) gb[j] = 0;
  }

  // Walks the half-steps of problem b backwards; sn (H/2 + 2, M) are g's snapshots, sn row
  // c the g after the c-th column step; f0 the starting f.
  void sweep(int64_t b, const T* sn, const T* f0) {
    gnew.resize((size_t)p.nchunks() * M);
    ea.resize(N);
    for (int64_t i = 0; i < N; ++i) ea[i] = fexp(la[i]);
    cq.resize(M);
    int64_t cidx = st.ncol[b];
    int64_t k = st.steps[b] - 1;
    while (k >= 0) {
      if (st.is_row_step(k)) {
        undo({sn + cidx * M, true, false, nullptr, nullptr});
        k -= 1;
      } else if (k >= 1) {  // a column step and the row step before it, in one pass
        undo({sn + (cidx - 1) * M, true, true, sn + cidx * M, nullptr});
        cidx -= 1;
        k -= 2;
      } else {  // the first half-step was a column step
        undo({nullptr, false, true, sn + cidx * M, f0});
        cidx -= 1;
        k -= 1;
      }
    }
  }
};

}  // namespace

template <class T>
void backward_unrolled(const BwdIn<T>& in, BwdOut<T>& out) {
  const State<T>& st = in.st;
  Unroller<T> u(in, out);
  u.seed(in.yf0, in.yg0);
  out.dla.assign(u.N, 0.0);
  out.dlb.assign(u.M, 0.0);
  u.sweep(in.b, st.snaps.template data_ptr<T>() + in.b * st.snap_stride(), st.f0.template data_ptr<T>() + in.b * u.N);
  out.df0 = u.fb;
  out.dg0 = u.gb;
}

template void backward_unrolled<float>(const BwdIn<float>&, BwdOut<float>&);
template void backward_unrolled<double>(const BwdIn<double>&, BwdOut<double>&);

}  // namespace lotgrad::sinkhorn_detail
