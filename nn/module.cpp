#include "module.h"

#include <map>
#include <set>

#include "../core/autograd.h"

namespace lotgrad::nn {

void Module::register_parameter(const std::string& name, Tensor* slot) {
  if (slot->defined() && slot->is_leaf() && !slot->requires_grad()) slot->requires_grad_(true);
  params_.emplace_back(name, slot);
}
void Module::register_buffer(const std::string& name, Tensor* slot) { buffers_.emplace_back(name, slot); }

void Module::collect(const std::string& prefix, NamedTensors& out, bool params) const {
  for (auto& [n, t] : params ? params_ : buffers_)
    if (t->defined()) out.emplace_back(prefix + n, *t);
  for (auto& [n, m] : children_) m->collect(prefix + n + ".", out, params);
}
NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", out, true);
  return out;
}
std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters()) out.push_back(t);
  return out;
}
NamedTensors Module::named_buffers() const {
  NamedTensors out;
  collect("", out, false);
  return out;
}
NamedTensors Module::state_dict() const {
  NamedTensors out = named_parameters();
  for (auto& b : named_buffers()) out.push_back(b);
  return out;
}
void Module::load_state_dict(const NamedTensors& state, bool strict) {
  std::map<std::string, Tensor> given(state.begin(), state.end());
  std::set<std::string> used;
  NoGradGuard ng;
  for (auto& [name, t] : state_dict()) {
    auto it = given.find(name);
    if (it == given.end()) {
      if (strict) throw std::invalid_argument("load_state_dict: missing entry \"" + name + "\"");
      continue;
    }
    if (it->second.shape() != t.shape())
      throw ShapeError("load_state_dict: \"" + name + "\" has shape " + shape_str(it->second.shape()) +
                       " in the state but " + shape_str(t.shape()) + " in the module");
    Tensor dst = t.detach();
    dst.copy_(it->second);
    used.insert(name);
  }
  if (strict)
    for (auto& [name, t] : given)
      if (!used.count(name)) throw std::invalid_argument("load_state_dict: unexpected entry \"" + name + "\"");
}
int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [k, t] : named_parameters()) n += t.numel();
  return n;
}
void Module::zero_grad() {
  for (auto& t : parameters()) t.zero_grad();
}
void Module::train(bool on) {
  training_ = on;
  on_train(on);
  for (auto& [n, m] : children_) m->train(on);
}
void Module::to_(DType dtype) {
  for (auto& [n, t] : params_)
    if (t->defined() && t->dtype() != dtype) {
      Tensor c = t->detach().to(dtype);
      c.requires_grad_(true);
      *t = c;
    }
  for (auto& [n, t] : buffers_)
    if (t->defined() && is_floating(t->dtype()) && t->dtype() != dtype) *t = t->detach().to(dtype);
  for (auto& [n, m] : children_) m->to_(dtype);
}
std::string Module::to_string(int indent) const {
  std::string pad(indent, ' ');
  std::string s = type_name() + " (" + std::to_string(num_parameters()) + " parameters)";
  for (auto& [n, t] : params_)
    if (t->defined()) s += "\n" + pad + "  " + n + ": " + describe(*t);
  for (auto& [n, m] : children_) s += "\n" + pad + "  " + n + ": " + m->to_string(indent + 2);
  return s;
}

}  // namespace lotgrad::nn
