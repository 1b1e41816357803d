#include "classifier.h"

#include "../ops/elementwise.h"
#include "../ops/embedding.h"
#include "../nn/attention.h"
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
  if (cfg.init != "normal" && cfg.init != "torch")
    throw std::invalid_argument("SequenceClassifier: init must be \"normal\" or \"torch\", got \"" + cfg.init + "\"");
  embed = register_module("embed", std::make_shared<nn::Embedding>(cfg.vocab, d, gen));
  if (cfg.pos_grid_width > 0) {
    const int64_t w = cfg.pos_grid_width, lead = cfg.pooling == "cls" ? 1 : 0;
    pos_grid = register_module("pos", std::make_shared<nn::GridPositionalEmbedding>((cfg.max_len + w - 1) / w, w, lead, d, gen));
  } else {
    pos = register_module("pos", std::make_shared<nn::LearnedPositionalEmbedding>(cfg.max_len + 1, d, gen));
  }
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
  if (cfg.init == "torch") nn::reset_linears_uniform_(*this, gen);
}

Tensor SequenceClassifier::positions(int64_t n) const { return pos_grid ? pos_grid->forward(n) : pos->forward(n); }

void SequenceClassifier::embed_input(const Tensor& tokens, const Tensor& mask, Tensor& h, Tensor& m) {
  if (tokens.dim() != 2 || tokens.dtype() != kInt64)
    throw_shape("SequenceClassifier", "tokens must be (B, n) int64", {{"tokens", &tokens}});
  const int64_t B = tokens.size(0), n0 = tokens.size(1);
  if (mask.defined() && (mask.dtype() != kBool || mask.shape() != tokens.shape()))
    throw_shape("SequenceClassifier", "key_padding_mask must be bool and match tokens", {{"tokens", &tokens}, {"mask", &mask}});
  const bool with_cls = config.pooling == "cls";
  const int64_t shift = with_cls ? 1 : 0;  // the CLS token takes position 0
  // Packing pays only when it removes columns (a batch padded at the end to its longest row,
  // as the loader makes them, is left as it is).
  std::vector<std::vector<int64_t>> valid;
  int64_t L = 1;
  if (config.pack && mask.defined()) {
    valid = nn::valid_positions(mask, B, n0);
    for (auto& v : valid) L = std::max<int64_t>(L, (int64_t)v.size());
  }
  if (config.pack && mask.defined() && L < n0) {
    // (B, L) rows of valid tokens, L = the longest row; each keeps its original position.
    const Tensor tc = tokens.contiguous();
    const int64_t* tp = tc.data_ptr<int64_t>();
    std::vector<int64_t> tok((size_t)(B * L), 0), at((size_t)(B * L), 0);
    Tensor pm = Tensor::ones({B, L}, kBool);
    bool* pmp = pm.data_ptr<bool>();
    for (int64_t b = 0; b < B; ++b)
      for (size_t j = 0; j < valid[(size_t)b].size(); ++j) {
        tok[(size_t)(b * L) + j] = tp[b * n0 + valid[(size_t)b][j]];
        at[(size_t)(b * L) + j] = valid[(size_t)b][j] + shift;
        pmp[b * L + (int64_t)j] = false;
      }
    const Tensor tk = Tensor::from_vector(tok, {B, L}), ps = Tensor::from_vector(at, {B, L});
    h = add(embed->forward(tk), embedding(positions(n0 + shift), ps));  // (B, L, d)
    m = pm;
    if (with_cls) {
      Tensor c = add(cls.to(h.dtype()), positions(1).to(h.dtype()));   // (1, 1, d)
      h = cat({c.expand({B, 1, h.size(2)}), h}, 1);                                     // (B, 1 + L, d)
      m = cat({Tensor::zeros({B, 1}, kBool), m}, 1);
    }
    h = drop->forward(h);
  } else {
    h = embed->forward(tokens);  // (B, n, d)
    m = mask;
    if (with_cls) {
      h = cat({cls.to(h.dtype()).expand({B, 1, h.size(2)}), h}, 1);  // (B, 1 + n, d)
      if (m.defined()) m = cat({Tensor::zeros({B, 1}, kBool), m}, 1);
    }
    h = drop->forward(add(h, positions(h.size(1))));
  }
}

Tensor SequenceClassifier::encode(const Tensor& tokens, const Tensor& mask) {
  Tensor h, m;
  embed_input(tokens, mask, h, m);
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
  if (cfg.init == "torch") {  // the tower has re-initialised its own
    head1->reset_parameters_uniform(gen);
    head2->reset_parameters_uniform(gen);
  }
}

Tensor DualEncoderClassifier::forward(const Tensor& t1, const Tensor& m1, const Tensor& t2, const Tensor& m2) {
  Tensor u = tower->encode(t1, m1), v = tower->encode(t2, m2);  // (B, d) each
  Tensor f = cat({u, v, mul(u, v), sub(u, v)}, -1);              // (B, 4d)
  return head2->forward(relu(head1->forward(f)));
}

}  // namespace lotgrad::models
