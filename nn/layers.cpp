#include "layers.h"

#include <cmath>

#include "../ops/dropout.h"
#include "../ops/elementwise.h"
#include "../ops/embedding.h"
#include "../ops/matmul.h"
#include "../ops/mlp.h"
#include "../ops/norm.h"
#include "init.h"

namespace lotgrad::nn {

Linear::Linear(int64_t in, int64_t out, Generator& gen, bool with_bias, double init_std) {
  weight = Tensor::zeros({out, in});
  init::normal_(weight, gen, 0.0, init_std);
  register_parameter("weight", &weight);
  if (with_bias) {
    bias = Tensor::zeros({out});
    register_parameter("bias", &bias);
  }
}
Tensor Linear::forward(const Tensor& x) const { return linear(x, weight, bias); }

void Linear::reset_parameters_uniform(Generator& gen) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(weight.size(1)));
  init::uniform_(weight, gen, -bound, bound);
  if (bias.defined()) init::uniform_(bias, gen, -bound, bound);
}

int reset_linears_uniform_(Module& root, Generator& gen) {
  int count = 0;
  if (auto* lin = dynamic_cast<Linear*>(&root)) {
    lin->reset_parameters_uniform(gen);
    ++count;
  }
  for (auto& [name, child] : root.children()) count += reset_linears_uniform_(*child, gen);
  return count;
}

Embedding::Embedding(int64_t num, int64_t dim, Generator& gen, double init_std) {
  weight = Tensor::zeros({num, dim});
  init::normal_(weight, gen, 0.0, init_std);
  register_parameter("weight", &weight);
}
Tensor Embedding::forward(const Tensor& idx) const { return embedding(weight, idx); }

LayerNorm::LayerNorm(int64_t dim, double eps_) : eps(eps_) {
  weight = Tensor::ones({dim});
  bias = Tensor::zeros({dim});
  register_parameter("weight", &weight);
  register_parameter("bias", &bias);
}
Tensor LayerNorm::forward(const Tensor& x) const { return layer_norm(x, {x.size(-1)}, weight, bias, eps); }

Dropout::Dropout(double p_, std::shared_ptr<Generator> g) : p(p_), gen(std::move(g)) {
  if (p < 0 || p >= 1) throw std::invalid_argument("Dropout: p must be in [0, 1), got " + std::to_string(p));
  if (p > 0 && !gen) throw std::invalid_argument("Dropout: p > 0 needs a generator");
}
Tensor Dropout::forward(const Tensor& x) const {
  if (!is_training() || p == 0.0) return x;
  return dropout(x, p, true, *gen);
}

MLP::MLP(int64_t dim, int64_t hidden, Generator& init_gen, double dropout_p, std::shared_ptr<Generator> dgen,
         int64_t out_dim) {
  fc1 = register_module("fc1", std::make_shared<Linear>(dim, hidden, init_gen));
  fc2 = register_module("fc2", std::make_shared<Linear>(hidden, out_dim < 0 ? dim : out_dim, init_gen));
  drop = register_module("drop", std::make_shared<Dropout>(dropout_p, dgen));
}
Tensor MLP::forward(const Tensor& x, const LayerNorm* pre_norm) const {
  // fc2(dropout(gelu(fc1(x)))) as one op (ops/mlp.h): the hidden activation (and a fused
  // pre-norm's output) is recomputed in the backward instead of being stored.
  Generator& g = drop->gen ? *drop->gen : default_generator();
  const PreNorm pn = pre_norm ? pre_norm->as_pre_norm() : PreNorm{};
  return drop->forward(mlp_gelu(x, fc1->weight, fc1->bias, fc2->weight, fc2->bias, drop->p, drop->is_training(), g,
                                pre_norm ? &pn : nullptr));
}

Tensor Sequential::forward(const Tensor& x) const {
  Tensor h = x;
  for (auto& f : fns_) h = f(h);
  return h;
}

}  // namespace lotgrad::nn
