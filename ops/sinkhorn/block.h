// Row-block kernels of the Sinkhorn sources (layout: detail.h). Rows are processed kBlk at
// a time: every inner loop runs over rows (contiguous in the (M, N) layout, vectorised)
// with the M columns as the outer loop, so a short M (LOTFormer's r = 4) still fills the
// vector lanes. Block scratch stays in L1. exp / log are the vectorisable ones of
// fastmath.h.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "detail.h"

namespace lotgrad::sinkhorn_detail {

constexpr int64_t kBlk = 256;

// Per-thread scratch for one block of rows.
template <class T>
struct Blk {
  alignas(64) T mx[kBlk];
  alignas(64) double s[kBlk], lse[kBlk];
  std::vector<T> e;  // (M, kBlk) exponentials, when asked for
};

// The kernels have internal linkage (one copy per source file), as they had in a single
// file: GCC then sees every call site and, e.g., knows that Blk's arrays are aligned.
namespace {

// Hot loops are functions of restrict pointers passed by value: inside the chunk lambdas,
// pointers captured by reference are reloaded per iteration (GCC then gathers) and simd
// reduction accumulators spill to the stack. Kept out of line: inlined, GCC falls back to
// the scalar loop of its alias versioning. (GCC ignores restrict on local pointers, but
// honours it on the members of a struct passed by value; node.cpp's seed relies on that.)
#define LOTGRAD_KERNEL __attribute__((noinline))

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

// Plan block: P_ij = exp(f_i + g_j - K_ij) for rows [i0, i0 + nb), as (M, kBlk). Zero on
// zero-mass rows and columns (f_i or g_j = -inf).
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

}  // namespace

}  // namespace lotgrad::sinkhorn_detail
