// When a training run goes wrong (trainer.cpp's step). A step whose loss or gradients are not
// finite is refused before the optimiser steps: DivergenceError names the step, the loss, the
// first parameter (its state_dict name) whose gradient or value is not finite, how many
// elements are bad, and the checkpoint to resume from; nothing is written, so last.ckpt and
// best.ckpt keep the last good state. A loss that climbs far above its start is warned about
// once (LossWatch), so a run whose loss reaches 8e9 does not finish silently.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../nn/module.h"
#include "../optim/clip.h"

namespace lotgrad::models {

class DivergenceError : public std::runtime_error {
 public:
  DivergenceError(const std::string& msg, int64_t step, double loss, std::string parameter)
      : std::runtime_error(msg), step(step), loss(loss), parameter(std::move(parameter)) {}
  int64_t step;           // the optimiser step that was refused (1-based, as the progress lines)
  double loss;            // its loss
  std::string parameter;  // the first parameter whose gradient or value is not finite ("" if none)
};

// The module's first parameter (state_dict name) whose gradient or value (as `what` says)
// holds NaN/Inf, and a description: "gradient of 'encoder.0.attn.q.weight' (64, 64) f32 holds
// 1 nan of 4096 values (first at index (3, 5)); in all 2 tensors hold 4097 nan". Both "" when
// every one is finite.
struct NonFiniteParameter {
  std::string parameter, text;
};
NonFiniteParameter diagnose_nonfinite(const nn::Module& m, FiniteCheck what);

// What to resume from after a refused step: last.ckpt and best.ckpt with the steps they hold
// (read from their metadata), or that none was written yet.
std::string resume_advice(const std::string& last, const std::string& best, const std::string& out_dir);

// Throws DivergenceError: "train: step 37 diverged: the loss is nan; <what>. The optimiser did
// not step and nothing was written: <advice>" (stepped: the step's update itself was bad; it
// is in memory only).
[[noreturn]] void throw_diverged(int64_t step, double loss, const std::string& what, const std::string& parameter,
                                 const std::string& advice, bool stepped = false);

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

// Test hook: LOTGRAD_FAULT_NAN_GRAD=<step>[:<parameter>] puts a NaN into element 0 of that
// parameter's gradient (default: the first parameter with one) after backward at that step
// (1-based). Read at each train() start; step 0 when unset. A malformed value throws naming it.
struct FaultNanGrad {
  int64_t step = 0;
  std::string parameter;
  static FaultNanGrad from_env();
  void apply(nn::Module& m) const;  // throws naming an unknown parameter
};

}  // namespace lotgrad::models
