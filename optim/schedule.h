// Learning-rate schedules. A Schedule maps a step (0-based: the number of optimiser
// steps already taken) to a factor that multiplies each param group's base lr, so groups
// with different base lrs keep their ratios. Warm-up and decay compose:
//
//   Schedule s = warmup_then(1000, 0.01, cosine_decay(9000, 0.1));  // or warmup_cosine(...)
//   LRScheduler sched(opt, s);          // applies factor(0)
//   for (...) { ...; opt.step(); sched.step(); }
//
// The scheduler's position is exported by state_dict() ("sched.step") so a resumed run
// continues at the same lr.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "optimizer.h"

namespace lotgrad {

class Schedule {
 public:
  using Fn = std::function<double(int64_t)>;
  Schedule();  // constant 1
  Schedule(Fn factor, std::string description);
  // Multiplier of the base lr at step (negative steps count as 0).
  double factor(int64_t step) const;
  double operator()(int64_t step) const { return factor(step); }
  // base_lr * factor(step).
  double lr_at(int64_t step, double base_lr = 1.0) const { return base_lr * factor(step); }
  const std::string& description() const { return desc_; }

 private:
  Fn f_;
  std::string desc_;
};

// factor(s) = value.
Schedule constant_schedule(double value = 1.0);
// Linear from start_factor at step 0 to 1 at step warmup_steps, then 1.
Schedule linear_warmup(int64_t warmup_steps, double start_factor = 0.0);
// Half-cosine from 1 at step 0 to floor at step decay_steps, then floor.
Schedule cosine_decay(int64_t decay_steps, double floor = 0.0);
// Straight line from 1 at step 0 to floor at step decay_steps, then floor.
Schedule linear_decay(int64_t decay_steps, double floor = 0.0);
// sqrt(timescale / (step + timescale)): 1 at step 0, halving every 4x. After a warm-up of
// W steps, inverse_sqrt(W) gives the classic peak * sqrt(W / t) at overall step t.
Schedule inverse_sqrt(int64_t timescale);
// Linear warm-up from start_factor to 1 over warmup_steps, then `after` evaluated at
// step - warmup_steps.
Schedule warmup_then(int64_t warmup_steps, double start_factor, Schedule after);
// Warm-up then cosine to floor, reaching floor at total_steps.
Schedule warmup_cosine(int64_t warmup_steps, int64_t total_steps, double start_factor = 0.0, double floor = 0.0);

// Sets every group's lr to base_lr * s.factor(step).
void apply_schedule(Optimizer& opt, const Schedule& s, int64_t step);

// Holds an optimiser, a schedule and the position in it.
class LRScheduler {
 public:
  LRScheduler(Optimizer& opt, Schedule s, int64_t start = 0);  // applies factor(start)
  void step();  // position += 1, then applies the factor
  int64_t position() const { return pos_; }
  double factor() const { return sched_.factor(pos_); }
  const Schedule& schedule() const { return sched_; }
  // {prefix + ".step": i64}
  std::vector<std::pair<std::string, Tensor>> state_dict(const std::string& prefix = "sched") const;
  // Reads prefix + ".step" (entries without the prefix are ignored), then re-applies.
  void load_state_dict(const std::vector<std::pair<std::string, Tensor>>& state, const std::string& prefix = "sched");

 private:
  Optimizer& opt_;
  Schedule sched_;
  int64_t pos_ = 0;
};

}  // namespace lotgrad
