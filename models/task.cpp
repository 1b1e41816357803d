#include "task.h"

#include <algorithm>
#include <cmath>

#include "../core/autograd.h"
#include "../data/image.h"
#include "../data/listops.h"
#include "../data/pathfinder.h"
#include "../data/text.h"
#include "../ops/reduce.h"
#include "run_config.h"
#include "workload.h"

namespace lotgrad::models {

// ---------------------------------------------------------------------------------------
// data
// ---------------------------------------------------------------------------------------
TaskData load_task(const TrainConfig& cfg, std::ostream& log) {
  TaskData t;
  const bool gen = cfg.data_dir.empty();
  if (cfg.task == "listops") {
    if (gen) {
      data::ListOpsOptions o;
      o.min_length = cfg.min_len;
      o.max_length = cfg.max_len;
      o.train = cfg.gen_train;
      o.val = cfg.gen_val;
      o.test = cfg.gen_test;
      o.seed = cfg.seed;
      data::ListOpsSplits s = data::generate_listops_splits(o);
      if (!cfg.write_data.empty()) data::write_listops(cfg.write_data, s);
      t = {std::move(s.train), std::move(s.val), std::move(s.test)};
    } else {
      data::ListOpsSplits s = data::read_listops(cfg.data_dir);
      t = {std::move(s.train), std::move(s.val), std::move(s.test)};
    }
  } else if (cfg.task == "pathfinder") {
    data::Dataset all;
    if (gen) {
      data::PathfinderOptions o;
      o.contour_length = cfg.pathfinder_length;
      o.count = cfg.gen_train + cfg.gen_val + cfg.gen_test;
      o.seed = cfg.seed;
      if (!cfg.write_data.empty()) {
        const std::string dir = data::write_pathfinder(cfg.write_data, o);
        all = data::read_pathfinder(dir);
      } else {
        all = data::generate_pathfinder(o);
      }
    } else {
      all = data::read_pathfinder(cfg.data_dir);
    }
    const double test_frac = (double)cfg.gen_test / (double)(cfg.gen_train + cfg.gen_val + cfg.gen_test);
    auto [rest, test] = data::split_tail(std::move(all), gen ? test_frac : 0.1, "test", cfg.seed);
    const double val_frac = gen ? (double)cfg.gen_val / (double)(cfg.gen_train + cfg.gen_val) : 1.0 / 9.0;
    auto [train, val] = data::split_tail(std::move(rest), val_frac, "val", cfg.seed + 1);
    t = {std::move(train), std::move(val), std::move(test)};
  } else if (cfg.task == "image") {
    data::ImageSplits s = cfg.data_dir.empty() ? data::read_fashion_mnist() : data::read_cifar10(cfg.data_dir);
    t = {std::move(s.train), std::move(s.val), std::move(s.test)};
  } else if (cfg.task == "text" || cfg.task == "retrieval") {
    if (gen) throw std::invalid_argument("train: task " + cfg.task + " needs --data DIR (no generator for it)");
    const int64_t L = cfg.max_tokens > 0 ? cfg.max_tokens : 1000;
    if (cfg.task == "text") {
      data::TextOptions o;
      o.max_length = L;
      t.train = data::read_text_csv(cfg.data_dir + "/text_train.csv", o);
      t.test = data::read_text_csv(cfg.data_dir + "/text_test.csv", o);
      t.val = t.test;  // LRA uses the test set as dev for IMDb
    } else {
      data::RetrievalOptions o;
      o.max_length = L;
      t.train = data::read_aan_tsv(cfg.data_dir + "/new_aan_pairs.train.tsv", o);
      t.val = data::read_aan_tsv(cfg.data_dir + "/new_aan_pairs.eval.tsv", o);
      t.test = data::read_aan_tsv(cfg.data_dir + "/new_aan_pairs.test.tsv", o);
    }
  } else {
    throw std::invalid_argument("train: unknown task \"" + cfg.task + "\" (listops, pathfinder, image, text, retrieval)");
  }
  if (t.train.empty() || t.val.empty() || t.test.empty())
    throw std::invalid_argument("train: a split is empty (train " + std::to_string(t.train.size()) + ", val " +
                                std::to_string(t.val.size()) + ", test " + std::to_string(t.test.size()) + ")");
  if (!cfg.quiet)
    log << "data: " << cfg.task << (gen ? " (generated)" : " from " + cfg.data_dir) << ": train " << t.train.size()
        << ", val " << t.val.size() << ", test " << t.test.size() << ", vocab " << t.train.vocab_size << ", "
        << t.train.num_classes << " classes, majority rate on test " << data::majority_rate(t.test) << "\n";
  return t;
}

bool zero_mask_on(const TrainConfig& cfg) {
  return cfg.zero_mask < 0 ? (cfg.task == "pathfinder" || cfg.task == "image") : cfg.zero_mask != 0;
}
// LRA's `token != 0` mask: token id 0 counts as padding wherever it appears.
void mask_zero_tokens(data::Batch& b) {
  for (auto [t, m] : {std::pair{&b.tokens, &b.mask}, std::pair{&b.tokens2, &b.mask2}}) {
    if (!t->defined() || !m->defined()) continue;
    const int64_t* tp = t->data_ptr<int64_t>();
    bool* mp = m->data_ptr<bool>();
    for (int64_t i = 0; i < t->numel(); ++i) mp[i] = mp[i] || tp[i] == 0;
  }
}

namespace {
int64_t longest(const data::Dataset& d) {
  int64_t m = 0;
  for (auto& e : d.examples) m = std::max<int64_t>(m, (int64_t)std::max(e.tokens.size(), e.tokens2.size()));
  return m;
}

}  // namespace

Model build_model(const TrainConfig& cfg, const TaskData& t, Generator& gen, std::shared_ptr<Generator> dgen) {
  ClassifierConfig c;
  c.vocab = std::max({t.train.vocab_size, t.val.vocab_size, t.test.vocab_size});
  c.max_len = std::max({longest(t.train), longest(t.val), longest(t.test)}) + 1;
  c.num_classes = std::max({t.train.num_classes, t.val.num_classes, t.test.num_classes});
  c.pooling = cfg.pooling;
  c.pack = cfg.pack;
  c.init = cfg.init;
  if (cfg.pos == "2d") {
    const int64_t n = c.max_len - 1, side = (int64_t)std::llround(std::sqrt((double)n));
    if (side * side != n)
      throw std::invalid_argument("train: --pos 2d needs square images, but the longest " + cfg.task + " sequence has " +
                                  std::to_string(n) + " tokens");
    c.pos_grid_width = side;
  } else if (cfg.pos != "1d") {
    throw std::invalid_argument("train: --pos must be 1d or 2d, got \"" + cfg.pos + "\"");
  }
  if (cfg.max_positions != 0) {
    if (cfg.pos != "1d")
      throw std::invalid_argument("train: --max-pos sizes the 1d position table; --pos " + cfg.pos + " takes its size from the images");
    if (cfg.max_positions < c.max_len - 1)
      throw std::invalid_argument("train: --max-pos " + std::to_string(cfg.max_positions) + " is shorter than the longest " +
                                  cfg.task + " sequence (" + std::to_string(c.max_len - 1) + " tokens)");
    c.max_len = cfg.max_positions + 1;
  }
  c.encoder = encoder_config(cfg);
  c.embed_dropout = cfg.dropout;
  Model m;
  if (t.train.paired) m.dual = std::make_shared<DualEncoderClassifier>(c, gen, dgen);
  else m.single = std::make_shared<SequenceClassifier>(c, gen, dgen);
  return m;
}

int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  const Tensor pred = argmax(logits.detach(), -1);
  const int64_t* p = pred.data_ptr<int64_t>();
  const int64_t* y = labels.data_ptr<int64_t>();
  int64_t right = 0;
  for (int64_t i = 0; i < labels.numel(); ++i) right += p[i] == y[i];
  return right;
}

Score evaluate(Model& m, const data::Dataset& d, int64_t batch, int64_t max_batches, bool zero_mask,
               const std::function<void(int64_t, int64_t)>& progress, const data::Shard& shard) {
  NoGradGuard ng;
  m.module().eval();
  int64_t right = 0, total = 0;
  // Examples in length order, so a batch pads little; which examples are scored (the first
  // max_batches * batch of the split, when limited) does not depend on the order.
  std::vector<int64_t> order;
  const int64_t n = max_batches > 0 ? std::min<int64_t>((int64_t)d.size(), max_batches * batch) : (int64_t)d.size();
  for (int64_t i = 0; i < n; ++i) order.push_back(i);
  auto len = [&](int64_t i) { return d.examples[(size_t)i].tokens.size() + d.examples[(size_t)i].tokens2.size(); };
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return len(x) < len(y); });
  for (auto& pos : data::sequential_batches((size_t)n, batch, shard)) {
    std::vector<int64_t> idx;
    for (int64_t p : pos) idx.push_back(order[(size_t)p]);
    data::Batch b = data::collate(d, idx);
    if (zero_mask) mask_zero_tokens(b);
    right += count_correct(m.logits(b), b.labels);
    total += b.size();
    if (progress) progress(total, n);
  }
  m.module().train();
  return {(double)right, (double)total};
}

NamedTensors prefixed(const NamedTensors& v, const std::string& p) {
  NamedTensors out;
  for (auto& [k, t] : v) out.emplace_back(p + k, t);
  return out;
}
NamedTensors strip(const NamedTensors& v, const std::string& p) {
  NamedTensors out;
  for (auto& [k, t] : v)
    if (k.rfind(p, 0) == 0) out.emplace_back(k.substr(p.size()), t);
  return out;
}
// A checkpoint's weights into a model built from the command line's options; a mismatch names
// the file and the options that shape the model.
void load_weights(nn::Module& m, const Checkpoint& ck, const std::string& path) {
  try {
    m.load_state_dict(strip(ck.tensors, "model."));
  } catch (const std::exception& e) {
    throw std::invalid_argument(path + ": " + e.what() +
                                " (build the model with the options it was trained with: --attention, --pooling, --pos, "
                                "--max-pos, --depth, --d-model, --heads, --mlp, --norm and the mechanism knobs)");
  }
}

std::vector<std::string> no_decay_names(const TrainConfig& cfg) {
  std::vector<std::string> names = {"bias", "norm", "ln", "embed", "pos"};  // the model's own
  for (const auto& m : run_mechanisms(cfg))
    for (const auto& s : nn::mechanism_spec(m).no_decay) names.push_back(s);
  return names;
}

}  // namespace lotgrad::models
