// Optimisers over parameter groups: SGD, Adam, AdamW with PyTorch semantics.
//
//   std::vector<ParamGroup> groups = {{decay_params}, {no_decay_params, {.weight_decay = 0.0}}};
//   AdamW opt(groups, {.lr = 3e-4, .weight_decay = 0.01});
//   for (...) { opt.zero_grad(); loss.backward(); opt.step(); }
//
// Each group takes the optimiser's options unless it overrides a field (GroupOverrides).
// step() runs under NoGradGuard, writes each parameter's storage in place (fused loops,
// templated over f32/f64, parallel_for over elements) and bumps its version counter.
// Parameters without .grad are skipped (their state and step count do not advance).
// Optimiser state lives in the parameter's dtype; it is exported by state_dict() as named
// tensors for core/io checkpoints and restored bit-exactly by load_state_dict().
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../core/tensor.h"

namespace lotgrad {

// Every hyperparameter of every optimiser; each optimiser reads the fields it uses.
struct OptimOptions {
  double lr = 1e-3;
  double weight_decay = 0.0;  // SGD/Adam: L2 added to the gradient; AdamW: decoupled
  // SGD
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  // Adam / AdamW
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

// Per-group overrides of the optimiser's defaults (unset fields inherit).
struct GroupOverrides {
  std::optional<double> lr, weight_decay, momentum, dampening;
  std::optional<bool> nesterov;
  std::optional<double> beta1, beta2, eps;
};

struct ParamGroup {
  std::vector<Tensor> params;
  GroupOverrides overrides = {};
  std::string name = {};  // optional label (for messages)
};

// Splits named parameters into a decayed group and a no-decay group (weight_decay = 0):
// tensors of rank < 2 (biases, norm gains) and names containing any of no_decay_substrings
// (e.g. "embed", "norm", "bias") go into the second. Empty groups are dropped.
std::vector<ParamGroup> decay_groups(const std::vector<std::pair<std::string, Tensor>>& named,
                                     const std::vector<std::string>& no_decay_substrings = {"bias", "norm"});

class Optimizer {
 public:
  struct Group {
    std::vector<Tensor> params;
    OptimOptions options;   // resolved; options.lr is the current (scheduled) lr
    double base_lr = 0.0;   // the lr the group was created with; schedules scale it
    std::string name;
  };

  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  virtual void step() = 0;
  virtual const char* name() const = 0;
  // set_to_none (PyTorch's default) drops .grad; otherwise the gradients are zero-filled.
  void zero_grad(bool set_to_none = true);

  std::vector<Group>& param_groups() { return groups_; }
  const std::vector<Group>& param_groups() const { return groups_; }
  void add_param_group(const ParamGroup& g);
  // Sets every group's current lr to base_lr * factor.
  void scale_lr(double factor);
  // Number of step() calls so far.
  int64_t step_count() const { return steps_; }

  // Named state, e.g. "optim.step" (i64), "optim.group0.lr" (f64), "optim.group0.param3.step"
  // (i64), "optim.group0.param3.exp_avg". Tensors are copies.
  std::vector<std::pair<std::string, Tensor>> state_dict(const std::string& prefix = "optim") const;
  // Restores what state_dict produced (extra entries without the prefix are ignored, so a
  // whole checkpoint can be passed). Groups and parameters must match in count, shape and
  // dtype; an unknown entry under the prefix throws. A parameter with no entries gets
  // fresh state (it was never stepped).
  void load_state_dict(const std::vector<std::pair<std::string, Tensor>>& state, const std::string& prefix = "optim");

 protected:
  // Derived constructors call add_param_group (name() is virtual, so not from here).
  explicit Optimizer(const OptimOptions& defaults) : defaults_(defaults) {}

  // Per-parameter state: up to two buffers (momentum_buffer; exp_avg, exp_avg_sq) and the
  // number of updates this parameter received.
  struct ParamState {
    Tensor buf[2];
    int64_t step = 0;
  };
  // Names of the buffers this optimiser keeps (empty string: unused slot).
  virtual std::vector<std::string> buffer_names(const Group& g) const = 0;

  // Runs fn(group, state, param, grad) for every parameter with a gradient, under
  // NoGradGuard, with the grad made contiguous and checked against the parameter. A
  // non-contiguous parameter is updated through a contiguous copy written back after fn.
  template <class F> void for_each_param(const char* op, F&& fn);

  std::vector<Group> groups_;
  std::vector<std::vector<ParamState>> state_;  // [group][param]
  OptimOptions defaults_;
  int64_t steps_ = 0;
};

// SGD with momentum (PyTorch semantics):
//   g = grad + wd * p;  buf = g (first step) or momentum * buf + (1 - dampening) * g;
//   g = nesterov ? g + momentum * buf : buf;  p -= lr * g
class SGD : public Optimizer {
 public:
  SGD(const std::vector<Tensor>& params, const OptimOptions& options);
  SGD(const std::vector<ParamGroup>& groups, const OptimOptions& options);
  void step() override;
  const char* name() const override { return "SGD"; }

 protected:
  std::vector<std::string> buffer_names(const Group& g) const override;
};

// Adam (PyTorch semantics): g = grad + wd * p (L2); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
// AdamW: the same without the L2 term, preceded by p *= 1 - lr * wd (decoupled decay).
class Adam : public Optimizer {
 public:
  Adam(const std::vector<Tensor>& params, const OptimOptions& options);
  Adam(const std::vector<ParamGroup>& groups, const OptimOptions& options);
  void step() override;
  const char* name() const override { return decoupled_ ? "AdamW" : "Adam"; }

 protected:
  Adam(const std::vector<ParamGroup>& groups, const OptimOptions& options, bool decoupled);
  std::vector<std::string> buffer_names(const Group& g) const override;
  bool decoupled_ = false;
};

class AdamW : public Adam {
 public:
  // PyTorch's AdamW default decay is 0.01; OptimOptions' default is 0, so pass it.
  AdamW(const std::vector<Tensor>& params, const OptimOptions& options);
  AdamW(const std::vector<ParamGroup>& groups, const OptimOptions& options);
};

}  // namespace lotgrad
