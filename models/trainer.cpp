#include "trainer.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "../core/autograd.h"
#include "../core/io.h"
#include "../core/parallel.h"
#include "../ops/loss.h"
#include "../ops/reduce.h"
#include "../optim/clip.h"
#include "../optim/optimizer.h"
#include "../optim/schedule.h"
#include "divergence.h"
#include "metrics_log.h"
#include "progress.h"
#include "run_config.h"
#include "task.h"
#include "workload.h"

namespace lotgrad::models {

namespace fs = std::filesystem;

namespace {
std::string full(double v) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", v);  // read back exactly (a tie after resume keeps best_step)
  return b;
}

// ---- Ctrl-C and SIGTERM: the first asks the loop to stop after its step, the second exits.
std::atomic<int> g_signals{0};
extern "C" void on_stop_signal(int sig) {
  if (g_signals.fetch_add(1) >= 1) _exit(128 + sig);
}
class StopSignals {
 public:
  StopSignals() {
    g_signals = 0;
    struct sigaction sa = {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  bool requested() const { return g_signals.load() > 0; }

 private:
  struct sigaction old_int_ = {}, old_term_ = {};
};

// ---- the run's state: what last.ckpt holds besides the tensors
struct RunState {
  int64_t step = 0, best_step = -1;
  double best_dev = -1;
};

struct RunFiles {
  std::string last, best, metrics, config;
  explicit RunFiles(const std::string& dir)
      : last(dir + "/last.ckpt"), best(dir + "/best.ckpt"), metrics(dir + "/metrics.jsonl"), config(dir + "/config.json") {}
};

// A fresh run never replaces an earlier one's checkpoints by accident; --resume needs one.
void check_run_dir(const TrainConfig& cfg, const RunFiles& f) {
  if (cfg.resume) {
    resumable_checkpoint(cfg.out_dir);
    return;
  }
  if (!cfg.overwrite && (fs::exists(f.last) || fs::exists(f.best)))
    throw std::invalid_argument("train: " + cfg.out_dir + " already holds a run's checkpoints; --resume continues it, "
                                "--overwrite replaces it, or choose another --out");
}

// --resume continues the stored run: cfg must be the stored configuration, but for run
// settings when cfg.override_run (the same rule as options given on the command line).
void check_same_run(const TrainConfig& cfg, const TrainConfig& stored, const std::string& where) {
  std::map<std::string, std::string> as_given;
  for (const auto& f : config_fields())
    if (f.role != Role::free) as_given[f.option] = f.get(cfg);
  for (const auto& [k, v] : effective_knobs(cfg)) as_given[knob_option(k)] = nn::mechanism_spec(cfg.attention).knob(k)->format(v);
  merge_given(stored, as_given, cfg.override_run, {"no-preset"}, where);  // knobs are compared resolved
}

std::string describe_mechanism(const TrainConfig& cfg) {
  const nn::MechanismSpec& spec = nn::mechanism_spec(cfg.attention);
  std::string s = cfg.attention;
  for (const auto& [k, v] : effective_knobs(cfg)) s += (s == cfg.attention ? " (" : ", ") + k + " " + spec.knob(k)->format(v);
  return s + (s == cfg.attention ? "" : ")");
}
}  // namespace

std::string resumable_checkpoint(const std::string& out_dir) {
  const std::string last = RunFiles(out_dir).last;
  if (!fs::exists(last)) throw std::invalid_argument("--resume: nothing to resume: " + last + " does not exist");
  return last;
}

bool stores_config(const std::string& path) { return load_checkpoint(path).metadata.count("config") > 0; }

TrainConfig stored_config(const std::string& path) {
  const Checkpoint ck = load_checkpoint(path);
  if (!ck.metadata.count("config"))
    throw std::invalid_argument(path + " stores no run configuration (written by an older lotgrad): give the options "
                                "it was trained with");
  return config_from_json(ck.metadata.at("config"), path);
}

namespace {
// The training loop's parts that touch the run directory.
class Run {
 public:
  Run(const TrainConfig& cfg, Workload& w, AdamW& opt, LRScheduler& sched, Generator& dgen)
      : cfg_(cfg), files_(cfg.out_dir), w_(w), opt_(opt), sched_(sched), dgen_(dgen) {}
  const RunFiles& files() const { return files_; }

  void save_last(const RunState& s) {
    NamedTensors ts = prefixed(w_.module().state_dict(), "model.");
    for (auto& e : opt_.state_dict()) ts.push_back(e);
    for (auto& e : sched_.state_dict()) ts.push_back(e);
    std::map<std::string, std::string> md = w_.data_state();
    md.insert({{"config", config_to_json(cfg_)},
               {"step", std::to_string(s.step)},
               {"dropout_seed", std::to_string(dgen_.seed())},
               {"dropout_counter", std::to_string(dgen_.counter())},
               {"best_dev", full(s.best_dev)},
               {"best_step", std::to_string(s.best_step)}});
    save_checkpoint(files_.last, ts, md);
  }
  void save_best(const RunState& s) {
    save_checkpoint(files_.best, prefixed(w_.module().state_dict(), "model."),
                    {{"config", config_to_json(cfg_)}, {"step", std::to_string(s.step)}, {"best_dev", full(s.best_dev)}});
  }
  RunState restore_last() {
    const Checkpoint ck = load_checkpoint(files_.last);
    if (!ck.metadata.count("config"))
      throw std::invalid_argument("train --resume: " + files_.last + " stores no run configuration (an older lotgrad)");
    check_same_run(cfg_, config_from_json(ck.metadata.at("config"), files_.last), files_.last);
    w_.module().load_state_dict(strip(ck.tensors, "model."));
    opt_.load_state_dict(ck.tensors);
    sched_.load_state_dict(ck.tensors);
    const auto& md = ck.metadata;
    w_.set_data_state(md);
    dgen_.set_state(std::stoull(md.at("dropout_seed")), std::stoull(md.at("dropout_counter")));
    return {std::stoll(md.at("step")), std::stoll(md.at("best_step")), std::stod(md.at("best_dev"))};
  }

 private:
  const TrainConfig& cfg_;
  RunFiles files_;
  Workload& w_;
  AdamW& opt_;
  LRScheduler& sched_;
  Generator& dgen_;
};

// Running sums over the steps since the last progress report.
struct Window {
  double loss = 0, metric = 0, seen = 0, tokens = 0, seconds = 0;
  int64_t steps = 0;
};

std::string step_line(const TrainConfig& cfg, const std::string& metric, int64_t step, const Window& w, double lr,
                      double eta_s) {
  char line[256];
  std::snprintf(line, sizeof line, "step %6lld/%lld  loss %.4f  %s %.4g  lr %.2e  %.0f tok/s  %.0f ms/step  ETA %s",
                (long long)step, (long long)cfg.steps, w.loss / (double)w.steps, metric.c_str(), w.metric / w.seen, lr,
                w.tokens / std::max(w.seconds, 1e-9), 1e3 * w.seconds / (double)w.steps, format_duration(eta_s).c_str());
  return line;
}

}  // namespace

std::string run_dir(const TrainConfig& cfg) {
  return cfg.out_dir.empty() ? "runs/" + cfg.task + "-" + cfg.attention : cfg.out_dir;
}

TrainResult train(const TrainConfig& cfg_in, std::ostream& log) {
  TrainConfig cfg = cfg_in;
  cfg.out_dir = run_dir(cfg_in);
  validate(cfg);
  const RunFiles files(cfg.out_dir);
  check_run_dir(cfg, files);
  if (cfg.threads > 0) set_num_threads((int)cfg.threads);
  Generator init_gen((uint64_t)cfg.seed);
  auto dgen = std::make_shared<Generator>((uint64_t)cfg.seed * 7919 + 17);
  const TaskSpec& task = task_spec(cfg.task);
  std::unique_ptr<Workload> work = make_workload(cfg, log, init_gen, dgen);
  nn::Module& mod = work->module();
  AdamW opt(decay_groups(mod.named_parameters(), no_decay_names(cfg)),
            {.lr = cfg.lr, .weight_decay = cfg.weight_decay, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-8});
  const int64_t warm = cfg.warmup < 1.0 ? (int64_t)std::llround(cfg.warmup * (double)cfg.steps) : (int64_t)cfg.warmup;
  LRScheduler sched(opt, warmup_cosine(warm, cfg.steps, 0.1, cfg.lr_floor));

  fs::create_directories(cfg.out_dir);
  Run run(cfg, *work, opt, sched, *dgen);
  const bool tty = &log == &std::cout && isatty(fileno(stdout));
  Progress progress(log, tty, cfg.quiet);
  TrainResult res;
  RunState st;
  if (cfg.resume) {
    st = run.restore_last();
    progress.line("resumed from " + files.last + " at step " + std::to_string(st.step));
  } else if (!cfg.init_from.empty()) {
    load_weights(mod, load_checkpoint(cfg.init_from), cfg.init_from);
    progress.line("weights from " + cfg.init_from + " (optimiser and schedule start fresh)");
  }
  write_file_atomic(files.config, config_to_json(cfg));
  MetricsLog metrics(files.metrics, /*fresh=*/!cfg.resume, st.step);
  const int64_t log_every = cfg.log_every > 0 ? cfg.log_every : std::max<int64_t>(1, cfg.steps / 50);
  progress.line("model: " + std::to_string(mod.num_parameters()) + " parameters, attention " + describe_mechanism(cfg) +
                (is_causal_run(cfg) ? " (causal)" : "") + ", " + std::to_string(get_num_threads()) + " threads, batch " +
                std::to_string(cfg.batch) + ", " + std::to_string(cfg.steps) + " steps");
  const std::string& mname = task.metric;
  const std::string dev_refs = work->references("val");  // printed beside every evaluation
  auto better = [&](double a, double b) { return task.higher_is_better ? a > b : a < b; };

  StopSignals stop;
  const StepChecks checks(mod, cfg, files.last, files.best);
  LossWatch watch;
  Window w;
  int64_t ran = 0;
  const auto t_start = std::chrono::steady_clock::now();
  double total_step_s = 0, total_tokens = 0;
  while (st.step < cfg.steps) {
    if (cfg.stop_after > 0 && ran >= cfg.stop_after) break;
    if (stop.requested()) {
      run.save_last(st);
      res.interrupted = true;
      progress.line("interrupted at step " + std::to_string(st.step) + ": " + files.last +
                    " written; resume with: lotgrad train --out " + cfg.out_dir + " --resume");
      break;
    }
    const auto t0 = std::chrono::steady_clock::now();
    opt.zero_grad();
    // The loss, the gradients and the updated values are checked before anything is written
    // (divergence.h): a bad step throws and last.ckpt, best.ckpt keep the last good state.
    const int64_t now = st.step + 1;  // the step being run, counted as the progress lines count
    DetectAnomalyGuard anomaly(cfg.detect_anomaly);  // off: one flag test per recorded op
    StepOutput so = work->train_step(st.step);
    const double lv = checks.loss(now, so.loss);
    checks.backward(now, so.loss, lv);
    checks.gradients(now, lv);  // and clipping
    opt.step();
    checks.values(now, lv);
    sched.step();
    ++st.step;
    ++ran;
    res.losses.push_back(lv);
    if (ran == 1) watch.start(st.step, lv);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    w.loss += lv;
    w.metric += so.metric_sum;
    w.seen += so.metric_count;
    w.tokens += so.tokens;
    w.seconds += dt;
    ++w.steps;
    total_step_s += dt;
    total_tokens += so.tokens;
    if (st.step % log_every == 0 || st.step == cfg.steps) {
      const double lr = opt.param_groups()[0].options.lr;
      progress.step(st.step, cfg.steps, step_line(cfg, mname, st.step, w, lr, (double)(cfg.steps - st.step) * total_step_s / (double)ran));
      if (const std::string warn = watch.observe(st.step, w.steps, w.loss / (double)w.steps); !warn.empty())
        progress.line("warning: " + warn);
      metrics.write({st.step, {{"loss", w.loss / (double)w.steps}, {"train_" + mname, w.metric / w.seen}, {"lr", lr},
                               {"tokens_per_s", w.tokens / std::max(w.seconds, 1e-9)}}});
      w = Window{};
    }
    if (st.step % cfg.eval_every == 0 || st.step == cfg.steps) {
      const double dev = work->evaluate("val", cfg.eval_batches,
                                        [&](int64_t done, int64_t total) { progress.eval("eval (dev)", done, total); });
      if (st.best_step < 0 || better(dev, st.best_dev)) {
        st.best_dev = dev;
        st.best_step = st.step;
        run.save_best(st);
      }
      progress.line("eval step " + std::to_string(st.step) + ": dev " + mname + " " + std::to_string(dev) + " (best " +
                    std::to_string(st.best_dev) + " at step " + std::to_string(st.best_step) + "; " + dev_refs + ")");
      metrics.write({st.step, {{"dev_" + mname, dev}, {"best_dev", st.best_dev}}});
    }
    if (st.step % cfg.checkpoint_every == 0 || st.step == cfg.steps) run.save_last(st);
  }
  res.steps_done = st.step;
  res.best_dev = st.best_dev;
  res.best_step = st.best_step;
  res.ms_per_step = ran ? 1e3 * total_step_s / (double)ran : 0;
  res.tokens_per_s = total_step_s > 0 ? total_tokens / total_step_s : 0;
  res.baseline_test = work->baseline("test");
  if (st.step >= cfg.steps && fs::exists(files.best)) {
    load_weights(mod, load_checkpoint(files.best), files.best);
    res.dev_at_best = work->evaluate("val", 0);
    res.test_at_best = work->evaluate("test", 0);
    progress.line("best-on-dev checkpoint (step " + std::to_string(res.best_step) + "): dev " + mname + " " +
                  std::to_string(res.dev_at_best) + ", test " + mname + " " + std::to_string(res.test_at_best) + " (" +
                  work->references("test") + "); " + std::to_string(res.ms_per_step) + " ms/step, " +
                  std::to_string(res.tokens_per_s) + " tokens/s, " +
                  std::to_string(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count()) +
                  " s in all");
  }
  char s[256];
  if (st.step >= cfg.steps)
    std::snprintf(s, sizeof s, "%s %s: best dev %s %.4f (step %lld), test %.4f, %.1f ms/step", cfg.task.c_str(),
                  cfg.attention.c_str(), mname.c_str(), res.dev_at_best, (long long)res.best_step, res.test_at_best,
                  res.ms_per_step);
  else  // stopped early: the best dev seen so far, and no test figure (the run is not finished)
    std::snprintf(s, sizeof s, "%s %s: stopped at step %lld of %lld, best dev %s %.4f so far (step %lld), %.1f ms/step",
                  cfg.task.c_str(), cfg.attention.c_str(), (long long)st.step, (long long)cfg.steps, mname.c_str(),
                  res.best_dev, (long long)res.best_step, res.ms_per_step);
  res.summary = s;
  res.warning = watch.summary();
  if (!res.warning.empty()) res.summary += "; warning: " + res.warning;
  return res;
}

double evaluate_checkpoint(const TrainConfig& cfg, const std::string& path, const std::string& split, std::ostream& log,
                           std::string* references, std::string* breakdown) {
  if (split != "test" && split != "val" && split != "train")
    throw std::invalid_argument("eval: --split must be train, val or test, got \"" + split + "\"");
  validate(cfg);
  if (cfg.threads > 0) set_num_threads((int)cfg.threads);
  Generator g((uint64_t)cfg.seed);
  std::unique_ptr<Workload> work = make_workload(cfg, log, g, std::make_shared<Generator>(0));  // dropout is off in eval
  load_weights(work->module(), load_checkpoint(path), path);
  if (references) *references = work->references(split);
  if (breakdown) *breakdown = work->breakdown(split);
  return work->evaluate(split, 0);
}

}  // namespace lotgrad::models
