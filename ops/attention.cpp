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
#include "attention_tiles.h"
#include "elementwise.h"
#include "matmul.h"
#include "softmax.h"

namespace lotgrad {

namespace {

// The building blocks (SIMD, micro-kernels, packing, masks, the band, the unit loop) are in
// attention_tiles.h, shared with the other tiled kernels.
using namespace detail::tiles;

// =======================================================================================
// forward: per (b, h, query tile), online softmax over the key tiles of its band. Units run
// from the last query tile to the first: with a causal band the last tiles visit the most
// key tiles, and starting them first leaves the short ones to even out the end.
// =======================================================================================
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

template <class T>
void attention_backward(const Geo& g, int64_t chunks, const BackwardArgs<T>& a, T* dk_part, T* dv_part) {
  const int64_t dp = g.dp, ep = g.ep;
  int64_t pairs = 0;
  const std::vector<TileRange> tiles = all_key_tiles(g, pairs);
  const std::vector<int64_t> bounds = chunk_bounds(tiles, pairs, chunks);
  const int64_t unit_work = (pairs / chunks + 1) * kBr * kBc * std::max<int64_t>(g.d + g.e, 1) * 2;
  auto make = [&] {
    return BackwardScratch<T>{std::vector<T>((size_t)kBr * kBc), std::vector<T>((size_t)kBr * kBc),
                              std::vector<T>((size_t)(kBc * dp)), std::vector<T>((size_t)(kBc * ep))};
  };
  for_each_unit(g.BH() * chunks, unit_grain(unit_work), make, [&](int64_t u, BackwardScratch<T>& sc) {
    backward_unit<T>(g, tiles, bounds, chunks, u, *a.km, a.dq, dk_part, dv_part, sc.dkacc, sc.dvacc,
                     [&](int64_t bh, int64_t I, int64_t J) { backward_tile_pair(g, a, bh, I, J, sc); });
  });
}

// ---- drivers (Tensor in, Tensor out; scratch is tensor storage so benchmarks see it) ----

// Returns out (B, H, n, d) and, if want_lse, lse (B, H, n_pad).
template <class T>
std::pair<Tensor, Tensor> fused_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                                        Band band, double scale, bool want_lse) {
  const Geo g = make_geo<T>(q, k, v, band);
  const DType dt = dtype_of<T>::value;
  // The packing writes every element, padding included, yet these are zero-filled first: the
  // fill runs on all threads and leaves the blocks in cache, and the forward ran 3% faster that way
  // than packing into cold blocks (alternated pairs, n = 1,024). The backward's buffers, used
  // later and longer, go unfilled (2% faster there).
  Tensor qs = make_tensor({g.BH(), g.n_pad, g.dp}, dt);
  Tensor kt = make_tensor({g.BH(), g.nJ, g.d, kBc}, dt);
  Tensor vr = make_tensor({g.BH(), g.m_pad, g.ep}, dt);
  run_jobs({pack_rows<T>(q, g, g.n, g.n_pad, g.d, g.dp, (T)(scale * kLog2e), qs.data_ptr<T>()),
            pack_tiles_t<T>(k, g, g.d, kt.data_ptr<T>()),
            pack_rows<T>(v, g, g.m, g.m_pad, g.e, g.ep, T(1), vr.data_ptr<T>())},
           row_grain(g));
  const KeyMask<T> km = make_key_mask<T>(mask, g);
  Tensor out = make_tensor_uninit({g.B, g.H, g.n, g.e}, dt);
  Tensor lse = make_tensor_uninit({g.B, g.H, g.n_pad}, dt);
  attention_forward<T>(g, qs.data_ptr<T>(), kt.data_ptr<T>(), vr.data_ptr<T>(), km, out.data_ptr<T>(),
                       lse.data_ptr<T>());
  return {out, want_lse ? lse : Tensor()};
}

template <class T>
std::array<Tensor, 3> fused_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, Band band,
                                     double scale, const Tensor& out, const Tensor& lse, const Tensor& dout) {
  const Geo g = make_geo<T>(q, k, v, band);
  const DType dt = dtype_of<T>::value;
  const int64_t chunks = backward_chunks(g);
  Tensor qs = make_tensor_uninit({g.BH(), g.n_pad, g.dp}, dt);
  Tensor kt = make_tensor_uninit({g.BH(), g.nJ, g.d, kBc}, dt);
  Tensor kr = make_tensor_uninit({g.BH(), g.m_pad, g.dp}, dt);
  Tensor vt = make_tensor_uninit({g.BH(), g.nJ, g.e, kBc}, dt);
  Tensor dor = make_tensor_uninit({g.BH(), g.n_pad, g.ep}, dt);
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
  Tensor dqp = make_tensor_uninit({g.BH(), g.n_pad, g.dp}, dt);
  Tensor dkp = make_tensor_uninit({chunks, g.BH(), g.m_pad, g.dp}, dt);
  Tensor dvp = make_tensor_uninit({chunks, g.BH(), g.m_pad, g.ep}, dt);
  const BackwardArgs<T> args{qs.data_ptr<T>(), kt.data_ptr<T>(),  kr.data_ptr<T>(),  vt.data_ptr<T>(), dor.data_ptr<T>(),
                             Dt.data_ptr<T>(), lse.data_ptr<T>(), &km, dqp.data_ptr<T>()};
  attention_backward<T>(g, chunks, args, dkp.data_ptr<T>(), dvp.data_ptr<T>());
  Tensor dq = make_tensor_uninit({g.B, g.H, g.n, g.d}, dt);
  Tensor dk = make_tensor_uninit({g.B, g.H, g.m, g.d}, dt);
  Tensor dv = make_tensor_uninit({g.B, g.H, g.m, g.e}, dt);
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
