// Multi-head attention with a pluggable mechanism chosen by name.
//
// Two kinds of mechanism share one interface (AttentionMechanism):
// - The q, k, v form (softmax, linear, LOTFormer, ...): MultiHeadAttention projects the block
//   input to per-head queries, keys and values (B, H, n, d) and calls forward(q, k, v, mask).
// - The block-input form (caps.block_input): the mechanism owns its projections and sees the
//   (pre-normalised) block input x (B, n, D) itself, through forward_block(x, mask); that is the
//   place for short convolutions over time and gates computed from x. MultiHeadAttention then
//   builds no q, k, v projection.
// Both return per-head outputs (B, H, n, d); MultiHeadAttention zeroes padded queries' rows,
// merges the heads and applies the output projection.
// Masks: key_padding_mask is bool (B, n) with true = padding. Every mechanism gives padded
// keys zero weight and must not let padded positions' content change valid outputs.
//
// Adding a mechanism (README, "Adding a mechanism"): one file nn/attention_<name>.cpp with the
// class and a `MechanismSpec <name>_mechanism()` that declares everything about it (knobs,
// presets, parameters without weight decay, capabilities, factory), plus one line X(<name>) in
// LOTGRAD_MECHANISMS (nn/attention_registry.cpp). The command line, validation, presets,
// `lotgrad info` and the shared tests are derived from the declaration.
#pragma once
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../core/random.h"
#include "layers.h"
#include "module.h"

namespace lotgrad::nn {

// Mechanism settings: name, head geometry and the knob values (resolved against the
// mechanism's declared knobs by make_attention: unknown names and values out of range are
// refused, absent knobs take their defaults).
struct AttentionOptions {
  std::string name = "softmax";
  int64_t n_heads = 2;
  int64_t d_head = 32;
  std::map<std::string, double> knobs;
  // Position i attends to positions j <= i only. Only for mechanisms with caps.causal:
  // make_attention refuses the others, saying why they have no causal form.
  bool causal = false;
  bool has(const std::string& key) const { return knobs.count(key) > 0; }
  // The knob's value; after make_attention every declared knob with a default is present.
  double get(const std::string& key) const;
  double get(const std::string& key, double def) const {
    auto it = knobs.find(key);
    return it == knobs.end() ? def : it->second;
  }
};

// One setting of a mechanism, declared once: its command-line option is --<name with - for _>.
enum class KnobType { integer, real, flag, choice };
struct Knob {
  std::string name;  // "half_steps"
  KnobType type = KnobType::real;
  double def = 0;    // default value (choice: the index of the default choice)
  double lo = -std::numeric_limits<double>::infinity(), hi = std::numeric_limits<double>::infinity();  // inclusive
  std::string help;  // one line
  std::vector<std::string> choices;  // choice: the names of values 0, 1, ...
  bool optional = false;  // no default: absent unless given (e.g. a seed otherwise drawn from the model's generator)
  std::string option() const;  // "--half-steps"
  std::string range() const;   // "[1, 100000]", "0|1", "unrolled|implicit"
  std::string format(double v) const;  // "4", "0.1", "implicit"
  // Parses the command-line text of this knob; throws std::invalid_argument naming the
  // option, the text and the allowed range.
  double parse(const std::string& text) const;
};

struct Capabilities {
  bool causal = false;          // has a causal form
  std::string why_not_causal;   // when it has none: why (shown when causal is asked for)
  bool doubly_stochastic = false;  // rows and columns of the attention sum to 1
  bool linear_time = false;     // O(n) time and memory in the sequence length
  bool block_input = false;     // sees the block input x (forward_block), not per-head q, k, v
};

class AttentionMechanism;
using AttentionFactory = std::function<std::shared_ptr<AttentionMechanism>(const AttentionOptions&, Generator&)>;

// Everything about a mechanism, declared once in its file.
struct MechanismSpec {
  std::string name;     // registry name: --attention NAME
  std::string summary;  // one line for `lotgrad info`
  std::vector<Knob> knobs;
  // task -> knob values over the defaults (the public code's per-task settings); "*" applies
  // to every task, "tiny" is the small setting the shared tests and smoke runs use.
  std::map<std::string, std::map<std::string, double>> presets;
  std::vector<std::string> no_decay;  // substrings of parameter names that take no weight decay
  Capabilities caps;
  AttentionFactory make;
  const Knob* knob(const std::string& name) const;  // null when not declared
  // The preset for a task ("*" entries first, then the task's own); empty when none.
  std::map<std::string, double> preset(const std::string& task) const;
};

class AttentionMechanism : public Module {
 public:
  // ---- the q, k, v form
  // q, k, v: (B, H, n, d); key_padding_mask: bool (B, n), true = pad, or undefined.
  virtual Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_padding_mask);
  // The (B, H, n, n) matrix A with forward(q, k, v) = A v (rows of padded queries may be
  // anything; the probe zeroes them). Low-rank mechanisms build it from their factors.
  // For study at small n only.
  virtual Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& key_padding_mask);
  // ---- the block-input form (MechanismSpec::caps.block_input)
  // x: the block input (B, n, D) after the block's pre-norm -> per-head outputs (B, H, n, d).
  virtual Tensor forward_block(const Tensor& x, const Tensor& key_padding_mask);
  // The (B, H, n, n) matrix A with forward_block(x) = A v for the mechanism's own values v.
  virtual Tensor attention_matrix_block(const Tensor& x, const Tensor& key_padding_mask);
  // ---- study
  // Per head, an upper bound on any attention weight for an example with n_valid tokens
  // (LOTFormer: 1/(n·min b)); empty when the mechanism has none.
  virtual std::vector<double> weight_bound(int64_t n_valid) const { return {}; }
  // Per head, the weight the mechanism gives a token ℓ positions back, ℓ = 0 .. n−1, as (H, n)
  // (H3: its long-convolution kernel, which weights the in-context samples); undefined when
  // the mechanism has no such filter.
  virtual Tensor time_filter(int64_t n) const { return Tensor(); }
  // Optional fold. A mechanism that sees queries and keys only through q·Mᵀ and k·Mᵀ for a
  // small per-head M (H, r, d), r < d, returns M (dtype dt, with its history); then
  // MultiHeadAttention projects x straight to those r columns per head, x·(M_h W_q,h)ᵀ + M_h b_q,h
  // (r instead of d output columns: fewer flops, no q and k tensors), and calls
  // forward_mapped. Undefined (the default): q and k are formed and forward is called.
  virtual Tensor qk_map(DType dt) const;
  // qm = q·Mᵀ, km = k·Mᵀ (B, H, n, r), v (B, H, n, d) -> (B, H, n, d), equal to forward(q, k, v).
  virtual Tensor forward_mapped(const Tensor& qm, const Tensor& km, const Tensor& v, const Tensor& key_padding_mask);
};

// Every registered mechanism, in registry order: the built-in ones (nn/attention_registry.cpp),
// then any added with register_attention. References stay valid as the registry grows.
const std::deque<MechanismSpec>& attention_registry();
// Adds a mechanism from outside the library (a program or a test of its own); refused when the
// name is taken or a knob shared by name with another mechanism differs in type.
void register_attention(MechanismSpec spec);
std::vector<std::string> attention_names();
// Throws std::invalid_argument listing the known names when name is unknown.
const MechanismSpec& mechanism_spec(const std::string& name);
// The knob values a mechanism runs with: `given` checked against the declaration (unknown
// names, non-integers, values out of range are refused, naming the mechanism, the knob, its
// option, the value and the range) and completed with the defaults.
std::map<std::string, double> resolve_knobs(const MechanismSpec& spec, const std::map<std::string, double>& given);
// opt with its knobs resolved (a mechanism built directly, not through make_attention).
AttentionOptions resolved(const AttentionOptions& opt);
// Resolves opt.knobs and builds the mechanism.
std::shared_ptr<AttentionMechanism> make_attention(const AttentionOptions& opt, Generator& gen);

// (B, n, D) -> (B, n, D): fused QKV projection, mechanism per head, output projection.
class MultiHeadAttention : public Module {
 public:
  MultiHeadAttention(int64_t d_model, const AttentionOptions& opt, Generator& gen);
  // The mechanism's declaration (capabilities, knobs).
  const MechanismSpec& spec() const { return *spec_; }
  // pre_norm: a LayerNorm applied to x first, fused into the projection (pre-LN blocks: the
  // normalised x is recomputed in the backward instead of stored).
  // With a mechanism that has a qk_map (LOTFormer with r < d_head), queries and keys are not
  // formed (see AttentionMechanism::qk_map).
  Tensor forward(const Tensor& x, const Tensor& key_padding_mask = Tensor(), const LayerNorm* pre_norm = nullptr);
  // Per-head (B, H, n, dh) queries, keys and values for x (used by forward and the probe;
  // q, k, v mechanisms only).
  void project(const Tensor& x, Tensor& q, Tensor& k, Tensor& v, const LayerNorm* pre_norm = nullptr) const;
  std::string type_name() const override { return "MultiHeadAttention(" + opt_.name + ")"; }
  const AttentionOptions& options() const { return opt_; }
  std::shared_ptr<Linear> qkv, out_proj;  // qkv is null for block-input mechanisms
  std::shared_ptr<AttentionMechanism> mechanism;

 private:
  const MechanismSpec* spec_;
  AttentionOptions opt_;
  int64_t d_model_;
};

// Zeroes (B, H, n, d) rows of padded queries: x * (1 - mask)[:, None, :, None].
Tensor zero_padded_rows(const Tensor& x, const Tensor& key_padding_mask);

// For each of the B batch rows, the positions of its valid (unpadded) tokens, in order; every
// position when the mask is undefined. Reads the mask once (not element by element).
std::vector<std::vector<int64_t>> valid_positions(const Tensor& key_padding_mask, int64_t B, int64_t n);

// Zero-mass token weights for the transport-based mechanisms: log_w (B, 1, n) is −log(n_valid)
// on valid tokens and −inf on padding, n_valid (B, 1, 1, 1) counts them. A row with every
// token padded (or an undefined mask) gets uniform weights over all n.
void token_log_weights(const Tensor& key_padding_mask, int64_t B, int64_t n, DType dtype, Tensor& log_w,
                       Tensor& n_valid);

}  // namespace lotgrad::nn
