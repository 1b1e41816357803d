// Inverted dropout with a counter-based mask: element i (row-major) is kept iff
// uniform(seed, base + i) >= p, where base is reserved from the generator. The mask is a
// pure function of (seed, base, i), so it does not depend on the thread count, and the
// backward recomputes it instead of storing it.
#pragma once
#include "../core/random.h"
#include "../core/tensor.h"

namespace lotgrad {

// training and p > 0: x * mask / (1 - p) (all zeros when p == 1), drawing numel values
// from gen. Otherwise x itself, and no draws. p must lie in [0, 1].
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);
// Same, drawing from default_generator().
Tensor dropout(const Tensor& x, double p = 0.5, bool training = true);

}  // namespace lotgrad
