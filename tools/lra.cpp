// `lotgrad lra`: the README's main job. Generates short ListOps (lengths 10-60, where
// LOTFormer's capacity bound 1/(n min b) still lets one token matter) and trains LOTFormer
// and a softmax baseline on the same data, then prints a table of dev/test accuracy of each
// best-on-dev checkpoint and the time per step.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <lotgrad/lotgrad.h>

#include "cli.h"
#include "commands.h"

namespace lotgrad::cli {

int cmd_lra(int argc, char** argv) {
  Args a(argc, argv, {"help"});
  if (a.flag("help")) {
    std::puts(
        "lotgrad lra [--steps 1200] [--batch 32] [--min-len 10] [--max-len 60] [--train-size 20000] [--seed 1]\n"
        "            [--threads N] [--attention lotformer,softmax] [--out runs/lra]\n"
        "  Generates ListOps with the official algorithm at short lengths and trains each listed mechanism\n"
        "  (2 layers, d 64, 2 heads, MLP 128, mean pooling; LOTFormer r 4, eps 0.1, 50 half-steps, implicit\n"
        "  gradients), then prints dev and test accuracy of each best-on-dev checkpoint and ms per step.");
    return 0;
  }
  a.check_known({"steps", "batch", "min-len", "max-len", "train-size", "seed", "threads", "attention", "out", "lr", "help"});
  models::TrainConfig base;
  base.task = "listops";
  base.min_len = a.get_int("min-len", 10);
  base.max_len = a.get_int("max-len", 60);
  base.gen_train = a.get_int("train-size", 20000);
  base.gen_val = 1000;
  base.gen_test = 1000;
  base.steps = a.get_int("steps", 1200);
  base.batch = a.get_int("batch", 32);
  base.lr = a.get_double("lr", 1e-3);
  base.warmup = 0.1;
  base.lr_floor = 0.1;
  base.eval_every = std::max<int64_t>(1, base.steps / 10);
  base.checkpoint_every = base.eval_every;
  base.seed = (uint64_t)a.get_int("seed", 1);
  base.threads = (int)a.get_int("threads", 0);
  const std::string out = a.get("out", "runs/lra");
  std::vector<std::string> mechs;
  {
    std::string list = a.get("attention", "lotformer,softmax"), item;
    for (char c : list + ",") {
      if (c == ',') {
        if (!item.empty()) mechs.push_back(item);
        item.clear();
      } else {
        item += c;
      }
    }
  }
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
  }
  std::printf("\nListOps (generated, lengths %lld-%lld), %lld steps, batch %lld, %d threads; majority class %.1f%%\n",
              (long long)base.min_len, (long long)base.max_len, (long long)base.steps, (long long)base.batch,
              get_num_threads(), rows.empty() ? 0.0 : 100 * rows[0].r.majority_test);
  std::printf("| attention | best dev | test | ms/step | run time |\n|---|---|---|---|---|\n");
  for (auto& row : rows)
    std::printf("| %s | %.1f%% | %.1f%% | %.1f | %.0f s |\n", row.name.c_str(), 100 * row.r.dev_at_best,
                100 * row.r.test_at_best, row.r.ms_per_step, row.secs);
  return 0;
}

}  // namespace lotgrad::cli
