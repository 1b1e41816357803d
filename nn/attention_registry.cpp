// The registry of attention mechanisms: one line per mechanism in LOTGRAD_MECHANISMS. Each
// mechanism's file defines `MechanismSpec <name>_mechanism()`; everything else (validation,
// defaults, presets, the command-line options, `lotgrad info`, the shared tests) reads the
// declarations from attention_registry().
#include <cmath>
#include <cstdio>
#include <deque>
#include <set>
#include <stdexcept>

#include "../core/parse.h"
#include "attention.h"

// X(name): nn/attention_<name>.cpp defines MechanismSpec name_mechanism().
#define LOTGRAD_MECHANISMS(X) \
  X(softmax)                  \
  X(linear)                   \
  X(performer)                \
  X(nystromformer)            \
  X(lotformer)                \
  X(lotformer_hybrid)         \
  X(sinkformer)               \
  X(espformer)                \
  X(window)                   \
  X(deltanet)                 \
  X(h3)                       \
  X(zeros)                    \
  X(fem)                      \
  X(fem_linear) /* also in nn/attention_fem.cpp: the same mixer over the linear prior */ \
  X(qtvit)                    \
  X(inline)                     \
  X(btt)                        \
  X(mlr)

namespace lotgrad::nn {

#define LOTGRAD_DECLARE_MECHANISM(name) MechanismSpec name##_mechanism();
LOTGRAD_MECHANISMS(LOTGRAD_DECLARE_MECHANISM)
#undef LOTGRAD_DECLARE_MECHANISM

namespace {
std::string num(double v) { return format_number(v); }

// A new declaration fits the registry: a new name, a factory, defaults and presets in range,
// and a knob name shared with another mechanism is one command-line option (same type and
// choices).
void check_fits(const std::deque<MechanismSpec>& reg, const MechanismSpec& s) {
  if (s.name.empty() || !s.make) throw std::logic_error("attention registry: a mechanism needs a name and a factory");
  for (const auto& other : reg) {
    if (other.name == s.name) throw std::logic_error("attention registry: " + s.name + " is registered twice");
    for (const auto& k : s.knobs)
      if (const Knob* o = other.knob(k.name); o && (o->type != k.type || o->choices != k.choices))
        throw std::logic_error("attention registry: knob " + k.name + " of " + s.name + " differs in type from " +
                               other.name + "'s knob of that name");
  }
  resolve_knobs(s, {});  // defaults in range
  for (const auto& [task, knobs] : s.presets) resolve_knobs(s, knobs);
}

std::deque<MechanismSpec>& registry() {
  static std::deque<MechanismSpec> reg = [] {
    std::deque<MechanismSpec> r;
#define LOTGRAD_SPEC(name)                 \
  {                                        \
    MechanismSpec s = name##_mechanism(); \
    check_fits(r, s);                      \
    r.push_back(std::move(s));             \
  }
    LOTGRAD_MECHANISMS(LOTGRAD_SPEC)
#undef LOTGRAD_SPEC
    return r;
  }();
  return reg;
}
}  // namespace

const std::deque<MechanismSpec>& attention_registry() { return registry(); }

void register_attention(MechanismSpec spec) {
  check_fits(registry(), spec);
  registry().push_back(std::move(spec));
}

std::vector<std::string> attention_names() {
  std::vector<std::string> names;
  for (const auto& s : attention_registry()) names.push_back(s.name);
  return names;
}

const MechanismSpec& mechanism_spec(const std::string& name) {
  for (const auto& s : attention_registry())
    if (s.name == name) return s;
  std::string known;
  for (const auto& n : attention_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown attention mechanism \"" + name + "\"; known: " + known);
}

const Knob* MechanismSpec::knob(const std::string& key) const {
  for (const auto& k : knobs)
    if (k.name == key) return &k;
  return nullptr;
}

std::map<std::string, double> MechanismSpec::preset(const std::string& task) const {
  std::map<std::string, double> out;
  for (const char* key : {"*", task.c_str()}) {
    auto it = presets.find(key);
    if (it != presets.end())
      for (const auto& [k, v] : it->second) out[k] = v;
  }
  return out;
}

double AttentionOptions::get(const std::string& key) const {
  auto it = knobs.find(key);
  if (it == knobs.end()) throw std::logic_error(name + " attention: knob " + key + " was not resolved");
  return it->second;
}

std::string Knob::option() const {
  std::string o = "--" + name;
  for (auto& c : o)
    if (c == '_') c = '-';
  return o;
}

std::string Knob::range() const {
  if (type == KnobType::flag) return "0|1";
  if (type == KnobType::choice) {
    std::string r;
    for (const auto& c : choices) r += (r.empty() ? "" : "|") + c;
    return r;
  }
  std::string r = "[";  // appended, not "[" + ...: g++ 12 warns (-Wrestrict) on that form
  r += std::isinf(lo) ? std::string("-inf") : num(lo);
  r += ", ";
  r += std::isinf(hi) ? std::string("inf") : num(hi);
  return r + "]";
}

std::string Knob::format(double v) const {
  if (type == KnobType::choice && v >= 0 && v < (double)choices.size() && v == std::floor(v)) return choices[(size_t)v];
  return num(v);
}

double Knob::parse(const std::string& text) const {
  if (type == KnobType::choice) {
    for (size_t i = 0; i < choices.size(); ++i)
      if (text == choices[i]) return (double)i;
    throw std::invalid_argument(option() + " " + text + ": expected one of " + range());
  }
  const std::optional<double> v = parse_number(text);
  if (!v) throw std::invalid_argument(option() + " \"" + text + "\": expected a number in " + range());
  return *v;
}

std::map<std::string, double> resolve_knobs(const MechanismSpec& spec, const std::map<std::string, double>& given) {
  std::map<std::string, double> out;
  for (const auto& [key, v] : given) {
    const Knob* k = spec.knob(key);
    if (!k) {
      std::string known;
      for (const auto& kk : spec.knobs) known += (known.empty() ? "" : ", ") + kk.name;
      throw std::invalid_argument(spec.name + " attention has no knob " + key + "; its knobs: " +
                                  (known.empty() ? "none" : known));
    }
    const bool whole = k->type != KnobType::real;
    const double lo = k->type == KnobType::flag ? 0 : k->type == KnobType::choice ? 0 : k->lo;
    const double hi = k->type == KnobType::flag ? 1 : k->type == KnobType::choice ? (double)k->choices.size() - 1 : k->hi;
    if (!std::isfinite(v) || v < lo || v > hi || (whole && v != std::floor(v)))
      throw std::invalid_argument(spec.name + " attention: knob " + key + " (" + k->option() + ") = " + num(v) +
                                  " is outside " + k->range() + (whole && k->type == KnobType::integer ? " (an integer)" : ""));
    out[key] = v;
  }
  for (const auto& k : spec.knobs)
    if (!k.optional && !out.count(k.name)) out[k.name] = k.def;
  return out;
}

AttentionOptions resolved(const AttentionOptions& opt) {
  AttentionOptions r = opt;
  r.knobs = resolve_knobs(mechanism_spec(opt.name), opt.knobs);
  return r;
}

std::shared_ptr<AttentionMechanism> make_attention(const AttentionOptions& opt, Generator& gen) {
  const MechanismSpec& spec = mechanism_spec(opt.name);
  if (opt.causal && !spec.caps.causal)
    throw std::invalid_argument(spec.name + " attention has no causal form (--causal): " + spec.caps.why_not_causal);
  return spec.make(resolved(opt), gen);
}

}  // namespace lotgrad::nn
