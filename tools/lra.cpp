// `lotgrad lra`: the README's main job. Generates short ListOps (lengths 10-60, where
// LOTFormer's capacity bound 1/(n min b) still lets one token matter) and trains LOTFormer
// and a softmax baseline on the same data, then prints a table of dev/test accuracy of each
// best-on-dev checkpoint and the time per step.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <lotgrad/lotgrad.h>

#include "checks.h"
#include "options.h"
#include "commands.h"

namespace lotgrad::cli {

namespace {
// LOTFormer's ListOps preset as its declaration gives it (nn/attention_lotformer.cpp).
std::string lotformer_preset() {
  const nn::MechanismSpec& spec = nn::mechanism_spec("lotformer");
  std::string s;
  for (const auto& [knob, v] : spec.preset("listops")) s += (s.empty() ? "" : ", ") + knob + " " + spec.knob(knob)->format(v);
  return s;
}
}  // namespace

int cmd_lra(int argc, char** argv) {
  CLI::App app("The main job: generates ListOps with the official algorithm at short lengths and trains each listed\n"
               "mechanism (2 layers, d 64, 2 heads, MLP 128, mean pooling; each mechanism's ListOps preset, LOTFormer's:\n" +
                   lotformer_preset() + "), then prints dev and test accuracy of each best-on-dev checkpoint and ms\n"
                   "per step. No --json.",
               "lotgrad lra");
  models::TrainConfig base;
  base.task = "listops";
  base.min_len = 10;
  base.max_len = 60;
  base.gen_train = 20000;
  base.gen_val = 1000;
  base.gen_test = 1000;
  base.steps = 1200;
  base.lr = 1e-3;
  base.out_dir = "runs/lra";
  // lra's own settings: these declared ones with lra's defaults, and a list of mechanisms.
  const std::vector<std::string> mine = {"steps", "batch", "min-len", "max-len", "train-size", "seed", "threads", "lr", "out", "overwrite"};
  std::vector<std::string> skip;
  for (const auto& f : models::config_fields())
    if (std::find(mine.begin(), mine.end(), f.option) == mine.end()) skip.push_back(f.option);
  RunOptions opts(app, {models::Role::data, models::Role::model, models::Role::run, models::Role::free}, base, skip, false);
  std::vector<std::string> mechs = {"lotformer", "softmax"};
  app.add_option("--attention", mechs, "the mechanisms to train, comma-separated")
      ->delimiter(',')
      ->check(CLI::IsMember(nn::attention_names()))
      ->capture_default_str();
  after_parse(app, [&] {
    base = models::apply_given(base, opts.given());
    models::validate(base);
  });
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  base.eval_every = std::max<int64_t>(1, base.steps / 10);
  base.checkpoint_every = base.eval_every;
  const std::string out = base.out_dir;
  struct Row {
    std::string name;
    models::TrainResult r;
    double secs;
  };
  std::vector<Row> rows;
  for (const auto& m : mechs) {
    models::TrainConfig c = base;
    c.attention = m;
    c.out_dir = out + "/" + m;
    std::printf("\n=== %s on ListOps, lengths %lld-%lld, %lld steps of batch %lld ===\n", m.c_str(), (long long)c.min_len,
                (long long)c.max_len, (long long)c.steps, (long long)c.batch);
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    models::TrainResult r = models::train(c, std::cout);
    rows.push_back({m, r, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()});
    if (r.interrupted) {  // SIGINT / SIGTERM stops the whole job, not just this mechanism's run
      std::printf("lra: stopped by a signal during %s; the mechanisms after it were not trained\n", m.c_str());
      return 130;
    }
  }
  std::printf("\nListOps (generated, lengths %lld-%lld), %lld steps, batch %lld, %d threads; majority class %.1f%%\n",
              (long long)base.min_len, (long long)base.max_len, (long long)base.steps, (long long)base.batch,
              get_num_threads(), rows.empty() ? 0.0 : 100 * rows[0].r.baseline_test);
  std::printf("| attention | best dev | test | ms/step | run time |\n|---|---|---|---|---|\n");
  for (auto& row : rows)
    std::printf("| %s | %.1f%% | %.1f%% | %.1f | %.0f s |\n", row.name.c_str(), 100 * row.r.dev_at_best,
                100 * row.r.test_at_best, row.r.ms_per_step, row.secs);
  return 0;
}

}  // namespace lotgrad::cli
