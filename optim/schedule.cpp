#include "schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

namespace lotgrad {

namespace {
void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("schedule: " + what);
}
std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}
}  // namespace

Schedule::Schedule() : f_([](int64_t) { return 1.0; }), desc_("constant(1)") {}
Schedule::Schedule(Fn factor, std::string description) : f_(std::move(factor)), desc_(std::move(description)) {
  require((bool)f_, "empty schedule function");
}
double Schedule::factor(int64_t step) const { return f_(std::max<int64_t>(step, 0)); }

Schedule constant_schedule(double value) {
  require(std::isfinite(value) && value >= 0, "constant value must be finite and >= 0");
  return Schedule([value](int64_t) { return value; }, "constant(" + num(value) + ")");
}

Schedule linear_warmup(int64_t warmup_steps, double start_factor) {
  require(warmup_steps >= 0, "warmup_steps must be >= 0");
  require(start_factor >= 0 && start_factor <= 1, "warm-up start_factor must be in [0, 1]");
  return Schedule(
      [warmup_steps, start_factor](int64_t s) {
        if (s >= warmup_steps) return 1.0;
        return start_factor + (1.0 - start_factor) * (double)s / (double)warmup_steps;
      },
      "linear_warmup(" + std::to_string(warmup_steps) + ", from " + num(start_factor) + ")");
}

Schedule cosine_decay(int64_t decay_steps, double floor) {
  require(decay_steps > 0, "cosine decay_steps must be > 0");
  require(floor >= 0 && floor <= 1, "cosine floor must be in [0, 1]");
  return Schedule(
      [decay_steps, floor](int64_t s) {
        const double x = (double)std::min(s, decay_steps) / (double)decay_steps;
        return floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * x));
      },
      "cosine_decay(" + std::to_string(decay_steps) + ", floor " + num(floor) + ")");
}

Schedule linear_decay(int64_t decay_steps, double floor) {
  require(decay_steps > 0, "linear decay_steps must be > 0");
  require(floor >= 0 && floor <= 1, "linear decay floor must be in [0, 1]");
  return Schedule(
      [decay_steps, floor](int64_t s) {
        const double x = (double)std::min(s, decay_steps) / (double)decay_steps;
        return floor + (1.0 - floor) * (1.0 - x);
      },
      "linear_decay(" + std::to_string(decay_steps) + ", floor " + num(floor) + ")");
}

Schedule inverse_sqrt(int64_t timescale) {
  require(timescale > 0, "inverse_sqrt timescale must be > 0");
  return Schedule([timescale](int64_t s) { return std::sqrt((double)timescale / (double)(s + timescale)); },
                  "inverse_sqrt(" + std::to_string(timescale) + ")");
}

Schedule warmup_then(int64_t warmup_steps, double start_factor, Schedule after) {
  Schedule warm = linear_warmup(warmup_steps, start_factor);  // validates
  const std::string desc = warm.description() + " then " + after.description();
  return Schedule(
      [warm, after = std::move(after), warmup_steps](int64_t s) {
        return s < warmup_steps ? warm.factor(s) : after.factor(s - warmup_steps);
      },
      desc);
}

Schedule warmup_cosine(int64_t warmup_steps, int64_t total_steps, double start_factor, double floor) {
  require(total_steps > warmup_steps, "warmup_cosine needs total_steps > warmup_steps");
  return warmup_then(warmup_steps, start_factor, cosine_decay(total_steps - warmup_steps, floor));
}

void apply_schedule(Optimizer& opt, const Schedule& s, int64_t step) { opt.scale_lr(s.factor(step)); }

LRScheduler::LRScheduler(Optimizer& opt, Schedule s, int64_t start) : opt_(opt), sched_(std::move(s)), pos_(start) {
  require(start >= 0, "LRScheduler start must be >= 0");
  apply_schedule(opt_, sched_, pos_);
}
void LRScheduler::step() {
  ++pos_;
  apply_schedule(opt_, sched_, pos_);
}
std::vector<std::pair<std::string, Tensor>> LRScheduler::state_dict(const std::string& prefix) const {
  Tensor t = Tensor::scalar(0.0, kInt64);
  t.data_ptr<int64_t>()[0] = pos_;
  return {{prefix + ".step", t}};
}
void LRScheduler::load_state_dict(const std::vector<std::pair<std::string, Tensor>>& state, const std::string& prefix) {
  for (const auto& [name, t] : state) {
    if (name != prefix + ".step") continue;
    if (!t.defined() || t.numel() != 1 || t.dtype() != kInt64)
      throw std::invalid_argument("LRScheduler.load_state_dict: entry '" + name + "' must be a one-element i64 tensor");
    const int64_t p = t.contiguous().data_ptr<int64_t>()[0];
    if (p < 0) throw std::invalid_argument("LRScheduler.load_state_dict: negative position");
    pos_ = p;
    apply_schedule(opt_, sched_, pos_);
    return;
  }
  throw std::invalid_argument("LRScheduler.load_state_dict: missing entry '" + prefix + ".step'");
}

}  // namespace lotgrad
