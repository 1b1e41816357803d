// The LRA classifiers as a Workload: task.h's data, model and evaluation, a shuffled loader,
// cross-entropy on the sequence label, accuracy.
#include "../data/dataset.h"
#include "../ops/loss.h"
#include "task.h"
#include "workload.h"

namespace lotgrad::models {

namespace {
class ClassifyWorkload : public Workload {
 public:
  ClassifyWorkload(const TrainConfig& cfg, std::ostream& log, Generator& gen, std::shared_ptr<Generator> dgen,
                   const data::Shard& shard)
      : cfg_(cfg), shard_(shard), data_(load_task(cfg, log)), model_(build_model(cfg, data_, gen, dgen)),
        loader_(data_.train, bucketed(cfg, shard)) {}

  nn::Module& module() override { return model_.module(); }
  StepOutput train_step(int64_t) override {
    data::Batch b = loader_.next();
    if (zero_mask_on(cfg_)) mask_zero_tokens(b);
    Tensor logits = model_.logits(b);
    return {cross_entropy(logits, b.labels), (double)count_correct(logits, b.labels), (double)b.size(),
            (double)b.real_tokens(), (double)b.size()};
  }
  Score evaluate(const std::string& split, int64_t max_batches, const EvalProgress& progress) override {
    return models::evaluate(model_, pick(split), cfg_.batch, max_batches, zero_mask_on(cfg_), progress, shard_);
  }
  std::map<std::string, std::string> data_state() const override { return loader_state(loader_); }
  void set_data_state(const std::map<std::string, std::string>& md) override { set_loader_state(loader_, md); }
  std::string references(const std::string& split) override {
    return "majority class " + std::to_string(data::majority_rate(pick(split)));
  }
  double baseline(const std::string& split) override { return data::majority_rate(pick(split)); }
  int64_t eval_examples(const std::string& split) const override { return (int64_t)pick(split).size(); }

 private:
  // Length bucketing pays only where sequence lengths vary (the LRA tasks).
  static data::LoaderOptions bucketed(const TrainConfig& cfg, const data::Shard& shard) {
    data::LoaderOptions lo = loader_options(cfg, shard);
    lo.bucket_batches = cfg.bucket;
    return lo;
  }
  const data::Dataset& pick(const std::string& split) const {
    return split == "train" ? data_.train : split == "val" ? data_.val : data_.test;
  }
  TrainConfig cfg_;
  data::Shard shard_;
  TaskData data_;
  Model model_;
  data::DataLoader loader_;
};
}  // namespace

std::unique_ptr<Workload> make_classify_workload(const TrainConfig& cfg, std::ostream& log, Generator& gen,
                                                 std::shared_ptr<Generator> dgen, const data::Shard& shard) {
  return std::make_unique<ClassifyWorkload>(cfg, log, gen, dgen, shard);
}

}  // namespace lotgrad::models
