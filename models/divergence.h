// When a training run goes wrong (trainer.cpp's step). A step whose loss or gradients are not
// finite is refused before the optimiser steps: DivergenceError names the step, the loss, the
// first parameter (its state_dict name) whose gradient or value is not finite, how many
// elements are bad, and the checkpoint to resume from; nothing is written, so last.ckpt and
// best.ckpt keep the last good state. A loss that climbs far above its start is warned about
// once (LossWatch), so a run whose loss reaches 8e9 does not finish silently.
#pragma once
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../nn/module.h"
#include "../optim/clip.h"
#include "trainer.h"

namespace lotgrad::models {

class DivergenceError : public std::runtime_error {
 public:
  DivergenceError(const std::string& msg, int64_t step, double loss, std::string parameter)
      : std::runtime_error(msg), step(step), loss(loss), parameter(std::move(parameter)) {}
  int64_t step;           // the optimiser step that was refused (1-based, as the progress lines)
  double loss;            // its loss
  std::string parameter;  // the first parameter whose gradient or value is not finite ("" if none)
  bool collective = false;  // data-parallel: every rank threw this error together (tools/main.cpp)
};

// The module's first parameter (state_dict name) whose gradient or value (as `what` says)
// holds NaN/Inf, and a description: "gradient of 'encoder.0.attn.q.weight' (64, 64) f32 holds
// 1 nan of 4096 values (first at index (3, 5)); in all 2 tensors hold 6 nan, 1 inf". Both ""
// when every one is finite.
struct NonFiniteParameter {
  std::string parameter, text;
};
NonFiniteParameter diagnose_nonfinite(const nn::Module& m, FiniteCheck what);

// Test hook: LOTGRAD_FAULT_NAN_GRAD=<step>[:<parameter>] puts a NaN into element 0 of that
// parameter's gradient (default: the first parameter with one) after backward at that step
// (1-based). Read at each train() start; step 0 when unset. A malformed value throws naming it.
struct FaultNanGrad {
  int64_t step = 0;
  std::string parameter;
  static FaultNanGrad from_env();
  void apply(nn::Module& m) const;  // throws naming an unknown parameter
};

// The checks of one training step, in the order the loop calls them. Each throws
// DivergenceError naming the step (1-based), the loss, what is not finite and the checkpoint
// to resume from; the loop writes nothing after a throw, so last.ckpt and best.ckpt keep the
// last good state.
class StepChecks {
 public:
  StepChecks(nn::Module& m, const TrainConfig& cfg, std::string last_ckpt, std::string best_ckpt);
  // The forward pass's loss, before backward: returns its value when finite. When not: the
  // first parameter whose value is not finite, else (anomaly mode) the op that made it.
  double loss(int64_t step, const Tensor& loss) const;
  // loss.backward(); anomaly mode's error becomes a DivergenceError. Then the test hook.
  void backward(int64_t step, const Tensor& loss, double lv) const;
  // Clips the gradients to cfg.clip (when > 0) and refuses a non-finite one. One pass over the
  // gradients: their norm (clipping's own) is finite exactly when every element is (f32
  // squares summed in double cannot overflow); clipping refuses to scale by a NaN first.
  void gradients(int64_t step, double lv) const;
  // After the optimiser step: every value finite (an update can overflow: with AdamW, weights
  // grow by |1 - lr * weight_decay| per step when that is above 1). One pass over the values.
  void values(int64_t step, double lv) const;
  // Data-parallel (trainer.cpp): note(what) is added to a failure's message, what being "loss"
  // or "gradients" (it names the ranks that found it; every rank calls it, so it may be a
  // collective call); the NaN-gradient test hook is then the reducer's (GradReducer::inject_nan).
  void set_distributed(std::function<std::string(const std::string& what)> note) { note_ = std::move(note); }
  const FaultNanGrad& fault() const { return fault_; }

 private:
  // check: "loss", "gradients" or "values".
  [[noreturn]] void fail(const char* check, int64_t step, double lv, const std::string& what, const std::string& parameter,
                         bool stepped = false) const;
  std::string advice() const;
  nn::Module& m_;
  std::vector<Tensor> params_;
  bool anomaly_;
  double clip_;
  std::string last_, best_, out_;
  FaultNanGrad fault_;
  std::function<std::string(const std::string&)> note_;
};

// The rule for a loss that grows: a progress window's mean loss above kFactor times the loss of
// the first step of this call of train() (the untrained model's, or after --resume the resumed
// one's) is a warning, given once. Not the first window's mean: a large lr can blow the loss up
// within that window. Losses here are >= 0 (cross-entropy, squared error); the reference's
// absolute value is used, and a reference of 0 never warns.
class LossWatch {
 public:
  static constexpr double kFactor = 10.0;
  // The reference: the first step of this call and its loss.
  void start(int64_t step, double loss);
  // Feeds the mean loss of the window of `steps` steps ending at `step`; returns the warning
  // the first time the rule fires, else "".
  std::string observe(int64_t step, int64_t steps, double window_loss);
  // For the run's summary: the warning with the last window's mean ("" when it never fired).
  std::string summary() const;

 private:
  std::string warning_;
  double first_ = 0, last_ = 0;
  int64_t first_step_ = 0, last_step_ = 0;
};

}  // namespace lotgrad::models
