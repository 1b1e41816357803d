#include "transformer.h"

#include "../ops/elementwise.h"

namespace lotgrad::nn {

EncoderLayer::EncoderLayer(const EncoderConfig& cfg, const AttentionOptions& a, Generator& gen,
                           std::shared_ptr<Generator> dgen) {
  AttentionOptions opt = a;
  opt.n_heads = cfg.n_heads;
  if (cfg.mlp_hidden < 0)
    throw std::invalid_argument("EncoderLayer: mlp_hidden must be >= 0 (0: no MLP), got " + std::to_string(cfg.mlp_hidden));
  if (cfg.norm) ln1 = register_module("ln1", std::make_shared<LayerNorm>(cfg.d_model));
  attn = register_module("attn", std::make_shared<MultiHeadAttention>(cfg.d_model, opt, gen));
  if (cfg.mlp_hidden > 0) {
    if (cfg.norm) ln2 = register_module("ln2", std::make_shared<LayerNorm>(cfg.d_model));
    mlp = register_module("mlp", std::make_shared<MLP>(cfg.d_model, cfg.mlp_hidden, gen, cfg.dropout, dgen));
  }
  drop = register_module("drop", std::make_shared<Dropout>(cfg.dropout, dgen));
}
Tensor EncoderLayer::forward(const Tensor& x, const Tensor& mask) {
  // Pre-LN: ln1 and ln2 are fused into the QKV projection and the MLP (their outputs are
  // recomputed in the backward, not stored).
  Tensor h = add(x, drop->forward(attn->forward(x, mask, ln1.get())));
  return mlp ? add(h, mlp->forward(h, ln2.get())) : h;
}

TransformerEncoder::TransformerEncoder(const EncoderConfig& cfg, Generator& gen, std::shared_ptr<Generator> dgen)
    : config(cfg) {
  if (cfg.attention.empty() || (cfg.attention.size() != 1 && (int64_t)cfg.attention.size() != cfg.depth))
    throw std::invalid_argument("TransformerEncoder: give one attention setting or one per layer (depth " +
                                std::to_string(cfg.depth) + ", got " + std::to_string(cfg.attention.size()) + ")");
  if (cfg.dropout > 0 && !dgen) throw std::invalid_argument("TransformerEncoder: dropout > 0 needs a dropout generator");
  for (int64_t i = 0; i < cfg.depth; ++i) {
    const AttentionOptions& a = cfg.attention.size() == 1 ? cfg.attention[0] : cfg.attention[i];
    layers.push_back(register_module("layers." + std::to_string(i), std::make_shared<EncoderLayer>(cfg, a, gen, dgen)));
  }
}
Tensor TransformerEncoder::forward(const Tensor& x, const Tensor& mask) {
  Tensor h = x;
  for (auto& l : layers) h = l->forward(h, mask);
  return h;
}

}  // namespace lotgrad::nn
