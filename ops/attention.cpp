// Fused softmax attention. Layout of the work:
//  - inputs are packed once per call into tile-friendly buffers (q scaled and row-padded,
//    each key tile of k transposed, v row-padded), so any input strides are accepted;
//  - two hand-written micro-kernels do all the tile products (no BLAS: the parallel loop is
//    outside): tile_scores (A · Bt, vectorised along keys) and tile_accum (out += A · B,
//    vectorised along d, A read with any strides so Pᵀ and dSᵀ need no transposes);
//  - forward: parallel over (b, h, query tile), online softmax over key tiles;
//  - backward: D = rowsum(dO ∘ O), then per (b, h, chunk of query tiles), for each key tile,
//    recompute P from the saved log-sum-exp and accumulate dV, dQ, dK (see below for how
//    dK/dV avoid races);
//  - the band (causal, sliding window): each query tile visits only the key tiles that hold a
//    key of its rows' bands; of those, only the ones the band's edge crosses are masked
//    element by element (see "the band" below).
#include "attention.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"
#include "elementwise.h"
#include "matmul.h"
#include "softmax.h"

namespace lotgrad {

namespace {

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
    return __builtin_shuffle(v, VI{(I)((L + S) % W)...});
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
      for (int v = 0; v < DV; ++v) bv[v] = S::load(b + j * ldb + v * W);
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

// The same over dv vectors per row, in column chunks of at most 4 vectors.
template <class T>
void tile_accum(const T* a, int64_t ars, int64_t acs, int rows, int kred, const T* b, int64_t ldb, T* out,
                int64_t ldo, int dv) {
  constexpr int W = Simd<T>::W;
  for (int c = 0; c < dv; c += 4) {
    const T* bc = b + c * W;
    T* oc = out + c * W;
    switch (std::min(4, dv - c)) {
      case 1: tile_accum_block<T, 1>(a, ars, acs, rows, kred, bc, ldb, oc, ldo); break;
      case 2: tile_accum_block<T, 2>(a, ars, acs, rows, kred, bc, ldb, oc, ldo); break;
      case 3: tile_accum_block<T, 3>(a, ars, acs, rows, kred, bc, ldb, oc, ldo); break;
      default: tile_accum_block<T, 4>(a, ars, acs, rows, kred, bc, ldb, oc, ldo); break;
    }
  }
}

// ---- geometry, packing, masks -----------------------------------------------------------

// The band: query i sees key j iff i - before <= j <= i + after. kNoLimit is no limit on that
// side, small enough that adding an index cannot overflow.
constexpr int64_t kNoLimit = int64_t(1) << 60;
struct Band {
  int64_t before = kNoLimit, after = kNoLimit;
};

// Sizes of one call. Rows are padded to whole tiles and the head dim to whole vectors; the
// padding is zero (packed buffers are zero-initialised) and padded keys are masked.
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
void run_jobs(const std::vector<Job>& jobs, int64_t grain) {
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
int64_t row_grain(const Geo& g) { return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>({g.d, g.e, 1})); }

// dst (BH, rows_pad, wp) ← src (B, H, rows, w) (any strides) · mul; one item per row. The width
// is g.d (q, k) or g.e (v, dO), padded to g.dp or g.ep.
template <class T>
Job pack_rows(const Tensor& src, const Geo& g, int64_t rows, int64_t rows_pad, int64_t w, int64_t wp, T mul, T* dst) {
  const T* s0 = src.data_ptr<T>();
  const Shape st = src.strides();
  const int64_t d = w, dp = wp, H = g.H;
  return {g.BH() * rows, [=](int64_t r) {
            const int64_t bh = r / rows, i = r % rows;
            const T* s = s0 + (bh / H) * st[0] + (bh % H) * st[1] + i * st[2];
            T* o = dst + (bh * rows_pad + i) * dp;
            if (st[3] == 1)
              for (int64_t c = 0; c < d; ++c) o[c] = s[c] * mul;
            else
              for (int64_t c = 0; c < d; ++c) o[c] = s[c * st[3]] * mul;
          }};
}

// dst (BH, nJ, w, kBc) ← src (B, H, m, w): every key tile stored transposed, so score tiles
// can be built with loads along the keys. One item per tile.
template <class T>
Job pack_tiles_t(const Tensor& src, const Geo& g, int64_t w, T* dst) {
  const T* s0 = src.data_ptr<T>();
  const Shape st = src.strides();
  const int64_t d = w, H = g.H, m = g.m, nJ = g.nJ;
  return {g.BH() * nJ, [=](int64_t u) {
            const int64_t bh = u / nJ, J = u % nJ;
            T* o = dst + u * d * kBc;
            for (int64_t c = 0; c < kBc && J * kBc + c < m; ++c) {
              const T* s = s0 + (bh / H) * st[0] + (bh % H) * st[1] + (J * kBc + c) * st[2];
              for (int64_t k = 0; k < d; ++k) o[k * kBc + c] = s[k * st[3]];
            }
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

TileRange key_tiles(const Geo& g, int64_t I) {
  const int64_t r0 = I * kBr, r1 = std::min(g.n, r0 + kBr) - 1;
  const int64_t j0 = std::max<int64_t>(0, r0 - g.band.before), j1 = std::min(g.m - 1, r1 + g.band.after);
  if (j0 > j1) return {};
  return {j0 / kBc, j1 / kBc};
}

// Every (real query, real key) pair of tile (I, J) is inside the band.
bool tile_inside_band(const Geo& g, int64_t I, int64_t J) {
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
std::vector<TileRange> all_key_tiles(const Geo& g, int64_t& pairs) {
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
int64_t unit_grain(int64_t unit_work) { return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(unit_work, 1)); }

// =======================================================================================
// forward: per (b, h, query tile), online softmax over the key tiles of its band. Units run
// from the last query tile to the first: with a causal band the last tiles visit the most
// key tiles, and starting them first leaves the short ones to even out the end.
// =======================================================================================
// One key tile of the online softmax, row by row: adds the padding bias (when given), turns
// the scores s (kBr × kBc) into weights 2^(s - running max) in place, and rescales the row's
// sum l and accumulator acc (kBr × dp) where its running max mx moved.
template <class T>
void online_softmax_tile(T* s, const T* bias, T* mx, T* l, T* acc, int64_t dp) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  constexpr T kInf = std::numeric_limits<T>::infinity();
  for (int i = 0; i < kBr; ++i) {
    T* sr = s + i * kBc;
    if (bias)
      for (int c = 0; c < kBc; c += W) S::store(sr + c, S::load(sr + c) + S::load(bias + c));
    V vm = S::load(sr);
    for (int c = W; c < kBc; c += W) vm = S::vmax(vm, S::load(sr + c));
    const T m_new = std::max(mx[i], S::hmax(vm));
    if (m_new == -kInf) {  // no unmasked key yet: weights 0 (avoids -inf - -inf)
      std::fill(sr, sr + kBc, T(0));
      continue;
    }
    const V shift = S::set1(m_new);
    V sum = V{};
    for (int c = 0; c < kBc; c += W) {
      const V p = S::exp2(S::load(sr + c) - shift);
      S::store(sr + c, p);
      sum += p;
    }
    const T corr = m_new == mx[i] ? T(1) : std::exp2(mx[i] - m_new);  // 0 when mx was -inf
    l[i] = l[i] * corr + S::hsum(sum);
    mx[i] = m_new;
    if (corr != T(1)) {
      T* ar = acc + i * dp;
      for (int64_t c = 0; c < dp; c += W) S::store(ar + c, S::load(ar + c) * corr);
    }
  }
}

template <class T>
void attention_forward(const Geo& g, const T* qs, const T* kt, const T* vr, const KeyMask<T>& km, T* out,
                       T* lse) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  const int64_t dp = g.dp, d = g.d, ep = g.ep, e = g.e, nI = g.nI, nJ = g.nJ;
  struct Scratch {
    std::vector<T> s, acc, mx, l;
  };
  auto make = [&] { return Scratch{std::vector<T>((size_t)kBr * kBc), std::vector<T>((size_t)(kBr * ep)), std::vector<T>(kBr), std::vector<T>(kBr)}; };
  int64_t pairs = 0;
  const std::vector<TileRange> tiles = all_key_tiles(g, pairs);
  const int64_t unit_work = (pairs / std::max<int64_t>(nI, 1) + 1) * kBr * kBc * std::max<int64_t>(d + e, 1);
  for_each_unit(g.BH() * nI, unit_grain(unit_work), make, [&](int64_t u, Scratch& sc) {
    const int64_t bh = u % g.BH(), I = nI - 1 - u / g.BH(), b = bh / g.H;
    const T* qI = qs + (bh * g.n_pad + I * kBr) * dp;
    std::fill(sc.acc.begin(), sc.acc.end(), T(0));
    std::fill(sc.mx.begin(), sc.mx.end(), -kInf);
    std::fill(sc.l.begin(), sc.l.end(), T(0));
    for (int64_t J = tiles[(size_t)I].lo; J <= tiles[(size_t)I].hi; ++J) {
      const uint8_t st = km.status[b * nJ + J];
      if (st == kTileMasked) continue;
      tile_scores<T>(qI, dp, kt + (bh * nJ + J) * d * kBc, (int)d, sc.s.data());  // S = Qs Kᵀ
      if (!tile_inside_band(g, I, J)) mask_band(g, I, J, sc.s.data());
      const T* bias = st == kTilePartial ? km.bias.data() + b * g.m_pad + J * kBc : nullptr;
      online_softmax_tile<T>(sc.s.data(), bias, sc.mx.data(), sc.l.data(), sc.acc.data(), ep);
      // acc += P V_J
      tile_accum<T>(sc.s.data(), kBc, 1, kBr, kBc, vr + (bh * g.m_pad + J * kBc) * ep, ep, sc.acc.data(), ep, (int)g.ev);
    }
    for (int i = 0; i < kBr; ++i) {
      const int64_t row = I * kBr + i;
      const bool live = sc.l[i] > T(0);
      if (lse) lse[bh * g.n_pad + row] = live ? sc.mx[i] + std::log2(sc.l[i]) : kInf;  // +inf: weights 0 in backward
      if (row >= g.n) continue;
      T* o = out + (bh * g.n + row) * e;
      const T inv = live ? T(1) / sc.l[i] : T(0);
      const T* ar = sc.acc.data() + i * ep;
      for (int64_t c = 0; c < e; ++c) o[c] = ar[c] * inv;
    }
  });
}

// =======================================================================================
// backward by recomputation. Work unit: (b, h, chunk of query tiles). A unit owns the dQ
// rows of its chunk, and writes its dK/dV contributions to its own partial buffer; the
// partials are summed afterwards in chunk order (no atomics, deterministic).
// Why this design: the alternative that needs no partial buffers, a second pass parallel
// over key tiles for dK/dV, recomputes S, P and dP there again: 7 tile products per tile
// pair instead of 5 (+40% backward work). Here the number of chunks is the fewest that gives
// every thread the same number of units (backward_chunks), so when B·H is a multiple of the
// thread count (B=1, H=2 on 2 threads; LRA batches) each head is one unit: no partials and
// no reduction at all; otherwise the partials cost O(chunks · m · d) memory and one pass.
// With a band, a unit visits only its query tiles' key tiles, and chunks hold equal numbers
// of tile pairs (chunk_bounds), not equal numbers of query tiles.
// =======================================================================================
// What the backward reads and writes: packed inputs (see fused_backward) and dQ.
template <class T>
struct BackwardArgs {
  const T *qs, *kt, *kr, *vt, *dor, *D, *lse;
  const KeyMask<T>* km;
  T* dq;
};
template <class T>
struct BackwardScratch {
  std::vector<T> p, ds, dkacc, dvacc;  // (kBr × kBc) twice, (kBc × dp), (kBc × ep)
};

// One tile pair (query tile I, key tile J) of head bh: recompute P, then accumulate
// dV_J += Pᵀ dO_I, dQ_I += dS K_J, dK_J += dSᵀ Qs_I into dQ and the scratch's dK/dV tiles.
template <class T>
void backward_tile_pair(const Geo& g, const BackwardArgs<T>& a, int64_t bh, int64_t I, int64_t J,
                        BackwardScratch<T>& sc) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  const int64_t dp = g.dp, d = g.d, ep = g.ep, e = g.e, nJ = g.nJ, b = bh / g.H;
  const int dv = (int)g.dv;
  const bool partial = a.km->status[b * nJ + J] == kTilePartial;
  const T* bias = a.km->bias.data() + b * g.m_pad + J * kBc;
  const int64_t r0 = bh * g.n_pad + I * kBr;
  const T* qI = a.qs + r0 * dp;
  const T* doI = a.dor + r0 * ep;
  T* p = sc.p.data();
  T* ds = sc.ds.data();
  tile_scores<T>(qI, dp, a.kt + (bh * nJ + J) * d * kBc, (int)d, p);  // S = Qs Kᵀ
  if (!tile_inside_band(g, I, J)) mask_band(g, I, J, p);
  for (int i = 0; i < kBr; ++i) {  // P = exp(S + bias - lse)
    T* pr = p + i * kBc;
    const V sh = S::set1(a.lse[r0 + i]);
    if (partial)
      for (int cc = 0; cc < kBc; cc += W) S::store(pr + cc, S::exp2(S::load(pr + cc) + S::load(bias + cc) - sh));
    else
      for (int cc = 0; cc < kBc; cc += W) S::store(pr + cc, S::exp2(S::load(pr + cc) - sh));
  }
  // dV_J += Pᵀ dO_I
  tile_accum<T>(p, 1, kBc, kBc, kBr, doI, ep, sc.dvacc.data(), ep, (int)g.ev);
  // dP = dO_I Vᵀ_J, then dS = P ∘ (dP − D)
  tile_scores<T>(doI, ep, a.vt + (bh * nJ + J) * e * kBc, (int)e, ds);
  for (int i = 0; i < kBr; ++i) {
    T* dr = ds + i * kBc;
    const T* pr = p + i * kBc;
    const V Di = S::set1(a.D[r0 + i]);
    for (int cc = 0; cc < kBc; cc += W) S::store(dr + cc, S::load(pr + cc) * (S::load(dr + cc) - Di));
  }
  // dQ_I += dS K_J (scaled at the end); dK_J += dSᵀ Qs_I (Qs carries the scale)
  tile_accum<T>(ds, kBc, 1, kBr, kBc, a.kr + (bh * g.m_pad + J * kBc) * dp, dp, a.dq + r0 * dp, dp, dv);
  tile_accum<T>(ds, 1, kBc, kBc, kBr, qI, dp, sc.dkacc.data(), dp, dv);
}

// Chunk c of each head covers query tiles [bounds[c], bounds[c + 1]), cut where the running
// count of tile pairs passes c/chunks of the head's total: with a causal band the last query
// tiles visit the most key tiles, and equal numbers of query tiles per chunk would leave the
// last chunk with most of the work (3/4 of it with two chunks).
std::vector<int64_t> chunk_bounds(const std::vector<TileRange>& tiles, int64_t pairs, int64_t chunks) {
  std::vector<int64_t> bounds((size_t)chunks + 1, (int64_t)tiles.size());
  bounds[0] = 0;
  int64_t c = 1, seen = 0;
  for (size_t I = 0; I < tiles.size() && c < chunks; ++I) {
    seen += tiles[I].count();
    while (c < chunks && seen * chunks >= pairs * c) bounds[(size_t)c++] = (int64_t)I + 1;
  }
  return bounds;
}

template <class T>
void attention_backward(const Geo& g, int64_t chunks, const BackwardArgs<T>& a, T* dk_part, T* dv_part) {
  const int64_t dp = g.dp, ep = g.ep, nJ = g.nJ, BH = g.BH();
  int64_t pairs = 0;
  const std::vector<TileRange> tiles = all_key_tiles(g, pairs);
  const std::vector<int64_t> bounds = chunk_bounds(tiles, pairs, chunks);
  const int64_t unit_work = (pairs / chunks + 1) * kBr * kBc * std::max<int64_t>(g.d + g.e, 1) * 2;
  auto make = [&] {
    return BackwardScratch<T>{std::vector<T>((size_t)kBr * kBc), std::vector<T>((size_t)kBr * kBc),
                              std::vector<T>((size_t)(kBc * dp)), std::vector<T>((size_t)(kBc * ep))};
  };
  for_each_unit(BH * chunks, unit_grain(unit_work), make, [&](int64_t u, BackwardScratch<T>& sc) {
    const int64_t bh = u / chunks, c = u % chunks, b = bh / g.H;
    const int64_t I0 = bounds[(size_t)c], I1 = bounds[(size_t)c + 1];
    T* dkp = dk_part + (c * BH + bh) * g.m_pad * dp;
    T* dvp = dv_part + (c * BH + bh) * g.m_pad * ep;
    // The key tiles some query tile of the chunk visits; the partial rows of the others stay zero.
    TileRange js{nJ, -1};
    for (int64_t I = I0; I < I1; ++I)
      if (tiles[(size_t)I].count() > 0) js = {std::min(js.lo, tiles[(size_t)I].lo), std::max(js.hi, tiles[(size_t)I].hi)};
    for (int64_t J = js.lo; J <= js.hi; ++J) {
      if (a.km->status[b * nJ + J] == kTileMasked) continue;
      std::fill(sc.dkacc.begin(), sc.dkacc.end(), T(0));
      std::fill(sc.dvacc.begin(), sc.dvacc.end(), T(0));
      for (int64_t I = I0; I < I1; ++I)
        if (tiles[(size_t)I].lo <= J && J <= tiles[(size_t)I].hi) backward_tile_pair(g, a, bh, I, J, sc);
      std::copy(sc.dkacc.begin(), sc.dkacc.end(), dkp + J * kBc * dp);
      std::copy(sc.dvacc.begin(), sc.dvacc.end(), dvp + J * kBc * ep);
    }
  });
}

// ---- drivers (Tensor in, Tensor out; scratch is tensor storage so benchmarks see it) ----

// Returns out (B, H, n, d) and, if want_lse, lse (B, H, n_pad).
template <class T>
std::pair<Tensor, Tensor> fused_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                        Band band, double scale, bool want_lse) {
  const Geo g = make_geo<T>(q, k, v, band);
  const DType dt = dtype_of<T>::value;
  Tensor qs = make_tensor({g.BH(), g.n_pad, g.dp}, dt);
  Tensor kt = make_tensor({g.BH(), g.nJ, g.d, kBc}, dt);
  Tensor vr = make_tensor({g.BH(), g.m_pad, g.ep}, dt);
  run_jobs({pack_rows<T>(q, g, g.n, g.n_pad, g.d, g.dp, (T)(scale * kLog2e), qs.data_ptr<T>()),
            pack_tiles_t<T>(k, g, g.d, kt.data_ptr<T>()),
            pack_rows<T>(v, g, g.m, g.m_pad, g.e, g.ep, T(1), vr.data_ptr<T>())},
           row_grain(g));
  const KeyMask<T> km = make_key_mask<T>(mask, g);
  Tensor out = make_tensor({g.B, g.H, g.n, g.e}, dt);
  Tensor lse = make_tensor({g.B, g.H, g.n_pad}, dt);
  attention_forward<T>(g, qs.data_ptr<T>(), kt.data_ptr<T>(), vr.data_ptr<T>(), km, out.data_ptr<T>(),
                       lse.data_ptr<T>());
  return {out, want_lse ? lse : Tensor()};
}

// Chunks of query tiles per (b, h) in the backward: the fewest that give every thread the
// same number of units (B·H·chunks a multiple of the thread count), so two heads on two
// threads need no partial dK/dV buffers at all.
int64_t backward_chunks(const Geo& g) {
  const int64_t T = get_num_threads(), BH = std::max<int64_t>(g.BH(), 1);
  const int64_t c = T / std::gcd(BH, T);
  return std::max<int64_t>(1, std::min<int64_t>(c, g.nI));
}

template <class T>
std::array<Tensor, 3> fused_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, Band band,
                                     double scale, const Tensor& out, const Tensor& lse, const Tensor& dout) {
  const Geo g = make_geo<T>(q, k, v, band);
  const DType dt = dtype_of<T>::value;
  const int64_t chunks = backward_chunks(g);
  Tensor qs = make_tensor({g.BH(), g.n_pad, g.dp}, dt);
  Tensor kt = make_tensor({g.BH(), g.nJ, g.d, kBc}, dt);
  Tensor kr = make_tensor({g.BH(), g.m_pad, g.dp}, dt);
  Tensor vt = make_tensor({g.BH(), g.nJ, g.e, kBc}, dt);
  Tensor dor = make_tensor({g.BH(), g.n_pad, g.ep}, dt);
  // D_i = rowsum(dO ∘ O)_i  (= rowsum(dP ∘ P)_i); padded rows stay 0.
  Tensor Dt = make_tensor({g.BH(), g.n_pad}, dt);
  Job djob;
  {
    T* D = Dt.data_ptr<T>();
    const T* o = out.data_ptr<T>();
    const T* d0 = dout.data_ptr<T>();
    const Shape st = dout.strides();
    const int64_t n = g.n, d = g.e, H = g.H, n_pad = g.n_pad;
    djob = {g.BH() * n, [=](int64_t r) {
              const int64_t bh = r / n, i = r % n;
              const T* orow = o + r * d;
              const T* drow = d0 + (bh / H) * st[0] + (bh % H) * st[1] + i * st[2];
              T s = 0;
              for (int64_t c = 0; c < d; ++c) s += orow[c] * drow[c * st[3]];
              D[bh * n_pad + i] = s;
            }};
  }
  run_jobs({pack_rows<T>(q, g, g.n, g.n_pad, g.d, g.dp, (T)(scale * kLog2e), qs.data_ptr<T>()),
            pack_tiles_t<T>(k, g, g.d, kt.data_ptr<T>()), pack_rows<T>(k, g, g.m, g.m_pad, g.d, g.dp, T(1), kr.data_ptr<T>()),
            pack_tiles_t<T>(v, g, g.e, vt.data_ptr<T>()),
            pack_rows<T>(dout, g, g.n, g.n_pad, g.e, g.ep, T(1), dor.data_ptr<T>()), djob},
           row_grain(g));
  const KeyMask<T> km = make_key_mask<T>(mask, g);
  Tensor dqp = make_tensor({g.BH(), g.n_pad, g.dp}, dt);
  Tensor dkp = make_tensor({chunks, g.BH(), g.m_pad, g.dp}, dt);
  Tensor dvp = make_tensor({chunks, g.BH(), g.m_pad, g.ep}, dt);
  const BackwardArgs<T> args{qs.data_ptr<T>(), kt.data_ptr<T>(),  kr.data_ptr<T>(),  vt.data_ptr<T>(), dor.data_ptr<T>(),
                             Dt.data_ptr<T>(), lse.data_ptr<T>(), &km, dqp.data_ptr<T>()};
  attention_backward<T>(g, chunks, args, dkp.data_ptr<T>(), dvp.data_ptr<T>());
  Tensor dq = make_tensor({g.B, g.H, g.n, g.d}, dt);
  Tensor dk = make_tensor({g.B, g.H, g.m, g.d}, dt);
  Tensor dv = make_tensor({g.B, g.H, g.m, g.e}, dt);
  run_jobs({unpack_rows<T>(dqp.data_ptr<T>(), 1, g, g.n, g.n_pad, g.d, g.dp, (T)scale, dq.data_ptr<T>()),
            unpack_rows<T>(dkp.data_ptr<T>(), chunks, g, g.m, g.m_pad, g.d, g.dp, (T)kLn2, dk.data_ptr<T>()),
            unpack_rows<T>(dvp.data_ptr<T>(), chunks, g, g.m, g.m_pad, g.e, g.ep, T(1), dv.data_ptr<T>())},
           std::max<int64_t>(1, row_grain(g) / chunks));
  return {dq, dk, dv};
}

struct FusedAttentionBackward : Node {
  SavedTensor q, k, v, mask, out, lse;
  Band band;
  double scale = 1.0;
  const char* name() const override { return "FusedAttentionBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor qq = q.unpack(this), kk = k.unpack(this), vv = v.unpack(this);
    const Tensor mm = mask.defined() ? mask.unpack(this) : Tensor();
    const Tensor oo = out.unpack(this), ll = lse.unpack(this);
    std::array<Tensor, 3> g = dispatch_float(qq.dtype(), name(), [&]<class T>() {
      return fused_backward<T>(qq, kk, vv, mm, band, scale, oo, ll, grads[0]);
    });
    return {needs_grad(0) ? g[0] : Tensor(), needs_grad(1) ? g[1] : Tensor(), needs_grad(2) ? g[2] : Tensor()};
  }
  void release() override {
    q.reset();
    k.reset();
    v.reset();
    mask.reset();
    out.reset();
    lse.reset();
  }
};

// Errors name the op and every operand involved.
void check_qk(const char* op, const Tensor& q, const Tensor& k, const Tensor& mask) {
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

void check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) {
  if (!v.defined()) throw ShapeError(std::string(op) + ": q, k and v must be defined");
  check_qk(op, q, k, mask);
  if (v.dim() != 4 || v.size(0) != k.size(0) || v.size(1) != k.size(1) || v.size(2) != k.size(2))
    throw_shape(op, "need q (B, H, n, d), k (B, H, m, d) and v (B, H, m, e): v's B, H, m differ from k's",
                {{"q", &q}, {"k", &k}, {"v", &v}});
  if (v.dtype() != q.dtype())
    throw_dtype(op, "q, k and v must share one float dtype (f32 or f64)", {{"q", &q}, {"k", &k}, {"v", &v}});
}

double default_scale(double scale, const Tensor& q) {
  if (!std::isnan(scale)) return scale;
  return q.size(3) > 0 ? 1.0 / std::sqrt((double)q.size(3)) : 1.0;
}

Band causal_band(bool is_causal) { return is_causal ? Band{kNoLimit, 0} : Band{}; }
Band window_band(int64_t window, bool is_causal) {
  const int64_t reach = std::min(window - 1, kNoLimit);
  return {reach, is_causal ? 0 : reach};
}

Tensor fused_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, Band band,
                       double scale) {
  auto node = make_node<FusedAttentionBackward>({q, k, v});
  auto [out, lse] = dispatch_float(q.dtype(), op, [&]<class T>() {
    return fused_forward<T>(q, k, v, mask, band, scale, node != nullptr);
  });
  if (node) {
    node->q = save(q);
    node->k = save(k);
    node->v = save(v);
    if (mask.defined()) node->mask = save(mask);
    node->out = save(out);
    node->lse = save(lse);
    node->band = band;
    node->scale = scale;
    set_history(out, node);
  }
  return out;
}

// The composite's weights (B, H, n, m): scores q kᵀ · scale, padded keys and keys outside the
// band at -inf, softmax. A row with no key left would be softmax(-inf, ..., -inf) = NaN: its
// mask is lifted before the softmax and its weights are zeroed after it (masked_fill passes
// no gradient where it fills), so it outputs zeros and passes zero gradient.
Tensor reference_weights(const Tensor& q, const Tensor& k, const Tensor& mask, Band band, double scale) {
  Tensor s = mul(matmul(q, k.transpose(-2, -1)), scale);  // (B, H, n, m)
  if (!mask.defined() && band.before == kNoLimit && band.after == kNoLimit) return softmax(s, -1);
  const int64_t B = q.size(0), n = q.size(2), m = k.size(2);
  const std::vector<double> mv = mask.defined() ? mask.to_vector() : std::vector<double>((size_t)(B * m), 0.0);
  std::vector<bool> off((size_t)(B * n * m)), dead((size_t)(B * n));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < n; ++i) {
      const size_t row = (size_t)((b * n + i) * m);
      bool any = false;
      for (int64_t j = 0; j < m; ++j) {
        const bool o = mv[(size_t)(b * m + j)] != 0.0 || j < i - band.before || j > i + band.after;
        off[row + (size_t)j] = o;
        any = any || !o;
      }
      dead[(size_t)(b * n + i)] = !any;
      if (!any) std::fill(off.begin() + (ptrdiff_t)row, off.begin() + (ptrdiff_t)(row + (size_t)m), false);
    }
  s = masked_fill(s, Tensor::from_vector(off, {B, 1, n, m}), -std::numeric_limits<double>::infinity());
  return masked_fill(softmax(s, -1), Tensor::from_vector(dead, {B, 1, n, 1}), 0.0);
}

Tensor attend(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, Band band,
              double scale, bool fused) {
  check_inputs(op, q, k, v, mask);
  scale = default_scale(scale, q);
  if (fused) return fused_attention(op, q, k, v, mask, band, scale);
  return matmul(reference_weights(q, k, mask, band, scale), v);
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_padding_mask,
                                    bool is_causal, double scale, bool fused) {
  return attend("scaled_dot_product_attention", q, k, v, key_padding_mask, causal_band(is_causal), scale, fused);
}

Tensor sliding_window_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t window, bool is_causal,
                                const Tensor& key_padding_mask, double scale, bool fused) {
  if (window < 1)
    throw std::invalid_argument("sliding_window_attention: window must be >= 1, got " + std::to_string(window));
  return attend("sliding_window_attention", q, k, v, key_padding_mask, window_band(window, is_causal), scale, fused);
}

Tensor attention_weights(const Tensor& q, const Tensor& k, const Tensor& key_padding_mask, bool is_causal,
                         int64_t window, double scale) {
  const char* op = "attention_weights";
  if (window < 0)
    throw std::invalid_argument(std::string(op) + ": window must be >= 1, or 0 for none, got " + std::to_string(window));
  check_qk(op, q, k, key_padding_mask);
  const Band band = window == 0 ? causal_band(is_causal) : window_band(window, is_causal);
  return reference_weights(q, k, key_padding_mask, band, default_scale(scale, q));
}

}  // namespace lotgrad
