// LRA models: a sequence classifier and a dual encoder for retrieval, in the common
// 2-layer setting (d = 64, 2 heads, MLP 128; docs/lra.md §4).
#pragma once
#include <memory>
#include <string>

#include "../nn/layers.h"
#include "../nn/positional.h"
#include "../nn/transformer.h"

namespace lotgrad::models {

struct ClassifierConfig {
  int64_t vocab = 32;
  int64_t max_len = 2048;  // learned position table size
  int64_t num_classes = 10;
  nn::EncoderConfig encoder;   // depth 2, d 64, 2 heads, MLP 128 by default
  int64_t head_hidden = 128;   // head: d -> head_hidden -> ReLU -> classes
  std::string pooling = "mean";  // "mean" over valid tokens, or "cls" (a learned token prepended)
  double embed_dropout = 0.0;
  // Linear layers' init: "normal" (N(0, 0.02²) weights, zero bias) or "torch" (PyTorch's
  // nn.Linear default, U(±1/sqrt(in)) for both, which the PyTorch LRA harnesses inherit).
  // Embeddings, the 1-D position table and the CLS token are N(0, 0.02²) either way.
  std::string init = "normal";
  // > 0: images of this width, flattened row by row, get 2-D learned positions (row + column
  // tables, nn::GridPositionalEmbedding) instead of one vector per position.
  int64_t pos_grid_width = 0;
  // Drop masked tokens before the encoder: each row keeps its valid tokens, in order, with
  // their original positions, and the batch is cut to the longest row. The encoder never
  // sees a padded token either way (masked keys get no weight, masked queries are zeroed and
  // not pooled), so for the mechanisms that honour the mask this changes nothing but the
  // cost; with LRA's token-0 mask a Pathfinder image shrinks to its ~200 lit pixels.
  bool pack = false;
};

// tokens (B, n) i64 and key_padding_mask (B, n) bool (true = pad) -> logits (B, C).
class SequenceClassifier : public nn::Module {
 public:
  SequenceClassifier(const ClassifierConfig& cfg, Generator& gen, std::shared_ptr<Generator> dropout_gen = nullptr);
  Tensor forward(const Tensor& tokens, const Tensor& key_padding_mask = Tensor());
  // The pooled (B, d) representation (what the head sees).
  Tensor encode(const Tensor& tokens, const Tensor& key_padding_mask = Tensor());
  // The encoder's input: token + position embeddings (dropout in training), the CLS token
  // prepended, masked tokens packed out when config.pack; h (B, n', d) and its mask m.
  void embed_input(const Tensor& tokens, const Tensor& key_padding_mask, Tensor& h, Tensor& m);
  std::string type_name() const override { return "SequenceClassifier"; }
  ClassifierConfig config;
  std::shared_ptr<nn::Embedding> embed;
  std::shared_ptr<nn::LearnedPositionalEmbedding> pos;     // 1-D positions, or
  std::shared_ptr<nn::GridPositionalEmbedding> pos_grid;  // 2-D ones (config.pos_grid_width > 0)
  // The first n rows of the position table (CLS slot first when pooling == "cls"): (n, d).
  Tensor positions(int64_t n) const;
  std::shared_ptr<nn::TransformerEncoder> encoder;
  std::shared_ptr<nn::LayerNorm> final_ln;
  std::shared_ptr<nn::Linear> head1, head2;
  std::shared_ptr<nn::Dropout> drop;
  Tensor cls;  // (1, 1, d) when pooling == "cls"
};

// Retrieval: one shared encoder for both documents, head on [u, v, u*v, u-v].
class DualEncoderClassifier : public nn::Module {
 public:
  DualEncoderClassifier(const ClassifierConfig& cfg, Generator& gen, std::shared_ptr<Generator> dropout_gen = nullptr);
  Tensor forward(const Tensor& tokens1, const Tensor& mask1, const Tensor& tokens2, const Tensor& mask2);
  std::string type_name() const override { return "DualEncoderClassifier"; }
  std::shared_ptr<SequenceClassifier> tower;  // its head is unused
  std::shared_ptr<nn::Linear> head1, head2;
};

// Mean over valid tokens: x (B, n, d), mask (B, n) true = pad -> (B, d).
Tensor masked_mean(const Tensor& x, const Tensor& key_padding_mask);

}  // namespace lotgrad::models
