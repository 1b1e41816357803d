// Basic layers: Linear, Embedding, LayerNorm, Dropout, MLP (GELU), Sequential.
#pragma once
#include <functional>
#include <memory>

#include "../core/random.h"
#include "../ops/norm.h"
#include "module.h"

namespace lotgrad::nn {

// y = x Wᵀ + b; W (out, in) as in PyTorch. Init: normal(0, 0.02) weights, zero bias.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, Generator& gen, bool bias = true, double init_std = 0.02);
  Tensor forward(const Tensor& x) const;  // (..., in) -> (..., out)
  // PyTorch's nn.Linear default: W and b ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform, a = sqrt 5).
  // About 3.6x the 0.02 scale at in = 64, so attention logits are not near zero at step 0.
  void reset_parameters_uniform(Generator& gen);
  std::string type_name() const override { return "Linear"; }
  Tensor weight, bias;
};

// Re-initialises every Linear in the module tree (depth first, registration order) with
// reset_parameters_uniform; the other parameters keep their values. Returns how many.
int reset_linears_uniform_(Module& root, Generator& gen);

// Lookup table (num_embeddings, dim); indices int64 of any shape -> (..., dim).
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t dim, Generator& gen, double init_std = 0.02);
  Tensor forward(const Tensor& indices) const;
  std::string type_name() const override { return "Embedding"; }
  Tensor weight;
};

// Normalises over the last dim; weight 1, bias 0.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5);
  Tensor forward(const Tensor& x) const;
  // This norm as the pre-norm of a fused op (ops/heads.h, ops/mlp.h).
  PreNorm as_pre_norm() const { return {weight, bias, eps}; }
  std::string type_name() const override { return "LayerNorm"; }
  Tensor weight, bias;
  double eps;
};

// Zeroes each element with probability p in training, scales the rest by 1/(1-p); identity
// in eval. Draws come from a generator shared across the model (its state is checkpointed).
class Dropout : public Module {
 public:
  Dropout(double p, std::shared_ptr<Generator> gen);
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "Dropout"; }
  double p;
  std::shared_ptr<Generator> gen;
};

// Linear -> GELU -> Dropout -> Linear -> Dropout.
class MLP : public Module {
 public:
  MLP(int64_t dim, int64_t hidden, Generator& init_gen, double dropout = 0.0,
      std::shared_ptr<Generator> dropout_gen = nullptr, int64_t out_dim = -1);
  // pre_norm: a LayerNorm applied to x first, fused into the op (see ops/mlp.h).
  Tensor forward(const Tensor& x, const LayerNorm* pre_norm = nullptr) const;
  std::string type_name() const override { return "MLP"; }
  std::shared_ptr<Linear> fc1, fc2;
  std::shared_ptr<Dropout> drop;
};

// Applies its children in order; each child is given as a module plus its forward.
class Sequential : public Module {
 public:
  using Fn = std::function<Tensor(const Tensor&)>;
  template <class M>
  Sequential& add(const std::string& name, std::shared_ptr<M> m) {
    register_module(name, m);
    fns_.push_back([m](const Tensor& x) { return m->forward(x); });
    return *this;
  }
  // A parameter-free step (e.g. an activation).
  Sequential& add_fn(Fn f) {
    fns_.push_back(std::move(f));
    return *this;
  }
  Tensor forward(const Tensor& x) const;
  std::string type_name() const override { return "Sequential"; }

 private:
  std::vector<Fn> fns_;
};

}  // namespace lotgrad::nn
