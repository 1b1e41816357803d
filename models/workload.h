// What a run trains: a task's data, its model, its loss and its metric, behind one interface,
// so that the training loop (trainer.cpp), `lotgrad eval` and the step benchmark are written
// once for every task. The tasks are declared once, in task_specs(); each kind of task has one
// implementation (workload_classify.cpp: the LRA classifiers; workload_tokens.cpp: MQAR and
// character-level LM, decoders with a loss at labelled positions; workload_regression.cpp:
// in-context linear regression).
#pragma once
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../core/random.h"
#include "../data/dataset.h"
#include "../nn/module.h"
#include "../nn/transformer.h"
#include "task.h"
#include "trainer.h"

namespace lotgrad::models {

enum class TaskKind {
  classify,    // one label per sequence (LRA): the bidirectional classifier
  tokens,      // labels at positions of one token sequence (mqar, lm): a causal decoder
  regression,  // real vectors in, one number per read-out position (icl-regression)
};

struct TaskSpec {
  std::string name;     // --task
  TaskKind kind;
  std::string summary;  // one line for `lotgrad info` and --help
  std::string metric;   // what evaluation reports: "acc", "bpc" (bits per character), "mse"
  bool higher_is_better = true;
  std::string default_attention = "lotformer";  // --attention when not given
};
// Every task, declared once.
const std::vector<TaskSpec>& task_specs();
const TaskSpec& task_spec(const std::string& name);  // throws naming the known tasks
// Sequence tasks train causal models: their attention is causal whatever --causal says.
bool is_causal_run(const TrainConfig& cfg);

// The loss of one training step and what the progress line reports about it.
struct StepOutput {
  Tensor loss;
  double metric_sum = 0, metric_count = 0;  // the batch's metric is metric_sum / metric_count
  double tokens = 0;                        // tokens processed (tokens/s)
  // How many items the loss is the mean of (examples, labelled positions, predicted values):
  // a data-parallel run weights each rank's loss by its share of the global batch's items.
  double weight = 1;
};

using EvalProgress = std::function<void(int64_t done, int64_t total)>;

class Workload {
 public:
  virtual ~Workload() = default;
  virtual nn::Module& module() = 0;
  // The next training batch's loss (the data position advances); `step` is the optimiser step
  // about to be taken (a curriculum or freshly drawn data depend on it). Data-parallel: the
  // loss of this rank's shard of the global batch (make_workload's shard).
  virtual StepOutput train_step(int64_t step) = 0;
  // The task's metric on "train", "val" or "test" (the first max_batches batches when > 0),
  // as a sum and a count: data-parallel, of this rank's share of the batches.
  virtual Score evaluate(const std::string& split, int64_t max_batches, const EvalProgress& progress = nullptr) = 0;
  // The training data's position, stored in checkpoints so that a resume sees the same batches.
  virtual std::map<std::string, std::string> data_state() const { return {}; }
  virtual void set_data_state(const std::map<std::string, std::string>& md) {}
  // Reference figures for a split, printed beside evaluations ("majority class 0.18",
  // "least squares 0.00, optimal one-step GD 1.76"), the first of them as a number (baseline).
  virtual std::string references(const std::string& split) = 0;
  virtual double baseline(const std::string& split) = 0;
  // A breakdown of the metric that `lotgrad eval` prints below it (icl-regression, interleaved:
  // the squared error at each position beside least squares'); empty when the task has none.
  virtual std::string breakdown(const std::string& split) { return ""; }
  // Batches per evaluation of a split (sizes the progress display).
  virtual int64_t eval_examples(const std::string& split) const = 0;
};

// The workload cfg describes (validate(cfg) first): data read or generated (a line about it
// on log unless cfg.quiet), the model initialised from init_gen, dropout drawn from dgen.
// shard: this process's part of every training batch and of the evaluation batches
// (data-parallel training; the whole of each by default).
std::unique_ptr<Workload> make_workload(const TrainConfig& cfg, std::ostream& log, Generator& init_gen,
                                        std::shared_ptr<Generator> dgen, const data::Shard& shard = {});

// The attention settings of each layer (mechanism, heads, effective knobs, causal): depth entries.
std::vector<nn::AttentionOptions> attention_options(const TrainConfig& cfg);
// The blocks every task's model stacks: depth, width, heads, MLP, dropout, norm, attention.
nn::EncoderConfig encoder_config(const TrainConfig& cfg);
// The training loader of the dataset tasks (shuffled by the seed, whole batches; the LRA
// classifiers add --bucket) and its
// position as checkpoint metadata (Workload::data_state).
data::LoaderOptions loader_options(const TrainConfig& cfg, const data::Shard& shard);
std::map<std::string, std::string> loader_state(const data::DataLoader& loader);
void set_loader_state(data::DataLoader& loader, const std::map<std::string, std::string>& md);

// Per kind (workload_*.cpp).
using WorkloadFactory = std::unique_ptr<Workload>(const TrainConfig&, std::ostream&, Generator&, std::shared_ptr<Generator>,
                                                 const data::Shard&);
WorkloadFactory make_classify_workload, make_tokens_workload, make_regression_workload;

}  // namespace lotgrad::models
