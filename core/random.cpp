#include "random.h"

#include <cmath>

#include "parallel.h"

namespace lotgrad {

uint64_t Generator::uniform_threshold(double p) {
  if (!(p > 0)) return 0;
  if (p >= 1) return uint64_t(1) << 53;  // nothing passes
  return (uint64_t)std::ceil(p * 0x1.0p53);
}
double Generator::normal(uint64_t seed, uint64_t counter) {
  // Box-Muller from two independent streams at the same counter.
  const double u1 = ((double)(bits(seed, counter) >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  const double u2 = (double)(bits(seed ^ 0x5851f42d4c957f2dULL, counter) >> 11) * 0x1.0p-53;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}
int64_t Generator::randint(int64_t low, int64_t high) {
  if (high <= low) throw std::invalid_argument("randint: need low < high");
  return low + (int64_t)(bits(seed_, reserve(1)) % (uint64_t)(high - low));
}

Generator& default_generator() {
  static Generator g(0);
  return g;
}
void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

template <class Draw>
static Tensor fill_random(const Shape& shape, DType dtype, Generator& gen, Draw draw) {
  if (!is_floating(dtype)) throw DTypeError("rand/randn: dtype must be f32 or f64, got " + std::string(dtype_name(dtype)));
  Tensor t = make_tensor(shape, dtype);
  const int64_t n = t.numel();
  const uint64_t base = gen.reserve((uint64_t)n), seed = gen.seed();
  auto fill = [&]<class T>() {
    T* p = t.data_ptr<T>();
    parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] = static_cast<T>(draw(seed, base + (uint64_t)i));
    });
  };
  if (dtype == DType::f32) fill.template operator()<float>();
  else fill.template operator()<double>();
  return t;
}
Tensor rand(const Shape& shape, Generator& gen, DType dtype) {
  return fill_random(shape, dtype, gen, [](uint64_t s, uint64_t c) { return Generator::uniform(s, c); });
}
Tensor randn(const Shape& shape, Generator& gen, DType dtype) {
  return fill_random(shape, dtype, gen, [](uint64_t s, uint64_t c) { return Generator::normal(s, c); });
}
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& gen) {
  if (high <= low) throw std::invalid_argument("randint: need low < high");
  Tensor t = make_tensor(shape, DType::i64);
  int64_t* p = t.data_ptr<int64_t>();
  const int64_t n = t.numel();
  const uint64_t base = gen.reserve((uint64_t)n), seed = gen.seed();
  for (int64_t i = 0; i < n; ++i) p[i] = low + (int64_t)(Generator::bits(seed, base + i) % (uint64_t)(high - low));
  return t;
}
Tensor randperm(int64_t n, Generator& gen) {
  Tensor t = Tensor::arange(n, DType::i64);
  int64_t* p = t.data_ptr<int64_t>();
  const uint64_t base = gen.reserve((uint64_t)std::max<int64_t>(n, 0)), seed = gen.seed();
  for (int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates
    const int64_t j = (int64_t)(Generator::bits(seed, base + i) % (uint64_t)(i + 1));
    std::swap(p[i], p[j]);
  }
  return t;
}

}  // namespace lotgrad
