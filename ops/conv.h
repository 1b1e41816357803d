// Depthwise causal convolution over time, channels last: the short convolutions of DeltaNet
// (kernel 4 over q, k, v) and H3's shift filter and long convolutions.
//   x (B, n, C), weight (C, K), bias (C) or undefined -> y (B, n, C),
//   y[b, t, c] = bias[c] + Σ_{m=0}^{K-1} weight[c, m] · x[b, t − m, c]   (x before t = 0 is 0).
// weight[:, 0] is lag 0, so y at t never depends on x after t. In PyTorch terms:
// F.conv1d(x.transpose(1, 2), weight.flip(-1).unsqueeze(1), bias, padding=K-1, groups=C)[..., :n].
#pragma once
#include "../core/tensor.h"

namespace lotgrad {

Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

}  // namespace lotgrad
