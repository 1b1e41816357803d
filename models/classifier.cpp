#include "classifier.h"

#include "../ops/elementwise.h"
#include "../ops/reduce.h"
#include "../ops/shape.h"
#include "../nn/init.h"

namespace lotgrad::models {

Tensor masked_mean(const Tensor& x, const Tensor& mask) {
  if (!mask.defined()) return mean(x, {1});
  Tensor keep = logical_not(mask).to(x.dtype()).unsqueeze(-1);            // (B, n, 1)
  Tensor count = clamp(sum(keep, {1}), 1.0);                              // (B, 1)
  return div(sum(mul(x, keep), {1}), count);                              // (B, d)
}

SequenceClassifier::SequenceClassifier(const ClassifierConfig& cfg, Generator& gen, std::shared_ptr<Generator> dgen)
    : config(cfg) {
  const int64_t d = cfg.encoder.d_model;
  if (cfg.pooling != "mean" && cfg.pooling != "cls")
    throw std::invalid_argument("SequenceClassifier: pooling must be \"mean\" or \"cls\", got \"" + cfg.pooling + "\"");
  embed = register_module("embed", std::make_shared<nn::Embedding>(cfg.vocab, d, gen));
  pos = register_module("pos", std::make_shared<nn::LearnedPositionalEmbedding>(cfg.max_len + 1, d, gen));
  encoder = register_module("encoder", std::make_shared<nn::TransformerEncoder>(cfg.encoder, gen, dgen));
  final_ln = register_module("final_ln", std::make_shared<nn::LayerNorm>(d));
  head1 = register_module("head1", std::make_shared<nn::Linear>(d, cfg.head_hidden, gen));
  head2 = register_module("head2", std::make_shared<nn::Linear>(cfg.head_hidden, cfg.num_classes, gen));
  drop = register_module("drop", std::make_shared<nn::Dropout>(cfg.embed_dropout, dgen));
  if (cfg.pooling == "cls") {
    cls = Tensor::zeros({1, 1, d});
    nn::init::normal_(cls, gen, 0.0, 0.02);
    register_parameter("cls", &cls);
  }
}

Tensor SequenceClassifier::encode(const Tensor& tokens, const Tensor& mask) {
  if (tokens.dim() != 2 || tokens.dtype() != kInt64)
    throw_shape("SequenceClassifier", "tokens must be (B, n) int64", {{"tokens", &tokens}});
  const int64_t B = tokens.size(0);
  Tensor h = embed->forward(tokens);  // (B, n, d)
  Tensor m = mask;
  if (config.pooling == "cls") {
    h = cat({cls.to(h.dtype()).expand({B, 1, h.size(2)}), h}, 1);  // (B, 1 + n, d)
    if (m.defined()) m = cat({Tensor::zeros({B, 1}, kBool), m}, 1);
  }
  const int64_t n = h.size(1);
  h = drop->forward(add(h, pos->forward(n)));
  h = final_ln->forward(encoder->forward(h, m));
  if (config.pooling == "cls") return h.select(1, 0);
  return masked_mean(h, m);
}

Tensor SequenceClassifier::forward(const Tensor& tokens, const Tensor& mask) {
  return head2->forward(relu(head1->forward(encode(tokens, mask))));
}

DualEncoderClassifier::DualEncoderClassifier(const ClassifierConfig& cfg, Generator& gen, std::shared_ptr<Generator> dgen) {
  tower = register_module("tower", std::make_shared<SequenceClassifier>(cfg, gen, dgen));
  const int64_t d = cfg.encoder.d_model;
  head1 = register_module("head1", std::make_shared<nn::Linear>(4 * d, cfg.head_hidden, gen));
  head2 = register_module("head2", std::make_shared<nn::Linear>(cfg.head_hidden, cfg.num_classes, gen));
}

Tensor DualEncoderClassifier::forward(const Tensor& t1, const Tensor& m1, const Tensor& t2, const Tensor& m2) {
  Tensor u = tower->encode(t1, m1), v = tower->encode(t2, m2);  // (B, d) each
  Tensor f = cat({u, v, mul(u, v), sub(u, v)}, -1);              // (B, 4d)
  return head2->forward(relu(head1->forward(f)));
}

}  // namespace lotgrad::models
