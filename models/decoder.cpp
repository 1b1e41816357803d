#include "decoder.h"

#include "../data/dataset.h"
#include "../nn/init.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/shape.h"

namespace lotgrad::models {

namespace {
void check_common(const char* who, const std::string& pos, const std::string& init, const nn::EncoderConfig& b) {
  if (pos != "1d" && pos != "none")
    throw std::invalid_argument(std::string(who) + ": pos must be \"1d\" or \"none\", got \"" + pos + "\"");
  if (init != "normal" && init != "torch")
    throw std::invalid_argument(std::string(who) + ": init must be \"normal\" or \"torch\", got \"" + init + "\"");
  for (const auto& a : b.attention)
    if (!a.causal) throw std::invalid_argument(std::string(who) + ": its blocks must be causal (attention " + a.name + ")");
}
}  // namespace

DecoderLM::DecoderLM(const DecoderConfig& cfg, Generator& gen, std::shared_ptr<Generator> dgen) : config(cfg) {
  check_common("DecoderLM", cfg.pos, cfg.init, cfg.blocks);
  const int64_t d = cfg.blocks.d_model;
  embed = register_module("embed", std::make_shared<nn::Embedding>(cfg.vocab, d, gen));
  if (cfg.pos == "1d") pos = register_module("pos", std::make_shared<nn::LearnedPositionalEmbedding>(cfg.max_len, d, gen));
  blocks = register_module("blocks", std::make_shared<nn::TransformerEncoder>(cfg.blocks, gen, dgen));
  if (cfg.blocks.norm) final_ln = register_module("final_ln", std::make_shared<nn::LayerNorm>(d));
  if (!cfg.tie_embeddings) head = register_module("head", std::make_shared<nn::Linear>(d, cfg.vocab, gen));
  drop = register_module("drop", std::make_shared<nn::Dropout>(cfg.embed_dropout, dgen));
  if (cfg.init == "torch") nn::reset_linears_uniform_(*this, gen);
}

Tensor DecoderLM::logits(const Tensor& h) const { return head ? head->forward(h) : linear(h, embed->weight); }

Tensor DecoderLM::hidden(const Tensor& tokens) {
  if (tokens.dim() != 2 || tokens.dtype() != kInt64)
    throw_shape("DecoderLM", "tokens must be (B, n) int64", {{"tokens", &tokens}});
  const int64_t n = tokens.size(1);
  if (pos && n > config.max_len)
    throw std::invalid_argument("DecoderLM: " + std::to_string(n) + " tokens, but the position table holds " +
                                std::to_string(config.max_len));
  Tensor h = embed->forward(tokens);                 // (B, n, D)
  if (pos) h = add(h, pos->forward(n));              // + (n, D)
  h = blocks->forward(drop->forward(h));
  return final_ln ? final_ln->forward(h) : h;
}

LabelledLogits labelled_logits(const DecoderLM& m, const Tensor& hidden, const Tensor& targets) {
  const int64_t B = hidden.size(0), n = hidden.size(1), D = hidden.size(2);
  if (targets.shape() != Shape{B, n} || targets.dtype() != kInt64)
    throw_shape("labelled_logits", "targets must be (B, n) int64 for hidden (B, n, D)",
                {{"hidden", &hidden}, {"targets", &targets}});
  const Tensor t = targets.contiguous();
  const int64_t* tp = t.data_ptr<int64_t>();
  std::vector<int64_t> rows, labels;
  for (int64_t i = 0; i < B * n; ++i)
    if (tp[i] != data::kIgnoreIndex) {
      rows.push_back(i);
      labels.push_back(tp[i]);
    }
  const int64_t M = (int64_t)rows.size();
  if (M == B * n) return {m.logits(hidden.reshape({B * n, D})), t.reshape({B * n})};  // every position labelled
  const Tensor at = index_select(hidden.reshape({B * n, D}), 0, Tensor::from_vector(rows, {M}));  // (M, D)
  return {m.logits(at), Tensor::from_vector(labels, {M})};
}

IclRegressor::IclRegressor(const RegressorConfig& cfg, Generator& gen, std::shared_ptr<Generator> dgen) : config(cfg) {
  check_common("IclRegressor", cfg.pos, cfg.init, cfg.blocks);
  const int64_t d = cfg.blocks.d_model;
  read_in = register_module("read_in", std::make_shared<nn::Linear>(cfg.d_in, d, gen));
  if (cfg.pos == "1d") pos = register_module("pos", std::make_shared<nn::LearnedPositionalEmbedding>(cfg.max_len, d, gen));
  blocks = register_module("blocks", std::make_shared<nn::TransformerEncoder>(cfg.blocks, gen, dgen));
  if (cfg.blocks.norm) final_ln = register_module("final_ln", std::make_shared<nn::LayerNorm>(d));
  read_out = register_module("read_out", std::make_shared<nn::Linear>(d, 1, gen));
  if (cfg.init == "torch") nn::reset_linears_uniform_(*this, gen);
}

Tensor IclRegressor::forward(const Tensor& tokens) {
  if (tokens.dim() != 3 || tokens.size(2) != config.d_in)
    throw_shape("IclRegressor", "tokens must be (B, n, d_in) with d_in = " + std::to_string(config.d_in), {{"tokens", &tokens}});
  const int64_t n = tokens.size(1);
  if (pos && n > config.max_len)
    throw std::invalid_argument("IclRegressor: " + std::to_string(n) + " tokens, but the position table holds " +
                                std::to_string(config.max_len));
  Tensor h = read_in->forward(tokens);  // (B, n, D)
  if (pos) h = add(h, pos->forward(n));
  h = blocks->forward(h);
  if (final_ln) h = final_ln->forward(h);
  return read_out->forward(h).squeeze(-1);  // (B, n)
}

}  // namespace lotgrad::models
