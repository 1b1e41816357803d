#include "workload.h"

#include "run_config.h"

namespace lotgrad::models {

const std::vector<TaskSpec>& task_specs() {
  static const std::vector<TaskSpec> specs = {
      {"listops", TaskKind::classify, "LRA ListOps: the value (0-9) of a nested list expression", "acc"},
      {"pathfinder", TaskKind::classify, "LRA Pathfinder: are two dots joined by a dashed path (pixels as tokens)", "acc"},
      {"image", TaskKind::classify, "LRA Image: CIFAR-10 (--data) or Fashion-MNIST pixels as a sequence", "acc"},
      {"text", TaskKind::classify, "LRA Text: IMDb sentiment from bytes (--data)", "acc"},
      {"retrieval", TaskKind::classify, "LRA Retrieval: do two AAN papers cite each other, from bytes (--data)", "acc"},
      {"mqar", TaskKind::tokens, "multi-query associative recall (Zoology): the value of each queried key", "acc", true,
       "softmax"},
      {"icl-regression", TaskKind::regression, "in-context linear regression: predict y = w·x from earlier (x, y) pairs",
       "mse", false, "linear"},
      {"lm", TaskKind::tokens, "character-level language modelling of a text (96 characters)", "bpc", false, "softmax"},
  };
  return specs;
}

const TaskSpec& task_spec(const std::string& name) {
  std::string known;
  for (const auto& t : task_specs()) {
    if (t.name == name) return t;
    known += (known.empty() ? "" : ", ") + t.name;
  }
  throw std::invalid_argument("unknown task \"" + name + "\" (" + known + ")");
}

bool is_causal_run(const TrainConfig& cfg) { return cfg.causal || task_spec(cfg.task).kind != TaskKind::classify; }

std::vector<nn::AttentionOptions> attention_options(const TrainConfig& cfg) {
  std::vector<nn::AttentionOptions> out;
  for (const auto& m : layer_mechanisms(cfg)) {
    nn::AttentionOptions a;
    a.name = m;
    a.n_heads = cfg.heads;
    a.knobs = effective_knobs(cfg, m);
    a.causal = is_causal_run(cfg);
    out.push_back(a);
  }
  return out;
}

nn::EncoderConfig encoder_config(const TrainConfig& cfg) {
  nn::EncoderConfig e;
  e.depth = cfg.depth;
  e.d_model = cfg.d_model;
  e.n_heads = cfg.heads;
  e.mlp_hidden = cfg.mlp;
  e.dropout = cfg.dropout;
  e.norm = cfg.norm;
  e.attention = attention_options(cfg);
  return e;
}

data::LoaderOptions loader_options(const TrainConfig& cfg, const data::Shard& shard) {
  data::LoaderOptions lo;
  lo.shard = shard;
  lo.batch_size = cfg.batch;
  lo.seed = (uint64_t)cfg.seed;
  lo.drop_last = true;
  return lo;
}

std::map<std::string, std::string> loader_state(const data::DataLoader& loader) {
  return {{"loader_epoch", std::to_string(loader.state().epoch)}, {"loader_index", std::to_string(loader.state().index)}};
}

void set_loader_state(data::DataLoader& loader, const std::map<std::string, std::string>& md) {
  loader.set_state({std::stoll(md.at("loader_epoch")), std::stoll(md.at("loader_index"))});
}

std::unique_ptr<Workload> make_workload(const TrainConfig& cfg, std::ostream& log, Generator& init_gen,
                                        std::shared_ptr<Generator> dgen, const data::Shard& shard) {
  switch (task_spec(cfg.task).kind) {
    case TaskKind::classify: return make_classify_workload(cfg, log, init_gen, dgen, shard);
    case TaskKind::tokens: return make_tokens_workload(cfg, log, init_gen, dgen, shard);
    case TaskKind::regression: return make_regression_workload(cfg, log, init_gen, dgen, shard);
  }
  throw std::logic_error("make_workload: unhandled task kind");
}

}  // namespace lotgrad::models
