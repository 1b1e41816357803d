#include "run_config.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "../core/parse.h"
#include "../nn/attention.h"
#include "workload.h"

namespace lotgrad::models {

using json = nlohmann::json;
using C = TrainConfig;

namespace {
constexpr double kBig = 1e9;

std::string num(double v) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

std::vector<std::string> tasks() {
  std::vector<std::string> names;
  for (const auto& t : task_specs()) names.push_back(t.name);
  return names;
}

// The declarations. Ranges are what the code supports; the cross-field rules are in validate().
std::vector<ConfigField> declare() {
  const double cores = (double)omp_get_num_procs();
  return {
      // ---- data
      {"task", Role::data, "the task (`lotgrad info` describes them)", &C::task, 0, 0, tasks()},
      {"data", Role::data,
       "read the task from DIR (LRA: the official layout; mqar, icl-regression: what --write-data wrote) or, for lm, a text FILE; "
       "without it, generate the task (lm: Debian's fortunes)",
       &C::data_dir},
      {"write-data", Role::free, "when generating, also write the files here", &C::write_data},
      {"train-size", Role::data, "generated training examples", &C::gen_train, 1, kBig},
      {"val-size", Role::data, "generated dev examples", &C::gen_val, 1, kBig},
      {"test-size", Role::data, "generated test examples", &C::gen_test, 1, kBig},
      {"min-len", Role::data, "ListOps: shortest length (exclusive)", &C::min_len, 1, 1e7},
      {"max-len", Role::data, "ListOps: longest length (exclusive)", &C::max_len, 2, 1e7},
      {"path-length", Role::data, "Pathfinder difficulty: dashes per path (LRA: 6, 9, 14)", &C::pathfinder_length, 1, 64},
      {"max-tokens", Role::data, "text, retrieval: truncation (0: 1000)", &C::max_tokens, 0, 1e7},
      {"seq-len", Role::data, "mqar: sequence length L; lm: context length (0: 64 for mqar, 256 for lm)", &C::seq_len, 0, 1e7},
      {"vocab", Role::data, "mqar: vocabulary V (keys below V/2, values above)", &C::vocab, 4, 1e7},
      {"kv-pairs", Role::data, "mqar: key-value pairs N_kv per sequence (4·N_kv <= L)", &C::kv_pairs, 1, 1e6},
      {"power-a", Role::data, "mqar: the query-gap law p(g) ∝ a·g^(a-1) (1: uniform)", &C::power_a, 1e-6, 1e3},
      {"random-non-queries", Role::data, "mqar: random tokens, not 0, between the queries", &C::random_non_queries, 0, 0, {},
       true},
      {"dim", Role::data, "icl-regression: dimension d of x", &C::dim, 1, 4096},
      {"points", Role::data, "icl-regression: in-context examples n per prompt", &C::points, 1, 1e5},
      {"noise", Role::data, "icl-regression: label noise σ (design iid)", &C::noise, 0, 1e6},
      {"x-std", Role::data,
       "icl-regression: std of each x coordinate (Garg et al.: 1; 0: 1/sqrt(dim), Kuang et al., so that Var(y) = 1)",
       &C::x_std, 0, 1e6},
      {"design", Role::data, "icl-regression: iid (noise σ everywhere) or hetero (first half noiseless, second half σ = 10)",
       &C::design, 0, 0, {"iid", "hetero"}},
      {"layout", Role::data,
       "icl-regression: interleaved (x, y tokens, a prediction at every x; Garg et al.) or paired ([x; y] tokens and a final "
       "query [x; 0]; Li, Rawat & Oymak)",
       &C::layout, 0, 0, {"interleaved", "paired"}},
      {"curriculum", Role::data, "icl-regression: every N steps one more dim and two more points (0: off)", &C::curriculum, 0,
       kBig},
      {"dims-start", Role::data, "icl-regression: the curriculum's first number of dims", &C::dims_start, 1, 4096},
      {"points-start", Role::data, "icl-regression: the curriculum's first number of points", &C::points_start, 1, 1e5},
      {"seed", Role::data, "seed of the generated data, the initial weights and the batch order", &C::seed, 0, kMaxSeed},
      {"zero-mask", Role::data, "LRA's token-0-is-padding mask: -1 on for pathfinder and image, 0 off, 1 on", &C::zero_mask,
       -1, 1},
      // ---- model
      {"attention", Role::model, "the attention mechanism (`lotgrad info` lists them; default: lotformer for the LRA tasks, softmax for mqar and lm, linear for icl-regression)", &C::attention, 0, 0,
       nn::attention_names()},
      {"layer-attention", Role::model,
       "per-layer mixing: LAYER:MECHANISM[,...] gives those layers (0 first) that mechanism instead of --attention; a knob "
       "applies to every layer whose mechanism has it",
       &C::layer_attention},
      {"no-preset", Role::model, "start the knobs from their defaults, not the mechanism's preset for the task",
       &C::use_preset, 0, 0, {}, true, true},
      {"pooling", Role::model, "mean over valid tokens, or a learned CLS token", &C::pooling, 0, 0, {"mean", "cls"}},
      {"causal", Role::model, "causal attention: position i sees positions j <= i (mechanisms with a causal form)",
       &C::causal, 0, 0, {}, true},
      {"depth", Role::model, "encoder layers", &C::depth, 1, 256},
      {"d-model", Role::model, "model width", &C::d_model, 1, 65536},
      {"heads", Role::model, "attention heads (d-model must be a multiple)", &C::heads, 1, 4096},
      {"mlp", Role::model, "hidden width of each block's MLP (0: no MLP)", &C::mlp, 0, 1e6},
      {"tie-embeddings", Role::model, "mqar, lm: 1: the output head is the token embedding (GPT-2, Zoology); 0: its own",
       &C::tie_embeddings},
      {"norm", Role::model, "0: no LayerNorm in the blocks or before the head (keeps a one-layer model linear)", &C::norm},
      {"pos", Role::model, "1d: learned positions; 2d: learned row + column positions (square images); none", &C::pos, 0, 0,
       {"1d", "2d", "none"}},
      {"max-pos", Role::model, "1d: a position table for N tokens (0: the data's longest), so a curriculum keeps one table",
       &C::max_positions, 0, 1e8},
      // ---- training
      {"pack", Role::run, "1: masked tokens are dropped before the encoder (same result, less work)", &C::pack},
      {"dropout", Role::run, "dropout rate", &C::dropout, 0, 0.99},
      {"init", Role::run, "Linear weights N(0, 0.02²) (normal) or PyTorch's U(±1/sqrt(in)) (torch)", &C::init, 0, 0,
       {"normal", "torch"}},
      {"steps", Role::run, "optimiser steps", &C::steps, 1, kBig},
      {"batch", Role::run, "examples per step (under mpirun: the global batch, split across the ranks)", &C::batch, 1, 1e6},
      {"bucket", Role::run, "N > 0: batches of similar length, sorted in chunks of N batches", &C::bucket, 0, 1e6},
      {"lr", Role::run, "peak learning rate (AdamW)", &C::lr, 0, 10},
      {"warmup", Role::run, "warm-up: a fraction of the steps (< 1) or a number of steps", &C::warmup, 0, kBig},
      {"lr-floor", Role::run, "the cosine decay ends at lr * floor", &C::lr_floor, 0, 1},
      {"clip", Role::run, "clip the gradient norm to this (0: off)", &C::clip, 0, 1e9},
      {"weight-decay", Role::run, "AdamW weight decay (not on biases, norms, embeddings, mechanism no-decay parameters)",
       &C::weight_decay, 0, 10},
      {"eval-every", Role::run, "evaluate on dev every N steps (the best-on-dev checkpoint)", &C::eval_every, 1, kBig},
      {"eval-batches", Role::run, "batches per dev evaluation (0: the whole dev set)", &C::eval_batches, 0, kBig},
      {"init-from", Role::run, "start from this checkpoint's weights with a fresh optimiser (fine-tuning, a curriculum)",
       &C::init_from},
      // ---- output
      {"out", Role::free, "the run directory: config.json, last.ckpt, best.ckpt, metrics.jsonl (none: runs/<task>-<attention>)",
       &C::out_dir},
      {"checkpoint-every", Role::free, "write last.ckpt every N steps", &C::checkpoint_every, 1, kBig},
      {"log-every", Role::free, "a progress line every N steps (0: about 50 per run)", &C::log_every, 0, kBig},
      {"threads", Role::free, "threads (0: all cores, or LOTGRAD_NUM_THREADS; under mpirun: per rank)", &C::threads, 0, cores},
      {"allreduce-bucket-kb", Role::free,
       "under mpirun: gradients are summed across ranks in buckets of about this many KiB, each as backward finishes it",
       &C::allreduce_bucket_kb, 1, 1 << 20},
      {"resume", Role::free, "continue the run in --out from last.ckpt, with its stored settings", &C::resume, 0, 0, {},
       true},
      {"override", Role::free, "with --resume: allow options that change the run (lr, steps, ...)", &C::override_run, 0, 0,
       {}, true},
      {"overwrite", Role::free, "train into --out even though it holds checkpoints (they are replaced)", &C::overwrite, 0,
       0, {}, true},
      {"quiet", Role::free, "no progress output", &C::quiet, 0, 0, {}, true},
      {"detect-anomaly", Role::free,
       "name the op that first makes a NaN or Inf, forward or backward (PyTorch's set_detect_anomaly; slower)",
       &C::detect_anomaly, 0, 0, {}, true},
  };
}

template <class T>
T& ref(TrainConfig& c, T C::*m) {
  return c.*m;
}
}  // namespace

const std::vector<ConfigField>& config_fields() {
  static const std::vector<ConfigField> fields = declare();
  return fields;
}

const ConfigField* config_field(const std::string& option) {
  for (const auto& f : config_fields())
    if (f.option == option) return &f;
  return nullptr;
}

namespace {
std::string replaced(std::string s, char from, char to) {
  std::replace(s.begin(), s.end(), from, to);
  return s;
}
}  // namespace

std::string knob_option(const std::string& knob) { return replaced(knob, '_', '-'); }
std::string knob_name(const std::string& option) { return replaced(option, '-', '_'); }

std::string ConfigField::key() const { return knob_name(option); }

std::string ConfigField::range() const {
  if (std::holds_alternative<bool C::*>(member)) return flag ? "flag" : "0|1";
  if (std::holds_alternative<std::string C::*>(member)) {
    if (choices.empty()) return "text";
    std::string r;
    for (const auto& ch : choices) {
      if (!r.empty()) r += '|';
      r += ch;
    }
    return r;
  }
  std::string r = "[";  // appended, not "[" + ...: g++ 12 warns (-Wrestrict) on that form here
  r += format_number(lo);
  r += ", ";
  r += format_number(hi);
  return r + "]";
}

std::string ConfigField::get(const TrainConfig& c) const {
  return std::visit(
      [&](auto m) -> std::string {
        const auto& v = c.*m;
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) return v;
        else if constexpr (std::is_same_v<T, bool>) return (v != inverted) ? "1" : "0";
        else return num((double)v);
      },
      member);
}

std::string ConfigField::problem(const std::string& text) const {
  const std::string bad = "\"" + text + "\": expected ";
  return std::visit(
      [&](auto m) -> std::string {
        using T = std::decay_t<decltype(TrainConfig{}.*m)>;
        if constexpr (std::is_same_v<T, std::string>) {
          if (!choices.empty() && std::find(choices.begin(), choices.end(), text) == choices.end())
            return bad + "one of " + range();
          return "";
        } else if constexpr (std::is_same_v<T, bool>) {
          return text == "0" || text == "1" ? "" : bad + "0 or 1";
        } else {
          const std::optional<double> n = parse_number(text);
          const bool whole = std::is_integral_v<T>;
          if (!n) return bad + (whole ? "an integer in " : "a number in ") + range();
          const double d = *n;
          if (d < lo || d > hi || (whole && d != std::floor(d)))
            return text + " is outside " + range() + (whole ? " (an integer)" : "");
          return "";
        }
      },
      member);
}

void ConfigField::set(TrainConfig& c, const std::string& text) const {
  const std::string p = problem(text);
  if (!p.empty()) throw std::invalid_argument("--" + option + " " + p);
  std::visit(
      [&](auto m) {
        auto& v = c.*m;
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) v = text;
        else if constexpr (std::is_same_v<T, bool>) v = (text == "1") != inverted;
        else v = (T)std::stod(text);
      },
      member);
}

std::vector<std::string> knob_names() {
  std::vector<std::string> names;
  std::set<std::string> seen;
  for (const auto& s : nn::attention_registry())
    for (const auto& k : s.knobs)
      if (seen.insert(k.name).second) names.push_back(k.name);
  return names;
}

std::vector<std::string> layer_mechanisms(const TrainConfig& cfg) {
  std::vector<std::string> m((size_t)std::max<int64_t>(cfg.depth, 0), cfg.attention);
  std::vector<bool> named(m.size(), false);
  const std::string& text = cfg.layer_attention;
  const std::string opt = "--layer-attention " + text;
  for (size_t at = 0; !text.empty() && at <= text.size();) {
    const size_t end = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, end - at);
    const size_t colon = item.find(':');
    int64_t layer = -1;
    if (colon != std::string::npos && colon > 0 && colon <= 9 &&
        item.find_first_not_of("0123456789") == colon)
      layer = std::stoll(item.substr(0, colon));
    if (layer < 0)
      throw std::invalid_argument(opt + ": \"" + item + "\" is not LAYER:MECHANISM (e.g. 1:softmax)");
    if (layer >= cfg.depth)
      throw std::invalid_argument(opt + ": layer " + num((double)layer) + " is outside [0, " + num((double)cfg.depth - 1) +
                                  "] (--depth " + num((double)cfg.depth) + ")");
    if (named[(size_t)layer]) throw std::invalid_argument(opt + ": layer " + num((double)layer) + " is named twice");
    try {
      m[(size_t)layer] = nn::mechanism_spec(item.substr(colon + 1)).name;
    } catch (const std::exception& e) {
      throw std::invalid_argument(opt + ": " + e.what());
    }
    named[(size_t)layer] = true;
    at = end + 1;
  }
  return m;
}

std::vector<std::string> run_mechanisms(const TrainConfig& cfg) {
  std::vector<std::string> out = {cfg.attention};
  for (const auto& m : layer_mechanisms(cfg))
    if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
  return out;
}

namespace {
// The declaration of a knob in the first of the run's mechanisms that has it (null: none).
const nn::Knob* run_knob(const TrainConfig& cfg, const std::string& knob) {
  for (const auto& m : run_mechanisms(cfg))
    if (const nn::Knob* k = nn::mechanism_spec(m).knob(knob)) return k;
  return nullptr;
}
}  // namespace

std::map<std::string, double> effective_knobs(const TrainConfig& cfg, const std::string& mechanism) {
  const nn::MechanismSpec& spec = nn::mechanism_spec(mechanism);
  std::map<std::string, double> k = cfg.use_preset ? spec.preset(cfg.task) : std::map<std::string, double>{};
  for (const auto& [name, v] : cfg.knobs)
    if (spec.knob(name) || !run_knob(cfg, name)) k[name] = v;  // one no layer declares: refused by resolve_knobs
  return nn::resolve_knobs(spec, k);
}

std::map<std::string, double> effective_knobs(const TrainConfig& cfg) {
  const std::vector<std::string> mechs = run_mechanisms(cfg);
  if (mechs.size() == 1) return effective_knobs(cfg, cfg.attention);
  std::string names;
  for (const auto& m : mechs) names += (names.empty() ? "" : ", ") + m;
  for (const auto& [name, v] : cfg.knobs)
    if (!run_knob(cfg, name))
      throw std::invalid_argument("--" + knob_option(name) + ": none of this run's mechanisms (" + names +
                                  ") has a knob " + name);
  std::map<std::string, double> all;
  std::map<std::string, std::string> from;
  std::string clash;  // knobs whose presets or defaults differ between two of the mechanisms
  for (const auto& m : mechs)
    for (const auto& [name, v] : effective_knobs(cfg, m)) {
      if (all.count(name) && all[name] != v)
        clash += (clash.empty() ? "" : "; ") + ("--" + knob_option(name)) + " (" + from[name] + " " +
                 format_knob(cfg, name, all[name]) + ", " + m + " " + format_knob(cfg, name, v) + ")";
      all.emplace(name, v);
      from.emplace(name, m);
    }
  if (!clash.empty())
    throw std::invalid_argument("--layer-attention " + cfg.layer_attention + ": a knob takes one value in every layer, and " +
                                "these differ between the mechanisms' presets or defaults: " + clash + "; give each one");
  return all;
}

std::string format_knob(const TrainConfig& cfg, const std::string& knob, double v) {
  const nn::Knob* k = run_knob(cfg, knob);
  return k ? k->format(v) : num(v);
}

namespace {
std::string n2(const char* a, double x, const char* b, double y) {
  return std::string("--") + a + " " + num(x) + " and --" + b + " " + num(y);
}
// The generated sequence tasks' own rules (data/mqar.h, data/icl_regression.h).
void validate_sequence_task(const TrainConfig& c) {
  const int64_t L = c.seq_len > 0 ? c.seq_len : 64;
  if (c.task == "mqar" && c.data_dir.empty()) {
    if (L % 2) throw std::invalid_argument("--seq-len " + num((double)L) + ": mqar needs an even sequence length");
    if (c.vocab <= L)
      throw std::invalid_argument(n2("vocab", (double)c.vocab, "seq-len", (double)L) +
                                  ": mqar needs a vocabulary larger than the sequence (Zoology's rule)");
    if (4 * c.kv_pairs > L)
      throw std::invalid_argument(n2("kv-pairs", (double)c.kv_pairs, "seq-len", (double)L) +
                                  ": mqar needs 4·N_kv <= L (the context of 2·N_kv tokens and a query slot per key)");
    if (c.kv_pairs > c.vocab / 2 - 1)
      throw std::invalid_argument(n2("kv-pairs", (double)c.kv_pairs, "vocab", (double)c.vocab) +
                                  ": mqar draws N_kv distinct keys from the V/2 - 1 ids below V/2");
  }
  if (c.task == "icl-regression") {
    if (c.curriculum > 0 && !c.data_dir.empty())
      throw std::invalid_argument("--curriculum " + num((double)c.curriculum) + " and --data " + c.data_dir +
                                  ": a curriculum draws its prompts as it goes; read prompts have fixed sizes");
    if (c.layout == "paired" && c.x_std != 1)
      throw std::invalid_argument("--layout paired and --x-std " + num(c.x_std) +
                                  ": the paired layout's closed-form risks assume x ~ N(0, I) (--x-std 1)");
    if (c.design == "hetero" && c.noise != 0)
      throw std::invalid_argument("--design hetero and --noise " + num(c.noise) +
                                  ": the heterogeneous design sets the noise itself (half noiseless, half σ = 10)");
  }
}
}  // namespace

void validate(const TrainConfig& c) {
  for (const auto& f : config_fields()) {
    TrainConfig probe = c;
    f.set(probe, f.get(c));  // every value in its declared range
  }
  if (c.task == "listops" && c.min_len >= c.max_len - 1)
    throw std::invalid_argument("--min-len " + num((double)c.min_len) + " and --max-len " + num((double)c.max_len) +
                                ": lengths are exclusive bounds, so min-len must be below max-len - 1");
  if (c.d_model % c.heads)
    throw std::invalid_argument("--d-model " + num((double)c.d_model) + " must be a multiple of --heads " + num((double)c.heads));
  if (c.resume && c.overwrite) throw std::invalid_argument("--resume and --overwrite: choose one");
  effective_knobs(c);  // the mechanisms' knobs, in their ranges (and --layer-attention well formed)
  const TaskKind kind = task_spec(c.task).kind;
  for (const auto& m : run_mechanisms(c)) {
    const nn::MechanismSpec& spec = nn::mechanism_spec(m);
    if (c.causal && !spec.caps.causal)
      throw std::invalid_argument("--causal: " + spec.name + " attention has no causal form: " + spec.caps.why_not_causal);
    if (kind != TaskKind::classify && !spec.caps.causal)
      throw std::invalid_argument("--task " + c.task + " trains a causal model, but " + spec.name +
                                  " attention has no causal form: " + spec.caps.why_not_causal);
  }
  if (kind != TaskKind::classify && c.pos == "2d")
    throw std::invalid_argument("--pos 2d: only for the image tasks (pathfinder, image), not --task " + c.task);
  if (kind == TaskKind::classify && c.pos == "none")
    throw std::invalid_argument("--pos none: only for the sequence tasks (mqar, icl-regression, lm), not --task " + c.task);
  if (kind == TaskKind::classify && (c.mlp == 0 || !c.norm))
    throw std::invalid_argument("--mlp 0 and --norm 0: only for the sequence tasks, not --task " + c.task);
  validate_sequence_task(c);
}

std::string config_to_json(const TrainConfig& c) {
  json j = json::object();
  j["lotgrad"] = LOTGRAD_VERSION;
  for (const auto& f : config_fields()) {
    if (f.role == Role::free) continue;
    std::visit(
        [&](auto m) {
          using T = std::decay_t<decltype(c.*m)>;
          if constexpr (std::is_same_v<T, bool>) j[f.key()] = (c.*m) != f.inverted;
          else j[f.key()] = c.*m;
        },
        f.member);
  }
  json k = json::object();
  for (const auto& [name, v] : effective_knobs(c)) k[name] = v;
  j["knobs"] = k;
  return j.dump(2) + "\n";
}

TrainConfig config_from_json(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw std::invalid_argument(where + ": not a run configuration (" + e.what() + ")");
  }
  if (!j.is_object()) throw std::invalid_argument(where + ": not a run configuration (not a JSON object)");
  TrainConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    if (key == "lotgrad" || key == "knobs") continue;
    const ConfigField* f = config_field(knob_option(key));
    if (!f || f->role == Role::free) throw std::invalid_argument(where + ": unknown setting \"" + key + "\"");
    const json& v = it.value();
    const std::string t = v.is_string() ? v.get<std::string>() : v.is_boolean() ? std::string(v.get<bool>() ? "1" : "0") : v.is_number() ? num(v.get<double>()) : "";
    if (!v.is_string() && !v.is_boolean() && !v.is_number())
      throw std::invalid_argument(where + ": setting \"" + key + "\" has a value of the wrong kind: " + v.dump());
    try {
      f->set(c, t);
    } catch (const std::exception& e) {
      throw std::invalid_argument(where + ": " + e.what());
    }
  }
  if (j.contains("knobs")) {
    if (!j["knobs"].is_object()) throw std::invalid_argument(where + ": \"knobs\" must be an object");
    for (auto it = j["knobs"].begin(); it != j["knobs"].end(); ++it) {
      if (!it.value().is_number()) throw std::invalid_argument(where + ": knob \"" + it.key() + "\" must be a number");
      c.knobs[it.key()] = it.value().get<double>();
    }
    // Complete (resolved), so they override whatever the preset would give: use_preset stays as stored.
  }
  return c;
}

namespace {
// A given knob option's value, parsed by the knob's declaration in the run's mechanism.
double parse_knob(const TrainConfig& c, const std::string& option, const std::string& text) {
  const std::string name = knob_name(option);
  const nn::Knob* k = run_knob(c, name);
  if (!k) {
    std::string known, mechs;
    for (const auto& m : run_mechanisms(c)) {
      mechs += (mechs.empty() ? "" : " and ") + m;
      for (const auto& kk : nn::mechanism_spec(m).knobs) known += (known.empty() ? "" : ", ") + kk.option();
    }
    throw std::invalid_argument("--" + option + ": " + mechs + " attention has no knob " + name + " (its knobs: " +
                                (known.empty() ? "none" : known) + ")");
  }
  return k->parse(text);
}
}  // namespace

TrainConfig apply_given(TrainConfig c, const std::map<std::string, std::string>& given) {
  for (const auto& [opt, text] : given)
    if (const ConfigField* f = config_field(opt)) f->set(c, text);
  if (!given.count("attention")) c.attention = task_spec(c.task).default_attention;
  for (const auto& [opt, text] : given)
    if (!config_field(opt)) c.knobs[knob_name(opt)] = parse_knob(c, opt, text);
  return c;
}

namespace {
// A given knob against the stored run's resolved knobs.
void check_knob(const TrainConfig& stored, const std::map<std::string, double>& knobs, const std::string& opt,
                const std::string& text, const std::string& where) {
  const std::string name = knob_name(opt);
  const double v = parse_knob(stored, opt, text);
  auto it = knobs.find(name);
  if (it == knobs.end() || it->second != v)
    throw std::invalid_argument("--" + opt + " " + text + " contradicts " + where + ", whose " + name + " is " +
                                (it == knobs.end() ? std::string("unset") : num(it->second)));
}
}  // namespace

TrainConfig merge_given(const TrainConfig& stored, const std::map<std::string, std::string>& given, bool allow_run,
                        const std::vector<std::string>& ignore, const std::string& where) {
  auto ignored = [&](const std::string& opt) { return std::find(ignore.begin(), ignore.end(), opt) != ignore.end(); };
  TrainConfig c = stored;
  for (const auto& [opt, text] : given) {  // settings first: a different --attention is named as such
    const ConfigField* f = config_field(opt);
    if (!f || ignored(opt)) continue;
    TrainConfig probe = c;
    f->set(probe, text);
    const std::string was = f->get(c), now = f->get(probe);
    const bool locked = f->role == Role::data || f->role == Role::model || (f->role == Role::run && !allow_run);
    if (locked && was != now)
      throw std::invalid_argument("--" + opt + " " + text + " contradicts " + where + ", whose " + opt + " is " +
                                  (was.empty() ? "\"\"" : was) +
                                  (f->role == Role::run ? " (--override allows a change that alters the run)" : ""));
    c = probe;
  }
  const std::map<std::string, double> knobs = effective_knobs(stored);
  for (const auto& [opt, text] : given)
    if (!config_field(opt) && !ignored(opt)) check_knob(stored, knobs, opt, text, where);
  return c;
}

}  // namespace lotgrad::models
