#include "dropout.h"

#include <string>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {

// out[i] = in[i] * (kept(i) ? scale : 0) over contiguous data.
template <class T>
void apply_mask(const T* in, T* out, int64_t n, uint64_t seed, uint64_t base, double p, T scale) {
  const uint64_t thr = Generator::uniform_threshold(p), sm = Generator::seed_mix(seed);  // kept iff uniform >= p
  parallel_for(0, n, kParallelGrain / 4, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = (Generator::bits_mixed(sm, base + (uint64_t)i) >> 11) >= thr ? in[i] * scale : T(0);
  });
}

struct DropoutBackward : Node {
  uint64_t seed = 0, base = 0;
  double p = 0, scale = 1;
  const char* name() const override { return "DropoutBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor g = grads[0].contiguous();
    Tensor dx = make_tensor_uninit(g.shape(), g.dtype());
    dispatch_float(g.dtype(), name(), [&]<class T>() { apply_mask<T>(g.data_ptr<T>(), dx.data_ptr<T>(), g.numel(), seed, base, p, (T)scale); });
    return {dx};
  }
};

}  // namespace

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  if (!x.defined()) throw ShapeError("dropout: undefined tensor");
  if (!(p >= 0.0 && p <= 1.0)) throw std::invalid_argument("dropout: p must be in [0, 1], got " + std::to_string(p));
  if (!is_floating(x.dtype())) throw_dtype("dropout", "expects a floating tensor (f32 or f64)", {{"x", &x}});
  if (!training || p == 0.0) return x;
  const int64_t n = x.numel();
  const uint64_t seed = gen.seed(), base = gen.reserve((uint64_t)n);
  const double scale = p == 1.0 ? 0.0 : 1.0 / (1.0 - p);
  const Tensor xc = x.detach().contiguous();
  Tensor out = make_tensor_uninit(x.shape(), x.dtype());
  dispatch_float(x.dtype(), "dropout", [&]<class T>() { apply_mask<T>(xc.data_ptr<T>(), out.data_ptr<T>(), n, seed, base, p, (T)scale); });
  if (auto node = make_node<DropoutBackward>({x})) {
    node->seed = seed;
    node->base = base;
    node->p = p;
    node->scale = scale;
    set_history(out, node);
  }
  return out;
}

Tensor dropout(const Tensor& x, double p, bool training) { return dropout(x, p, training, default_generator()); }

}  // namespace lotgrad
