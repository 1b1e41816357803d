#include "positional.h"

#include <cmath>

#include "init.h"

namespace lotgrad::nn {

static void check_len(int64_t n, int64_t max_len, const char* who) {
  if (n < 0 || n > max_len)
    throw ShapeError(std::string(who) + ": sequence length " + std::to_string(n) + " exceeds max_len " +
                     std::to_string(max_len));
}

LearnedPositionalEmbedding::LearnedPositionalEmbedding(int64_t max_len, int64_t dim, Generator& gen, double s) {
  weight = Tensor::zeros({max_len, dim});
  init::normal_(weight, gen, 0.0, s);
  register_parameter("weight", &weight);
}
Tensor LearnedPositionalEmbedding::forward(int64_t n) const {
  check_len(n, weight.size(0), "LearnedPositionalEmbedding");
  return weight.narrow(0, 0, n);
}

SinusoidalPositionalEncoding::SinusoidalPositionalEncoding(int64_t max_len, int64_t dim) {
  table = Tensor::zeros({max_len, dim});
  float* p = table.data_ptr<float>();
  for (int64_t pos = 0; pos < max_len; ++pos)
    for (int64_t i = 0; i < dim; ++i) {
      const double freq = std::pow(10000.0, -(double)(i - i % 2) / (double)dim);
      p[pos * dim + i] = (float)(i % 2 == 0 ? std::sin(pos * freq) : std::cos(pos * freq));
    }
  register_buffer("table", &table);
}
Tensor SinusoidalPositionalEncoding::forward(int64_t n) const {
  check_len(n, table.size(0), "SinusoidalPositionalEncoding");
  return table.narrow(0, 0, n);
}

}  // namespace lotgrad::nn
