// The building blocks of the fused (FlashAttention-2 style) softmax attention kernel of
// ops/attention.cpp, shared with the other tiled attention kernels (ops/mlr_attention.cpp):
// SIMD helpers, the two tile micro-kernels, packing into tile-friendly buffers, the key mask,
// the band of keys per query, the online-softmax step and the parallel unit loop. See
// ops/attention.cpp for how they fit together.
//
// Library-internal: include only from lotgrad's own .cpp files (the vector width follows the
// library's -march flags).
#pragma once
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.h"
#include "../core/parallel.h"
#include "../core/tensor.h"

namespace lotgrad::detail::tiles {

// =======================================================================================
// SIMD: GCC/Clang vector extensions, as wide as the target allows (AVX-512 with
// -march=native on this machine). Loads and stores are unaligned.
// =======================================================================================
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kAccRegs = 16;  // accumulators per micro-kernel (32 registers in all)
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
constexpr int kAccRegs = 8;   // 16 registers
#else
constexpr int kVecBytes = 16;
constexpr int kAccRegs = 8;
#endif

template <class T> struct IntOf;
template <> struct IntOf<float> { using type = int32_t; };
template <> struct IntOf<double> { using type = int64_t; };

template <class T>
struct Simd {
  static constexpr int W = kVecBytes / (int)sizeof(T);
  typedef T V __attribute__((vector_size(kVecBytes)));
  typedef T VU __attribute__((vector_size(kVecBytes), aligned(sizeof(T)), may_alias));
  typedef typename IntOf<T>::type I;
  typedef I VI __attribute__((vector_size(kVecBytes)));

  static V load(const T* p) { return *reinterpret_cast<const VU*>(p); }
  static void store(T* p, V v) { *reinterpret_cast<VU*>(p) = v; }
  static V set1(T x) { return x - V{}; }  // x - (+0) is exact for every x: a plain broadcast
  static V vmax(V a, V b) { return a > b ? a : b; }
  // Lane i of the result is v[(i + S) mod W].
  template <int S, size_t... L>
  static V rotate(V v, std::index_sequence<L...>) {
#if defined(__clang__)  // the fuzz and thread-sanitizer builds use clang
    return __builtin_shufflevector(v, v, (int)((L + S) % W)...);
#else
    return __builtin_shuffle(v, VI{(I)((L + S) % W)...});
#endif
  }
  // Horizontal max and sum by a fixed halving tree (log2 W steps; deterministic).
  static T hmax(V v) {
    [&]<size_t... S>(std::index_sequence<S...>) {
      ((v = vmax(v, rotate<(W >> (S + 1))>(v, std::make_index_sequence<W>{}))), ...);
    }(std::make_index_sequence<std::countr_zero((unsigned)W)>{});
    return v[0];
  }
  static T hsum(V v) {
    [&]<size_t... S>(std::index_sequence<S...>) {
      ((v = v + rotate<(W >> (S + 1))>(v, std::make_index_sequence<W>{})), ...);
    }(std::make_index_sequence<std::countr_zero((unsigned)W)>{});
    return v[0];
  }
  // 2^x: x = k + r with k = round(x), |r| <= 1/2, 2^r by the Taylor series of e^(r ln2)
  // (|r ln2| <= 0.35; f32 degree 7, f64 degree 13: about 1 ulp), 2^k through the exponent
  // bits. Below the smallest normal it gives exactly 0, so -inf (the mask value) gives a
  // weight of exactly zero. The kernels work in base 2 (log2 e is folded into q's scale),
  // which saves the multiply by log2 e here.
  static V exp2(V x) {
    if constexpr (sizeof(T) == 4) {
      const V xc = x > T(127) ? set1(T(127)) : x;
      const V kb = xc + T(12582912.0);  // 1.5·2^23: the low mantissa bits of kb hold round(x)
      const V r = xc - (kb - T(12582912.0));
      constexpr double c[] = {1.5252733804059841e-05, 1.5403530393381609e-04, 1.3333558146428443e-03,
                              9.6181291076284772e-03, 5.5504108664821580e-02, 2.4022650695910071e-01,
                              6.9314718055994531e-01, 1.0};
      V p = set1(T(c[0]));
      for (int i = 1; i < 8; ++i) p = p * r + T(c[i]);
      // (bits(kb) + 127) << 23 == (round(x) + 127) << 23 modulo 2^32: the exponent of 2^k.
      const V scale = (V)(((VI)kb + 127) << 23);
      return x < T(-126) ? V{} : p * scale;
    } else {
      const V xc = x > T(1023) ? set1(T(1023)) : x;
      const V kb = xc + T(6755399441055744.0);  // 1.5·2^52
      const V r = xc - (kb - T(6755399441055744.0));
      constexpr double c[] = {1.0/6227020800.0, 1.0/479001600.0, 1.0/39916800.0, 1.0/3628800.0, 1.0/362880.0,
                              1.0/40320.0, 1.0/5040.0, 1.0/720.0, 1.0/120.0, 1.0/24.0, 1.0/6.0, 0.5, 1.0, 1.0};
      constexpr double ln2 = 0.69314718055994530942;
      // Taylor of e^y, y = r ln2: coefficients c[i] · ln2^(13-i).
      V p = set1(T(c[0]));
      const V y = r * T(ln2);
      for (int i = 1; i < 14; ++i) p = p * y + T(c[i]);
      const V scale = (V)(((VI)kb + 1023) << 52);
      return x < T(-1022) ? V{} : p * scale;
    }
  }
};

// Tile sizes: a (64 × 64) score tile is 16 KB in f32; with the Q, Kᵀ and V tiles (8 KB each
// at d = 32) the working set of one tile step sits in L1/L2.
constexpr int kBr = 64;  // query rows per tile
constexpr int kBc = 64;  // keys per tile

// Scores are kept in base 2: q is packed times scale·log2 e, so softmax weights are
// 2^(s - max). dK = scale · dSᵀ Q = ln 2 · dSᵀ Qs.
constexpr double kLog2e = 1.4426950408889634074, kLn2 = 0.69314718055994530942;

// ---- micro-kernels --------------------------------------------------------------------

// out (kBr × kBc, row stride kBc) = a (kBr × d, row stride lda) · bt (d × kBc, contiguous).
// Vectorised along keys: each step broadcasts R entries of a and loads NV vectors of bt.
template <class T>
void tile_scores(const T* a, int64_t lda, const T* bt, int d, T* out) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr int NV = std::min(2, kBc / W);
  constexpr int R = kAccRegs / NV;
  static_assert(kBc % (NV * W) == 0 && kBr % R == 0);
  for (int c0 = 0; c0 < kBc; c0 += NV * W) {
    for (int r0 = 0; r0 < kBr; r0 += R) {
      V acc[R][NV];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] = V{};
      const T* ap = a + r0 * lda;
      const T* bp = bt + c0;
      for (int k = 0; k < d; ++k) {
        V b[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) b[v] = S::load(bp + (int64_t)k * kBc + v * W);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const V ar = S::set1(ap[r * lda + k]);
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) acc[r][v] += ar * b[v];
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) S::store(out + (r0 + r) * kBc + c0 + v * W, acc[r][v]);
    }
  }
}

// out (rows × DV·W, row stride ldo) += A · b, where A(i, j) = a[i·ars + j·acs] is rows × kred
// and b is kred × DV·W (row stride ldb). Vectorised along the output row; A is broadcast.
// The strides let the same kernel read a score tile transposed (Pᵀ dO, dSᵀ Q).
template <class T, int DV>
void tile_accum_block(const T* a, int64_t ars, int64_t acs, int rows, int kred, const T* b, int64_t ldb, T* out,
                      int64_t ldo) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr int R = kAccRegs / DV >= 8 ? 8 : kAccRegs / DV >= 4 ? 4 : kAccRegs / DV >= 2 ? 2 : 1;
  for (int r0 = 0; r0 < rows; r0 += R) {  // rows is kBr or kBc: a multiple of R
    V acc[R][DV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < DV; ++v) acc[r][v] = S::load(out + (r0 + r) * ldo + v * W);
    const T* ap = a + r0 * ars;
    for (int j = 0; j < kred; ++j) {
      V bv[DV];
#pragma GCC unroll 8
      for (int v = 0; v < DV; ++v) {
        bv[v] = S::load(b + j * ldb + v * W);
#if defined(__x86_64__)
        // GCC folds these loads into the FMAs below, loading each vector R times: with four
        // vectors that makes the loop load-bound (24% slower at DV = 4, measured). An empty asm
        // pins the vector in a register. At DV <= 2 the folded form is the faster one.
        if constexpr (DV >= 3) asm("" : "+v"(bv[v]));
#endif
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const V ar = S::set1(ap[r * ars + j * acs]);
#pragma GCC unroll 8
        for (int v = 0; v < DV; ++v) acc[r][v] += ar * bv[v];
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < DV; ++v) S::store(out + (r0 + r) * ldo + v * W, acc[r][v]);
  }
}

// The same over dv vectors per row, in column chunks of 4 vectors, then 2, then 1: three
// vectors take 4 rows at a time (12 accumulators) and ran slower than 2 + 1 (measured).
template <class T>
void tile_accum(const T* a, int64_t ars, int64_t acs, int rows, int kred, const T* b, int64_t ldb, T* out,
                int64_t ldo, int dv) {
  constexpr int W = Simd<T>::W;
  int c = 0;
  for (; c + 4 <= dv; c += 4) tile_accum_block<T, 4>(a, ars, acs, rows, kred, b + c * W, ldb, out + c * W, ldo);
  if (c + 2 <= dv) {
    tile_accum_block<T, 2>(a, ars, acs, rows, kred, b + c * W, ldb, out + c * W, ldo);
    c += 2;
  }
  if (c < dv) tile_accum_block<T, 1>(a, ars, acs, rows, kred, b + c * W, ldb, out + c * W, ldo);
}

// ---- geometry, packing, masks -----------------------------------------------------------

// The band: query i sees key j iff i - before <= j <= i + after. kNoLimit is no limit on that
// side, small enough that adding an index cannot overflow.
constexpr int64_t kNoLimit = int64_t(1) << 60;
struct Band {
  int64_t before = kNoLimit, after = kNoLimit;
};

// Sizes of one call. Rows are padded to whole tiles and the head dim to whole vectors; the
// padding is zero (the packing jobs write it) and padded keys are masked.
struct Geo {
  int64_t B, H, n, m, d, e;  // e: the value width (d for q and k)
  int64_t dp, dv;        // padded head dim, vectors per row
  int64_t ep, ev;        // the same for the values
  int64_t nI, nJ;        // query and key tiles
  int64_t n_pad, m_pad;  // nI·kBr, nJ·kBc
  Band band;
  int64_t BH() const { return B * H; }
};

template <class T>
Geo make_geo(const Tensor& q, const Tensor& k, const Tensor& v, Band band) {
  Geo g;
  g.band = band;
  g.B = q.size(0);
  g.H = q.size(1);
  g.n = q.size(2);
  g.d = q.size(3);
  g.m = k.size(2);
  constexpr int W = Simd<T>::W;
  g.dv = (g.d + W - 1) / W;
  g.dp = g.dv * W;
  g.e = v.size(3);
  g.ev = (g.e + W - 1) / W;
  g.ep = g.ev * W;
  g.nI = (g.n + kBr - 1) / kBr;
  g.nJ = (g.m + kBc - 1) / kBc;
  g.n_pad = g.nI * kBr;
  g.m_pad = g.nJ * kBc;
  return g;
}

// Packing and unpacking are lists of independent items (rows or tiles) run together in one
// parallel region (run_jobs), so a call has three regions at most: few synchronisations.
struct Job {
  int64_t count = 0;
  std::function<void(int64_t)> item;
};
inline void run_jobs(const std::vector<Job>& jobs, int64_t grain) {
  int64_t total = 0;
  for (const Job& j : jobs) total += j.count;
  parallel_for(0, total, grain, [&](int64_t b, int64_t e) {
    int64_t base = 0;
    for (const Job& j : jobs) {
      for (int64_t i = std::max(b, base); i < std::min(e, base + j.count); ++i) j.item(i - base);
      base += j.count;
    }
  });
}
inline int64_t row_grain(const Geo& g) { return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>({g.d, g.e, 1})); }

// dst (BH, rows_pad, wp) ← src (B, H, rows, w) (any strides) · mul, or · col_mul[c] per column
// when col_mul is given; the padding (rows past rows, columns past w) written as zeros, so dst
// needs no zero fill first; one item per row. The width is g.d (q, k) or g.e (v, dO), padded
// to g.dp or g.ep.
template <class T>
Job pack_rows(const Tensor& src, const Geo& g, int64_t rows, int64_t rows_pad, int64_t w, int64_t wp, T mul, T* dst,
              std::vector<T> col_mul = {}) {
  const T* s0 = src.data_ptr<T>();
  const Shape st = src.strides();
  const int64_t d = w, dp = wp, H = g.H;
  return {g.BH() * rows_pad, [=](int64_t r) {
            const int64_t bh = r / rows_pad, i = r % rows_pad;
            T* o = dst + r * dp;
            if (i >= rows) {
              std::fill(o, o + dp, T(0));
              return;
            }
            const T* s = s0 + (bh / H) * st[0] + (bh % H) * st[1] + i * st[2];
            const T* m = col_mul.data();
            if (!m && st[3] == 1)  // the usual layouts: loops the compiler vectorises
              for (int64_t c = 0; c < d; ++c) o[c] = s[c] * mul;
            else if (!m)
              for (int64_t c = 0; c < d; ++c) o[c] = s[c * st[3]] * mul;
            else if (st[3] == 1)
              for (int64_t c = 0; c < d; ++c) o[c] = s[c] * m[c];
            else
              for (int64_t c = 0; c < d; ++c) o[c] = s[c * st[3]] * m[c];
            std::fill(o + d, o + dp, T(0));
          }};
}

// dst (BH, nJ, w, kBc) ← src (B, H, m, w): every key tile stored transposed, so score tiles
// can be built with loads along the keys; columns past m written as zeros. One item per tile.
template <class T>
Job pack_tiles_t(const Tensor& src, const Geo& g, int64_t w, T* dst) {
  const T* s0 = src.data_ptr<T>();
  const Shape st = src.strides();
  const int64_t d = w, H = g.H, m = g.m, nJ = g.nJ;
  return {g.BH() * nJ, [=](int64_t u) {
            const int64_t bh = u / nJ, J = u % nJ;
            T* o = dst + u * d * kBc;
            const int64_t cols = std::min<int64_t>(kBc, m - J * kBc);
            for (int64_t c = 0; c < cols; ++c) {
              const T* s = s0 + (bh / H) * st[0] + (bh % H) * st[1] + (J * kBc + c) * st[2];
              for (int64_t k = 0; k < d; ++k) o[k * kBc + c] = s[k * st[3]];
            }
            for (int64_t k = 0; k < d && cols < kBc; ++k) std::fill(o + k * kBc + cols, o + (k + 1) * kBc, T(0));
          }};
}

// out (B, H, rows, w) contiguous ← mul · Σ_c parts[c] (BH, rows_pad, wp), summed in order.
template <class T>
Job unpack_rows(const T* parts, int64_t nparts, const Geo& g, int64_t rows, int64_t rows_pad, int64_t w, int64_t wp, T mul,
                T* out) {
  const int64_t d = w, dp = wp, part_stride = g.BH() * rows_pad * dp;
  return {g.BH() * rows, [=](int64_t r) {
            const int64_t bh = r / rows, i = r % rows;
            const T* src = parts + (bh * rows_pad + i) * dp;
            T* o = out + r * d;
            for (int64_t c = 0; c < d; ++c) o[c] = src[c];
            for (int64_t p = 1; p < nparts; ++p)
              for (int64_t c = 0; c < d; ++c) o[c] += src[p * part_stride + c];
            if (mul != T(1))
              for (int64_t c = 0; c < d; ++c) o[c] *= mul;
          }};
}

// Per batch entry: an additive bias per key (0, or -inf for padded keys and the tile
// padding past m) and a status per key tile, so unmasked tiles skip the bias and fully
// masked tiles are skipped altogether.
enum : uint8_t { kTileOpen = 0, kTilePartial = 1, kTileMasked = 2 };
template <class T>
struct KeyMask {
  std::vector<T> bias;            // (B, m_pad)
  std::vector<uint8_t> status;    // (B, nJ)
};
template <class T>
KeyMask<T> make_key_mask(const Tensor& mask, const Geo& g) {
  KeyMask<T> km;
  km.bias.assign(g.B * g.m_pad, T(0));
  km.status.assign(g.B * g.nJ, kTileOpen);
  const bool* mp = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t b = 0; b < g.B; ++b) {
    for (int64_t J = 0; J < g.nJ; ++J) {
      int64_t masked = 0;
      for (int64_t c = 0; c < kBc; ++c) {
        const int64_t j = J * kBc + c;
        const bool pad = j >= g.m || (mp && mp[b * mask.stride(0) + j * mask.stride(1)]);
        if (pad) {
          km.bias[b * g.m_pad + j] = -std::numeric_limits<T>::infinity();
          ++masked;
        }
      }
      km.status[b * g.nJ + J] = masked == 0 ? kTileOpen : masked == kBc ? kTileMasked : kTilePartial;
    }
  }
  return km;
}

// ---- the band ----------------------------------------------------------------------------
// A query tile I visits the key tiles [lo, hi] that hold a key of the band of one of its real
// rows (rows i < n; the band's edges grow with i, so the first and the last row bound it).
// A visited tile is either wholly inside the band for every real row (no band mask: the
// causal case's tiles below the diagonal) or on its edge (masked element by element). Rows
// past n in the last tile are tile padding: zero queries and zero upstream gradient, so what
// they see changes no result.
struct TileRange {
  int64_t lo = 0, hi = -1;  // empty when lo > hi
  int64_t count() const { return std::max<int64_t>(0, hi - lo + 1); }
};

inline TileRange key_tiles(const Geo& g, int64_t I) {
  const int64_t r0 = I * kBr, r1 = std::min(g.n, r0 + kBr) - 1;
  const int64_t j0 = std::max<int64_t>(0, r0 - g.band.before), j1 = std::min(g.m - 1, r1 + g.band.after);
  if (j0 > j1) return {};
  return {j0 / kBc, j1 / kBc};
}

// Every (real query, real key) pair of tile (I, J) is inside the band.
inline bool tile_inside_band(const Geo& g, int64_t I, int64_t J) {
  const int64_t r0 = I * kBr, r1 = std::min(g.n, r0 + kBr) - 1;
  const int64_t c0 = J * kBc, c1 = std::min(g.m, c0 + kBc) - 1;
  return c0 >= r1 - g.band.before && c1 <= r0 + g.band.after;
}

// Scores s (kBr × kBc) of tile (I, J) outside the band set to -inf: weight exactly 0.
template <class T>
void mask_band(const Geo& g, int64_t I, int64_t J, T* s) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  for (int i = 0; i < kBr; ++i) {
    const int64_t row = I * kBr + i;
    // the row's allowed columns within the tile: [a, e)
    const int64_t a = std::clamp<int64_t>(row - g.band.before - J * kBc, 0, kBc);
    const int64_t e = std::clamp<int64_t>(row + g.band.after - J * kBc + 1, a, kBc);
    T* sr = s + i * kBc;
    std::fill(sr, sr + a, kNegInf);
    std::fill(sr + e, sr + kBc, kNegInf);
  }
}

// Every query tile's key tiles, and the number of tile pairs of one head.
inline std::vector<TileRange> all_key_tiles(const Geo& g, int64_t& pairs) {
  std::vector<TileRange> r((size_t)g.nI);
  pairs = 0;
  for (int64_t I = 0; I < g.nI; ++I) {
    r[(size_t)I] = key_tiles(g, I);
    pairs += r[(size_t)I].count();
  }
  return r;
}

// Runs f(u, scratch) for every unit u in [0, n) with OpenMP's dynamic schedule (threads
// from lotgrad's count): each unit writes only its own outputs, so the result does not
// depend on which thread ran it (deterministic), and on a busy machine a descheduled thread
// does not hold the others up. One scratch per thread from make(). Serial below grain.
template <class Make, class F>
void for_each_unit(int64_t n, int64_t grain, Make make, F f) {
  const int nt = get_num_threads();
  if (nt <= 1 || n <= grain || omp_in_parallel()) {
    auto scratch = make();
    for (int64_t u = 0; u < n; ++u) f(u, scratch);
    return;
  }
#pragma omp parallel num_threads((int)std::min<int64_t>(nt, n))
  {
    auto scratch = make();
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < n; ++u) f(u, scratch);
  }
}

// Units per thread chunk so that tiny problems (tests, short sequences) stay on one thread:
// work is counted in multiply-adds of one unit; a thread gets at least ~256K of them.
inline int64_t unit_grain(int64_t unit_work) { return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(unit_work, 1)); }

// One key tile of the online softmax: adds the padding bias (when given), turns the scores s
// (kBr × kBc) into weights 2^(s - running max) in place, and rescales the row's sum l and
// accumulator acc (kBr × dp) where its running max mx moved. The rescale factors 2^(old max -
// new max) of all rows are computed together, vectorised: a libm exp2 per row cost as much as
// the tile's other exponentials (measured).
template <class T>
void online_softmax_tile(T* s, const T* bias, T* mx, T* l, T* acc, int64_t dp) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr T kInf = std::numeric_limits<T>::infinity();
  static_assert(kBr % W == 0);
  alignas(64) T m_new[kBr], corr[kBr];
  for (int i = 0; i < kBr; ++i) {  // the new row maxima
    T* sr = s + i * kBc;
    if (bias)
      for (int c = 0; c < kBc; c += W) S::store(sr + c, S::load(sr + c) + S::load(bias + c));
    V vm = S::load(sr);
    for (int c = W; c < kBc; c += W) vm = S::vmax(vm, S::load(sr + c));
    m_new[i] = std::max(mx[i], S::hmax(vm));
  }
  for (int i = 0; i < kBr; i += W) {  // 1 where the max did not move (-inf to -inf included), 0 from -inf
    const V a = S::load(mx + i), b = S::load(m_new + i);
    S::store(corr + i, a == b ? S::set1(T(1)) : S::exp2(a - b));
  }
  for (int i = 0; i < kBr; ++i) {
    T* sr = s + i * kBc;
    if (m_new[i] == -kInf) {  // no unmasked key yet: weights 0 (avoids -inf - -inf)
      std::fill(sr, sr + kBc, T(0));
      continue;
    }
    const V shift = S::set1(m_new[i]);
    V sum = V{};
    for (int c = 0; c < kBc; c += W) {
      const V p = S::exp2(S::load(sr + c) - shift);
      S::store(sr + c, p);
      sum += p;
    }
    l[i] = l[i] * corr[i] + S::hsum(sum);
    mx[i] = m_new[i];
    if (corr[i] != T(1)) {
      T* ar = acc + i * dp;
      const V cv = S::set1(corr[i]);
      for (int64_t c = 0; c < dp; c += W) S::store(ar + c, S::load(ar + c) * cv);
    }
  }
}

// Chunk c of each head covers query tiles [bounds[c], bounds[c + 1]), cut where the running
// count of tile pairs passes c/chunks of the head's total: with a causal band the last query
// tiles visit the most key tiles, and equal numbers of query tiles per chunk would leave the
// last chunk with most of the work (3/4 of it with two chunks).
inline std::vector<int64_t> chunk_bounds(const std::vector<TileRange>& tiles, int64_t pairs, int64_t chunks) {
  std::vector<int64_t> bounds((size_t)chunks + 1, (int64_t)tiles.size());
  bounds[0] = 0;
  int64_t c = 1, seen = 0;
  for (size_t I = 0; I < tiles.size() && c < chunks; ++I) {
    seen += tiles[I].count();
    while (c < chunks && seen * chunks >= pairs * c) bounds[(size_t)c++] = (int64_t)I + 1;
  }
  return bounds;
}

// Chunks of query tiles per (b, h) in the backward: the fewest that give every thread the
// same number of units (B·H·chunks a multiple of the thread count), so two heads on two
// threads need no partial dK/dV buffers at all.
inline int64_t backward_chunks(const Geo& g) {
  const int64_t T = get_num_threads(), BH = std::max<int64_t>(g.BH(), 1);
  const int64_t c = T / std::gcd(BH, T);
  return std::max<int64_t>(1, std::min<int64_t>(c, g.nI));
}

// One backward unit u = (head bh, chunk c of query tiles [bounds[c], bounds[c + 1])): a unit
// owns its rows of dQ (dq: BH × n_pad × dp) and its partial dK/dV rows (dk_part: chunks × BH ×
// m_pad × dp, dv_part the same with ep). It zeroes its dQ rows, then per key tile J runs
// pair(I, J) for the query tiles that visit J, accumulating into dQ and dkacc/dvacc (kBc × dp,
// kBc × ep), and stores those as J's partial rows; J's rows are zeros when no query tile of the
// chunk visits J or all its keys are padded. So none of the three buffers needs a zero fill.
template <class T, class Pair>
void backward_unit(const Geo& g, const std::vector<TileRange>& tiles, const std::vector<int64_t>& bounds, int64_t chunks,
                   int64_t u, const KeyMask<T>& km, T* dq, T* dk_part, T* dv_part, std::vector<T>& dkacc,
                   std::vector<T>& dvacc, Pair pair) {
  const int64_t dp = g.dp, ep = g.ep, nJ = g.nJ, BH = g.BH();
  const int64_t bh = u / chunks, c = u % chunks, b = bh / g.H;
  const int64_t I0 = bounds[(size_t)c], I1 = bounds[(size_t)c + 1];
  T* dkp = dk_part + (c * BH + bh) * g.m_pad * dp;
  T* dvp = dv_part + (c * BH + bh) * g.m_pad * ep;
  std::fill(dq + (bh * g.n_pad + I0 * kBr) * dp, dq + (bh * g.n_pad + I1 * kBr) * dp, T(0));
  TileRange js{nJ, -1};  // the key tiles some query tile of the chunk visits
  for (int64_t I = I0; I < I1; ++I)
    if (tiles[(size_t)I].count() > 0) js = {std::min(js.lo, tiles[(size_t)I].lo), std::max(js.hi, tiles[(size_t)I].hi)};
  for (int64_t J = 0; J < nJ; ++J) {
    T* dkJ = dkp + J * kBc * dp;
    T* dvJ = dvp + J * kBc * ep;
    if (J < js.lo || J > js.hi || km.status[b * nJ + J] == kTileMasked) {
      std::fill(dkJ, dkJ + kBc * dp, T(0));
      std::fill(dvJ, dvJ + kBc * ep, T(0));
      continue;
    }
    std::fill(dkacc.begin(), dkacc.end(), T(0));
    std::fill(dvacc.begin(), dvacc.end(), T(0));
    for (int64_t I = I0; I < I1; ++I)
      if (tiles[(size_t)I].lo <= J && J <= tiles[(size_t)I].hi) pair(bh, I, J);
    std::copy(dkacc.begin(), dkacc.end(), dkJ);
    std::copy(dvacc.begin(), dvacc.end(), dvJ);
  }
}

// Errors name the op and every operand involved.
inline void check_qk(const char* op, const Tensor& q, const Tensor& k, const Tensor& mask) {
  if (!q.defined() || !k.defined()) throw ShapeError(std::string(op) + ": q and k must be defined");
  if (q.dim() != 4 || k.dim() != 4)
    throw_shape(op, "q and k must be 4-d: q (B, H, n, d), k (B, H, m, d)", {{"q", &q}, {"k", &k}});
  if (!is_floating(q.dtype()) || q.dtype() != k.dtype())
    throw_dtype(op, "q and k must share one float dtype (f32 or f64)", {{"q", &q}, {"k", &k}});
  if (q.size(0) != k.size(0) || q.size(1) != k.size(1) || q.size(3) != k.size(3))
    throw_shape(op, "need q (B, H, n, d) and k (B, H, m, d) with the same B, H and d", {{"q", &q}, {"k", &k}});
  if (mask.defined()) {
    if (mask.dtype() != kBool)
      throw_dtype(op, "key_padding_mask must be bool (true = padded key)", {{"q", &q}, {"k", &k}, {"key_padding_mask", &mask}});
    if (mask.dim() != 2 || mask.size(0) != k.size(0) || mask.size(1) != k.size(2))
      throw_shape(op, "key_padding_mask must be (B, m) for k (B, H, m, d)", {{"k", &k}, {"key_padding_mask", &mask}});
  }
}

inline void check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) {
  if (!v.defined()) throw ShapeError(std::string(op) + ": q, k and v must be defined");
  check_qk(op, q, k, mask);
  if (v.dim() != 4 || v.size(0) != k.size(0) || v.size(1) != k.size(1) || v.size(2) != k.size(2))
    throw_shape(op, "need q (B, H, n, d), k (B, H, m, d) and v (B, H, m, e): v's B, H, m differ from k's",
                {{"q", &q}, {"k", &k}, {"v", &v}});
  if (v.dtype() != q.dtype())
    throw_dtype(op, "q, k and v must share one float dtype (f32 or f64)", {{"q", &q}, {"k", &k}, {"v", &v}});
}

}  // namespace lotgrad::detail::tiles
