// MQAR and character-level language modelling as a Workload: a causal decoder (decoder.h)
// trained with cross-entropy at the labelled positions only (MQAR labels N_kv of L positions;
// LM every position). Metrics: MQAR accuracy over queried positions; LM bits per character.
#include <cmath>

#include "../core/autograd.h"
#include "../data/chars.h"
#include "../data/mqar.h"
#include "../ops/loss.h"
#include "decoder.h"
#include "task.h"
#include "workload.h"

namespace lotgrad::models {

namespace {
struct Splits {
  data::Dataset train, val, test;
};

int64_t seq_len(const TrainConfig& cfg) { return cfg.seq_len > 0 ? cfg.seq_len : cfg.task == "mqar" ? 64 : 256; }

data::MqarOptions mqar_options(const TrainConfig& cfg) {
  data::MqarOptions o;
  o.vocab_size = cfg.vocab;
  o.seq_len = seq_len(cfg);
  o.num_kv_pairs = cfg.kv_pairs;
  o.power_a = cfg.power_a;
  o.random_non_queries = cfg.random_non_queries;
  o.seed = (uint64_t)cfg.seed;
  return o;
}

Splits load_mqar(const TrainConfig& cfg, std::ostream& log) {
  data::MqarSplits s = cfg.data_dir.empty()
                           ? data::generate_mqar_splits(mqar_options(cfg), cfg.gen_train, cfg.gen_val, cfg.gen_test)
                           : data::read_mqar(cfg.data_dir);
  if (cfg.data_dir.empty() && !cfg.write_data.empty()) data::write_mqar(cfg.write_data, s);
  if (!cfg.quiet)
    log << "data: mqar" << (cfg.data_dir.empty() ? " (generated)" : " from " + cfg.data_dir) << ": V " << s.options.vocab_size
        << ", L " << s.options.seq_len << ", " << s.options.num_kv_pairs << " key-value pairs; train " << s.train.size()
        << ", val " << s.val.size() << ", test " << s.test.size() << "\n";
  return {std::move(s.train), std::move(s.val), std::move(s.test)};
}

Splits load_lm(const TrainConfig& cfg, std::ostream& log) {
  if (!cfg.write_data.empty())
    throw std::invalid_argument("train: --write-data: task lm is not generated (its data is the text file, --data FILE)");
  const std::string text = cfg.data_dir.empty() ? data::read_fortunes_corpus() : data::read_text_corpus(cfg.data_dir);
  data::CharSplits s = data::char_lm_splits(data::encode_chars(text), seq_len(cfg), 0.05, 0.05,
                                            cfg.data_dir.empty() ? "fortunes" : cfg.data_dir);
  if (!cfg.quiet)
    log << "data: lm, " << (cfg.data_dir.empty() ? std::string("Debian's fortunes") : cfg.data_dir) << ": " << text.size()
        << " characters; train " << s.train_chars << ", val " << s.val_chars << ", test " << s.test_chars
        << " characters, context " << seq_len(cfg) << "\n";
  return {std::move(s.train), std::move(s.val), std::move(s.test)};
}

class TokensWorkload : public Workload {
 public:
  TokensWorkload(const TrainConfig& cfg, std::ostream& log, Generator& gen, std::shared_ptr<Generator> dgen,
                 const data::Shard& shard)
      : cfg_(cfg),
        shard_(shard),
        bits_(cfg.task == "lm"),
        data_(bits_ ? load_lm(cfg, log) : load_mqar(cfg, log)),
        model_(config(cfg, data_), gen, dgen),
        loader_(data_.train, loader_options(cfg, shard)) {}

  nn::Module& module() override { return model_; }
  StepOutput train_step(int64_t) override {
    const data::Batch b = loader_.next();
    const LabelledLogits ll = labelled_logits(model_, model_.hidden(b.tokens), b.targets);
    StepOutput out{cross_entropy(ll.logits, ll.labels), 0, (double)ll.labels.numel(), (double)b.real_tokens(),
                   (double)ll.labels.numel()};
    out.metric_sum = bits_ ? out.loss.item() / std::log(2.0) * out.metric_count : (double)count_correct(ll.logits, ll.labels);
    return out;
  }
  Score evaluate(const std::string& split, int64_t max_batches, const EvalProgress& progress) override {
    NoGradGuard ng;
    model_.eval();
    const data::Dataset& d = pick(split);
    const int64_t n = max_batches > 0 ? std::min<int64_t>((int64_t)d.size(), max_batches * cfg_.batch) : (int64_t)d.size();
    double sum = 0, count = 0;
    for (const auto& idx : data::sequential_batches((size_t)n, cfg_.batch, shard_)) {
      const data::Batch b = data::collate(d, idx);
      const LabelledLogits ll = labelled_logits(model_, model_.hidden(b.tokens), b.targets);
      const double m = (double)ll.labels.numel();
      sum += bits_ ? cross_entropy(ll.logits, ll.labels).item() * m / std::log(2.0) : (double)count_correct(ll.logits, ll.labels);
      count += m;
      if (progress) progress(idx.back() + 1, n);
    }
    model_.train();
    return {sum, count};
  }
  std::map<std::string, std::string> data_state() const override { return loader_state(loader_); }
  void set_data_state(const std::map<std::string, std::string>& md) override { set_loader_state(loader_, md); }
  // MQAR: one of the context's N_kv values at random; LM: a uniform guess over the vocabulary.
  double baseline(const std::string&) override {
    return bits_ ? std::log2((double)data::kCharVocab) : 1.0 / (double)cfg_.kv_pairs;
  }
  std::string references(const std::string& split) override {
    return (bits_ ? "uniform guess " : "a context value at random ") + std::to_string(baseline(split));
  }
  int64_t eval_examples(const std::string& split) const override { return (int64_t)pick(split).size(); }

 private:
  static DecoderConfig config(const TrainConfig& cfg, const Splits& s) {
    DecoderConfig c;
    c.vocab = s.train.vocab_size;
    c.max_len = seq_len(cfg);
    c.pos = cfg.pos;
    c.init = cfg.init;
    c.embed_dropout = cfg.dropout;
    c.tie_embeddings = cfg.tie_embeddings;
    c.blocks = encoder_config(cfg);
    return c;
  }
  const data::Dataset& pick(const std::string& split) const {
    return split == "train" ? data_.train : split == "val" ? data_.val : data_.test;
  }
  TrainConfig cfg_;
  data::Shard shard_;
  bool bits_;  // lm: bits per character; mqar: accuracy
  Splits data_;
  DecoderLM model_;
  data::DataLoader loader_;
};
}  // namespace

std::unique_ptr<Workload> make_tokens_workload(const TrainConfig& cfg, std::ostream& log, Generator& gen,
                                               std::shared_ptr<Generator> dgen, const data::Shard& shard) {
  return std::make_unique<TokensWorkload>(cfg, log, gen, dgen, shard);
}

}  // namespace lotgrad::models
