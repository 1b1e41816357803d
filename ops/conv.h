// Depthwise causal convolution over time, channels last: the short convolutions of DeltaNet
// (kernel 4 over q, k, v) and H3's shift filter and long convolutions.
//   x (B, n, C), weight (C, K), bias (C) or undefined -> y (B, n, C),
//   y[b, t, c] = bias[c] + Σ_{m=0}^{K-1} weight[c, m] · x[b, t − m, c]   (x before t = 0 is 0).
// weight[:, 0] is lag 0, so y at t never depends on x after t. In PyTorch terms:
// F.conv1d(x.transpose(1, 2), weight.flip(-1).unsqueeze(1), bias, padding=K-1, groups=C)[..., :n].
//
// Two algorithms, one result (up to rounding):
// - direct: O(B·n·K·C), the short filters (DeltaNet's, H3's shift).
// - fft: O(B·C·N log N) with N the power of two >= n + min(K, n) - 1: input and kernel
//   zero-padded to N, multiplied in frequency, the FIRST n outputs kept (the padding turns the
//   circular convolution into the linear one, so nothing wraps around into them: causal). Two
//   real sequences that share a kernel (the same channel in two batch rows) ride in one
//   complex transform as real and imaginary parts. The backward is two correlations, also by
//   FFT: dx = g correlated with the kernel, dweight = Σ_b g_b correlated with x_b (summed in
//   frequency, one inverse transform per channel). Channels in parallel, each summed in a
//   fixed order: bit-identical for any thread count.
// Taps at lags >= n never meet an input; their gradient is 0.
#pragma once
#include "../core/tensor.h"

namespace lotgrad {

enum class ConvAlgo { automatic, direct, fft };

Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
                     ConvAlgo algo = ConvAlgo::automatic);

// What ConvAlgo::automatic picks for n positions and K taps: fft when the taps that meet an
// input, min(K, n), exceed kConvFftTapsPerLog·log2 N (direct costs ~K per output, the FFT
// ~log2 N). Measured on 2 cores, B 4, C 64 (forward + backward): at n 1024 the FFT wins from
// K ≈ 128-256, at n 4096 from K ≈ 256-512 (K 1024: 0.16 s vs 0.70 s).
constexpr int64_t kConvFftTapsPerLog = 16;
bool conv_uses_fft(int64_t n, int64_t K);

}  // namespace lotgrad
