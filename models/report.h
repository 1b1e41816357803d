// What `lotgrad report` reads from a run directory: its stored settings, its metrics log and
// the figures of its end (best dev, test, ms/step, tokens/s), and the attention maps of its
// best checkpoint on chosen examples. The page itself is drawn in tools/report*.cpp.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <limits>
#include <string>
#include <vector>

#include "metrics_log.h"
#include "trainer.h"

namespace lotgrad::models {

struct RunData {
  std::string dir, name;            // name: the directory's last component
  TrainConfig config;
  std::string config_source;        // "config.json", or the checkpoint it came from
  std::vector<MetricsRecord> records;
  std::string metric = "acc";       // the task's metric (task_spec(task).metric)
  bool higher_is_better = true;
  static constexpr double kNone = std::numeric_limits<double>::quiet_NaN();
  double best_dev = kNone, test = kNone, ms_per_step = kNone, tokens_per_s = kNone;
  int64_t best_step = -1, last_step = 0;
  std::string best_checkpoint;      // dir/best.ckpt when it exists, else ""
};

// Reads dir/config.json (else the configuration stored in best.ckpt or last.ckpt) and
// dir/metrics.jsonl (a torn last line skipped). The end figures come from the log: best dev
// and its step from the dev records, test and ms/step from the record a finished run writes
// after evaluating its best checkpoint, tokens/s from that record or else the mean of the
// training records. Throws naming the directory when it holds neither a config nor a log.
RunData load_run(const std::string& dir);

// The attention of one example through a checkpointed classifier, per layer and head.
struct ExampleAttention {
  int64_t index = 0;                       // the example's index in the split
  int64_t n = 0;                           // its tokens (one example, unpadded)
  int64_t layers = 0, heads = 0;
  std::vector<std::vector<double>> maps;   // [layer * heads + head]: n×n row-major
  std::vector<int64_t> rank;               // numerical rank per map; -1 when not computed
  std::vector<double> bound;               // the mechanism's weight bound per map; 0: none
};
// The maps of the examples of a split at the given indices (the LRA classification tasks, like
// inspect_checkpoint); an index past the split's end is refused, naming it and the split's size
// (skipped instead when skip_missing: "the first k examples" of a split that may be shorter).
// rank: singular values > rank_tol · σ_max, computed when n <= rank_max_n (an O(n^3)
// decomposition per map).
std::vector<ExampleAttention> checkpoint_attention(const TrainConfig& cfg, const std::string& checkpoint,
                                                   const std::string& split, const std::vector<int64_t>& indices,
                                                   double rank_tol, int64_t rank_max_n, std::ostream& log,
                                                   bool skip_missing = false);

}  // namespace lotgrad::models
