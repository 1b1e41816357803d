// Positional encodings: learned (a parameter table) and sinusoidal (a fixed buffer).
// forward(n) returns (n, d), to be added to (B, n, d) token embeddings by broadcasting.
#pragma once
#include "../core/random.h"
#include "module.h"

namespace lotgrad::nn {

class LearnedPositionalEmbedding : public Module {
 public:
  LearnedPositionalEmbedding(int64_t max_len, int64_t dim, Generator& gen, double init_std = 0.02);
  Tensor forward(int64_t n) const;  // (n, d)
  std::string type_name() const override { return "LearnedPositionalEmbedding"; }
  Tensor weight;  // (max_len, d)
};

// Learned 2-D positions for images flattened row by row: position lead + y*width + x gets
// row[y] + col[x] ((height + width) * d parameters instead of height * width * d). The tables
// start as a 2-D sine-cosine code (the first d/2 channels encode y, the last d/2 encode x, as
// in MAE), scaled to RMS init_std: near pixels have near codes from step 0, which a random
// table would have to learn first. The first `lead` positions (a CLS token) have vectors of
// their own, N(0, init_std²).
class GridPositionalEmbedding : public Module {
 public:
  GridPositionalEmbedding(int64_t height, int64_t width, int64_t lead, int64_t dim, Generator& gen,
                          double init_std = 0.02);
  Tensor forward(int64_t n) const;  // (n, d), n <= lead + height * width
  std::string type_name() const override { return "GridPositionalEmbedding"; }
  int64_t height, width, lead;
  Tensor row, col, lead_weight;  // (height, d), (width, d), (lead, d) when lead > 0
};

// PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)).
class SinusoidalPositionalEncoding : public Module {
 public:
  SinusoidalPositionalEncoding(int64_t max_len, int64_t dim);
  Tensor forward(int64_t n) const;  // (n, d)
  std::string type_name() const override { return "SinusoidalPositionalEncoding"; }
  Tensor table;  // buffer (max_len, d)
};

}  // namespace lotgrad::nn
