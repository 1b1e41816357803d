#include "positional.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "../ops/elementwise.h"
#include "../ops/embedding.h"
#include "../ops/shape.h"
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

GridPositionalEmbedding::GridPositionalEmbedding(int64_t h, int64_t w, int64_t lead_, int64_t dim, Generator& gen,
                                                 double s)
    : height(h), width(w), lead(lead_) {
  if (h <= 0 || w <= 0 || lead_ < 0)
    throw ShapeError("GridPositionalEmbedding: needs height, width > 0 and lead >= 0, got height " +
                     std::to_string(h) + ", width " + std::to_string(w) + ", lead " + std::to_string(lead_));
  if (dim % 4 != 0) throw ShapeError("GridPositionalEmbedding: dim must be a multiple of 4, got " + std::to_string(dim));
  // Channel c of a half of width dim/2: sin (even c) or cos (odd c) of p / 10000^(2i / (dim/2)),
  // i = c / 2. A channel holds one code (row or column), RMS about 1/sqrt 2: scale by sqrt(2) s.
  row = Tensor::zeros({h, dim});
  col = Tensor::zeros({w, dim});
  const int64_t half = dim / 2;
  auto code = [&](Tensor& t, int64_t count, int64_t first) {
    float* p = t.data_ptr<float>();
    for (int64_t pos = 0; pos < count; ++pos)
      for (int64_t c = 0; c < half; ++c) {
        const double freq = std::pow(10000.0, -(double)(c - c % 2) / (double)half);
        p[pos * dim + first + c] = (float)(std::sqrt(2.0) * s * (c % 2 == 0 ? std::sin(pos * freq) : std::cos(pos * freq)));
      }
  };
  code(row, h, 0);
  code(col, w, half);
  register_parameter("row", &row);
  register_parameter("col", &col);
  if (lead > 0) {
    lead_weight = Tensor::zeros({lead, dim});
    init::normal_(lead_weight, gen, 0.0, s);
    register_parameter("lead", &lead_weight);
  }
}
Tensor GridPositionalEmbedding::forward(int64_t n) const {
  check_len(n, lead + height * width, "GridPositionalEmbedding");
  const int64_t m = std::max<int64_t>(n - lead, 0);  // grid positions asked for
  std::vector<int64_t> ys((size_t)m), xs((size_t)m);
  for (int64_t p = 0; p < m; ++p) {
    ys[(size_t)p] = p / width;
    xs[(size_t)p] = p % width;
  }
  Tensor grid = add(embedding(row, Tensor::from_vector(ys, {m})), embedding(col, Tensor::from_vector(xs, {m})));  // (m, d)
  if (lead == 0) return grid;
  Tensor first = lead_weight.narrow(0, 0, std::min(n, lead));
  return m == 0 ? first : cat({first, grid}, 0);
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
