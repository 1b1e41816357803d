#include "rope.h"

#include <cmath>
#include <string>
#include <vector>

#include "../core/autograd.h"
#include "../core/error.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {

// cos and sin of every (batch row, position, pair) angle, in double: (B, n, d/2) each.
struct Angles {
  std::vector<double> cos, sin;
};
Angles angles(const std::vector<double>& pos, int64_t half, double base) {
  Angles a;
  a.cos.resize(pos.size() * (size_t)half);
  a.sin.resize(a.cos.size());
  for (size_t r = 0; r < pos.size(); ++r)
    for (int64_t i = 0; i < half; ++i) {
      const double th = pos[r] * std::pow(base, -2.0 * (double)i / (double)(2 * half));
      a.cos[r * (size_t)half + (size_t)i] = std::cos(th);
      a.sin[r * (size_t)half + (size_t)i] = std::sin(th);
    }
  return a;
}

// y = rotation of x by +θ (sign 1) or −θ (sign −1), x and y contiguous (B, H, n, d).
template <class T>
void rotate(const T* x, T* y, const Angles& a, int64_t B, int64_t H, int64_t n, int64_t d, double sign) {
  const int64_t half = d / 2;
  parallel_for(0, B * H * n, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (H * n), t = r % n;
      const double* c = &a.cos[(size_t)((b * n + t) * half)];
      const double* s = &a.sin[(size_t)((b * n + t) * half)];
      const T* xr = x + r * d;
      T* yr = y + r * d;
      for (int64_t i = 0; i < half; ++i) {
        const double x1 = xr[i], x2 = xr[i + half], sn = sign * s[i];
        yr[i] = (T)(x1 * c[i] - x2 * sn);
        yr[i + half] = (T)(x2 * c[i] + x1 * sn);
      }
    }
  });
}

Tensor rotated(const Tensor& x, const Angles& a, double sign) {
  const Tensor xc = x.contiguous();
  Tensor y = make_tensor_uninit(xc.shape(), xc.dtype());
  dispatch_float(xc.dtype(), "rope", [&]<class T>() {
    rotate<T>(xc.data_ptr<T>(), y.data_ptr<T>(), a, xc.size(0), xc.size(1), xc.size(2), xc.size(3), sign);
  });
  return y;
}

struct RopeBackward : Node {
  Angles a;
  const char* name() const override { return "RopeBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override { return {rotated(g[0], a, -1.0)}; }
};

}  // namespace

Tensor rope(const Tensor& x, const Tensor& positions, double base) {
  if (!x.defined() || !positions.defined()) throw ShapeError("rope: undefined tensor");
  if (!is_floating(x.dtype())) throw_dtype("rope", "expects a floating x (f32 or f64)", {{"x", &x}, {"positions", &positions}});
  if (x.dim() != 4 || x.size(3) % 2 != 0)
    throw_shape("rope", "x must be (B, H, n, d) with d even", {{"x", &x}, {"positions", &positions}});
  if (positions.dim() != 2 || positions.size(0) != x.size(0) || positions.size(1) != x.size(2))
    throw_shape("rope", "positions must be (B, n) = (" + std::to_string(x.size(0)) + ", " + std::to_string(x.size(2)) + ")",
                {{"x", &x}, {"positions", &positions}});
  if (!(base > 0) || !std::isfinite(base)) throw std::invalid_argument("rope: base must be finite and > 0, got " + std::to_string(base));
  Angles a = angles(positions.detach().to(kFloat64).to_vector(), x.size(3) / 2, base);
  Tensor y = rotated(x.detach(), a, 1.0);
  if (auto node = make_node<RopeBackward>({x})) {
    node->a = std::move(a);
    set_history(y, node);
  }
  return y;
}

}  // namespace lotgrad
