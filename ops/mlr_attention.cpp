// MLR attention (see mlr_attention.h): the dense reference and the fused tiled kernel.
//
// The kernel is the fused softmax kernel of ops/attention.cpp with other scores, built from
// the same blocks (attention_tiles.h): packing, the key mask, the causal band (key tiles above
// the diagonal are never visited), online softmax with one log-sum-exp per row, the recomputing
// backward in (b, h, chunk of query tiles) units with per-chunk dK/dV partials summed in order
// (deterministic for a fixed thread count). What differs is confined to three steps of a tile
// pair (query tile I, key tile J):
//  - scores (level_scores): the product over the first R_c dims, c the deepest level whose
//    block every position of I and J shares (the prefix trick: c_l is folded into q), then,
//    for each deeper level, its r_l dims on the rectangles of pairs that share a block there
//    (only tiles that straddle a level's block boundary have any);
//  - dQ_I += dS K_J and dK_J += dSᵀ Q_I (level_grads): the same dims. A score does not depend
//    on the dims of a level its pair does not share, so those dims receive nothing.
// Blocks are non-decreasing along positions, so the shared depth of a tile pair is read from
// the tiles' first and last positions, and the pairs sharing a deeper block are rectangles.
#include "mlr_attention.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "attention_tiles.h"
#include "elementwise.h"
#include "matmul.h"
#include "softmax.h"

namespace lotgrad {

namespace {

using namespace detail::tiles;

// One row of block ids serves query tiles and key tiles alike.
static_assert(kBr == kBc, "MLR tiles: query and key tiles must cover the same positions");

// =======================================================================================
// levels
// =======================================================================================
// The level layout of one call: the dims of each level and the block of every position.
struct Levels {
  int L = 0;
  std::vector<int64_t> off;  // level l holds dims [off[l], off[l + 1]); off[L] = d
  std::vector<double> col;   // (d): the scale c_l of each dim's level
  int64_t len = 0;           // positions per row of blk: n rounded up to whole tiles
  std::vector<int64_t> blk;  // (B, L, len): non-decreasing along positions; past n, position n-1's
  const int64_t* ids(int64_t b, int l) const { return blk.data() + (b * L + l) * len; }
};

// Position p of a token: the number of valid tokens before it (a pad takes the next valid
// token's, or the last one's when none follows). blk_l(p) = floor(p · 2^l / N), N as documented in mlr_attention.h.
Levels make_levels(const std::vector<int64_t>& ranks, const std::vector<double>& scales, const Tensor& mask, int64_t B,
                   int64_t n, bool causal, int64_t span) {
  Levels lv;
  lv.L = (int)ranks.size();
  lv.off.assign(ranks.size() + 1, 0);
  for (size_t l = 0; l < ranks.size(); ++l) {
    lv.off[l + 1] = lv.off[l] + ranks[l];
    lv.col.insert(lv.col.end(), (size_t)ranks[l], scales[l]);
  }
  lv.len = std::max<int64_t>(1, (n + kBr - 1) / kBr) * kBr;
  lv.blk.assign((size_t)(B * lv.L * lv.len), 0);
  const bool* mp = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  std::vector<int64_t> pos((size_t)n);
  for (int64_t b = 0; b < B; ++b) {
    int64_t valid = 0;
    for (int64_t i = 0; i < n; ++i) {
      pos[(size_t)i] = valid;
      if (!mp || !mp[b * mask.stride(0) + i * mask.stride(1)]) ++valid;
    }
    for (int64_t i = n - 1; i >= 0 && pos[(size_t)i] == valid; --i) pos[(size_t)i] = std::max<int64_t>(valid - 1, 0);  // trailing pads
    const int64_t N = span > 0 ? span : causal ? n : std::max<int64_t>(valid, 1);
    for (int l = 0; l < lv.L; ++l) {
      int64_t* id = lv.blk.data() + (b * lv.L + l) * lv.len;
      for (int64_t i = 0; i < n; ++i) id[i] = (pos[(size_t)i] << l) / N;
      for (int64_t i = n; i < lv.len; ++i) id[i] = n > 0 ? id[n - 1] : 0;
    }
  }
  return lv;
}

// The deepest level at which every position of query tile I and key tile J is in one block
// (-1: none). Blocks are non-decreasing, so the tiles' end positions decide, and levels nest,
// so the first level that fails ends the search.
int shared_depth(const Levels& lv, int64_t b, int64_t I, int64_t J) {
  int c = -1;
  for (int l = 0; l < lv.L; ++l) {
    const int64_t* id = lv.ids(b, l);
    const int64_t x = id[I * kBr];
    if (id[I * kBr + kBr - 1] != x || id[J * kBc] != x || id[J * kBc + kBc - 1] != x) break;
    c = l;
  }
  return c;
}

// Calls f(i0, i1, j0, j1) for every block that the rows ri[0, kBr) and the columns cj[0, kBc)
// (both non-decreasing) share: rows [i0, i1) and columns [j0, j1) are in it. Returns whether
// there was one.
template <class F>
bool for_each_shared_block(const int64_t* ri, const int64_t* cj, F f) {
  if (ri[kBr - 1] < cj[0] || cj[kBc - 1] < ri[0]) return false;  // the usual case: disjoint ranges
  bool any = false;
  int i = 0, j = 0;
  while (i < kBr && j < kBc) {
    if (ri[i] < cj[j]) {
      ++i;
    } else if (cj[j] < ri[i]) {
      ++j;
    } else {
      const int64_t x = ri[i];
      int i1 = i, j1 = j;
      while (i1 < kBr && ri[i1] == x) ++i1;
      while (j1 < kBc && cj[j1] == x) ++j1;
      f(i, i1, j, j1);
      any = true;
      i = i1;
      j = j1;
    }
  }
  return any;
}

// =======================================================================================
// the three level-aware steps of a tile pair
// =======================================================================================
// Scratch of the level steps, one per thread: a (kBr × kBc) tile and two slices of up to dp
// columns (kBc × dp, kBr × dp).
template <class T>
struct LevelScratch {
  std::vector<T> tile, slice, acc;
  explicit LevelScratch(int64_t dp)
      : tile((size_t)kBr * kBc), slice((size_t)(kBc * dp)), acc((size_t)(std::max(kBr, kBc) * dp)) {}
};

// A deeper level's blocks cut the tiles (they are shorter than a tile, or not aligned to one):
// its pairs are rectangles of the tile. Each such level costs one whole-tile product of its r
// dims, vectorised, of which only the rectangles are used: a scalar loop over the rectangles
// took as long as the rest of the tile pair (MLR at n = 256 ran slower than softmax).

// Scores s (kBr × kBc) of tile pair (I, J) of batch entry b: qI (kBr × dp, the folded scales
// and log2 e in it), ktJ (d × kBc, the key tile transposed).
template <class T>
void level_scores(const Levels& lv, int64_t b, int64_t I, int64_t J, const T* qI, int64_t dp, const T* ktJ, T* s,
                  LevelScratch<T>& ls) {
  const int c = shared_depth(lv, b, I, J);
  const int64_t R = lv.off[(size_t)(c + 1)];
  if (R > 0)
    tile_scores<T>(qI, dp, ktJ, (int)R, s);
  else
    std::fill(s, s + kBr * kBc, T(0));
  T* t = ls.tile.data();
  for (int l = c + 1; l < lv.L; ++l) {
    const int64_t o = lv.off[(size_t)l], r = lv.off[(size_t)l + 1] - o;
    bool scored = false;
    const bool any = for_each_shared_block(lv.ids(b, l) + I * kBr, lv.ids(b, l) + J * kBc, [&](int i0, int i1, int j0, int j1) {
      if (!scored) tile_scores<T>(qI + o, dp, ktJ + o * kBc, (int)r, t);  // the level's scores, whole tile
      scored = true;
      for (int i = i0; i < i1; ++i)
        for (int j = j0; j < j1; ++j) s[i * kBc + j] += t[i * kBc + j];
    });
    if (!any) break;  // levels nest: no deeper level is shared either
  }
}

// out[:, o:o+r) += A · b[:, o:o+r), A and b as in tile_accum (b: kred rows of stride ldb): the
// whole vectors from o = 0 straight, any other slice through copies of b's columns, zero-padded
// to whole vectors, and of the product, so that out's other dims receive exactly nothing.
template <class T>
void slice_accum(const T* a, int64_t ars, int64_t acs, int rows, int kred, const T* b, int64_t ldb, T* out,
                 int64_t ldo, int64_t o, int64_t r, LevelScratch<T>& ls) {
  constexpr int W = Simd<T>::W;
  if (o == 0 && r >= W) {
    const int nv = (int)(r / W);
    tile_accum<T>(a, ars, acs, rows, kred, b, ldb, out, ldo, nv);
    o = nv * W;
    r -= o;
  }
  if (r == 0) return;
  const int rv = (int)((r + W - 1) / W);
  const int64_t w = rv * W;
  T* sl = ls.slice.data();
  T* acc = ls.acc.data();
  for (int j = 0; j < kred; ++j)
    for (int64_t f = 0; f < w; ++f) sl[j * w + f] = f < r ? b[j * ldb + o + f] : T(0);
  std::fill(acc, acc + rows * w, T(0));
  tile_accum<T>(a, ars, acs, rows, kred, sl, w, acc, w, rv);
  for (int i = 0; i < rows; ++i)
    for (int64_t f = 0; f < r; ++f) out[i * ldo + o + f] += acc[i * w + f];
}

// dQ_I += dS K_J and dK_J += dSᵀ Qs_I over the dims each pair shares: ds (kBr × kBc), krJ
// (kBc × dp, key rows), qI (kBr × dp), dqI (kBr × dp), dkJ (kBc × dp).
template <class T>
void level_grads(const Levels& lv, int64_t b, int64_t I, int64_t J, const T* ds, const T* krJ, const T* qI, int64_t dp,
                 T* dqI, T* dkJ, LevelScratch<T>& ls) {
  const int c = shared_depth(lv, b, I, J);
  const int64_t R = lv.off[(size_t)(c + 1)];
  slice_accum<T>(ds, kBc, 1, kBr, kBc, krJ, dp, dqI, dp, 0, R, ls);
  slice_accum<T>(ds, 1, kBc, kBc, kBr, qI, dp, dkJ, dp, 0, R, ls);
  T* dsl = ls.tile.data();  // dS on the level's rectangles, zero elsewhere
  for (int l = c + 1; l < lv.L; ++l) {
    const int64_t o = lv.off[(size_t)l], r = lv.off[(size_t)l + 1] - o;
    bool cleared = false;
    const bool any = for_each_shared_block(lv.ids(b, l) + I * kBr, lv.ids(b, l) + J * kBc, [&](int i0, int i1, int j0, int j1) {
      if (!cleared) std::fill(dsl, dsl + kBr * kBc, T(0));
      cleared = true;
      for (int i = i0; i < i1; ++i) std::copy(ds + i * kBc + j0, ds + i * kBc + j1, dsl + i * kBc + j0);
    });
    if (!any) break;
    slice_accum<T>(dsl, kBc, 1, kBr, kBc, krJ, dp, dqI, dp, o, r, ls);
    slice_accum<T>(dsl, 1, kBc, kBc, kBr, qI, dp, dkJ, dp, o, r, ls);
  }
}

// =======================================================================================
// forward: per (b, h, query tile), online softmax over the key tiles of its band, last query
// tiles first (as attention_forward in ops/attention.cpp).
// =======================================================================================
template <class T>
void mlr_forward_tiles(const Geo& g, const Levels& lv, const T* qs, const T* kt, const T* vr, const KeyMask<T>& km,
                       T* out, T* lse) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  const int64_t dp = g.dp, d = g.d, ep = g.ep, e = g.e, nI = g.nI, nJ = g.nJ;
  struct Scratch {
    std::vector<T> s, acc, mx, l;
    LevelScratch<T> ls;
  };
  auto make = [&] {
    return Scratch{std::vector<T>((size_t)kBr * kBc), std::vector<T>((size_t)(kBr * ep)), std::vector<T>(kBr),
                   std::vector<T>(kBr), LevelScratch<T>(dp)};
  };
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
      level_scores<T>(lv, b, I, J, qI, dp, kt + (bh * nJ + J) * d * kBc, sc.s.data(), sc.ls);
      if (!tile_inside_band(g, I, J)) mask_band(g, I, J, sc.s.data());
      const T* bias = st == kTilePartial ? km.bias.data() + b * g.m_pad + J * kBc : nullptr;
      online_softmax_tile<T>(sc.s.data(), bias, sc.mx.data(), sc.l.data(), sc.acc.data(), ep);
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
// backward by recomputation, in (b, h, chunk of query tiles) units as attention_backward in
// ops/attention.cpp: a unit owns its rows of dQ and writes dK/dV to its own partial buffer.
// =======================================================================================
template <class T>
struct MlrBackwardArgs {
  const T *qs, *kt, *kr, *vt, *dor, *D, *lse;
  const KeyMask<T>* km;
  const Levels* lv;
  T* dq;
};
template <class T>
struct MlrBackwardScratch {
  std::vector<T> p, ds, dkacc, dvacc;  // (kBr × kBc) twice, (kBc × dp), (kBc × ep)
  LevelScratch<T> ls;
};

template <class T>
void mlr_backward_pair(const Geo& g, const MlrBackwardArgs<T>& a, int64_t bh, int64_t I, int64_t J,
                       MlrBackwardScratch<T>& sc) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int W = S::W;
  const int64_t dp = g.dp, d = g.d, ep = g.ep, e = g.e, nJ = g.nJ, b = bh / g.H;
  const bool partial = a.km->status[b * nJ + J] == kTilePartial;
  const T* bias = a.km->bias.data() + b * g.m_pad + J * kBc;
  const int64_t r0 = bh * g.n_pad + I * kBr;
  const T* qI = a.qs + r0 * dp;
  const T* doI = a.dor + r0 * ep;
  T* p = sc.p.data();
  T* ds = sc.ds.data();
  level_scores<T>(*a.lv, b, I, J, qI, dp, a.kt + (bh * nJ + J) * d * kBc, p, sc.ls);
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
  // dQ_I += dS K_J, dK_J += dSᵀ Qs_I over the shared levels' dims
  level_grads<T>(*a.lv, b, I, J, ds, a.kr + (bh * g.m_pad + J * kBc) * dp, qI, dp, a.dq + r0 * dp, sc.dkacc.data(), sc.ls);
}

template <class T>
void mlr_backward_tiles(const Geo& g, int64_t chunks, const MlrBackwardArgs<T>& a, T* dk_part, T* dv_part) {
  const int64_t dp = g.dp, ep = g.ep;
  int64_t pairs = 0;
  const std::vector<TileRange> tiles = all_key_tiles(g, pairs);
  const std::vector<int64_t> bounds = chunk_bounds(tiles, pairs, chunks);
  const int64_t unit_work = (pairs / chunks + 1) * kBr * kBc * std::max<int64_t>(g.d + g.e, 1) * 2;
  auto make = [&] {
    return MlrBackwardScratch<T>{std::vector<T>((size_t)kBr * kBc), std::vector<T>((size_t)kBr * kBc),
                                 std::vector<T>((size_t)(kBc * dp)), std::vector<T>((size_t)(kBc * ep)),
                                 LevelScratch<T>(dp)};
  };
  for_each_unit(g.BH() * chunks, unit_grain(unit_work), make, [&](int64_t u, MlrBackwardScratch<T>& sc) {
    backward_unit<T>(g, tiles, bounds, chunks, u, *a.km, a.dq, dk_part, dv_part, sc.dkacc, sc.dvacc,
                     [&](int64_t bh, int64_t I, int64_t J) { mlr_backward_pair(g, a, bh, I, J, sc); });
  });
}

// =======================================================================================
// drivers: the level scales and log2 e are folded into the packed q (pack_q).
// =======================================================================================
Band mlr_band(bool causal) { return causal ? Band{kNoLimit, 0} : Band{}; }

// The prefix trick's folding: packed q rows (BH, n_pad, dp) = q · c_(level of the dim) · log2 e.
template <class T>
Job pack_q(const Tensor& q, const Geo& g, const std::vector<double>& col, T* dst) {
  std::vector<T> mul(col.size());
  for (size_t c = 0; c < col.size(); ++c) mul[c] = (T)(col[c] * kLog2e);
  return pack_rows<T>(q, g, g.n, g.n_pad, g.d, g.dp, T(1), dst, std::move(mul));
}

// dq (B, H, n, d) contiguous = packed dS K rows · c_(level of the dim).
template <class T>
Job unpack_dq(const T* dqp, const Geo& g, const std::vector<double>& col, T* dq) {
  std::vector<T> mul(col.begin(), col.end());
  const int64_t n = g.n, n_pad = g.n_pad, d = g.d, dp = g.dp;
  return {g.BH() * n, [=](int64_t r) {
            const int64_t bh = r / n, i = r % n;
            const T* src = dqp + (bh * n_pad + i) * dp;
            T* o = dq + r * d;
            for (int64_t c = 0; c < d; ++c) o[c] = src[c] * mul[(size_t)c];
          }};
}

// Returns out (B, H, n, e) and, if want_lse, lse (B, H, n_pad).
template <class T>
std::pair<Tensor, Tensor> mlr_fused_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                            const Levels& lv, bool causal, bool want_lse) {
  const Geo g = make_geo<T>(q, k, v, mlr_band(causal));
  const DType dt = dtype_of<T>::value;
  Tensor qs = make_tensor({g.BH(), g.n_pad, g.dp}, dt);  // zero-filled on purpose: see fused_forward in ops/attention.cpp
  Tensor kt = make_tensor({g.BH(), g.nJ, g.d, kBc}, dt);
  Tensor vr = make_tensor({g.BH(), g.m_pad, g.ep}, dt);
  run_jobs({pack_q<T>(q, g, lv.col, qs.data_ptr<T>()),
            pack_tiles_t<T>(k, g, g.d, kt.data_ptr<T>()),
            pack_rows<T>(v, g, g.m, g.m_pad, g.e, g.ep, T(1), vr.data_ptr<T>())},
           row_grain(g));
  const KeyMask<T> km = make_key_mask<T>(mask, g);
  Tensor out = make_tensor_uninit({g.B, g.H, g.n, g.e}, dt);
  Tensor lse = make_tensor_uninit({g.B, g.H, g.n_pad}, dt);
  mlr_forward_tiles<T>(g, lv, qs.data_ptr<T>(), kt.data_ptr<T>(), vr.data_ptr<T>(), km, out.data_ptr<T>(),
                       lse.data_ptr<T>());
  return {out, want_lse ? lse : Tensor()};
}

template <class T>
std::array<Tensor, 3> mlr_fused_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                         const Levels& lv, bool causal, const Tensor& out, const Tensor& lse,
                                         const Tensor& dout) {
  const Geo g = make_geo<T>(q, k, v, mlr_band(causal));
  const DType dt = dtype_of<T>::value;
  const int64_t chunks = backward_chunks(g);
  Tensor qs = make_tensor_uninit({g.BH(), g.n_pad, g.dp}, dt);
  Tensor kt = make_tensor_uninit({g.BH(), g.nJ, g.d, kBc}, dt);
  Tensor kr = make_tensor_uninit({g.BH(), g.m_pad, g.dp}, dt);
  Tensor vt = make_tensor_uninit({g.BH(), g.nJ, g.e, kBc}, dt);
  Tensor dor = make_tensor_uninit({g.BH(), g.n_pad, g.ep}, dt);
  // D_i = rowsum(dO ∘ O)_i; padded rows stay 0.
  Tensor Dt = make_tensor({g.BH(), g.n_pad}, dt);
  Job djob;
  {
    T* D = Dt.data_ptr<T>();
    const T* o = out.data_ptr<T>();
    const T* d0 = dout.data_ptr<T>();
    const Shape st = dout.strides();
    const int64_t n = g.n, e = g.e, H = g.H, n_pad = g.n_pad;
    djob = {g.BH() * n, [=](int64_t r) {
              const int64_t bh = r / n, i = r % n;
              const T* orow = o + r * e;
              const T* drow = d0 + (bh / H) * st[0] + (bh % H) * st[1] + i * st[2];
              T s = 0;
              for (int64_t c = 0; c < e; ++c) s += orow[c] * drow[c * st[3]];
              D[bh * n_pad + i] = s;
            }};
  }
  run_jobs({pack_q<T>(q, g, lv.col, qs.data_ptr<T>()),
            pack_tiles_t<T>(k, g, g.d, kt.data_ptr<T>()), pack_rows<T>(k, g, g.m, g.m_pad, g.d, g.dp, T(1), kr.data_ptr<T>()),
            pack_tiles_t<T>(v, g, g.e, vt.data_ptr<T>()),
            pack_rows<T>(dout, g, g.n, g.n_pad, g.e, g.ep, T(1), dor.data_ptr<T>()), djob},
           row_grain(g));
  const KeyMask<T> km = make_key_mask<T>(mask, g);
  Tensor dqp = make_tensor_uninit({g.BH(), g.n_pad, g.dp}, dt);
  Tensor dkp = make_tensor_uninit({chunks, g.BH(), g.m_pad, g.dp}, dt);
  Tensor dvp = make_tensor_uninit({chunks, g.BH(), g.m_pad, g.ep}, dt);
  const MlrBackwardArgs<T> args{qs.data_ptr<T>(), kt.data_ptr<T>(),  kr.data_ptr<T>(), vt.data_ptr<T>(),
                                dor.data_ptr<T>(), Dt.data_ptr<T>(), lse.data_ptr<T>(), &km, &lv, dqp.data_ptr<T>()};
  mlr_backward_tiles<T>(g, chunks, args, dkp.data_ptr<T>(), dvp.data_ptr<T>());
  Tensor dq = make_tensor_uninit({g.B, g.H, g.n, g.d}, dt);
  Tensor dk = make_tensor_uninit({g.B, g.H, g.m, g.d}, dt);
  Tensor dv = make_tensor_uninit({g.B, g.H, g.m, g.e}, dt);
  // dS is the gradient of the natural-log scores: dQ = dS K · c, dK = dSᵀ (Q · c) = ln 2 · dSᵀ Qs.
  run_jobs({unpack_dq<T>(dqp.data_ptr<T>(), g, lv.col, dq.data_ptr<T>()),
            unpack_rows<T>(dkp.data_ptr<T>(), chunks, g, g.m, g.m_pad, g.d, g.dp, (T)kLn2, dk.data_ptr<T>()),
            unpack_rows<T>(dvp.data_ptr<T>(), chunks, g, g.m, g.m_pad, g.e, g.ep, T(1), dv.data_ptr<T>())},
           std::max<int64_t>(1, row_grain(g) / chunks));
  return {dq, dk, dv};
}

struct MlrAttentionBackward : Node {
  SavedTensor q, k, v, mask, out, lse;
  Levels levels;
  bool causal = false;
  const char* name() const override { return "MlrAttentionBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor qq = q.unpack(this), kk = k.unpack(this), vv = v.unpack(this);
    const Tensor mm = mask.defined() ? mask.unpack(this) : Tensor();
    const Tensor oo = out.unpack(this), ll = lse.unpack(this);
    std::array<Tensor, 3> g = dispatch_float(qq.dtype(), name(), [&]<class T>() {
      return mlr_fused_backward<T>(qq, kk, vv, mm, levels, causal, oo, ll, grads[0]);
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
    levels = Levels();
  }
};

Tensor fused_mlr(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, Levels levels,
                 bool causal) {
  auto node = make_node<MlrAttentionBackward>({q, k, v});
  auto [out, lse] = dispatch_float(q.dtype(), op, [&]<class T>() {
    return mlr_fused_forward<T>(q, k, v, mask, levels, causal, node != nullptr);
  });
  if (node) {
    node->q = save(q);
    node->k = save(k);
    node->v = save(v);
    if (mask.defined()) node->mask = save(mask);
    node->out = save(out);
    node->lse = save(lse);
    node->levels = std::move(levels);
    node->causal = causal;
    set_history(out, node);
  }
  return out;
}

// =======================================================================================
// the reference: per level, the scaled low-rank scores where both positions share the
// level's block, summed; then the masks and softmax as in ops/attention.cpp's reference.
// =======================================================================================
Tensor reference_weights(const Tensor& q, const Tensor& k, const Tensor& mask, const std::vector<int64_t>& ranks,
                         const std::vector<double>& scales, bool causal, int64_t span) {
  const int64_t B = q.size(0), n = q.size(2);
  const Levels lv = make_levels(ranks, scales, mask, B, n, causal, span);
  Tensor s;
  for (int l = 0; l < lv.L; ++l) {
    const int64_t o = lv.off[(size_t)l], r = ranks[(size_t)l];
    const Tensor sl = mul(matmul(q.narrow(-1, o, r), k.narrow(-1, o, r).transpose(-2, -1)), scales[(size_t)l]);  // (B, H, n, n)
    std::vector<double> same((size_t)(B * n * n));
    for (int64_t b = 0; b < B; ++b) {
      const int64_t* id = lv.ids(b, l);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) same[(size_t)((b * n + i) * n + j)] = id[i] == id[j] ? 1.0 : 0.0;
    }
    const Tensor term = mul(sl, Tensor::from_vector(same, {B, 1, n, n}).to(q.dtype()));
    s = l == 0 ? term : add(s, term);
  }
  // Padded keys and (causal) later keys at -inf. A row with no key left would be NaN: its
  // mask is lifted before the softmax and the row zeroed after it.
  const std::vector<double> mv = mask.defined() ? mask.to_vector() : std::vector<double>((size_t)(B * n), 0.0);
  std::vector<bool> off((size_t)(B * n * n)), dead((size_t)(B * n));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < n; ++i) {
      const size_t row = (size_t)((b * n + i) * n);
      bool any = false;
      for (int64_t j = 0; j < n; ++j) {
        const bool o = mv[(size_t)(b * n + j)] != 0.0 || (causal && j > i);
        off[row + (size_t)j] = o;
        any = any || !o;
      }
      dead[(size_t)(b * n + i)] = !any;
      if (!any) std::fill(off.begin() + (ptrdiff_t)row, off.begin() + (ptrdiff_t)(row + (size_t)n), false);
    }
  s = masked_fill(s, Tensor::from_vector(off, {B, 1, n, n}), -std::numeric_limits<double>::infinity());
  return masked_fill(softmax(s, -1), Tensor::from_vector(dead, {B, 1, n, 1}), 0.0);
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (int64_t x : v) {
    if (!s.empty()) s += "|";  // appended: g++ 12 warns (-Wrestrict) on "" + to_string
    s += std::to_string(x);
  }
  return s;
}

// The level settings against q (B, H, n, d) and k; the per-level scales to use.
std::vector<double> check_levels(const char* op, const Tensor& q, const Tensor& k, const std::vector<int64_t>& ranks,
                                 const std::vector<double>& scales, int64_t span) {
  const std::string o = op;
  if (q.size(2) != k.size(2))
    throw_shape(op, "q and k must have the same length: the levels cut one sequence", {{"q", &q}, {"k", &k}});
  const int64_t n = q.size(2), d = q.size(3), L = (int64_t)ranks.size();
  const std::string of = "ranks " + join(ranks) + " for head dim d = " + std::to_string(d);
  if (ranks.empty()) throw std::invalid_argument(o + ": ranks must list at least one level (head dim d = " + std::to_string(d) + ")");
  int64_t total = 0;
  for (int64_t r : ranks) {
    if (r < 1) throw std::invalid_argument(o + ": every rank must be >= 1, got " + of);
    total += r;
  }
  if (total != d) throw std::invalid_argument(o + ": " + of + ": they sum to " + std::to_string(total) + ", not " + std::to_string(d));
  if (span < 0) throw std::invalid_argument(o + ": span must be >= 0, got " + std::to_string(span));
  const int64_t limit = span > 0 ? span : n;  // an empty sequence has nothing to cut
  if (limit > 0 && (L - 1 >= 62 || (int64_t(1) << (L - 1)) > limit))
    throw std::invalid_argument(o + ": " + std::to_string(L) + " levels (" + of + ") cut the sequence into 2^" +
                                std::to_string(L - 1) + " blocks at the deepest level, more than " +
                                (span > 0 ? "span = " + std::to_string(span) : "n = " + std::to_string(n)) + " positions");
  if (!scales.empty() && (int64_t)scales.size() != L)
    throw std::invalid_argument(o + ": " + std::to_string(scales.size()) + " scales for " + std::to_string(L) +
                                " levels (" + of + ")");
  std::vector<double> c((size_t)L);
  for (size_t l = 0; l < (size_t)L; ++l) {
    c[l] = scales.empty() ? 1.0 / (double)ranks[l] : scales[l];
    if (!std::isfinite(c[l]))
      throw std::invalid_argument(o + ": scale of level " + std::to_string(l) + " is " + std::to_string(c[l]) + ", not finite");
  }
  return c;
}

}  // namespace

Tensor mlr_attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int64_t>& ranks,
                     const Tensor& key_padding_mask, bool is_causal, const std::vector<double>& scales, int64_t span,
                     bool fused) {
  const char* op = "mlr_attention";
  check_inputs(op, q, k, v, key_padding_mask);
  const std::vector<double> c = check_levels(op, q, k, ranks, scales, span);
  if (!fused) return matmul(reference_weights(q, k, key_padding_mask, ranks, c, is_causal, span), v);
  return fused_mlr(op, q, k, v, key_padding_mask, make_levels(ranks, c, key_padding_mask, q.size(0), q.size(2), is_causal, span),
                   is_causal);
}

Tensor mlr_attention_weights(const Tensor& q, const Tensor& k, const std::vector<int64_t>& ranks,
                             const Tensor& key_padding_mask, bool is_causal, const std::vector<double>& scales,
                             int64_t span) {
  const char* op = "mlr_attention_weights";
  check_qk(op, q, k, key_padding_mask);
  const std::vector<double> c = check_levels(op, q, k, ranks, scales, span);
  return reference_weights(q, k, key_padding_mask, ranks, c, is_causal, span);
}

std::vector<int64_t> mlr_ranks(int64_t d, int64_t levels, MlrSplit split) {
  if (levels < 1 || levels > d)
    throw std::invalid_argument("mlr_ranks: " + std::to_string(levels) + " levels for head dim d = " + std::to_string(d) +
                                ": need 1 <= levels <= d (every level at least one dim)");
  std::vector<int64_t> r((size_t)levels);
  int64_t used = 0;
  for (int64_t l = 0; l < levels; ++l) {
    if (split == MlrSplit::equal)
      r[(size_t)l] = d / levels + (l < d % levels ? 1 : 0);
    else
      r[(size_t)l] = l + 1 < levels ? (l + 1 < 62 ? d >> (l + 1) : 0) : d - used;
    used += r[(size_t)l];
  }
  for (int64_t x : r)
    if (x < 1)
      throw std::invalid_argument("mlr_ranks: halving head dim d = " + std::to_string(d) + " over " + std::to_string(levels) +
                                  " levels leaves a level without dims (" + join(r) + "); use fewer levels or the equal split");
  return r;
}

}  // namespace lotgrad
