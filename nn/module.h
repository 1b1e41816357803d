// Module: the base of every layer. Parameters, buffers and submodules are registered by
// name; names join with '.' ("encoder.layers.0.attn.q_proj.weight") and are what
// checkpoints store. Modules are held by shared_ptr and never copied (registration keeps
// pointers to members).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../core/tensor.h"

namespace lotgrad::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Recursive, in registration order.
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  NamedTensors named_buffers() const;
  // Parameters then buffers: what a checkpoint stores.
  NamedTensors state_dict() const;
  // Copies values into the registered tensors (shapes must match). strict: every name in
  // the module must be present, and no unknown names.
  void load_state_dict(const NamedTensors& state, bool strict = true);

  int64_t num_parameters() const;
  void zero_grad();
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Converts every parameter and floating buffer to dtype in place (e.g. f64 for gradient
  // checks). Parameters stay leaves that require grad.
  void to_(DType dtype);

  // The module's own children, by name (for printing and walking the tree).
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }
  virtual std::string type_name() const { return "Module"; }
  std::string to_string(int indent = 0) const;  // a tree of modules with parameter counts

 protected:
  // Registers *slot (a member) under name; sets requires_grad on parameters.
  void register_parameter(const std::string& name, Tensor* slot);
  void register_buffer(const std::string& name, Tensor* slot);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }
  // Called by train(); override to react to mode changes.
  virtual void on_train(bool) {}

 private:
  void collect(const std::string& prefix, NamedTensors& out, bool params) const;
  std::vector<std::pair<std::string, Tensor*>> params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace lotgrad::nn
