// `lotgrad train`, `lotgrad eval` and `lotgrad inspect`. Their options are the declared run
// settings (models/run_config.h) and the mechanisms' knobs; a checkpoint carries the settings
// of its run, so eval and inspect need only --checkpoint.
#include <cstdio>
#include <memory>
#include <iostream>
#include <lotgrad/lotgrad.h>
#include <lotgrad/models/run_config.h>
#include <lotgrad/models/workload.h>

#include "commands.h"
#include "checks.h"
#include "options.h"

namespace lotgrad::cli {

namespace {
using models::Role;

// The configuration of `lotgrad train`: a new run from the defaults and the options given,
// or with --resume the run stored in --out's last.ckpt with the options given on top.
models::TrainConfig train_config(const std::map<std::string, std::string>& given) {
  models::TrainConfig c = models::apply_given(models::TrainConfig{}, given);
  c.out_dir = models::run_dir(c);
  if (!c.resume) return c;
  std::string last;
  const models::TrainConfig stored = models::resumable_config(c.out_dir, last);
  models::TrainConfig r = models::merge_given(stored, given, c.override_run, {}, last);
  r.out_dir = c.out_dir;
  r.resume = true;
  return r;
}

// The configuration of eval / inspect: the checkpoint's stored run with the options given on
// top (a contradiction is refused); `free` options do not change the model or the data.
models::TrainConfig checkpoint_config(const std::string& ck, const std::map<std::string, std::string>& given) {
  if (!models::stores_config(ck)) return models::apply_given(models::TrainConfig{}, given);  // an older checkpoint
  return models::merge_given(models::stored_config(ck), given, false, {}, ck);
}
}  // namespace

int cmd_train(int argc, char** argv) {
  CLI::App app("Trains a model on a task (read or generated): an LRA classifier, or a causal model for mqar,\n"
               "icl-regression and lm; with progress, checkpoints and a metrics log. Ends with the dev and test metric of\n"
               "the best-on-dev checkpoint beside the task's references. No --json.",
               "lotgrad train");
  RunOptions opts(app, {Role::data, Role::model, Role::run, Role::free}, models::TrainConfig{});
  models::TrainConfig c;
  after_parse(app, [&] {  // refused as a parse error, before any work
    c = train_config(opts.given());
    models::validate(c);
  });
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  const models::TrainResult r = models::train(c, std::cout);
  if (dist::Comm::world().rank() == 0) std::printf("%s\n", r.summary.c_str());  // under mpirun: once
  return r.interrupted ? 130 : 0;
}

namespace {
// What eval and inspect share: --checkpoint, --split, the data and model settings (checked
// against the stored ones), and the settings that change neither: --batch, --threads.
struct CheckpointCommand {
  std::string checkpoint, split;
  int64_t batch = 32, threads = 1;
  CLI::Option *batch_opt = nullptr, *threads_opt = nullptr;
  std::unique_ptr<RunOptions> opts;
  CheckpointCommand(CLI::App& app, const std::string& default_split) : split(default_split) {
    app.add_option("--checkpoint", checkpoint, "the checkpoint (best.ckpt or last.ckpt of a run)")->required();
    add_choice(app, "--split", split, {"train", "val", "test"}, "the split to use");
    opts = std::make_unique<RunOptions>(app, std::vector<Role>{Role::data, Role::model}, models::TrainConfig{});
    batch_opt = add_number(app, "--batch", batch, 1, 1e6, "examples per batch");
    threads_opt = add_threads(app, threads);
  }
  models::TrainConfig config() const {
    models::TrainConfig c = checkpoint_config(checkpoint, opts->given());
    if (batch_opt->count()) c.batch = batch;
    if (threads_opt->count()) c.threads = threads;
    return c;
  }
};
}  // namespace

int cmd_eval(int argc, char** argv) {
  CLI::App app("The task's metric (accuracy; lm: bits per character; icl-regression: squared error) of a checkpoint\n"
               "on a split, beside the task's references. The checkpoint stores its run's settings; an option given that\n"
               "contradicts them is refused (--batch and --threads may differ). No --json.",
               "lotgrad eval");
  CheckpointCommand cmd(app, "test");
  std::string plot;
  app.add_option("--plot", plot,
                 "write the breakdown below the metric as a PNG (icl-regression: error per position, or an H3 layer's "
                 "filter weight per in-context point beside the optimal weights)");
  models::TrainConfig c;
  after_parse(app, [&] { c = cmd.config(); });
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  std::string refs, per;
  const double v = models::evaluate_checkpoint(c, cmd.checkpoint, cmd.split, std::cout, &refs, &per);
  std::printf("%s %s of %s: %.4f (%s)\n%s", cmd.split.c_str(), models::task_spec(c.task).metric.c_str(),
              cmd.checkpoint.c_str(), v, refs.c_str(), per.c_str());
  if (!plot.empty()) {
    if (per.empty()) throw std::invalid_argument("eval: --plot " + plot + ": this task and model have no breakdown to plot");
    plot_table(per, plot);
  }
  return 0;
}

int cmd_inspect(int argc, char** argv) {
  CLI::App app(
      "What a trained model's attention does on real examples. Per layer and head, over --count examples (one at a\n"
      "time, unpadded): the layer's mechanism, the mean length n, the mean largest weight per query and the largest of all, the weight bound\n"
      "a mechanism declares (LOTFormer: 1/(n min b)) and the largest share of its own bound an example used, the weight\n"
      "on the first and second tokens times n (1 = uniform; in ListOps the root operator and its first argument), the\n"
      "row entropy over log n (1 = uniform), the largest |column sum - 1| (0: doubly stochastic, which mean pooling\n"
      "cancels) and the largest |row sum - 1|. The checkpoint stores its run's settings. No --json.",
      "lotgrad inspect");
  CheckpointCommand cmd(app, "val");
  int64_t count = 20;
  add_number(app, "--count", count, 1, 1e6, "examples to inspect");
  models::TrainConfig c;
  after_parse(app, [&] { c = cmd.config(); });
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  const auto rows = models::inspect_checkpoint(c, cmd.checkpoint, cmd.split, count, std::cout);
  std::printf("%s on %lld %s examples\n", cmd.checkpoint.c_str(), (long long)count, cmd.split.c_str());
  std::printf("layer head  mechanism        n   row max (mean)   max weight   max/bound (per example)   first token x n   second x n   "
              "entropy/log n   max|colsum-1|   max|rowsum-1|\n");
  for (const auto& r : rows) {
    char used[32] = "-";  // each example's largest weight over that example's own bound, the largest of them
    if (r.bound > 0) std::snprintf(used, sizeof used, "%.3f", r.bound_used);
    std::printf("%5lld %4lld  %-12s %6.0f   %14.4f   %10.4f   %23s   %15.2f   %10.2f   %13.3f   %13.2e   %13.2e\n", (long long)r.layer,
                (long long)r.head, r.mechanism.c_str(), r.n, r.row_max, r.max_weight, used, r.first_token, r.second_token, r.entropy, r.col_dev,
                r.row_dev);
  }
  return 0;
}

}  // namespace lotgrad::cli
