// A small register-blocked GEMM for per-head chunk kernels that run inside a parallel loop
// over heads, where BLAS must not be called (core/parallel.h): vectorised along the output row
// with GCC vector extensions, any strides for the left operand (so Aᵀ B needs no copy), and
// products whose upper triangle is never read stop at the diagonal. Used by ops/delta_rule.cpp
// and ops/ssm_linear.cpp. Each call is sequential: results do not depend on the thread count.
#pragma once
#include <algorithm>
#include <cstdint>

namespace lotgrad::detail {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <class T>
struct Vec {
  static constexpr int W = kVecBytes / (int)sizeof(T);
  typedef T V __attribute__((vector_size(kVecBytes)));
  typedef T VU __attribute__((vector_size(kVecBytes), aligned(sizeof(T)), may_alias));
  static V load(const T* p) { return *reinterpret_cast<const VU*>(p); }
  static void store(T* p, V v) { *reinterpret_cast<VU*>(p) = v; }
  static V set1(T x) { return x - V{}; }  // x − (+0) is x in every lane
};

// Which entries of the left operand may be nonzero: all, p <= i (lower), or p >= i (upper).
// The GEMM skips the inner indices that only meet zeros (a triangular product costs half).
enum class Tri { full, lower, upper };

// R rows × NV vectors of C = alpha·A·B (+ C), inner index p in [p0, p1). A points at the
// block's first row, B and C at its first column.
template <class T, int R, int NV>
inline void gemm_block(const T* A, int64_t ars, int64_t acs, const T* B, int64_t ldb, T* C, int64_t ldc, int64_t p0,
                int64_t p1, T alpha, bool acc) {
  using S = Vec<T>;
  using V = typename S::V;
  V c[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = V{};
  for (int64_t p = p0; p < p1; ++p) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = S::load(B + p * ldb + v * S::W);
    for (int r = 0; r < R; ++r) {
      const V a = S::set1(A[r * ars + p * acs]);
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
  }
  const V al = S::set1(alpha);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      T* out = C + r * ldc + v * S::W;
      S::store(out, acc ? S::load(out) + al * c[r][v] : al * c[r][v]);
    }
}

// The columns left over after the vectors (fewer than one vector's width).
template <class T, int R>
inline void gemm_block_tail(const T* A, int64_t ars, int64_t acs, const T* B, int64_t ldb, T* C, int64_t ldc, int64_t p0,
                     int64_t p1, T alpha, bool acc, int64_t cols) {
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      T s = 0;
      for (int64_t p = p0; p < p1; ++p) s += A[r * ars + p * acs] * B[p * ldb + j];
      C[r * ldc + j] = acc ? C[r * ldc + j] + alpha * s : alpha * s;
    }
}

// C (m, n), row stride ldc, = alpha·A·B (+ C when acc). A(i, p) = A[i·ars + p·acs] (so a
// transposed operand is just swapped strides), B row-major (k, n) with row stride ldb.
// lower_out: only C(i, j) with j <= i is wanted (the rest may be left unwritten or written):
// a row block stops at its last row's diagonal, rounded up to whole vectors.
template <class T>
inline void gemm(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t ars, int64_t acs, const T* B, int64_t ldb,
          T* C, int64_t ldc, bool acc, Tri tri = Tri::full, bool lower_out = false) {
  constexpr int W = Vec<T>::W;
  auto rows = [&]<int R>(int64_t i0) {
    const int64_t p0 = tri == Tri::upper ? std::min(i0, k) : 0;
    const int64_t p1 = tri == Tri::lower ? std::min(k, i0 + R) : k;
    const int64_t nc = lower_out ? std::min(n, (i0 + R + W - 1) / W * W) : n;
    const T* Ai = A + i0 * ars;
    T* Ci = C + i0 * ldc;
    int64_t j = 0;
    for (; j + 4 * W <= nc; j += 4 * W) gemm_block<T, R, 4>(Ai, ars, acs, B + j, ldb, Ci + j, ldc, p0, p1, alpha, acc);
    for (; j + 2 * W <= nc; j += 2 * W) gemm_block<T, R, 2>(Ai, ars, acs, B + j, ldb, Ci + j, ldc, p0, p1, alpha, acc);
    for (; j + W <= nc; j += W) gemm_block<T, R, 1>(Ai, ars, acs, B + j, ldb, Ci + j, ldc, p0, p1, alpha, acc);
    if (j < nc) gemm_block_tail<T, R>(Ai, ars, acs, B + j, ldb, Ci + j, ldc, p0, p1, alpha, acc, nc - j);
  };
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) rows.template operator()<4>(i);
  for (; i < m; ++i) rows.template operator()<1>(i);
}

}  // namespace lotgrad::detail
