#include "conv.h"

#include <algorithm>
#include <vector>

#include "../core/autograd.h"
#include "../core/error.h"
#include "../core/iter.h"
#include "../core/parallel.h"
#include "fft.h"

namespace lotgrad {

namespace {

// Direct form, O(B·n·K·C): rows (b, t) in parallel, channels innermost (contiguous, vectorised).
// wt is the weight transposed, (K, C), so each lag's taps are one contiguous row.
template <class T>
void conv_forward(const T* x, const T* wt, const T* bias, T* y, int64_t B, int64_t n, int64_t C, int64_t K) {
  parallel_for(0, B * n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(C * K, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % n;
      T* yr = y + r * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = bias ? bias[c] : T(0);
      for (int64_t m = 0; m < std::min(K, t + 1); ++m) {
        const T* xr = x + (r - m) * C;
        const T* w = wt + m * C;
        for (int64_t c = 0; c < C; ++c) yr[c] += w[c] * xr[c];
      }
    }
  });
}

// dx[b, s, c] = Σ_m weight[c, m] · g[b, s + m, c] (s + m < n): the same loop looking ahead.
template <class T>
void conv_backward_input(const T* g, const T* wt, T* dx, int64_t B, int64_t n, int64_t C, int64_t K) {
  parallel_for(0, B * n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(C * K, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t s = r % n;
      T* dr = dx + r * C;
      std::fill(dr, dr + C, T(0));
      for (int64_t m = 0; m < std::min(K, n - s); ++m) {
        const T* gr = g + (r + m) * C;
        const T* w = wt + m * C;
        for (int64_t c = 0; c < C; ++c) dr[c] += w[c] * gr[c];
      }
    }
  });
}

// dweight[c, m] = Σ_{b, t} g[b, t, c] · x[b, t − m, c] and dbias[c] = Σ g[b, t, c], as (K + 1, C)
// rows (the last one the bias). Lags in parallel: each (m, c) is summed by one thread in
// (b, t) order, so the result does not depend on the thread count.
template <class T>
void conv_backward_weight(const T* g, const T* x, double* acc, int64_t B, int64_t n, int64_t C, int64_t K) {
  parallel_for(0, K + 1, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(B * n * C, 1)), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      double* a = acc + m * C;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = (m == K ? 0 : m); t < n; ++t) {
          const T* gr = g + (b * n + t) * C;
          if (m == K) {
            for (int64_t c = 0; c < C; ++c) a[c] += gr[c];
          } else {
            const T* xr = x + (b * n + t - m) * C;
            for (int64_t c = 0; c < C; ++c) a[c] += (double)gr[c] * xr[c];
          }
        }
    }
  });
}


// ---- FFT form ---------------------------------------------------------------------------
using fft::Plan;

// The FFT size for n positions and Kp = min(K, n) live taps: >= n + Kp - 1, so no product
// term wraps around into the first n outputs (nor, in the backward, into lags 0..Kp-1).
int64_t fft_size(int64_t n, int64_t Kp) { return fft::next_pow2(n + Kp - 1); }

// Channels go through the transforms in blocks of kBlock: loading and storing a block reads
// and writes runs of kBlock contiguous values per position (channels are the inner dim; one
// channel at a time would touch a new cache line, or page, for every value when C is large).
// Fewer per block when there are few channels, so that every thread gets some (each channel
// is computed alone: the blocking changes no value).
int64_t channel_block(int64_t C) {
  return std::clamp<int64_t>((C + get_num_threads() - 1) / get_num_threads(), 1, 16);
}

// z[cc][t] = x[b0, t, c0 + cc] + i x[b1, t, c0 + cc] for t < n (b1 = -1: no second row), 0 up to N.
template <class T>
void load_pair(std::complex<T>* z, const T* x, int64_t b0, int64_t b1, int64_t c0, int64_t cb, int64_t n, int64_t C,
               int64_t N) {
  for (int64_t t = 0; t < n; ++t) {
    const T* r0 = x + (b0 * n + t) * C + c0;
    const T* r1 = b1 >= 0 ? x + (b1 * n + t) * C + c0 : nullptr;
    for (int64_t cc = 0; cc < cb; ++cc) z[cc * N + t] = {r0[cc], r1 ? r1[cc] : T(0)};
  }
  for (int64_t cc = 0; cc < cb; ++cc) std::fill(z + cc * N + n, z + (cc + 1) * N, std::complex<T>(0));
}

template <class T>
void store_pair(const std::complex<T>* z, T* y, int64_t b0, int64_t b1, int64_t c0, int64_t cb, int64_t n, int64_t C,
                int64_t N) {
  for (int64_t t = 0; t < n; ++t) {
    T* r0 = y + (b0 * n + t) * C + c0;
    for (int64_t cc = 0; cc < cb; ++cc) r0[cc] = z[cc * N + t].real();
    if (b1 < 0) continue;
    T* r1 = y + (b1 * n + t) * C + c0;
    for (int64_t cc = 0; cc < cb; ++cc) r1[cc] = z[cc * N + t].imag();
  }
}

// The spectra of channels c0..c0+cb-1's kernels (w (C, K) contiguous), the first Kp taps zero-padded to N.
template <class T>
void kernel_spectra(std::complex<T>* W, const T* w, int64_t c0, int64_t cb, int64_t K, int64_t Kp, const Plan<T>& plan) {
  const int64_t N = plan.size();
  for (int64_t cc = 0; cc < cb; ++cc) {
    std::complex<T>* Wc = W + cc * N;
    for (int64_t m = 0; m < Kp; ++m) Wc[m] = {w[(c0 + cc) * K + m], T(0)};
    std::fill(Wc + Kp, Wc + N, std::complex<T>(0));
    plan.forward(Wc);
  }
}

// a[k] *= b[k] (conj_b: conj(b[k])), by hand (std::complex's product checks for NaN).
template <class T>
void mul_spectrum(std::complex<T>* a, const std::complex<T>* b, int64_t N, bool conj_b) {
  T* p = reinterpret_cast<T*>(a);
  const T* q = reinterpret_cast<const T*>(b);
  const T s = conj_b ? T(-1) : T(1);
  for (int64_t k = 0; k < N; ++k) {
    const T ar = p[2 * k], ai = p[2 * k + 1], br = q[2 * k], bi = s * q[2 * k + 1];
    p[2 * k] = ar * br - ai * bi;
    p[2 * k + 1] = ar * bi + ai * br;
  }
}

// y = x * w (no bias): per block of channels, the kernels' spectra once, then batch rows two at a time.
template <class T>
void fft_conv_forward(const T* x, const T* w, T* y, int64_t B, int64_t n, int64_t C, int64_t K) {
  const int64_t Kp = std::min(K, n), N = fft_size(n, Kp);
  const Plan<T> plan(N);
  const int64_t kBlock = channel_block(C);
  parallel_for(0, (C + kBlock - 1) / kBlock, 1, [&](int64_t k0, int64_t k1) {
    std::vector<std::complex<T>> W((size_t)(kBlock * N)), Z((size_t)(kBlock * N));
    for (int64_t blk = k0; blk < k1; ++blk) {
      const int64_t c0 = blk * kBlock, cb = std::min(kBlock, C - c0);
      kernel_spectra(W.data(), w, c0, cb, K, Kp, plan);
      for (int64_t b = 0; b < B; b += 2) {
        const int64_t b1 = b + 1 < B ? b + 1 : -1;
        load_pair(Z.data(), x, b, b1, c0, cb, n, C, N);
        for (int64_t cc = 0; cc < cb; ++cc) {
          std::complex<T>* z = Z.data() + cc * N;
          plan.forward(z);
          mul_spectrum(z, W.data() + cc * N, N, false);
          plan.inverse(z);
        }
        store_pair(Z.data(), y, b, b1, c0, cb, n, C, N);
      }
    }
  });
}

// R[k] += U_g[k] conj U_x[k] (+ the same for V) for the two rows packed in G, X (one channel):
// two rows share one transform z = u + i v, whose spectra separate as
// U[k] = (Z[k] + conj Z[N-k]) / 2, V[k] = (Z[k] - conj Z[N-k]) / 2i.
template <class T>
void accumulate_cross(std::complex<double>* R, const std::complex<T>* G, const std::complex<T>* X, int64_t N, bool two) {
  for (int64_t k = 0; k < N; ++k) {
    const int64_t kk = (N - k) & (N - 1);
    const double gr = G[k].real(), gi = G[k].imag(), hr = G[kk].real(), hi = G[kk].imag();
    const double xr = X[k].real(), xi = X[k].imag(), yr = X[kk].real(), yi = X[kk].imag();
    double ur = 0.5 * (gr + hr), ui = 0.5 * (gi - hi), vr = 0.5 * (xr + yr), vi = 0.5 * (xi - yi);
    double re = ur * vr + ui * vi, im = ui * vr - ur * vi;
    if (two) {
      ur = 0.5 * (gi + hi), ui = 0.5 * (hr - gr), vr = 0.5 * (xi + yi), vi = 0.5 * (yr - xr);
      re += ur * vr + ui * vi;
      im += ui * vr - ur * vi;
    }
    R[k] += std::complex<double>(re, im);
  }
}

// dx = g correlated with w (spectrum G·conj W); dw[c, m] = Σ_b Σ_t g[b, t, c] x[b, t - m, c]
// for m < Kp (spectrum Σ_b G_b·conj X_b, summed in double in batch order; acc (C, Kp)).
template <class T>
void fft_conv_backward(const T* g, const T* x, const T* w, T* dx, double* acc, int64_t B, int64_t n, int64_t C,
                       int64_t K) {
  const int64_t Kp = std::min(K, n), N = fft_size(n, Kp);
  const Plan<T> plan(N);
  const Plan<double> plan_d(N);
  using Cd = std::complex<double>;
  const int64_t kBlock = channel_block(C);
  parallel_for(0, (C + kBlock - 1) / kBlock, 1, [&](int64_t k0, int64_t k1) {
    const size_t sz = (size_t)(kBlock * N);
    std::vector<std::complex<T>> W(dx ? sz : 0), G(sz), X(acc ? sz : 0), D(dx ? sz : 0);
    std::vector<Cd> R(acc ? sz : 0);
    for (int64_t blk = k0; blk < k1; ++blk) {
      const int64_t c0 = blk * kBlock, cb = std::min(kBlock, C - c0);
      if (dx) kernel_spectra(W.data(), w, c0, cb, K, Kp, plan);
      std::fill(R.begin(), R.end(), Cd(0));
      for (int64_t b = 0; b < B; b += 2) {
        const int64_t b1 = b + 1 < B ? b + 1 : -1;
        load_pair(G.data(), g, b, b1, c0, cb, n, C, N);
        if (acc) load_pair(X.data(), x, b, b1, c0, cb, n, C, N);
        for (int64_t cc = 0; cc < cb; ++cc) {
          std::complex<T>* gz = G.data() + cc * N;
          plan.forward(gz);
          if (dx) {
            std::complex<T>* d = D.data() + cc * N;
            std::copy(gz, gz + N, d);
            mul_spectrum(d, W.data() + cc * N, N, true);
            plan.inverse(d);
          }
          if (acc) {
            std::complex<T>* xz = X.data() + cc * N;
            plan.forward(xz);
            accumulate_cross(R.data() + cc * N, gz, xz, N, b1 >= 0);
          }
        }
        if (dx) store_pair(D.data(), dx, b, b1, c0, cb, n, C, N);
      }
      if (!acc) continue;
      for (int64_t cc = 0; cc < cb; ++cc) {
        Cd* r = R.data() + cc * N;
        plan_d.inverse(r);
        for (int64_t m = 0; m < Kp; ++m) acc[(c0 + cc) * Kp + m] = r[m].real();
      }
    }
  });
}

struct CausalConv1dBackward : Node {
  SavedTensor x, wt;  // contiguous (B, n, C) and (K, C); fft: wt holds the weight (C, K)
  bool has_bias = false, use_fft = false;
  const char* name() const override { return "CausalConv1dBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor X = x.unpack(this), WT = wt.unpack(this), G = grads[0].contiguous();
    const int64_t B = X.size(0), n = X.size(1), C = X.size(2), K = use_fft ? WT.size(1) : WT.size(0);
    Tensor dx, dw, db;
    if (use_fft) {
      fft_backward(X, WT, G, B, n, C, K, dx, dw, db);
      return {dx, needs_grad(1) ? dw : Tensor(), has_bias && needs_grad(2) ? db : Tensor()};
    }
    dispatch_float(X.dtype(), name(), [&]<class T>() {
      if (needs_grad(0)) {
        dx = make_tensor_uninit({B, n, C}, X.dtype());
        conv_backward_input(G.data_ptr<T>(), WT.data_ptr<T>(), dx.data_ptr<T>(), B, n, C, K);
      }
      if (needs_grad(1) || (has_bias && needs_grad(2))) {
        std::vector<double> acc((size_t)((K + 1) * C), 0.0);
        conv_backward_weight(G.data_ptr<T>(), X.data_ptr<T>(), acc.data(), B, n, C, K);
        dw = make_tensor_uninit({C, K}, X.dtype());
        db = make_tensor_uninit({C}, X.dtype());
        T* w = dw.data_ptr<T>();
        T* bb = db.data_ptr<T>();
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t m = 0; m < K; ++m) w[c * K + m] = (T)acc[(size_t)(m * C + c)];
          bb[c] = (T)acc[(size_t)(K * C + c)];
        }
      }
    });
    return {dx, needs_grad(1) ? dw : Tensor(), has_bias && needs_grad(2) ? db : Tensor()};
  }
  void release() override { x.reset(); wt.reset(); }

  void fft_backward(const Tensor& X, const Tensor& W, const Tensor& G, int64_t B, int64_t n, int64_t C, int64_t K,
                    Tensor& dx, Tensor& dw, Tensor& db) const {
    const int64_t Kp = std::min(K, n);
    const bool want_w = needs_grad(1);
    dispatch_float(X.dtype(), name(), [&]<class T>() {
      if (needs_grad(0)) dx = make_tensor_uninit({B, n, C}, X.dtype());
      std::vector<double> acc(want_w ? (size_t)(C * Kp) : 0);
      if (needs_grad(0) || want_w)
        fft_conv_backward(G.data_ptr<T>(), X.data_ptr<T>(), W.data_ptr<T>(), needs_grad(0) ? dx.data_ptr<T>() : (T*)nullptr,
                          want_w ? acc.data() : nullptr, B, n, C, K);
      if (want_w) {
        dw = make_tensor({C, K}, X.dtype());  // lags >= n: 0
        T* w = dw.data_ptr<T>();
        for (int64_t c = 0; c < C; ++c)
          for (int64_t m = 0; m < Kp; ++m) w[c * K + m] = (T)acc[(size_t)(c * Kp + m)];
      }
      if (has_bias && needs_grad(2)) {  // Σ_{b, t} g in (b, t) order, per channel
        std::vector<double> s((size_t)C, 0.0);
        const T* g = G.data_ptr<T>();
        for (int64_t r = 0; r < B * n; ++r)
          for (int64_t c = 0; c < C; ++c) s[(size_t)c] += g[r * C + c];
        db = make_tensor_uninit({C}, X.dtype());
        for (int64_t c = 0; c < C; ++c) db.data_ptr<T>()[c] = (T)s[(size_t)c];
      }
    });
  }
};

}  // namespace

bool conv_uses_fft(int64_t n, int64_t K) {
  const int64_t Kp = std::min(K, n);
  int64_t log2N = 0;
  for (int64_t N = n > 0 ? fft_size(n, Kp) : 1; N > 1; N >>= 1) ++log2N;
  return Kp > kConvFftTapsPerLog * log2N;
}

Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, ConvAlgo algo) {
  if (x.dim() != 3 || weight.dim() != 2 || weight.size(0) != x.size(2) || weight.size(1) < 1 || x.dtype() != weight.dtype() ||
      (bias.defined() && (bias.shape() != Shape{x.size(2)} || bias.dtype() != x.dtype())))
    throw_shape("causal_conv1d", "expects x (B, n, C), weight (C, K) with K >= 1 and bias (C) or none, of one float dtype",
                {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
  const int64_t B = x.size(0), n = x.size(1), C = x.size(2), K = weight.size(1);
  const bool use_fft = n > 0 && (algo == ConvAlgo::fft || (algo == ConvAlgo::automatic && conv_uses_fft(n, K)));
  const Tensor X = x.contiguous(), WT = use_fft ? weight.contiguous() : weight.transpose(0, 1).contiguous();
  const Tensor Bc = bias.defined() ? bias.contiguous() : Tensor();
  Tensor y = make_tensor_uninit({B, n, C}, x.dtype());
  dispatch_float(x.dtype(), "causal_conv1d", [&]<class T>() {
    const T* bp = Bc.defined() ? Bc.data_ptr<T>() : (const T*)nullptr;
    if (!use_fft) {
      conv_forward(X.data_ptr<T>(), WT.data_ptr<T>(), bp, y.data_ptr<T>(), B, n, C, K);
      return;
    }
    T* yp = y.data_ptr<T>();
    fft_conv_forward(X.data_ptr<T>(), WT.data_ptr<T>(), yp, B, n, C, K);
    if (bp)
      for (int64_t r = 0; r < B * n; ++r)
        for (int64_t c = 0; c < C; ++c) yp[r * C + c] += bp[c];
  });
  std::vector<Tensor> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  if (auto node = make_node<CausalConv1dBackward>(inputs)) {
    node->x = save(X);
    node->wt = save(WT);
    node->has_bias = bias.defined();
    node->use_fft = use_fft;
    set_history(y, node);
  }
  return y;
}

}  // namespace lotgrad
