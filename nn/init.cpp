#include "init.h"

#include <cmath>

#include "../core/autograd.h"

namespace lotgrad::nn::init {

void normal_(Tensor& t, Generator& gen, double mean, double std) {
  NoGradGuard ng;
  Tensor r = randn(t.shape(), gen, t.dtype());
  r.mul_(std);
  if (mean != 0.0) r.add_(Tensor::scalar(mean, t.dtype()));
  t.detach().copy_(r);
}
void uniform_(Tensor& t, Generator& gen, double low, double high) {
  NoGradGuard ng;
  Tensor r = rand(t.shape(), gen, t.dtype());
  r.mul_(high - low);
  r.add_(Tensor::scalar(low, t.dtype()));
  t.detach().copy_(r);
}
void xavier_uniform_(Tensor& t, Generator& gen, double gain) {
  if (t.dim() < 2) throw_shape("xavier_uniform_", "needs at least 2 dims", {{"t", &t}});
  const double fan_out = (double)t.size(0) * (t.numel() / (t.size(0) * t.size(1)));
  const double fan_in = (double)t.size(1) * (t.numel() / (t.size(0) * t.size(1)));
  const double a = gain * std::sqrt(6.0 / (fan_in + fan_out));
  uniform_(t, gen, -a, a);
}
void zeros_(Tensor& t) {
  NoGradGuard ng;
  t.detach().zero_();
}
void ones_(Tensor& t) {
  NoGradGuard ng;
  t.detach().fill_(1.0);
}

}  // namespace lotgrad::nn::init
