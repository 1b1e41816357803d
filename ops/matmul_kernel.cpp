#include "matmul_kernel.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <utility>
#include <vector>

#include "../core/parallel.h"

namespace lotgrad::detail {

namespace {

std::atomic<bool> g_enabled{true};

// One vector register of floats: 16 with AVX-512, 8 elsewhere (a wider GCC vector type than the
// target's registers is kept in memory, measured 3x slower than native width on AVX2).
#if defined(__AVX512F__)
constexpr int kVL = 16;
#else
constexpr int kVL = 8;
#endif
typedef float vf __attribute__((vector_size(kVL * sizeof(float))));
inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void storev(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
// A store that skips the cache (no read-for-ownership of a line about to be overwritten):
// for C tiles larger than the caches. Needs a 64-byte-aligned p.
inline void streamv(float* p, vf v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, (__m512)v);
#else
  storev(p, v);
#endif
}

// Register tile: kMR rows x kNV vectors. AVX-512 (32 registers): 12 x 2 x 16 floats, 24
// accumulators. 16 registers (AVX2): 6 x 2 x 8 floats, 12 accumulators (a 12-row tile spills).
// A tile is kNV * kVL columns (32 or 16); N, a multiple of 16, ends in at most one 1-vector tile.
#if defined(__AVX512F__)
constexpr int64_t kMR = 12;
#else
constexpr int64_t kMR = 6;
#endif
constexpr int64_t kNV = 2;
constexpr int64_t kKC = 256;  // depth of one pass: A rows and B slice of a pass stay in L2

// One register tile: C[0..MR) x [0..NV*kVL) = (C or bias or 0) + sum over k in [k0, k1) of
// A(r, k) B(k, :). A(r, k) = A[r*a_rs + k*a_cs]; B's row k starts at B + k*ldb. Each k adds in
// order, so every element's sum runs in one fixed order whatever the threads.
template <int MR, int NV>
void micro(int64_t k0, int64_t k1, const float* A, int64_t a_rs, int64_t a_cs, const float* B, int64_t ldb, float* C,
           int64_t ldc, bool load_c, const float* bias, bool stream) {
  vf c[MR][NV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) c[r][v] = load_c ? loadv(C + r * ldc + v * kVL) : bias ? loadv(bias + v * kVL) : vf{};
  for (int64_t k = k0; k < k1; ++k) {
    const float* bk = B + k * ldb;
    vf b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = loadv(bk + v * kVL);
    const float* ak = A + k * a_cs;
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const float a = ak[r * a_rs];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
  }
  if (stream) {
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) streamv(C + r * ldc + v * kVL, c[r][v]);
  } else {
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) storev(C + r * ldc + v * kVL, c[r][v]);
  }
}

using MicroFn = void (*)(int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, bool,
                         const float*, bool);
template <int NV, int... R>
constexpr std::array<MicroFn, sizeof...(R)> micro_table(std::integer_sequence<int, R...>) {
  return {&micro<R + 1, NV>...};
}
// kernels[nv - 1][mr - 1]: tail tiles (fewer rows, one vector of columns) get their own code.
const std::array<MicroFn, kMR> kMicro1 = micro_table<1>(std::make_integer_sequence<int, kMR>{});
const std::array<MicroFn, kMR> kMicro2 = micro_table<2>(std::make_integer_sequence<int, kMR>{});

}  // namespace

void set_small_gemm_enabled(bool on) { g_enabled = on; }
bool small_gemm_enabled() { return g_enabled; }

bool small_gemm_applies(int64_t M, int64_t N, int64_t K) {
  // Columns in whole 16-float blocks; a small side (the weight) so that A streams once;
  // enough work to beat a BLAS call's fixed cost.
  return g_enabled && N > 0 && N % 16 == 0 && N <= 256 && (K <= 256 || M <= 256) && M > 0 && K > 0 &&
         M * N * K >= (int64_t)1 << 15;
}

void small_sgemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B,
                 int64_t b_rs, int64_t b_cs, float* C, int64_t ldc, bool accumulate, const float* bias) {
  // B with contiguous rows is read in place; otherwise (a transposed weight) packed once.
  std::vector<float> packed;
  const float* Bp = B;
  int64_t ldb = b_rs;
  if (b_cs != 1) {
    packed.resize((size_t)(K * N));
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) packed[(size_t)(k * N + j)] = B[k * b_rs + j * b_cs];
    Bp = packed.data();
    ldb = N;
  }
  const int64_t tiles = (M + kMR - 1) / kMR;
  // A C written once and larger than the last-level cache is streamed past the caches.
  const bool stream = !accumulate && K <= kKC && (reinterpret_cast<uintptr_t>(C) % 64) == 0 && ldc % 16 == 0 &&
                      M * ldc * (int64_t)sizeof(float) >= ((int64_t)16 << 20);
  const int64_t grain = std::max<int64_t>(1, ((int64_t)1 << 20) / std::max<int64_t>(1, kMR * N * K));
  parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t k1 = std::min(K, k0 + kKC);
      const bool load_c = accumulate || k0 > 0;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i0 = t * kMR, mr = std::min(kMR, M - i0);
        const float* At = A + i0 * a_rs;
        float* Ct = C + i0 * ldc;
        for (int64_t j0 = 0; j0 < N; j0 += kNV * kVL) {
          const bool two = N - j0 >= kNV * kVL;
          const MicroFn f = two ? kMicro2[(size_t)(mr - 1)] : kMicro1[(size_t)(mr - 1)];
          f(k0, k1, At, a_rs, a_cs, Bp + j0, ldb, Ct + j0, ldc, load_c, bias && !load_c ? bias + j0 : nullptr, stream);
        }
      }
    }
#if defined(__AVX512F__)
    if (stream) _mm_sfence();  // streamed stores are visible before the threads join
#endif
  });
}

}  // namespace lotgrad::detail
