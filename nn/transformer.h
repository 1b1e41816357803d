// Pre-LN transformer encoder: x += Attn(LN(x)); x += MLP(LN(x)), with a mechanism per layer.
// Causal (decoder) stacks are the same blocks with AttentionOptions::causal set.
#pragma once
#include <memory>
#include <vector>

#include "attention.h"
#include "layers.h"

namespace lotgrad::nn {

struct EncoderConfig {
  int64_t depth = 2;
  int64_t d_model = 64;
  int64_t n_heads = 2;
  int64_t mlp_hidden = 128;  // 0: no MLP (attention-only blocks, as Zoology's MQAR models)
  double dropout = 0.0;
  // false: no LayerNorm before attention or MLP (the linear one-layer in-context-regression
  // studies need the block to stay linear in its input).
  bool norm = true;
  // One entry: every layer uses it; else one per layer. n_heads/d_head are filled in.
  std::vector<AttentionOptions> attention = {AttentionOptions{}};
};

class EncoderLayer : public Module {
 public:
  EncoderLayer(const EncoderConfig& cfg, const AttentionOptions& attn, Generator& gen,
               std::shared_ptr<Generator> dropout_gen);
  Tensor forward(const Tensor& x, const Tensor& key_padding_mask = Tensor());  // (B, n, D)
  std::string type_name() const override { return "EncoderLayer"; }
  std::shared_ptr<LayerNorm> ln1, ln2;  // null when config.norm is false (ln2 also without an MLP)
  std::shared_ptr<MultiHeadAttention> attn;
  std::shared_ptr<MLP> mlp;  // null when mlp_hidden is 0
  std::shared_ptr<Dropout> drop;
};

class TransformerEncoder : public Module {
 public:
  TransformerEncoder(const EncoderConfig& cfg, Generator& gen, std::shared_ptr<Generator> dropout_gen = nullptr);
  Tensor forward(const Tensor& x, const Tensor& key_padding_mask = Tensor());  // (B, n, D)
  std::string type_name() const override { return "TransformerEncoder"; }
  std::vector<std::shared_ptr<EncoderLayer>> layers;
  EncoderConfig config;
};

}  // namespace lotgrad::nn
