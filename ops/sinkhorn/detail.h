// Internals shared by the Sinkhorn sources in this folder. The public API is ops/sinkhorn.h;
// the maths (both gradient modes, the Laplacian solve) is explained in docs/sinkhorn.md.
//
//   setup.cpp     input checks, log-weights and masses, the working cost K
//   solver.cpp    the forward log-domain iteration (row and column half-steps)
//   implicit.cpp  implicit-gradient backward (fixed point, Laplacian solve)
//   unrolled.cpp  unrolled backward (the truncated iteration, undone half-step by half-step)
//   node.cpp      the autograd node: seeds R = dL/dP o P, runs a backward, maps to inputs
//   ops.cpp       sinkhorn() and sinkhorn_apply()
//   block.h       row-block kernels that forward and backward share
//
// Canonical "tall" layout: every problem is stored with rows on the larger side
// (N = max(n, m)) and columns on the smaller side (M = min(n, m)); a problem with n < m is
// transposed while the working cost is built. The working cost is
//   K_ij = (C_ij - rs_i - cs_j) / eps    (rs: row minima, cs: column minima after that)
// so that in f32 the entries that carry mass are small numbers. The iteration is exactly
// equivariant under such shifts (the potentials absorb them), so nothing downstream
// depends on them. Potentials fh, gh are in these shifted, scaled units.
// K is stored column by column, (M, N) per problem (K_ij at K[j N + i]).
//
// The vectorised loops rely on the library being built with -fno-trapping-math (see
// CMakeLists.txt): without it GCC will not if-convert the float compares in fexp.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "../../core/autograd.h"
#include "../../core/parallel.h"
#include "../fastmath.h"
#include "../sinkhorn.h"

namespace lotgrad::sinkhorn_detail {

constexpr double kInf = std::numeric_limits<double>::infinity();

using fastmath::fexp;
using fastmath::flog;

// A log-weight of -inf is a zero-mass (padding) entry.
inline bool valid(double lw) { return lw != -kInf; }

// Fixed row chunks (independent of the thread count, so sums are bit-reproducible).
inline int64_t chunk_rows(int64_t M) { return std::max<int64_t>(8, 32768 / std::max<int64_t>(M, 1)); }

// f(c) for every chunk c of one problem, on the threads when the problem is large.
template <class F>
void for_chunks(int64_t nchunks, int64_t work, F&& f) {
  parallel_for(0, nchunks, work >= kParallelGrain ? 1 : nchunks + 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) f(c);
  });
}

// f(b) for every problem b. Many problems: one per thread, serial inside. Few: serial
// over problems, and for_chunks parallelises the rows inside each.
template <class F>
void for_problems(int64_t B, F&& f) {
  if (B >= get_num_threads() && B > 1) {
    parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) f(b);
    });
  } else {
    for (int64_t b = 0; b < B; ++b) f(b);
  }
}

// s_j += sum_c part[c k + j] for j < k, chunk by chunk (a fixed order: bit-reproducible).
inline void add_chunks(const std::vector<double>& part, int64_t nchunks, int64_t k, double* s) {
  for (int64_t c = 0; c < nchunks; ++c)
    for (int64_t j = 0; j < k; ++j) s[j] += part[c * k + j];
}

// out_q = T(sum_c part[c k + q]) for q < k, each sum taken over the chunks in order.
template <class T>
void sum_chunks_to(const std::vector<double>& part, int64_t nchunks, int64_t k, T* out) {
  for (int64_t q = 0; q < k; ++q) {
    double sacc = 0;
    for (int64_t c = 0; c < nchunks; ++c) sacc += part[c * k + q];
    out[q] = T(sacc);
  }
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

// A view with only the sizes set: enough for the row chunking.
template <class T>
Prob<T> chunking(int64_t N, int64_t M) {
  Prob<T> p;
  p.N = N;
  p.M = M;
  return p;
}

// ---- state kept from forward to backward -------------------------------------------------
struct Dims {
  Shape batch;        // C.shape[:-2]
  int64_t B = 1, n = 0, m = 0, N = 0, M = 0;
  bool tr = false;    // canonical = transposed
};

// Everything the forward computes and the backward reuses (no n x m arrays).
template <class T>
struct State {
  Dims d;
  double eps = 1;
  int64_t H = 0;          // half-steps asked for
  bool last_rows = true;  // canonical side updated last
  SinkhornGrad mode = SinkhornGrad::implicit;
  std::vector<double> la0, lb0;  // canonical log-weights as given (B*N, B*M)
  std::vector<double> la, lb;    // effective (rebalanced)
  std::vector<double> rs, cs;    // canonical shifts in cost units
  std::vector<double> mass;      // per problem
  Tensor fh, gh;                 // (B, N), (B, M) final potentials
  Tensor f0, g0;                 // (B, N), (B, M) initial potentials (unrolled)
  Tensor snaps;                  // (B, H/2 + 2, M) g after each column step (unrolled)
  std::vector<int64_t> steps, ncol;  // per problem: half-steps run, column steps among them
  std::vector<double> err;
  int64_t snap_stride() const { return (H / 2 + 2) * d.M; }
  // Half-step k (0-based) updates the `last` side iff an even number of steps follow it.
  bool is_last(int64_t k) const { return ((H - 1 - k) % 2) == 0; }
  bool is_row_step(int64_t k) const { return is_last(k) == last_rows; }
};

// The public ops' common arguments, as the caller passed them.
struct OpArgs {
  const char* op;  // for error messages
  const Tensor& C;
  const Tensor& log_a;
  const Tensor& log_b;
  const Tensor& eps;
  const SinkhornOptions& opts;
};

// ---- setup.cpp ---------------------------------------------------------------------------
// Validates shapes, dtypes, eps and options; fills d.
void check_inputs(const OpArgs& a, Dims& d);
template <class T>
void check_cost(const OpArgs& a);
// Fills st.la0 / lb0 / la / lb and st.mass; refuses unequal totals. st.d must be set.
template <class T>
void setup_weights(const OpArgs& a, State<T>& st);
// Expands a (..., k) log-weight (or warm start) to (B, k) doubles; undefined -> fill.
std::vector<double> expand_vec(const Tensor& t, const Dims& d, int64_t k, double fill);
// log sum_i exp(x_i), -inf for an all -inf x.
double lse_vec(const double* x, int64_t k);
// The working cost (B, M, N) from C; fills st.rs, st.cs.
template <class T>
Tensor build_K(const Tensor& C, State<T>& st);

// ---- solver.cpp --------------------------------------------------------------------------
// Runs the iteration for every problem. K must be built. Fills fh, gh, the step counts and
// errors (and snaps, f0, g0 in unrolled mode).
template <class T>
void solve_all(State<T>& st, const Tensor& K, const SinkhornOptions& o);

// ---- implicit.cpp, unrolled.cpp ------------------------------------------------------------
// One problem's backward. On entry Kb (M, N) holds R = dL/dP o P (+ dL/dlogP, or
// sinkhorn_apply's seed); yf0 = eps dL/df (N) and yg0 = eps dL/dg (M), canonical.
template <class T>
struct BwdIn {
  const State<T>& st;
  int64_t b;  // problem index
  const T* K;
  T* Kb;
  const double* yf0;
  const double* yg0;
};
// On exit Kb holds dL/dK; dla, dlb are the adjoints of the effective log-weights, df0, dg0
// those of the initial shifted potentials (unrolled only).
template <class T>
struct BwdOut {
  std::vector<double> dla, dlb, df0, dg0;
};
template <class T>
void backward_implicit(const BwdIn<T>& in, BwdOut<T>& out);
template <class T>
void backward_unrolled(const BwdIn<T>& in, BwdOut<T>& out);

// ---- node.cpp ----------------------------------------------------------------------------
// Inputs: C, log_a, log_b, eps, f_init, g_init (and W, V for sinkhorn_apply). Outputs:
// f, g, plan, log_plan for sinkhorn; PW, PtV, f, g for sinkhorn_apply.
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

inline Tensor contig_or_empty(const Tensor& t) { return t.defined() ? t.detach().contiguous() : Tensor(); }

}  // namespace lotgrad::sinkhorn_detail
