// A task's data, its model and their evaluation: the parts of a run that training,
// evaluation and inspection share.
#pragma once
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "../core/io.h"
#include "../data/dataset.h"
#include "classifier.h"
#include "trainer.h"

namespace lotgrad::models {

struct TaskData {
  data::Dataset train, val, test;
};
// Reads cfg.data_dir in the official layout, or generates the task (seeded by cfg.seed).
TaskData load_task(const TrainConfig& cfg, std::ostream& log);

// LRA's `token != 0` mask (docs/lra.md §5): on for this run?
bool zero_mask_on(const TrainConfig& cfg);
// Token id 0 counts as padding wherever it appears.
void mask_zero_tokens(data::Batch& b);

// The model for a task: a classifier, or a dual encoder for paired data.
struct Model {
  std::shared_ptr<SequenceClassifier> single;
  std::shared_ptr<DualEncoderClassifier> dual;
  nn::Module& module() { return single ? (nn::Module&)*single : (nn::Module&)*dual; }
  Tensor logits(const data::Batch& b) {
    return single ? single->forward(b.tokens, b.mask) : dual->forward(b.tokens, b.mask, b.tokens2, b.mask2);
  }
};
// The model cfg describes, sized for the task's data; the mechanism's knobs are
// effective_knobs(cfg) (run_config.h).
Model build_model(const TrainConfig& cfg, const TaskData& t, Generator& gen, std::shared_ptr<Generator> dgen);

// Correct predictions (argmax of logits (B, C) against labels (B,)).
int64_t count_correct(const Tensor& logits, const Tensor& labels);

// A metric as a sum over items and their count (examples, positions, values), so that the
// parts a data-parallel run's ranks evaluate add up (trainer.cpp sums them across ranks).
struct Score {
  double sum = 0, count = 0;
  double value() const { return count > 0 ? sum / count : 0.0; }
};

// Correct predictions on d (the first max_batches batches of it when > 0): this shard's
// batches of it; progress(done, total) after each batch when given.
Score evaluate(Model& m, const data::Dataset& d, int64_t batch, int64_t max_batches, bool zero_mask,
               const std::function<void(int64_t, int64_t)>& progress = nullptr, const data::Shard& shard = {});

// Checkpoint names: the model's tensors are stored under "model.".
NamedTensors prefixed(const NamedTensors& v, const std::string& p);
NamedTensors strip(const NamedTensors& v, const std::string& p);
// A checkpoint's weights into a model; a mismatch names the file and the shaping options.
void load_weights(nn::Module& m, const Checkpoint& ck, const std::string& path);

// Substrings of parameter names that take no weight decay: the model's (biases, norms,
// embeddings, positions) and the mechanism's declared ones.
std::vector<std::string> no_decay_names(const TrainConfig& cfg);

}  // namespace lotgrad::models
