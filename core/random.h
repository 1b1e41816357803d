// Explicit, seedable random numbers. The generator is counter-based: draw i of a request
// is a pure function of (seed, counter + i), so results never depend on the thread count.
#pragma once
#include <cstdint>

#include "tensor.h"

namespace lotgrad {

// The largest seed a command line or a stored configuration takes: 2^53, exact in a double.
inline constexpr double kMaxSeed = 9007199254740992.0;

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) { manual_seed(seed); }
  void manual_seed(uint64_t seed) { seed_ = seed; counter_ = 0; }
  uint64_t seed() const { return seed_; }
  uint64_t counter() const { return counter_; }
  void set_state(uint64_t seed, uint64_t counter) { seed_ = seed; counter_ = counter; }
  // Reserves n draws; returns the first counter. Draw i is at counter base + i.
  uint64_t reserve(uint64_t n) { uint64_t b = counter_; counter_ += n; return b; }

  // Stateless draws at a given counter. bits and uniform are inline so that loops over
  // counters (dropout masks) vectorise.
  static uint64_t bits(uint64_t seed, uint64_t counter) { return bits_mixed(seed_mix(seed), counter); }
  // bits split in two, so a loop over counters computes the seed's half once.
  static uint64_t seed_mix(uint64_t seed) { return mix64(seed + 0x9e3779b97f4a7c15ULL); }
  static uint64_t bits_mixed(uint64_t seed_mixed, uint64_t counter) {
    return mix64(seed_mixed ^ (counter * 0xd1342543de82ef95ULL + 0x2545f4914f6cdd1dULL));
  }
  static double uniform(uint64_t seed, uint64_t counter) { return (double)(bits(seed, counter) >> 11) * 0x1.0p-53; }  // [0, 1)
  static double normal(uint64_t seed, uint64_t counter);   // N(0, 1)
  // uniform(seed, c) >= p  <=>  (bits(seed, c) >> 11) >= uniform_threshold(p): the same test
  // in integers (p * 2^53 is exact), cheaper in a vectorised loop.
  static uint64_t uniform_threshold(double p);
  static uint64_t mix64(uint64_t z) {  // splitmix64 finaliser: a bijective 64-bit mixer
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  // Stateful conveniences (each reserves its draws).
  double uniform() { return uniform(seed_, reserve(1)); }
  double normal() { return normal(seed_, reserve(1)); }
  int64_t randint(int64_t low, int64_t high);  // [low, high)

 private:
  uint64_t seed_ = 0, counter_ = 0;
};

// Process-wide default generator, reset by manual_seed().
Generator& default_generator();
void manual_seed(uint64_t seed);

Tensor rand(const Shape& shape, Generator& gen, DType dtype = kFloat32);   // U[0,1)
Tensor randn(const Shape& shape, Generator& gen, DType dtype = kFloat32);  // N(0,1)
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& gen);  // i64
Tensor randperm(int64_t n, Generator& gen);                                // i64
inline Tensor rand(const Shape& s, DType d = kFloat32) { return rand(s, default_generator(), d); }
inline Tensor randn(const Shape& s, DType d = kFloat32) { return randn(s, default_generator(), d); }

}  // namespace lotgrad
