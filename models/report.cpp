// `lotgrad report`'s reading side (report.h).
#include "report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "../core/autograd.h"
#include "../core/error.h"
#include "../core/io.h"
#include "../core/parallel.h"
#include "../nn/probe.h"
#include "run_config.h"
#include "task.h"
#include "workload.h"

namespace fs = std::filesystem;

namespace lotgrad::models {

namespace {
// The run's settings: config.json, else a checkpoint's stored configuration.
void read_config(RunData& r) {
  const std::string json = r.dir + "/config.json";
  if (fs::exists(json)) {
    r.config = config_from_json(read_file(json), json);
    r.config_source = "config.json";
    return;
  }
  for (const char* ck : {"best.ckpt", "last.ckpt"}) {
    const std::string p = r.dir + "/" + ck;
    if (fs::exists(p) && stores_config(p)) {
      r.config = stored_config(p);
      r.config_source = ck;
      return;
    }
  }
}

// Best dev from the dev records, the end record's test / ms/step / tokens/s, else the mean of
// the training windows' tokens/s.
void end_figures(RunData& r) {
  const std::string dev = "dev_" + r.metric, test = "test_" + r.metric;
  double tok = 0;
  int64_t tok_n = 0;
  for (const auto& rec : r.records) {
    r.last_step = std::max(r.last_step, rec.step);
    if (rec.has(dev)) {
      const double v = rec.values.at(dev);
      const bool better = std::isnan(r.best_dev) || (r.higher_is_better ? v > r.best_dev : v < r.best_dev);
      if (better) r.best_dev = v, r.best_step = rec.step;
    }
    if (rec.has(test)) r.test = rec.values.at(test);
    if (rec.has("ms_per_step")) r.ms_per_step = rec.values.at("ms_per_step");
    if (rec.has("tokens_per_s")) {
      if (rec.has("ms_per_step")) r.tokens_per_s = rec.values.at("tokens_per_s");  // the whole run's figure
      else tok += rec.values.at("tokens_per_s"), ++tok_n;
    }
  }
  if (std::isnan(r.tokens_per_s) && tok_n > 0) r.tokens_per_s = tok / (double)tok_n;
}
}  // namespace

RunData load_run(const std::string& dir) {
  RunData r;
  r.dir = dir;
  r.name = fs::path(dir).lexically_normal().filename().string();
  if (r.name.empty()) r.name = fs::path(dir).lexically_normal().parent_path().filename().string();
  if (!fs::is_directory(dir)) throw IOError("report: " + dir + " is not a run directory");
  read_config(r);
  const std::string log = dir + "/metrics.jsonl";
  if (fs::exists(log)) r.records = read_metrics(log, /*tolerate_torn_tail=*/true);
  if (r.config_source.empty() && r.records.empty())
    throw IOError("report: " + dir + " holds no config.json, no checkpoint with settings and no metrics.jsonl");
  if (!r.config_source.empty()) {
    const TaskSpec& t = task_spec(r.config.task);
    r.metric = t.metric;
    r.higher_is_better = t.higher_is_better;
  } else {  // a log alone: the metric its dev records name
    for (const auto& rec : r.records)
      for (const auto& [k, v] : rec.values)
        if (k.rfind("dev_", 0) == 0) r.metric = k.substr(4);
    r.higher_is_better = r.metric != "mse" && r.metric != "bpc";
  }
  end_figures(r);
  if (fs::exists(dir + "/best.ckpt")) r.best_checkpoint = dir + "/best.ckpt";
  return r;
}

std::vector<ExampleAttention> checkpoint_attention(const TrainConfig& cfg_in, const std::string& path,
                                                   const std::string& split, const std::vector<int64_t>& indices,
                                                   double rank_tol, int64_t rank_max_n, std::ostream& log,
                                                   bool skip_missing) {
  if (task_spec(cfg_in.task).kind != TaskKind::classify)
    throw std::invalid_argument("report: attention maps of task " + cfg_in.task +
                                " are not supported yet (the LRA classification tasks are)");
  if (split != "test" && split != "val" && split != "train")
    throw std::invalid_argument("report: --split must be train, val or test, got \"" + split + "\"");
  TrainConfig cfg = cfg_in;
  cfg.pack = false;  // every position where it is
  TaskData t = load_task(cfg, log);
  Generator g((uint64_t)cfg.seed);
  Model m = build_model(cfg, t, g, std::make_shared<Generator>(0));
  if (!m.single) throw std::invalid_argument("report: paired tasks (retrieval) have no attention maps here");
  load_weights(m.module(), load_checkpoint(path), path);
  m.module().eval();
  const data::Dataset& d = split == "test" ? t.test : split == "val" ? t.val : t.train;
  SequenceClassifier& model = *m.single;
  const auto& layers = model.encoder->layers;
  NoGradGuard ng;
  std::vector<ExampleAttention> out;
  for (const int64_t e : indices) {
    if ((e < 0 || e >= (int64_t)d.size()) && skip_missing) continue;
    if (e < 0 || e >= (int64_t)d.size())
      throw std::invalid_argument("report: example " + std::to_string(e) + " is outside the " + split + " split (" +
                                  std::to_string(d.size()) + " examples)");
    data::Batch b = data::collate(d, {e});
    if (zero_mask_on(cfg)) mask_zero_tokens(b);
    Tensor x, mask;
    model.embed_input(b.tokens, b.mask, x, mask);
    ExampleAttention ex;
    ex.index = e;
    ex.layers = (int64_t)layers.size();
    ex.heads = cfg.heads;
    for (auto& layer : layers) {
      const Tensor A = nn::probe_attention(*layer->attn, layer->ln1 ? layer->ln1->forward(x) : x, mask);  // (1, H, n, n)
      ex.n = A.size(2);
      const nn::AttentionStats st = nn::attention_stats(A, mask, ex.n <= rank_max_n ? rank_tol : -1.0);
      const int64_t valid = (int64_t)nn::valid_positions(mask, 1, ex.n)[0].size();
      std::vector<double> bound = layer->attn->mechanism->weight_bound(valid);
      bound.resize((size_t)cfg.heads, 0.0);
      for (int64_t h = 0; h < cfg.heads; ++h) {
        ex.maps.push_back(A.select(0, 0).select(0, h).contiguous().to_vector());
        ex.rank.push_back(ex.n <= rank_max_n ? (int64_t)st.rank.at({0, h}) : -1);
        ex.bound.push_back(bound[(size_t)h]);
      }
      x = layer->forward(x, mask);
    }
    out.push_back(std::move(ex));
  }
  return out;
}

}  // namespace lotgrad::models
