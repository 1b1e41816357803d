#include "toeplitz_linear.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../core/autograd.h"
#include "../core/error.h"
#include "elementwise.h"
#include "matmul.h"
#include "reduce.h"
#include "shape.h"

namespace lotgrad {

namespace {

Tensor tr(const Tensor& x) { return x.transpose(-2, -1); }

// The tiling of n positions: tiles of T, nt of them (the last one zero-padded), offsets
// δ = 0..n_off-1 between a query tile and the key tiles the filter reaches.
struct Tiling {
  int64_t n, T, nt, Lmax, n_off;
  Tiling(int64_t n_, int64_t L, int64_t tile) : n(n_) {
    T = std::max<int64_t>(1, std::min(tile, n));
    nt = (n + T - 1) / T;
    Lmax = std::min(L, n);
    // block δ holds lags δT − (T − 1) .. δT + T − 1; it matters while its least lag is < Lmax
    n_off = std::min(nt, (Lmax + T - 2) / T + 1);
  }
};

// (B, H, n, c) zero-padded to nt·T positions and viewed as (B, H, nt, T, c).
Tensor tiled(const Tensor& x, const Tiling& g) {
  const int64_t pad_n = g.nt * g.T - g.n;
  const Tensor p = pad_n ? pad(x, {0, 0, 0, pad_n}) : x.contiguous();
  return p.view({x.size(0), x.size(1), g.nt, g.T, x.size(3)});
}

// The (1, H, 1, T, T) block of the Toeplitz weights at tile offset δ:
// [i, j] = f[δT + i − j] where 0 <= δT + i − j < Lmax, else 0. fv: the filter (H, L), row major.
Tensor toeplitz_block(const std::vector<double>& fv, int64_t H, int64_t L, const Tiling& g, int64_t delta, DType dt) {
  std::vector<double> b((size_t)(H * g.T * g.T), 0.0);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < g.T; ++i)
      for (int64_t j = 0; j < g.T; ++j) {
        const int64_t lag = delta * g.T + i - j;
        if (lag >= 0 && lag < g.Lmax) b[(size_t)((h * g.T + i) * g.T + j)] = fv[(size_t)(h * L + lag)];
      }
  return Tensor::from_vector(b, {1, H, 1, g.T, g.T}).to(dt);
}

// Tiles [s, s + len) of a tiled (B, H, nt, T, c) tensor.
Tensor tiles(const Tensor& x, int64_t s, int64_t len) { return x.narrow(2, s, len); }

Tensor direct_forward(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<double>& fv, int64_t L,
                      const Tiling& g) {
  NoGradGuard ng;
  const int64_t B = q.size(0), H = q.size(1), e = v.size(3);
  const Tensor Q = tiled(q, g), K = tiled(k, g), V = tiled(v, g);
  Tensor Y = Tensor::zeros({B, H, g.nt, g.T, e}, q.dtype());
  for (int64_t d = 0; d < g.n_off; ++d) {
    const int64_t m = g.nt - d;  // query tiles d.., key tiles ..m
    const Tensor S = mul(matmul(tiles(Q, d, m), tr(tiles(K, 0, m))), toeplitz_block(fv, H, L, g, d, q.dtype()));
    Tensor Yd = tiles(Y, d, m);
    Yd.add_(matmul(S, tiles(V, 0, m)));
  }
  return Y.view({B, H, g.nt * g.T, e}).narrow(2, 0, g.n).contiguous();
}

struct ToeplitzCausalLinearBackward : Node {
  SavedTensor q, k, v, filter;
  int64_t tile = 64;
  const char* name() const override { return "ToeplitzCausalLinearBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor q_ = q.unpack(this), k_ = k.unpack(this), v_ = v.unpack(this), f_ = filter.unpack(this);
    const int64_t B = q_.size(0), H = q_.size(1), n = q_.size(2), d = q_.size(3), e = v_.size(3), L = f_.size(1);
    const Tiling g(n, L, tile);
    const std::vector<double> fv = f_.contiguous().to_vector();
    const Tensor Q = tiled(q_, g), K = tiled(k_, g), V = tiled(v_, g), G = tiled(grads[0], g);
    Tensor dQ = Tensor::zeros({B, H, g.nt, g.T, d}, q_.dtype()), dK = Tensor::zeros({B, H, g.nt, g.T, d}, q_.dtype()),
           dV = Tensor::zeros({B, H, g.nt, g.T, e}, q_.dtype());
    std::vector<double> df((size_t)(H * L), 0.0);
    for (int64_t o = 0; o < g.n_off; ++o) {
      const int64_t m = g.nt - o;
      const Tensor Qs = tiles(Q, o, m), Ks = tiles(K, 0, m), Vs = tiles(V, 0, m), Gs = tiles(G, o, m);
      const Tensor Tb = toeplitz_block(fv, H, L, g, o, q_.dtype());
      const Tensor A = matmul(Qs, tr(Ks)), P = matmul(Gs, tr(Vs));  // scores q·k and g·v (B, H, m, T, T)
      const Tensor dS = mul(P, Tb);
      if (needs_grad(0)) tiles(dQ, o, m).add_(matmul(dS, Ks));
      if (needs_grad(1)) tiles(dK, 0, m).add_(matmul(tr(dS), Qs));
      if (needs_grad(2)) tiles(dV, 0, m).add_(matmul(tr(mul(A, Tb)), Gs));
      if (needs_grad(3)) {  // d f[lag] = Σ over (b, tile pairs, i − j = lag − oT) of (g·v)(q·k)
        const std::vector<double> M = sum(mul(P, A), {0, 2}).to_vector();  // (H, T, T)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < g.T; ++i)
            for (int64_t j = 0; j < g.T; ++j) {
              const int64_t lag = o * g.T + i - j;
              if (lag >= 0 && lag < g.Lmax) df[(size_t)(h * L + lag)] += M[(size_t)((h * g.T + i) * g.T + j)];
            }
      }
    }
    auto untile = [&](const Tensor& x) { return x.view({B, H, g.nt * g.T, x.size(4)}).narrow(2, 0, n).contiguous(); };
    return {needs_grad(0) ? untile(dQ) : Tensor(), needs_grad(1) ? untile(dK) : Tensor(),
            needs_grad(2) ? untile(dV) : Tensor(),
            needs_grad(3) ? Tensor::from_vector(df, {H, L}).to(f_.dtype()) : Tensor()};
  }
  void release() override { q.reset(); k.reset(); v.reset(); filter.reset(); }
};

Tensor direct(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& filter, int64_t tile) {
  const Tiling g(q.size(2), filter.size(1), tile);
  Tensor out = direct_forward(q, k, v, filter.contiguous().to_vector(), filter.size(1), g);
  if (auto node = make_node<ToeplitzCausalLinearBackward>({q, k, v, filter})) {
    node->q = save(q);
    node->k = save(k);
    node->v = save(v);
    node->filter = save(filter);
    node->tile = tile;
    set_history(out, node);
  }
  return out;
}

// Composite: KV_j = k_j v_jᵀ as B·n rows of H·d·e channels, each convolved with its head's
// filter, read out by q.
Tensor by_fft(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& filter) {
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), d = q.size(3), e = v.size(3);
  const int64_t Lmax = std::min(filter.size(1), n);
  const Tensor kv = mul(k.unsqueeze(-1), v.unsqueeze(-2)).permute({0, 2, 1, 3, 4}).reshape({B, n, H * d * e});
  const Tensor w = filter.narrow(1, 0, Lmax).unsqueeze(1).expand({H, d * e, Lmax}).reshape({H * d * e, Lmax});
  const Tensor Y = causal_conv1d(kv, w, Tensor(), ConvAlgo::fft).view({B, n, H, d, e}).permute({0, 2, 1, 3, 4});
  return matmul(q.unsqueeze(-2), Y).squeeze(-2);  // (B, H, n, 1, d) x (B, H, n, d, e)
}

}  // namespace

bool toeplitz_uses_fft(int64_t n, int64_t L, int64_t d, int64_t e) {
  // Cost model: direct ~ n·min(n, L + 64)·(d + e) multiply-adds at BLAS speed; fft ~ d·e·N log2 N
  // butterflies (N = 2n), each about kFftPerFlop times as slow (scattered loads, no BLAS). Fitted
  // on 2 cores, B·H 16, L = n, forward + backward: d = e = 8 at n 1024 fft 0.14 s vs direct 0.21 s,
  // at n 4096 0.6-1.2 s vs 2.8 s; d = e = 64 at n 1024 direct 3.2 s vs fft 11.6 s.
  constexpr double kFftPerFlop = 8.0;
  const double N = 2.0 * (double)n;
  const double direct = (double)n * (double)std::min(n, L + 64) * (double)(d + e);
  const double fft = kFftPerFlop * (double)(d * e) * N * std::log2(std::max(2.0, N));
  return fft < direct;
}

Tensor toeplitz_causal_linear(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& filter, ConvAlgo algo,
                              int64_t tile) {
  if (q.dim() != 4 || k.shape() != q.shape() || v.dim() != 4 || v.size(0) != q.size(0) || v.size(1) != q.size(1) ||
      v.size(2) != q.size(2) || filter.dim() != 2 || filter.size(0) != q.size(1) || filter.size(1) < 1 ||
      k.dtype() != q.dtype() || v.dtype() != q.dtype() || filter.dtype() != q.dtype())
    throw_shape("toeplitz_causal_linear", "expects q, k (B, H, n, d), v (B, H, n, e) and filter (H, L) with L >= 1, of one dtype",
                {{"q", &q}, {"k", &k}, {"v", &v}, {"filter", &filter}});
  if (tile < 1) throw std::invalid_argument("toeplitz_causal_linear: tile must be >= 1, got " + std::to_string(tile));
  const int64_t n = q.size(2);
  if (n == 0) return Tensor::zeros({q.size(0), q.size(1), 0, v.size(3)}, q.dtype());
  const bool fft = algo == ConvAlgo::fft ||
                   (algo == ConvAlgo::automatic && toeplitz_uses_fft(n, filter.size(1), q.size(3), v.size(3)));
  return fft ? by_fft(q, k, v, filter) : direct(q, k, v, filter, tile);
}

}  // namespace lotgrad
