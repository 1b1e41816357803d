#include "trainer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <optional>

#include "../core/autograd.h"
#include "../core/fault.h"
#include "../core/io.h"
#include "../core/parallel.h"
#include "../dist/comm.h"
#include "../dist/grad_reducer.h"
#include "../ops/elementwise.h"
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

// Running sums over the steps since the last progress report (checkpointed: a resumed run
// logs the same lines as an uninterrupted one).
struct Window {
  double loss = 0, metric = 0, seen = 0;
  int64_t steps = 0;
  // Timing, of the window's steps that this process ran (not checkpointed: no bits of a
  // checkpoint depend on the clock).
  double tokens = 0, seconds = 0;
  int64_t timed_steps = 0;
};

// A write past a file-size limit (ulimit -f) fails with EFBIG, an error naming the file,
// instead of SIGXFSZ killing the process.
class IgnoreFileSizeSignal {
 public:
  IgnoreFileSizeSignal() {
    struct sigaction ign = {};
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGXFSZ, &ign, &old_);
  }
  ~IgnoreFileSizeSignal() { sigaction(SIGXFSZ, &old_, nullptr); }

 private:
  struct sigaction old_ = {};
};

// ---- the run's state: what last.ckpt holds besides the tensors
struct RunState {
  int64_t step = 0, best_step = -1;
  double best_dev = -1;
  Window window;
};

// The run directory's files. last.ckpt is the checkpoint --resume continues; each save keeps
// the one before as prev.ckpt (the fallback when last.ckpt is missing or corrupt). lock is
// flock'ed by the run that trains in the directory.
struct RunFiles {
  std::string dir, last, prev, best, metrics, config, lock;
  explicit RunFiles(const std::string& d)
      : dir(d), last(d + "/last.ckpt"), prev(d + "/prev.ckpt"), best(d + "/best.ckpt"), metrics(d + "/metrics.jsonl"),
        config(d + "/config.json"), lock(d + "/lock") {}
};

// One run per directory: an exclusive flock on <dir>/lock, held as long as this object lives
// and released by the kernel when the process ends however it ends (a kill -9 leaves no
// stale lock). The file names its holder for the message of a run that is refused.
class RunLock {
 public:
  explicit RunLock(const RunFiles& f) {
    fd_ = ::open(f.lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw IOError("train: cannot open the lock file " + f.lock + ": " + std::strerror(errno));
    int rc;
    while ((rc = ::flock(fd_, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR) {}
    if (rc != 0 && errno == EWOULDBLOCK) {
      char buf[512] = {};
      const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
      std::string holder = n > 0 ? std::string(buf, (size_t)n) : "";
      while (!holder.empty() && holder.back() == '\n') holder.pop_back();
      ::close(fd_);
      throw std::runtime_error("train: " + f.dir + " is in use by another run (" +
                               (holder.empty() ? std::string("holder unknown") : holder) + ", holding " + f.lock +
                               "); two runs in one directory would overwrite each other's checkpoints and "
                               "metrics: wait for it, stop it, or choose another --out");
    }
    if (rc != 0) {  // a file system without flock (some network mounts): train unguarded, say so
      warning_ = "warning: cannot lock " + f.lock + " (" + std::strerror(errno) +
                 "): a second run on this directory would not be refused";
      return;
    }
    char host[256] = "?";
    ::gethostname(host, sizeof host - 1);
    const std::time_t now = std::time(nullptr);
    char when[64];
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
    const std::string who = "pid " + std::to_string((long long)::getpid()) + " on " + host + ", started " + when + "\n";
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, who.data(), who.size(), 0) != (ssize_t)who.size())
      warning_ = "warning: cannot write the holder into " + f.lock + ": " + std::strerror(errno);
  }
  ~RunLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the flock
  }
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  const std::string& warning() const { return warning_; }

 private:
  int fd_ = -1;
  std::string warning_;
};

// The checkpoint --resume continues, read: last.ckpt when it reads back (whole, CRC-checked),
// else prev.ckpt; note says why it is not last.ckpt. Throws when neither is usable.
struct ResumePoint {
  std::string path, note;
  bool last_corrupt = false;  // last.ckpt exists but does not read back
  Checkpoint ck;
};
void check_resumable(const RunFiles& f) {  // cheap: before anything is created or read
  if (!fs::exists(f.last) && !fs::exists(f.prev))
    throw std::invalid_argument("--resume: nothing to resume: " + f.last + " does not exist");
}
ResumePoint resume_point(const std::string& out_dir) {
  const RunFiles f(out_dir);
  check_resumable(f);
  ResumePoint rp;
  if (!fs::exists(f.last)) {
    rp.note = f.last + " does not exist (a save was cut between its renames)";
  } else {
    try {
      rp.ck = load_checkpoint(f.last);
      rp.path = f.last;
      return rp;
    } catch (const IOError& e) {
      rp.note = e.what();
      rp.last_corrupt = true;
    }
  }
  if (!fs::exists(f.prev)) throw IOError("--resume: " + rp.note + ", and there is no " + f.prev + " to fall back on");
  try {
    rp.ck = load_checkpoint(f.prev);
  } catch (const IOError& e) {
    throw IOError("--resume: no usable checkpoint in " + out_dir + ": " + rp.note + "; and " + e.what());
  }
  rp.path = f.prev;
  return rp;
}

// Temporary files of saves cut by a kill (<file>.tmp.<pid>, core/io.h). Only the run that
// holds the lock writes in the directory, so under the lock every one of them is stale.
std::vector<std::string> remove_stale_temporaries(const RunFiles& f) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(f.dir, ec)) {
    const std::string name = e.path().filename().string();
    for (const char* base : {"last.ckpt", "prev.ckpt", "best.ckpt", "config.json", "metrics.jsonl"}) {
      const std::string pre = std::string(base) + ".tmp.";
      if (name.size() > pre.size() && name.compare(0, pre.size(), pre) == 0 &&
          name.find_first_not_of("0123456789", pre.size()) == std::string::npos) {
        fs::remove(e.path());
        removed.push_back(name);
      }
    }
  }
  return removed;
}

// A fresh run never replaces an earlier one's checkpoints by accident; --resume needs one.
void check_run_dir(const TrainConfig& cfg, const RunFiles& f) {
  if (cfg.resume) {
    check_resumable(f);
    return;
  }
  if (!cfg.overwrite && (fs::exists(f.last) || fs::exists(f.prev) || fs::exists(f.best)))
    throw std::invalid_argument("train: " + cfg.out_dir + " already holds a run's checkpoints; --resume continues it, "
                                "--overwrite replaces it, or choose another --out");
}

// --resume continues the stored run: cfg must be the stored configuration, but for run
// settings when cfg.override_run (the same rule as options given on the command line).
void check_same_run(const TrainConfig& cfg, const TrainConfig& stored, const std::string& where) {
  std::map<std::string, std::string> as_given;
  for (const auto& f : config_fields())
    if (f.role != Role::free) as_given[f.option] = f.get(cfg);
  for (const auto& [k, v] : effective_knobs(cfg)) as_given[knob_option(k)] = format_knob(cfg, k, v);
  merge_given(stored, as_given, cfg.override_run, {"no-preset"}, where);  // knobs are compared resolved
}

// "lotformer (eps 0.1, r 4)", or per layer "lotformer, softmax (eps 0.1, r 4)" when they differ.
std::string describe_mechanism(const TrainConfig& cfg) {
  const bool mixed = run_mechanisms(cfg).size() > 1;  // then each layer is named, in order
  std::string name;
  for (const auto& m : layer_mechanisms(cfg))
    if (mixed || name.empty()) name += (name.empty() ? "" : ", ") + m;
  std::string s = name;
  for (const auto& [k, v] : effective_knobs(cfg)) s += (s == name ? " (" : ", ") + k + " " + format_knob(cfg, k, v);
  return s + (s == name ? "" : ")");
}
}  // namespace

std::string resumable_checkpoint(const std::string& out_dir) { return resume_point(out_dir).path; }

bool stores_config(const std::string& path) { return load_checkpoint(path).metadata.count("config") > 0; }

namespace {
TrainConfig config_of(const Checkpoint& ck, const std::string& path) {
  if (!ck.metadata.count("config"))
    throw std::invalid_argument(path + " stores no run configuration (written by an older lotgrad): give the options "
                                "it was trained with");
  return config_from_json(ck.metadata.at("config"), path);
}
}  // namespace

TrainConfig stored_config(const std::string& path) { return config_of(load_checkpoint(path), path); }

TrainConfig resumable_config(const std::string& out_dir, std::string& path) {
  const ResumePoint rp = resume_point(out_dir);
  path = rp.path;
  return config_of(rp.ck, rp.path);
}

namespace {
// The training loop's parts that touch the run directory.
class Run {
 public:
  Run(const TrainConfig& cfg, Workload& w, AdamW& opt, LRScheduler& sched, Generator& dgen)
      : cfg_(cfg), files_(cfg.out_dir), w_(w), opt_(opt), sched_(sched), dgen_(dgen) {}
  const RunFiles& files() const { return files_; }

  // last.ckpt, keeping the one before as prev.ckpt.
  void save_last(const RunState& s) {
    NamedTensors ts = prefixed(w_.module().state_dict(), "model.");
    for (auto& e : opt_.state_dict()) ts.push_back(e);
    for (auto& e : sched_.state_dict()) ts.push_back(e);
    std::map<std::string, std::string> md = w_.data_state();
    const Window& w = s.window;
    md.insert({{"config", config_to_json(cfg_)},
               {"step", std::to_string(s.step)},
               {"dropout_seed", std::to_string(dgen_.seed())},
               {"dropout_counter", std::to_string(dgen_.counter())},
               {"best_dev", full(s.best_dev)},
               {"best_step", std::to_string(s.best_step)},
               {"window_loss", full(w.loss)},
               {"window_metric", full(w.metric)},
               {"window_seen", full(w.seen)},
               {"window_steps", std::to_string(w.steps)}});
    save_checkpoint(files_.last, ts, md, files_.prev);
  }
  void save_best(const RunState& s) {
    save_checkpoint(files_.best, prefixed(w_.module().state_dict(), "model."),
                    {{"config", config_to_json(cfg_)}, {"step", std::to_string(s.step)}, {"best_dev", full(s.best_dev)}});
  }
  // The state of the checkpoint ck read from path (resume_point: last.ckpt or prev.ckpt).
  RunState restore(const Checkpoint& ck, const std::string& path) {
    if (!ck.metadata.count("config"))
      throw std::invalid_argument("train --resume: " + path + " stores no run configuration (an older lotgrad)");
    check_same_run(cfg_, config_from_json(ck.metadata.at("config"), path), path);
    w_.module().load_state_dict(strip(ck.tensors, "model."));
    opt_.load_state_dict(ck.tensors);
    sched_.load_state_dict(ck.tensors);
    const auto& md = ck.metadata;
    w_.set_data_state(md);
    auto number = [&](const std::string& key, bool required = true) -> double {  // exact for the integers stored
      const auto it = md.find(key);
      if (it == md.end()) {
        if (!required) return 0;  // written before windows were stored: the window restarts
        throw IOError("train --resume: " + path + ": no \"" + key + "\" in its metadata");
      }
      try {
        size_t used = 0;
        const double v = std::stod(it->second, &used);
        if (used == it->second.size()) return v;
      } catch (const std::exception&) {}
      throw IOError("train --resume: " + path + ": metadata \"" + key + "\" is \"" + it->second + "\", not a number");
    };
    auto integer = [&](const std::string& key) -> uint64_t {  // a uint64 or a negative int64, as two's complement
      const std::string v = md.count(key) ? md.at(key) : "";
      uint64_t u = 0;
      int64_t i = 0;
      const char *b = v.data(), *e = b + v.size();
      const auto r = v.empty() || v[0] != '-' ? std::from_chars(b, e, u) : std::from_chars(b, e, i);
      if (v.empty() || r.ec != std::errc() || r.ptr != e)
        throw IOError("train --resume: " + path + ": metadata \"" + key + "\" is \"" + v + "\", not an integer");
      return v[0] == '-' ? (uint64_t)i : u;
    };
    dgen_.set_state(integer("dropout_seed"), integer("dropout_counter"));
    RunState st{(int64_t)integer("step"), (int64_t)integer("best_step"), number("best_dev")};
    st.window = {number("window_loss", false), number("window_metric", false), number("window_seen", false),
                 (int64_t)number("window_steps", false)};
    return st;
  }

 private:
  const TrainConfig& cfg_;
  RunFiles files_;
  Workload& w_;
  AdamW& opt_;
  LRScheduler& sched_;
  Generator& dgen_;
};

std::string step_line(const TrainConfig& cfg, const std::string& metric, int64_t step, const Window& w, double lr,
                      double eta_s) {
  char line[256];
  std::snprintf(line, sizeof line, "step %6lld/%lld  loss %.4f  %s %.4g  lr %.2e  %.0f tok/s  %.0f ms/step  ETA %s",
                (long long)step, (long long)cfg.steps, w.loss / (double)w.steps, metric.c_str(), w.metric / w.seen, lr,
                w.tokens / std::max(w.seconds, 1e-9), 1e3 * w.seconds / (double)std::max<int64_t>(w.timed_steps, 1),
                format_duration(eta_s).c_str());
  return line;
}

// ---- data-parallel (under mpirun): the parts of a step that talk to the other ranks
// A hash of every parameter's bits: the replicas must stay equal (checked at each checkpoint).
uint64_t parameter_hash(nn::Module& m) {
  uint64_t h = 1469598103934665603ULL;
  for (const Tensor& p0 : m.parameters()) {
    const Tensor p = p0.detach().contiguous();
    const auto* b = static_cast<const unsigned char*>(p.raw_data());
    for (int64_t i = 0, n = p.numel() * (int64_t)dtype_size(p.dtype()); i < n; ++i) h = (h ^ b[i]) * 1099511628211ULL;
  }
  return h;
}

std::string rank_list(const std::vector<int>& ranks, int size) {
  std::string s;
  for (int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return (ranks.size() == 1 ? "rank " : "ranks ") + s + " of " + std::to_string(size);
}

// The global batch's loss and figures: each rank's shard summed, its loss weighted by its
// share of the items (StepOutput::weight). Also carries each rank's stop request (Ctrl-C).
struct GlobalStep {
  double weight = 0, loss = 0, metric_sum = 0, metric_count = 0, tokens = 0;
  bool stop = false;
  std::vector<int> bad_loss_ranks;  // filled only when the global loss is not finite
};
GlobalStep sum_over_ranks(dist::Comm& comm, const StepOutput& so, double local_loss, bool stop) {
  double v[6] = {so.weight, local_loss * so.weight, so.metric_sum, so.metric_count, so.tokens, stop ? 1.0 : 0.0};
  comm.allreduce_sum(v, 6);
  GlobalStep g{v[0], v[1] / v[0], v[2], v[3], v[4], v[5] > 0};
  if (!std::isfinite(g.loss)) g.bad_loss_ranks = comm.ranks_where(!std::isfinite(local_loss));
  return g;
}

Score sum_over_ranks(dist::Comm& comm, Score s) {
  double v[2] = {s.sum, s.count};
  comm.allreduce_sum(v, 2);
  return {v[0], v[1]};
}
}  // namespace

std::string run_dir(const TrainConfig& cfg) {
  return cfg.out_dir.empty() ? "runs/" + cfg.task + "-" + cfg.attention : cfg.out_dir;
}

TrainResult train(const TrainConfig& cfg_in, std::ostream& log_in) {
  // First: a run started in the background inherits SIGINT ignored, so a Ctrl-C that came
  // before this line (during the data or the resume) would be lost and the run go on for good.
  StopSignals stop;
  TrainConfig cfg = cfg_in;
  cfg.out_dir = run_dir(cfg_in);
  validate(cfg);
  // Data-parallel under mpirun: every rank builds the same model from the same seed and trains
  // on its shard of each global batch; rank 0 alone prints and writes the run directory.
  dist::Comm& comm = dist::Comm::world();
  const bool dp = comm.distributed(), lead = comm.rank() == 0;
  if (dp && cfg.batch < comm.size())
    throw std::invalid_argument("train: --batch " + std::to_string(cfg.batch) + " cannot give each of " +
                                std::to_string(comm.size()) + " ranks an example: --batch is the global batch, "
                                "split across the ranks; give at least " + std::to_string(comm.size()));
  std::ostream silent(nullptr);
  std::ostream& log = lead ? log_in : silent;
  const RunFiles files(cfg.out_dir);
  if (cfg.resume) check_resumable(files);  // before the lock: a mistyped --out creates nothing
  if (lead) fs::create_directories(cfg.out_dir);
  std::optional<RunLock> lock;
  if (lead) lock.emplace(files);  // held to the end of the run
  const IgnoreFileSizeSignal no_sigxfsz;
  if (lead) check_run_dir(cfg, files);
  const std::vector<std::string> stale = lead ? remove_stale_temporaries(files) : std::vector<std::string>{};
  if (cfg.threads > 0) set_num_threads((int)cfg.threads);
  Generator init_gen((uint64_t)cfg.seed);
  const uint64_t dropout_seed = (uint64_t)cfg.seed * 7919 + 17;
  auto dgen = std::make_shared<Generator>(dropout_seed);
  const TaskSpec& task = task_spec(cfg.task);
  std::unique_ptr<Workload> work = make_workload(cfg, log, init_gen, dgen, {comm.rank(), comm.size()});
  nn::Module& mod = work->module();
  AdamW opt(decay_groups(mod.named_parameters(), no_decay_names(cfg)),
            {.lr = cfg.lr, .weight_decay = cfg.weight_decay, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-8});
  const int64_t warm = cfg.warmup < 1.0 ? (int64_t)std::llround(cfg.warmup * (double)cfg.steps) : (int64_t)cfg.warmup;
  LRScheduler sched(opt, warmup_cosine(warm, cfg.steps, 0.1, cfg.lr_floor));
  std::optional<dist::GradReducer> reducer;
  if (dp) reducer.emplace(comm, mod.named_parameters(), cfg.allreduce_bucket_kb << 10);

  Run run(cfg, *work, opt, sched, *dgen);
  // Under mpirun, plain lines: mpirun may hand rank 0 a terminal while its own output is a pipe.
  const bool tty = !dp && &log_in == &std::cout && isatty(fileno(stdout));
  Progress progress(log, tty, cfg.quiet || !lead);
  auto notice = [&](const std::string& text) {  // shown even with --quiet: what happened to the run's files
    if (cfg.quiet) log << text << "\n" << std::flush;
    else progress.line(text);
  };
  if (lock && !lock->warning().empty()) notice(lock->warning());
  for (const std::string& name : stale) notice("removed " + files.dir + "/" + name + " (a save cut by a kill)");
  TrainResult res;
  res.ranks = comm.size();
  RunState st;
  if (cfg.resume) {
    const ResumePoint rp = resume_point(cfg.out_dir);
    st = run.restore(rp.ck, rp.path);
    if (!comm.same_everywhere((uint64_t)st.step) || !comm.same_everywhere(parameter_hash(mod)))
      throw std::runtime_error("train --resume: the ranks read different checkpoints from " + cfg.out_dir +
                               " (rank " + std::to_string(comm.rank()) + " is at step " + std::to_string(st.step) +
                               "): across machines, every rank must see the same run directory (a shared file system)");
    comm.barrier();  // every rank has read it before rank 0 sets a corrupt last.ckpt aside
    std::string why;
    if (rp.last_corrupt && lead) {  // set aside, so that the next save does not keep it as prev.ckpt
      fs::rename(files.last, files.last + ".corrupt");
      why = "; it is kept as " + files.last + ".corrupt";
    }
    const std::string took = "resumed from " + rp.path + " at step " + std::to_string(st.step);
    if (rp.note.empty()) progress.line(took);
    else notice(took + ": " + rp.note + why);
  } else {
    if (lead)
      for (const std::string& old : {files.last, files.prev, files.best, files.last + ".corrupt"}) fs::remove(old);  // --overwrite
    if (!cfg.init_from.empty()) {
      load_weights(mod, load_checkpoint(cfg.init_from), cfg.init_from);
      progress.line("weights from " + cfg.init_from + " (optimiser and schedule start fresh)");
    }
  }
  if (lead) write_file_atomic(files.config, config_to_json(cfg));
  std::optional<MetricsLog> metrics;
  if (lead) metrics.emplace(files.metrics, /*fresh=*/!cfg.resume, st.step);
  const int64_t log_every = cfg.log_every > 0 ? cfg.log_every : std::max<int64_t>(1, cfg.steps / 50);
  progress.line("model: " + std::to_string(mod.num_parameters()) + " parameters, attention " + describe_mechanism(cfg) +
                (is_causal_run(cfg) ? " (causal)" : "") + ", " + std::to_string(get_num_threads()) + " threads" +
                (dp ? " per rank, " + std::to_string(comm.size()) + " ranks (data-parallel), global batch "
                    : ", batch ") +
                std::to_string(cfg.batch) + ", " + std::to_string(cfg.steps) + " steps");
  const std::string& mname = task.metric;
  const std::string dev_refs = work->references("val");  // printed beside every evaluation
  auto better = [&](double a, double b) { return task.higher_is_better ? a > b : a < b; };
  auto evaluate = [&](const std::string& split, int64_t batches, const EvalProgress& p) {
    return sum_over_ranks(comm, work->evaluate(split, batches, p)).value();
  };

  StepChecks checks(mod, cfg, files.last, files.best);
  GlobalStep global;  // data-parallel: the last step's sums over ranks
  if (dp)
    checks.set_distributed([&](const std::string& what) {
      const std::vector<int> bad = what == "loss" ? global.bad_loss_ranks : comm.ranks_where(reducer->local_nonfinite());
      return bad.empty() ? " (data-parallel: no rank's own " + what + " was non-finite; their sum overflowed)"
                         : " (data-parallel: " + rank_list(bad, comm.size()) + " found it in its shard of the batch)";
    });
  LossWatch watch;
  Window w;
  w = st.window;  // a resumed run's open window: its metrics lines are those of a run never stopped
  // last.ckpt, once the metrics lines through its step have reached the disk.
  auto save_last = [&] {
    if (!comm.same_everywhere(parameter_hash(mod)))
      throw std::logic_error("train: step " + std::to_string(st.step) + ": the data-parallel replicas' weights differ "
                             "(their gradient sums were not bitwise equal): a bug, please report it");
    if (!lead) return;
    metrics->sync();
    st.window = w;
    run.save_last(st);
  };
  if (!cfg.resume) save_last();  // step 0: a run killed before its first periodic checkpoint resumes too
  int64_t ran = 0;
  const auto t_start = std::chrono::steady_clock::now();
  double total_step_s = 0, total_tokens = 0;
  while (st.step < cfg.steps) {
    if (cfg.stop_after > 0 && ran >= cfg.stop_after) break;
    if (fault::at("step") == fault::Action::kill) fault::kill_now();  // core/fault.h (tests)
    if (dp ? global.stop : stop.requested()) {  // data-parallel: any rank's request, seen by all at once
      save_last();
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
    // Data-parallel dropout: each rank its own stream, placed by the step (a resume on any
    // number of ranks draws what an uninterrupted run would).
    if (dp) dgen->set_state(dropout_seed + 0x9e3779b97f4a7c15ULL * (uint64_t)(comm.rank() + 1), (uint64_t)st.step << 32);
    StepOutput so = work->train_step(st.step);
    double lv;
    if (dp) {  // the global batch's loss; this rank's loss weighted by its share, so the gradients sum to the global one
      global = sum_over_ranks(comm, so, so.loss.item(), stop.requested());
      lv = checks.loss(now, Tensor::scalar(global.loss, kFloat64));
      so.loss = mul(so.loss, so.weight / global.weight);
      so.metric_sum = global.metric_sum;
      so.metric_count = global.metric_count;
      so.tokens = global.tokens;
      reducer->begin();
      if (now == checks.fault().step) reducer->inject_nan(checks.fault().parameter);  // LOTGRAD_FAULT_NAN_GRAD
      checks.backward(now, so.loss, lv);
      reducer->finish();  // .grad: the sums over ranks
    } else {
      lv = checks.loss(now, so.loss);
      checks.backward(now, so.loss, lv);
    }
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
    ++w.timed_steps;
    total_step_s += dt;
    total_tokens += so.tokens;
    if (st.step % log_every == 0 || st.step == cfg.steps) {
      const double lr = opt.param_groups()[0].options.lr;
      progress.step(st.step, cfg.steps, step_line(cfg, mname, st.step, w, lr, (double)(cfg.steps - st.step) * total_step_s / (double)ran));
      if (const std::string warn = watch.observe(st.step, w.steps, w.loss / (double)w.steps); !warn.empty())
        progress.line("warning: " + warn);
      if (lead)
        metrics->write({st.step, {{"loss", w.loss / (double)w.steps}, {"train_" + mname, w.metric / w.seen}, {"lr", lr},
                                  {"tokens_per_s", w.tokens / std::max(w.seconds, 1e-9)}}});
      w = Window{};
    }
    if (st.step % cfg.eval_every == 0 || st.step == cfg.steps) {
      const double dev = evaluate("val", cfg.eval_batches,
                                  [&](int64_t done, int64_t total) { progress.eval("eval (dev)", done, total); });
      if (st.best_step < 0 || better(dev, st.best_dev)) {
        st.best_dev = dev;
        st.best_step = st.step;
        if (lead) run.save_best(st);
      }
      progress.line("eval step " + std::to_string(st.step) + ": dev " + mname + " " + std::to_string(dev) + " (best " +
                    std::to_string(st.best_dev) + " at step " + std::to_string(st.best_step) + "; " + dev_refs + ")");
      if (lead) metrics->write({st.step, {{"dev_" + mname, dev}, {"best_dev", st.best_dev}}});
    }
    if (st.step % cfg.checkpoint_every == 0 || st.step == cfg.steps) save_last();
  }
  res.steps_done = st.step;
  res.best_dev = st.best_dev;
  res.best_step = st.best_step;
  res.ms_per_step = ran ? 1e3 * total_step_s / (double)ran : 0;
  res.tokens_per_s = total_step_s > 0 ? total_tokens / total_step_s : 0;
  res.baseline_test = work->baseline("test");
  if (reducer) {
    const dist::ReducerStats& rs = reducer->stats();
    res.allreduce_bytes = rs.bytes;
    res.allreduce_buckets = rs.buckets;
    res.allreduce_wait_ms = rs.steps ? 1e3 * rs.total_wait_s / (double)rs.steps : 0;
    progress.line("data-parallel: " + std::to_string(comm.size()) + " ranks, " + std::to_string(rs.buckets) +
                  " gradient buckets, " + std::to_string(rs.bytes) + " bytes per rank per step into the sums, " +
                  std::to_string(res.allreduce_wait_ms) + " ms per step waiting for sums after backward");
  }
  comm.barrier();  // rank 0 has written best.ckpt before any rank reads it
  if (st.step >= cfg.steps && fs::exists(files.best)) {
    load_weights(mod, load_checkpoint(files.best), files.best);
    res.dev_at_best = evaluate("val", 0, nullptr);
    res.test_at_best = evaluate("test", 0, nullptr);
    progress.line("best-on-dev checkpoint (step " + std::to_string(res.best_step) + "): dev " + mname + " " +
                  std::to_string(res.dev_at_best) + ", test " + mname + " " + std::to_string(res.test_at_best) + " (" +
                  work->references("test") + "); " + std::to_string(res.ms_per_step) + " ms/step, " +
                  std::to_string(res.tokens_per_s) + " tokens/s, " +
                  std::to_string(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count()) +
                  " s in all");
    // The run's end figures, for `lotgrad report` (test at the best checkpoint, timing).
    if (metrics)
      metrics->write({st.step, {{"test_" + mname, res.test_at_best}, {"ms_per_step", res.ms_per_step},
                                {"tokens_per_s", res.tokens_per_s}}});
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
  return work->evaluate(split, 0).value();
}

}  // namespace lotgrad::models
