// The training loop of every task (workload.h: the LRA classifiers, MQAR, in-context
// regression, character-level LM): data (read or generated), the model, AdamW with
// warm-up + cosine decay, clipping, progress, evaluation, atomic checkpoints (periodic and
// best-on-dev) that store the run's whole configuration, exact resume, and a JSON-lines
// metrics log. Its parts: run_config.h (the declared settings), task.h (data, model,
// evaluation), metrics_log.h, progress.h. `lotgrad train` is a thin front end over train().
#pragma once
#include <functional>
#include <iosfwd>
#include <map>
#include <string>

#include "../data/dataset.h"
#include "classifier.h"

namespace lotgrad::models {

struct TrainConfig {
  // ---- data
  std::string task = "listops";  // task_specs() (workload.h): the LRA tasks, mqar, icl-regression, lm
  std::string data_dir;          // official layout / written files to read (lm: a text file); empty: generate
  std::string write_data;        // when generating: also write the files here (official layout)
  int64_t gen_train = 20000, gen_val = 1000, gen_test = 1000;  // generated split sizes
  int64_t min_len = 500, max_len = 2000;  // ListOps lengths (exclusive bounds, as the generator)
  int64_t pathfinder_length = 14;  // Pathfinder difficulty: 6, 9 or 14 dashes
  int64_t max_tokens = 0;       // text / retrieval truncation (0: task default 1000)
  // Sequence tasks (docs/seed_tasks.md).
  int64_t seq_len = 0;          // mqar L, lm context (0: the task's default, 64 and 256)
  int64_t vocab = 8192;         // mqar V: keys below V/2, values above
  int64_t kv_pairs = 4;         // mqar N_kv
  double power_a = 0.01;        // mqar query-gap law p(g) ∝ a·g^(a-1)
  bool random_non_queries = false;  // mqar: fill the query region with random tokens, not 0
  int64_t dim = 8;              // icl-regression d
  int64_t points = 32;          // icl-regression: in-context examples n per prompt
  double noise = 0.0;           // icl-regression label noise σ (design iid)
  double x_std = 1.0;           // icl-regression: std of each x coordinate (0: 1/sqrt(dim))
  std::string design = "iid";   // icl-regression: iid (noise σ) or hetero (first half noiseless, second σ = 10)
  std::string layout = "interleaved";  // icl-regression: interleaved x, y tokens (Garg) or paired [x; y] + a query
  int64_t curriculum = 0;       // icl-regression: every N steps one more dim and two more points (0: off)
  int64_t dims_start = 5, points_start = 11;  // the curriculum's first dims and points (Garg et al.)
  // ---- model
  std::string attention = "lotformer";
  std::string layer_attention;  // "1:softmax,0:window": those layers' mechanism instead (layer_mechanisms)
  std::map<std::string, double> knobs;  // mechanism knobs over the preset (effective_knobs, run_config.h)
  bool use_preset = true;       // start from the mechanism's declared preset for the task (nn::MechanismSpec)
  std::string pooling = "mean";
  bool causal = false;          // every layer's attention causal (mechanisms with a causal form)
  // LRA's mask is `token != 0` in every task (docs/lra.md): for images that masks every black
  // pixel. -1 (auto): on for pathfinder and image, where it matters, to match the published
  // setting; 0 off (black pixels are tokens); 1 on.
  int64_t zero_mask = -1;
  bool pack = true;             // drop masked tokens before the encoder (ClassifierConfig::pack)
  int64_t depth = 2, d_model = 64, heads = 2, mlp = 128;  // mlp 0: attention-only blocks
  bool norm = true;             // LayerNorms in the blocks (and the final one of sequence models)
  bool tie_embeddings = true;   // mqar, lm: the output head is the token embedding (DecoderConfig)
  double dropout = 0.1;
  std::string pos = "1d";       // "2d": row + column positions for square images (pathfinder, image)
  // 1d: the position table covers this many tokens (0: the data's longest sequence). A curriculum
  // from short to long sequences passes the long length in every stage, so the weights fit.
  int64_t max_positions = 0;
  std::string init = "normal";  // Linear init: "normal" (0.02) or "torch" (ClassifierConfig::init)
  // ---- optimisation
  int64_t steps = 1000, batch = 32;
  int64_t bucket = 0;           // > 0: length bucketing over chunks of this many batches (less padding)
  double lr = 5e-4, weight_decay = 0.0, warmup = 0.1;  // warmup: fraction of steps (<1) or steps
  double lr_floor = 0.1;        // cosine ends at lr * floor
  double clip = 5.0;
  // ---- evaluation, checkpoints, logs
  int64_t eval_every = 200, eval_batches = 0;  // eval_batches 0: the whole dev set
  int64_t checkpoint_every = 200;
  int64_t log_every = 0;        // plain progress lines every N steps (0: about 50 per run)
  std::string out_dir;          // config.json, last.ckpt, best.ckpt, metrics.jsonl; empty: run_dir(cfg)
  bool resume = false;
  bool override_run = false;    // --resume may change settings that alter the run (lr, steps, ...)
  bool overwrite = false;       // train into a run directory that already holds checkpoints
  // Start from this checkpoint's model weights (fine-tuning, a curriculum over difficulties):
  // the optimiser, schedule and step count start fresh. Ignored when --resume finds last.ckpt.
  std::string init_from;
  int64_t threads = 0;          // 0: leave as is
  int64_t allreduce_bucket_kb = 256;  // mpirun: gradient bucket size (dist/grad_reducer.h)
  int64_t seed = 1;
  bool quiet = false;
  bool detect_anomaly = false;  // name the op that first made a NaN/Inf (autograd.h AnomalyMode; slower)
  int64_t stop_after = 0;       // > 0: stop (as if killed) after this many steps this run (tests)
};

struct TrainResult {
  int64_t steps_done = 0;
  double best_dev = 0, dev_at_best = 0, test_at_best = 0;  // the task's metric at the best-on-dev checkpoint
  int64_t best_step = -1;
  double ms_per_step = 0, tokens_per_s = 0;
  double baseline_test = 0;  // the task's first reference on test (majority class, chance, least squares)
  std::vector<double> losses;  // training loss per step run in this call
  bool interrupted = false;    // stopped by SIGINT / SIGTERM (last.ckpt written)
  std::string warning;         // the loss grew far above its start (divergence.h LossWatch); "" if not
  std::string summary;         // one-line description of the run
  // Data-parallel (under mpirun; dist/): ranks, and per step the bytes each rank put into the
  // gradient sums and the time the reductions took that backward did not hide (mean).
  int ranks = 1;
  int64_t allreduce_bytes = 0, allreduce_buckets = 0;
  double allreduce_wait_ms = 0;
};

// The run directory: cfg.out_dir, or runs/<task>-<attention> when it is empty.
std::string run_dir(const TrainConfig& cfg);

// Trains the run cfg describes (validate(cfg) first; run_config.h). A fresh run refuses an
// --out that holds checkpoints unless cfg.overwrite; cfg.resume continues from last.ckpt.
// A step whose loss or gradients are not finite throws DivergenceError (divergence.h) before
// the optimiser steps, with nothing written; a loss that grows tenfold is warned about once.
// SIGINT or SIGTERM during training stop it after the current step with last.ckpt written
// and the command that resumes printed; a second signal exits at once.
// The run directory survives faults: the run holds an flock on <out>/lock from start to end,
// so a second run on the directory is refused, naming the holder (pid, host, start time). A
// fresh run writes last.ckpt at step 0 (any run that started can be resumed) and each later
// save keeps the one before as prev.ckpt, which --resume takes when last.ckpt is missing or
// corrupt (resumable_checkpoint). --overwrite removes the earlier run's checkpoints first.
// Temporary files of a save cut by a kill are removed at the start. A checkpoint holds the
// open progress window, so a resumed run's metrics.jsonl is an uninterrupted one's (but for
// tokens_per_s); --resume cuts the log back to the checkpoint's step.
TrainResult train(const TrainConfig& cfg, std::ostream& log);

// The configuration stored in a checkpoint (run_config.h); throws naming the file when it has
// none (a checkpoint written before runs stored their settings).
TrainConfig stored_config(const std::string& checkpoint);
bool stores_config(const std::string& checkpoint);
// The checkpoint --resume continues: the run directory's last.ckpt when it reads back whole
// (CRC-checked), else prev.ckpt (the last checkpoint before it); throws when neither does
// (std::invalid_argument "nothing to resume" when the run has no checkpoint at all).
std::string resumable_checkpoint(const std::string& out_dir);
// The configuration stored in that checkpoint, from the same read (path: which file): a run
// still writing the directory may rename last.ckpt between two reads.
TrainConfig resumable_config(const std::string& out_dir, std::string& path);

// The task's metric (task_spec(cfg.task).metric) of a checkpointed model on a split ("train",
// "val" or "test"): `lotgrad eval`. references: the split's reference figures, when given.
// breakdown: the task's per-position figures (Workload::breakdown), when given.
double evaluate_checkpoint(const TrainConfig& cfg, const std::string& checkpoint, const std::string& split,
                           std::ostream& log, std::string* references = nullptr, std::string* breakdown = nullptr);

// What a trained model's attention does on real examples (`lotgrad inspect`): per layer and
// head, averaged over `count` examples of a split (one at a time, unpadded), the largest
// weight per query row, the weight queries put on the first and second tokens (ListOps: the
// root operator and its first argument) relative to uniform, the row entropy relative to log n, the column sums' largest
// distance from 1 (0 for doubly-stochastic attention: mean pooling then returns the mean of
// the values whatever A is) and, for LOTFormer, the bound 1/(n min b) on every weight.
struct HeadInspection {
  int64_t layer = 0, head = 0;
  std::string mechanism;      // the layer's (--attention, or --layer-attention's for that layer)
  double n = 0;               // mean number of tokens
  double row_max = 0;         // mean over queries of the largest weight in the row
  double max_weight = 0;      // largest weight seen
  double bound = 0;           // mean over examples of the weight bound (LOTFormer: 1/(n min b)); 0: none
  double bound_used = 0;      // largest (an example's max weight / its own bound) (<= 1)
  double first_token = 0;     // mean weight on token 0, times n (1 = uniform; = its column sum)
  double second_token = 0;    // the same for token 1
  double entropy = 0;         // mean row entropy / log n (1 = uniform)
  double col_dev = 0;         // largest |column sum - 1|
  double row_dev = 0;         // largest |row sum - 1| (Sinkhorn stopped short of its marginals shows here too)
};
std::vector<HeadInspection> inspect_checkpoint(const TrainConfig& cfg, const std::string& checkpoint,
                                               const std::string& split, int64_t count, std::ostream& log);

}  // namespace lotgrad::models
