#include "trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "../core/autograd.h"
#include "../core/io.h"
#include "../core/parallel.h"
#include "../data/image.h"
#include "../data/listops.h"
#include "../data/pathfinder.h"
#include "../data/text.h"
#include "../ops/loss.h"
#include "../ops/reduce.h"
#include "../optim/clip.h"
#include "../optim/optimizer.h"
#include "../optim/schedule.h"
#include "../nn/attention_lotformer.h"
#include "../nn/probe.h"

namespace lotgrad::models {

namespace fs = std::filesystem;

std::map<std::string, double> attention_preset(const std::string& task, const std::string& attention) {
  if (attention == "lotformer") {  // lotformer.md §4: r, eps, half-steps per task
    if (task == "listops") return {{"r", 4}, {"eps", 0.1}, {"half_steps", 50}};
    if (task == "text") return {{"r", 32}, {"eps", 0.1}, {"half_steps", 50}};
    if (task == "retrieval" || task == "pathfinder") return {{"r", 64}, {"eps", 0.1}, {"half_steps", 50}};
    if (task == "image") return {{"r", 8}, {"eps", 25}, {"half_steps", 5}};
  }
  if (attention == "performer") return {{"features", 128}};      // Skyformer/LOTFormer harness
  if (attention == "nystromformer") return {{"landmarks", 128}};
  return {};
}

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

namespace {
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

int64_t longest(const data::Dataset& d) {
  int64_t m = 0;
  for (auto& e : d.examples) m = std::max<int64_t>(m, (int64_t)std::max(e.tokens.size(), e.tokens2.size()));
  return m;
}

// The model for a task: a classifier, or a dual encoder for paired data.
struct Model {
  std::shared_ptr<SequenceClassifier> single;
  std::shared_ptr<DualEncoderClassifier> dual;
  nn::Module& module() { return single ? (nn::Module&)*single : (nn::Module&)*dual; }
  Tensor logits(const data::Batch& b) {
    return single ? single->forward(b.tokens, b.mask) : dual->forward(b.tokens, b.mask, b.tokens2, b.mask2);
  }
};

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
  c.encoder.depth = cfg.depth;
  c.encoder.d_model = cfg.d_model;
  c.encoder.n_heads = cfg.heads;
  c.encoder.mlp_hidden = cfg.mlp;
  c.encoder.dropout = cfg.dropout;
  c.embed_dropout = cfg.dropout;
  nn::AttentionOptions a;
  a.name = cfg.attention;
  a.n_heads = cfg.heads;
  if (cfg.use_preset) a.knobs = attention_preset(cfg.task, cfg.attention);
  for (auto& [k, v] : cfg.knobs) a.knobs[k] = v;
  c.encoder.attention = {a};
  Model m;
  if (t.train.paired) m.dual = std::make_shared<DualEncoderClassifier>(c, gen, dgen);
  else m.single = std::make_shared<SequenceClassifier>(c, gen, dgen);
  return m;
}

double evaluate(Model& m, const data::Dataset& d, int64_t batch, int64_t max_batches, bool zero_mask) {
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
  for (auto& pos : data::sequential_batches((size_t)n, batch)) {
    std::vector<int64_t> idx;
    for (int64_t p : pos) idx.push_back(order[(size_t)p]);
    data::Batch b = data::collate(d, idx);
    if (zero_mask) mask_zero_tokens(b);
    Tensor pred = argmax(m.logits(b), -1);
    const int64_t* p = pred.data_ptr<int64_t>();
    const int64_t* y = b.labels.data_ptr<int64_t>();
    for (int64_t i = 0; i < b.size(); ++i) right += p[i] == y[i];
    total += b.size();
  }
  m.module().train();
  return total ? (double)right / (double)total : 0.0;
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
std::string fmt_time(double s) {
  char buf[32];
  if (s < 0 || !std::isfinite(s)) return "?";
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", (int)(s / 3600), (int)std::fmod(s / 60, 60));
  else std::snprintf(buf, sizeof buf, "%dm%02ds", (int)(s / 60), (int)std::fmod(s, 60));
  return buf;
}
// Keeps only metrics lines with "step" <= last (after a resume, the killed run's later lines go).
void trim_metrics(const std::string& path, int64_t last) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    auto p = line.find("\"step\":");
    if (p != std::string::npos && std::stoll(line.substr(p + 7)) > last) continue;
    kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

// A checkpoint's weights into a model built from the command line's options; a mismatch names
// the file and the options that shape the model.
void load_weights(Model& m, const Checkpoint& ck, const std::string& path) {
  try {
    m.module().load_state_dict(strip(ck.tensors, "model."));
  } catch (const std::exception& e) {
    throw std::invalid_argument(path + ": " + e.what() +
                                " (build the model with the options it was trained with: --attention, --pooling, --pos, "
                                "--max-pos, --depth, --d-model, --heads, --mlp and the mechanism knobs)");
  }
}
}  // namespace

TrainResult train(const TrainConfig& cfg, std::ostream& log) {
  if (cfg.threads > 0) set_num_threads(cfg.threads);
  if (cfg.steps <= 0 || cfg.batch <= 0) throw std::invalid_argument("train: steps and batch must be positive");
  TaskData t = load_task(cfg, log);
  Generator init_gen(cfg.seed);
  auto dgen = std::make_shared<Generator>(cfg.seed * 7919 + 17);
  Model m = build_model(cfg, t, init_gen, dgen);
  nn::Module& mod = m.module();
  AdamW opt(decay_groups(mod.named_parameters(), {"bias", "norm", "ln", "embed", "pos", "pivots", "mass_logits"}),
            {.lr = cfg.lr, .weight_decay = cfg.weight_decay, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-8});
  const int64_t warm = cfg.warmup < 1.0 ? (int64_t)std::llround(cfg.warmup * cfg.steps) : (int64_t)cfg.warmup;
  LRScheduler sched(opt, warmup_cosine(warm, cfg.steps, 0.1, cfg.lr_floor));
  data::LoaderOptions lo;
  lo.batch_size = cfg.batch;
  lo.seed = cfg.seed;
  lo.drop_last = true;
  lo.bucket_batches = cfg.bucket;
  data::DataLoader loader(t.train, lo);

  fs::create_directories(cfg.out_dir);
  const std::string last_path = cfg.out_dir + "/last.ckpt", best_path = cfg.out_dir + "/best.ckpt";
  const std::string metrics_path = cfg.out_dir + "/metrics.jsonl";
  TrainResult res;
  int64_t step = 0;
  res.best_dev = -1;
  std::string run_desc = cfg.task + " " + cfg.attention + " seed " + std::to_string(cfg.seed);

  auto save_last = [&](int64_t at) {
    NamedTensors ts = prefixed(mod.state_dict(), "model.");
    for (auto& e : opt.state_dict()) ts.push_back(e);
    for (auto& e : sched.state_dict()) ts.push_back(e);
    Metadata md = {{"step", std::to_string(at)},
                   {"loader_epoch", std::to_string(loader.state().epoch)},
                   {"loader_index", std::to_string(loader.state().index)},
                   {"dropout_seed", std::to_string(dgen->seed())},
                   {"dropout_counter", std::to_string(dgen->counter())},
                   {"best_dev", std::to_string(res.best_dev)},
                   {"best_step", std::to_string(res.best_step)},
                   {"run", run_desc}};
    save_checkpoint(last_path, ts, md);
  };
  if (cfg.resume && fs::exists(last_path)) {
    Checkpoint ck = load_checkpoint(last_path);
    if (ck.metadata.count("run") && ck.metadata.at("run") != run_desc)
      throw std::invalid_argument("train --resume: " + last_path + " belongs to a different run (" + ck.metadata.at("run") + ")");
    mod.load_state_dict(strip(ck.tensors, "model."));
    opt.load_state_dict(ck.tensors);
    sched.load_state_dict(ck.tensors);
    loader.set_state({std::stoll(ck.metadata.at("loader_epoch")), std::stoll(ck.metadata.at("loader_index"))});
    dgen->set_state(std::stoull(ck.metadata.at("dropout_seed")), std::stoull(ck.metadata.at("dropout_counter")));
    step = std::stoll(ck.metadata.at("step"));
    res.best_dev = std::stod(ck.metadata.at("best_dev"));
    res.best_step = std::stoll(ck.metadata.at("best_step"));
    trim_metrics(metrics_path, step);
    if (!cfg.quiet) log << "resumed from " << last_path << " at step " << step << "\n";
  } else {
    if (!cfg.init_from.empty()) {
      load_weights(m, load_checkpoint(cfg.init_from), cfg.init_from);
      if (!cfg.quiet) log << "weights from " << cfg.init_from << " (optimiser and schedule start fresh)\n";
    }
    if (!cfg.resume) std::ofstream(metrics_path, std::ios::trunc);
  }
  std::ofstream metrics(metrics_path, std::ios::app);
  const int64_t log_every = cfg.log_every > 0 ? cfg.log_every : std::max<int64_t>(1, cfg.steps / 50);
  const bool tty = &log == &std::cout && isatty(fileno(stdout));
  if (!cfg.quiet)
    log << "model: " << mod.num_parameters() << " parameters, attention "
        << (m.single ? m.single->encoder->layers[0]->attn->mechanism->type_name()
                     : m.dual->tower->encoder->layers[0]->attn->mechanism->type_name())
        << ", " << get_num_threads() << " threads, batch " << cfg.batch << ", " << cfg.steps << " steps\n";

  double loss_acc = 0, right = 0, seen = 0, tokens = 0, window_s = 0;
  int64_t window = 0, ran = 0;
  const auto t_start = std::chrono::steady_clock::now();
  double total_step_s = 0, total_tokens = 0;
  while (step < cfg.steps) {
    if (cfg.stop_after > 0 && ran >= cfg.stop_after) break;
    const auto t0 = std::chrono::steady_clock::now();
    data::Batch b = loader.next();
    if (zero_mask_on(cfg)) mask_zero_tokens(b);
    opt.zero_grad();
    Tensor logits = m.logits(b);
    Tensor loss = cross_entropy(logits, b.labels);
    loss.backward();
    if (cfg.clip > 0) clip_grad_norm_(mod.parameters(), cfg.clip);
    opt.step();
    sched.step();
    ++step;
    ++ran;
    const double lv = loss.item();
    if (!std::isfinite(lv)) throw std::runtime_error("train: loss became " + std::to_string(lv) + " at step " + std::to_string(step));
    res.losses.push_back(lv);
    {
      Tensor pred = argmax(logits.detach(), -1);
      const int64_t* p = pred.data_ptr<int64_t>();
      const int64_t* y = b.labels.data_ptr<int64_t>();
      for (int64_t i = 0; i < b.size(); ++i) right += p[i] == y[i];
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    loss_acc += lv;
    seen += (double)b.size();
    tokens += (double)b.real_tokens();
    window_s += dt;
    ++window;
    total_step_s += dt;
    total_tokens += (double)b.real_tokens();
    if (step % log_every == 0 || step == cfg.steps) {
      const double tps = tokens / std::max(window_s, 1e-9);
      const double eta = (double)(cfg.steps - step) * total_step_s / (double)ran;
      char line[256];
      std::snprintf(line, sizeof line, "step %6lld/%lld  loss %.4f  acc %.3f  lr %.2e  %.0f tok/s  %.0f ms/step  ETA %s",
                    (long long)step, (long long)cfg.steps, loss_acc / window, right / seen, opt.param_groups()[0].options.lr,
                    tps, 1e3 * window_s / window, fmt_time(eta).c_str());
      if (!cfg.quiet) {
        if (tty) {
          const int width = 30, filled = (int)(width * step / cfg.steps);
          log << "\r[" << std::string(filled, '#') << std::string(width - filled, '.') << "] " << line << std::flush;
        } else {
          log << line << "\n" << std::flush;
        }
      }
      char js[256];
      std::snprintf(js, sizeof js, "{\"step\":%lld,\"loss\":%.6g,\"train_acc\":%.6g,\"lr\":%.6g,\"tokens_per_s\":%.6g}\n",
                    (long long)step, loss_acc / window, right / seen, opt.param_groups()[0].options.lr, tps);
      metrics << js << std::flush;
      loss_acc = right = seen = tokens = window_s = 0;
      window = 0;
    }
    if (step % cfg.eval_every == 0 || step == cfg.steps) {
      const double dev = evaluate(m, t.val, cfg.batch, cfg.eval_batches, zero_mask_on(cfg));
      if (dev > res.best_dev) {
        res.best_dev = dev;
        res.best_step = step;
        save_checkpoint(best_path, prefixed(mod.state_dict(), "model."), {{"step", std::to_string(step)}, {"run", run_desc}});
      }
      if (!cfg.quiet) log << (tty ? "\n" : "") << "eval step " << step << ": dev acc " << dev << " (best " << res.best_dev << " at step " << res.best_step << ")\n";
      char js[160];
      std::snprintf(js, sizeof js, "{\"step\":%lld,\"dev_acc\":%.6g,\"best_dev\":%.6g}\n", (long long)step, dev, res.best_dev);
      metrics << js << std::flush;
    }
    if (step % cfg.checkpoint_every == 0 || step == cfg.steps) save_last(step);
  }
  res.steps_done = step;
  res.ms_per_step = ran ? 1e3 * total_step_s / (double)ran : 0;
  res.tokens_per_s = total_step_s > 0 ? total_tokens / total_step_s : 0;
  res.majority_test = data::majority_rate(t.test);
  if (step >= cfg.steps && fs::exists(best_path)) {
    Checkpoint ck = load_checkpoint(best_path);
    mod.load_state_dict(strip(ck.tensors, "model."));
    res.dev_at_best = evaluate(m, t.val, cfg.batch, 0, zero_mask_on(cfg));
    res.test_at_best = evaluate(m, t.test, cfg.batch, 0, zero_mask_on(cfg));
    if (!cfg.quiet)
      log << "best-on-dev checkpoint (step " << res.best_step << "): dev acc " << res.dev_at_best << ", test acc "
          << res.test_at_best << " (majority " << res.majority_test << "); " << res.ms_per_step << " ms/step, "
          << std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count() << " s in all\n";
  }
  char s[256];
  std::snprintf(s, sizeof s, "%s %s: best dev %.4f (step %lld), test %.4f, %.1f ms/step", cfg.task.c_str(),
                cfg.attention.c_str(), res.dev_at_best, (long long)res.best_step, res.test_at_best, res.ms_per_step);
  res.summary = s;
  return res;
}

double evaluate_checkpoint(const TrainConfig& cfg, const std::string& path, const std::string& split, std::ostream& log) {
  if (cfg.threads > 0) set_num_threads(cfg.threads);
  TaskData t = load_task(cfg, log);
  Generator g(cfg.seed);
  Model m = build_model(cfg, t, g, std::make_shared<Generator>(0));  // dropout is off in eval
  load_weights(m, load_checkpoint(path), path);
  const data::Dataset& d = split == "test" ? t.test : split == "val" ? t.val : t.train;
  if (split != "test" && split != "val" && split != "train")
    throw std::invalid_argument("eval: --split must be train, val or test");
  return evaluate(m, d, cfg.batch, 0, zero_mask_on(cfg));
}

std::vector<HeadInspection> inspect_checkpoint(const TrainConfig& cfg_in, const std::string& path, const std::string& split,
                                               int64_t count, std::ostream& log) {
  TrainConfig cfg = cfg_in;
  cfg.pack = false;  // keep every position where it is
  if (cfg.threads > 0) set_num_threads(cfg.threads);
  TaskData t = load_task(cfg, log);
  Generator g(cfg.seed);
  Model m = build_model(cfg, t, g, std::make_shared<Generator>(0));
  if (!m.single) throw std::invalid_argument("inspect: paired tasks (retrieval) are not supported");
  load_weights(m, load_checkpoint(path), path);
  m.module().eval();
  const data::Dataset& d = split == "test" ? t.test : split == "val" ? t.val : t.train;
  if (split != "test" && split != "val" && split != "train") throw std::invalid_argument("inspect: --split must be train, val or test");
  SequenceClassifier& model = *m.single;
  const auto& layers = model.encoder->layers;
  const int64_t H = cfg.heads;
  std::vector<HeadInspection> out((size_t)((int64_t)layers.size() * H));
  for (size_t l = 0; l < layers.size(); ++l)
    for (int64_t h = 0; h < H; ++h) out[l * (size_t)H + (size_t)h] = {(int64_t)l, h};
  NoGradGuard ng;
  const int64_t k = std::min<int64_t>(count, (int64_t)d.size());
  for (int64_t e = 0; e < k; ++e) {
    data::Batch b = data::collate(d, {e});
    if (zero_mask_on(cfg)) mask_zero_tokens(b);
    Tensor x, mask;
    model.embed_input(b.tokens, b.mask, x, mask);
    for (size_t l = 0; l < layers.size(); ++l) {
      auto& layer = *layers[l];
      const Tensor A = nn::probe_attention(*layer.attn, layer.ln1->forward(x), mask);  // (1, H, n, n)
      const nn::AttentionStats st = nn::attention_stats(A, mask, -1.0);  // no rank: O(n^3) at n ~ 1000
      const int64_t n = A.size(2);
      const auto valid = nn::valid_positions(mask, 1, n)[0];
      const double nv = (double)valid.size();
      std::vector<double> bound(H, 0.0);
      if (auto* lot = dynamic_cast<nn::LOTFormerAttention*>(layer.attn->mechanism.get())) {
        const std::vector<double> lb = lot->log_masses(kFloat64).to_vector();  // (H, r)
        for (int64_t h = 0; h < H; ++h) {
          double mn = 1.0;
          for (int64_t j = 0; j < lot->r(); ++j) mn = std::min(mn, std::exp(lb[(size_t)(h * lot->r() + j)]));
          bound[(size_t)h] = 1.0 / (nv * mn);
        }
      }
      const std::vector<double> av = A.to_vector(), rmax = st.row_max.to_vector(), ent = st.row_entropy.to_vector(),
                                csum = st.col_sum.to_vector();
      // The first two real tokens (after a CLS token, when there is one).
      const size_t lead = cfg.pooling == "cls" && valid.size() > 1 ? 1 : 0;
      const int64_t first_tok = valid[lead], second_tok = lead + 1 < valid.size() ? valid[lead + 1] : -1;
      for (int64_t h = 0; h < H; ++h) {
        HeadInspection& r = out[l * (size_t)H + (size_t)h];
        double rm = 0, first = 0, second = 0, en = 0, dev = 0, mx = 0;
        for (int64_t i : valid) {
          rm += rmax[(size_t)(h * n + i)];
          mx = std::max(mx, rmax[(size_t)(h * n + i)]);
          first += av[(size_t)((h * n + i) * n + first_tok)];
          if (second_tok >= 0) second += av[(size_t)((h * n + i) * n + second_tok)];
          en += ent[(size_t)(h * n + i)];
          dev = std::max(dev, std::abs(csum[(size_t)(h * n + i)] - 1.0));
        }
        r.n += nv / (double)k;
        r.row_max += rm / nv / (double)k;
        r.max_weight = std::max(r.max_weight, mx);
        r.bound += bound[(size_t)h] / (double)k;
        if (bound[(size_t)h] > 0) r.bound_used = std::max(r.bound_used, mx / bound[(size_t)h]);
        r.first_token += first / (double)k;  // mean over rows of A[i, first] times n
        r.second_token += second / (double)k;
        r.entropy += (nv > 1 ? en / nv / std::log(nv) : 1.0) / (double)k;
        r.col_dev = std::max(r.col_dev, dev);
      }
      x = layer.forward(x, mask);
    }
  }
  return out;
}

}  // namespace lotgrad::models
