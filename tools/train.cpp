// `lotgrad train`, `lotgrad eval` and `lotgrad lra` (the README's main job).
#include <cstdio>
#include <iostream>
#include <lotgrad/lotgrad.h>

#include "cli.h"
#include "commands.h"

namespace lotgrad::cli {

namespace {
const char* kTrainHelp = R"(lotgrad train [options]
  data:      --task listops|pathfinder|image|text|retrieval (listops)
             --data DIR            read the official LRA layout in DIR; without it, generate the task
             --write-data DIR      when generating, also write the files (official layout)
             --train-size N --val-size N --test-size N   generated split sizes (20000/1000/1000)
             --min-len N --max-len N   ListOps lengths, exclusive (500/2000)
             --path-length 6|9|14  Pathfinder difficulty (14)
  model:     --attention NAME (lotformer; see `lotgrad info`)  --no-preset  --pooling mean|cls
             --zero-mask -1|0|1 (LRA's token-0-is-padding mask; -1: on for pathfinder and image)
             --pack 0|1 (1: masked tokens are dropped before the encoder; same result, less work)
             --depth 2 --d-model 64 --heads 2 --mlp 128 --dropout 0.1
             --pos 1d|2d (2d: learned row + column positions, for square images)
             --max-pos N (1d: a position table for N tokens, not just the data's longest; a curriculum
                          from short to long sequences keeps one table, so --init-from fits)
             --init normal|torch (Linear weights N(0, 0.02²), or PyTorch's default U(±1/sqrt(in)))
             mechanism knobs: --r --eps --half-steps --grad implicit|unrolled --tol --learn-masses 0|1
                              --mass-temp --features --landmarks --fused 0|1 --lra-code-compat 0|1
  training:  --steps 1000 --batch 32 --bucket 0 (N > 0: batches of similar length, sorted in chunks of N batches)
             --lr 5e-4 --warmup 0.1 (fraction, or steps if >= 1)
             --lr-floor 0.1 (cosine ends at lr*floor) --clip 5 --weight-decay 0 --seed 1 --threads N
  output:    --out runs/run (last.ckpt, best.ckpt, metrics.jsonl)  --eval-every 200 --eval-batches 0
             --checkpoint-every 200 --log-every N --resume
             --init-from FILE (start from a checkpoint's weights: fine-tuning, a curriculum; fresh optimiser)
Ends by printing the dev and test accuracy of the best-on-dev checkpoint.
)";

const std::vector<std::string>& kKnobs = nn::attention_knob_options();

models::TrainConfig parse_train(const Args& a) {
  std::vector<std::string> known = {"task", "data", "write-data", "train-size", "val-size", "test-size", "min-len",
                                    "max-len", "path-length", "max-tokens", "attention", "no-preset", "pooling", "zero-mask", "pack", "depth",
                                    "d-model", "heads", "mlp", "dropout", "init", "pos", "max-pos", "steps", "batch", "bucket", "lr", "warmup", "lr-floor",
                                    "clip", "weight-decay", "seed", "threads", "out", "eval-every", "eval-batches",
                                    "checkpoint-every", "log-every", "resume", "init-from", "help", "checkpoint", "split", "quiet", "count"};
  known.insert(known.end(), kKnobs.begin(), kKnobs.end());
  a.check_known(known);
  models::TrainConfig c;
  c.task = a.get("task", c.task);
  c.data_dir = a.get("data", "");
  c.write_data = a.get("write-data", "");
  c.gen_train = a.get_int("train-size", c.gen_train);
  c.gen_val = a.get_int("val-size", c.gen_val);
  c.gen_test = a.get_int("test-size", c.gen_test);
  c.min_len = a.get_int("min-len", c.min_len);
  c.max_len = a.get_int("max-len", c.max_len);
  c.pathfinder_length = (int)a.get_int("path-length", c.pathfinder_length);
  c.max_tokens = a.get_int("max-tokens", 0);
  c.attention = a.get("attention", c.attention);
  c.use_preset = !a.flag("no-preset");
  c.pooling = a.get("pooling", c.pooling);
  c.zero_mask = (int)a.get_int("zero-mask", c.zero_mask);
  c.pack = a.get_int("pack", 1) != 0;
  c.depth = a.get_int("depth", c.depth);
  c.d_model = a.get_int("d-model", c.d_model);
  c.heads = a.get_int("heads", c.heads);
  c.mlp = a.get_int("mlp", c.mlp);
  c.dropout = a.get_double("dropout", c.dropout);
  c.init = a.get("init", c.init);
  c.pos = a.get("pos", c.pos);
  c.max_positions = a.get_int("max-pos", c.max_positions);
  c.steps = a.get_int("steps", c.steps);
  c.batch = a.get_int("batch", c.batch);
  c.bucket = a.get_int("bucket", c.bucket);
  c.lr = a.get_double("lr", c.lr);
  c.warmup = a.get_double("warmup", c.warmup);
  c.lr_floor = a.get_double("lr-floor", c.lr_floor);
  c.clip = a.get_double("clip", c.clip);
  c.weight_decay = a.get_double("weight-decay", c.weight_decay);
  c.seed = (uint64_t)a.get_int("seed", (int64_t)c.seed);
  c.threads = (int)a.get_int("threads", 0);
  c.out_dir = a.get("out", "runs/" + c.task + "-" + c.attention);
  c.eval_every = a.get_int("eval-every", c.eval_every);
  c.eval_batches = a.get_int("eval-batches", c.eval_batches);
  c.checkpoint_every = a.get_int("checkpoint-every", c.checkpoint_every);
  c.log_every = a.get_int("log-every", 0);
  c.resume = a.flag("resume");
  c.init_from = a.get("init-from", "");
  c.quiet = a.flag("quiet");
  for (const auto& k : kKnobs)
    if (a.has(k)) nn::set_attention_knob(c.knobs, k, a.get(k, ""));
  return c;
}
}  // namespace

int cmd_train(int argc, char** argv) {
  Args a(argc, argv, {"help", "resume", "no-preset", "quiet"});
  if (a.flag("help")) {
    std::fputs(kTrainHelp, stdout);
    return 0;
  }
  models::TrainConfig c = parse_train(a);
  models::TrainResult r = models::train(c, std::cout);
  std::printf("%s\n", r.summary.c_str());
  return 0;
}

int cmd_eval(int argc, char** argv) {
  Args a(argc, argv, {"help", "resume", "no-preset", "quiet"});
  if (a.flag("help")) {
    std::puts("lotgrad eval --checkpoint FILE [--split test|val|train] plus the train options that define the task and model\n"
              "(--task, --data or the generation options, --attention and knobs, widths, --seed for generated data).");
    return 0;
  }
  models::TrainConfig c = parse_train(a);
  const std::string ck = a.get("checkpoint", c.out_dir + "/best.ckpt"), split = a.get("split", "test");
  const double acc = models::evaluate_checkpoint(c, ck, split, std::cout);
  std::printf("%s accuracy of %s: %.4f\n", split.c_str(), ck.c_str(), acc);
  return 0;
}

int cmd_inspect(int argc, char** argv) {
  Args a(argc, argv, {"help", "resume", "no-preset", "quiet"});
  if (a.flag("help")) {
    std::puts("lotgrad inspect --checkpoint FILE [--split val|test|train] [--count 20] plus the train options that define\n"
              "the task and model (--task, --data or the generation options, --attention and knobs, widths, --seed).\n"
              "Per layer and head, over --count examples (one at a time, unpadded): the mean length n, the mean largest\n"
              "weight per query and the largest of all, LOTFormer's bound 1/(n min b) on any weight and the largest share of it\n"
              "an example used, the weight on the first and second tokens times n (1 = uniform; in ListOps the root operator\n"
              "and its first argument), the row entropy over log n (1 = uniform) and the largest |column sum - 1| (0: doubly\n"
              "stochastic, which mean pooling cancels).");
    return 0;
  }
  models::TrainConfig c = parse_train(a);
  const std::string ck = a.get("checkpoint", c.out_dir + "/best.ckpt"), split = a.get("split", "val");
  const int64_t count = a.get_int("count", 20);
  const auto rows = models::inspect_checkpoint(c, ck, split, count, std::cout);
  std::printf("%s on %lld %s examples\n", ck.c_str(), (long long)count, split.c_str());
  std::printf("layer head      n   row max (mean)   max weight   bound 1/(n min b)   max/bound   first token x n   second x n   entropy/log n   max|colsum-1|\n");
  for (const auto& r : rows) {
    char bound[32] = "-", used[32] = "-";
    if (r.bound > 0) std::snprintf(bound, sizeof bound, "%.4f", r.bound);
    if (r.bound > 0) std::snprintf(used, sizeof used, "%.3f", r.bound_used);
    std::printf("%5lld %4lld %6.0f   %14.4f   %10.4f   %17s   %9s   %15.2f   %10.2f   %13.3f   %13.2e\n", (long long)r.layer, (long long)r.head,
                r.n, r.row_max, r.max_weight, bound, used, r.first_token, r.second_token, r.entropy, r.col_dev);
  }
  return 0;
}

}  // namespace lotgrad::cli
