// Causal sequence models: a decoder-only language model (MQAR, character-level LM) and an
// in-context regression model (vectors in, one number out per x position). Both are a read-in,
// a stack of causal pre-LN blocks (nn::TransformerEncoder with AttentionOptions::causal; an MLP
// width of 0 gives attention-only blocks, as Zoology's MQAR models) and a read-out.
#pragma once
#include <memory>
#include <string>

#include "../nn/layers.h"
#include "../nn/positional.h"
#include "../nn/transformer.h"

namespace lotgrad::models {

struct DecoderConfig {
  int64_t vocab = 97;        // token ids in [0, vocab); the head predicts one of them
  int64_t max_len = 256;     // rows of the learned position table
  std::string pos = "1d";    // "1d": learned positions; "none": none (the blocks see only content)
  nn::EncoderConfig blocks;  // the causal blocks; blocks.norm also governs the final LayerNorm
  std::string init = "normal";  // Linear init: "normal" N(0, 0.02²) or "torch" (ClassifierConfig::init)
  double embed_dropout = 0.0;
  // The head reuses the token embedding (logits = h Eᵀ, as GPT-2 and Zoology's models): a
  // recalled token's embedding scores as that token from the start.
  bool tie_embeddings = true;
};

// Decoder-only language model: token + position embeddings, causal blocks, final LayerNorm,
// a linear head over the vocabulary.
class DecoderLM : public nn::Module {
 public:
  DecoderLM(const DecoderConfig& cfg, Generator& gen, std::shared_ptr<Generator> dropout_gen = nullptr);
  // tokens (B, n) i64 -> hidden states (B, n, D) after the final LayerNorm.
  Tensor hidden(const Tensor& tokens);
  // (..., D) -> logits (..., vocab).
  Tensor logits(const Tensor& hidden) const;
  Tensor forward(const Tensor& tokens) { return logits(hidden(tokens)); }
  std::string type_name() const override { return "DecoderLM"; }
  DecoderConfig config;
  std::shared_ptr<nn::Embedding> embed;
  std::shared_ptr<nn::LearnedPositionalEmbedding> pos;  // null for pos "none"
  std::shared_ptr<nn::TransformerEncoder> blocks;
  std::shared_ptr<nn::LayerNorm> final_ln;              // null when blocks.norm is false
  std::shared_ptr<nn::Linear> head;  // null when the embedding is tied
  std::shared_ptr<nn::Dropout> drop;
};

// Logits (M, vocab) and labels (M) at the labelled positions of targets (B, n) (labels other
// than kIgnoreIndex): the head runs on those M rows only, a factor n·B/M less work when labels
// are sparse (MQAR labels N_kv of L positions).
struct LabelledLogits {
  Tensor logits, labels;
};
LabelledLogits labelled_logits(const DecoderLM& m, const Tensor& hidden, const Tensor& targets);

// In-context regression (Garg et al. arXiv 2208.01066; Li, Rawat & Oymak arXiv 2407.10005):
// a linear read-in of token vectors (B, n, d_in), optional learned positions, causal blocks,
// an optional final LayerNorm, a linear read-out to one number per token.
struct RegressorConfig {
  int64_t d_in = 8;
  int64_t max_len = 64;
  std::string pos = "1d";   // "none": the one-layer studies give linear attention no positions
  nn::EncoderConfig blocks;
  std::string init = "normal";
};
class IclRegressor : public nn::Module {
 public:
  IclRegressor(const RegressorConfig& cfg, Generator& gen, std::shared_ptr<Generator> dropout_gen = nullptr);
  // tokens (B, n, d_in) f32 -> (B, n): the read-out at every token.
  Tensor forward(const Tensor& tokens);
  std::string type_name() const override { return "IclRegressor"; }
  RegressorConfig config;
  std::shared_ptr<nn::Linear> read_in, read_out;
  std::shared_ptr<nn::LearnedPositionalEmbedding> pos;
  std::shared_ptr<nn::TransformerEncoder> blocks;
  std::shared_ptr<nn::LayerNorm> final_ln;
};

}  // namespace lotgrad::models
