// Multi-head attention with a pluggable mechanism chosen by name.
//
// A mechanism maps per-head queries, keys and values (B, H, n, d) to outputs (B, H, n, d).
// Masks: key_padding_mask is bool (B, n) with true = padding. Every mechanism gives padded
// keys zero weight and must not let padded positions' content change valid outputs;
// MultiHeadAttention zeroes padded queries' outputs.
//
// Adding a mechanism: one file nn/attention_<name>.cpp (a class deriving from
// AttentionMechanism plus a factory function declared in attention_mechanisms.h) and one
// line in attention_registry() (nn/attention.cpp).
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../core/random.h"
#include "layers.h"
#include "module.h"

namespace lotgrad::nn {

// Mechanism settings: name, head geometry and named knobs (e.g. "features", "landmarks",
// "fused", "r", "eps", "half_steps"). Unknown knobs are rejected by the mechanism.
struct AttentionOptions {
  std::string name = "softmax";
  int64_t n_heads = 2;
  int64_t d_head = 32;
  std::map<std::string, double> knobs;
  double get(const std::string& key, double def) const {
    auto it = knobs.find(key);
    return it == knobs.end() ? def : it->second;
  }
};

class AttentionMechanism : public Module {
 public:
  // q, k, v: (B, H, n, d); key_padding_mask: bool (B, n), true = pad, or undefined.
  virtual Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_padding_mask) = 0;
  // The (B, H, n, n) matrix A with forward(q, k, v) = A v (rows of padded queries may be
  // anything; the probe zeroes them). Low-rank mechanisms build it from their factors.
  // For study at small n only.
  virtual Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& key_padding_mask) = 0;
  // Optional fold. A mechanism that sees queries and keys only through q·Mᵀ and k·Mᵀ for a
  // small per-head M (H, r, d), r < d, returns M (dtype dt, with its history); then
  // MultiHeadAttention projects x straight to those r columns per head, x·(M_h W_q,h)ᵀ + M_h b_q,h
  // (r instead of d output columns: fewer flops, no q and k tensors), and calls
  // forward_mapped. Undefined (the default): q and k are formed and forward is called.
  virtual Tensor qk_map(DType dt) const;
  // qm = q·Mᵀ, km = k·Mᵀ (B, H, n, r), v (B, H, n, d) -> (B, H, n, d), equal to forward(q, k, v).
  virtual Tensor forward_mapped(const Tensor& qm, const Tensor& km, const Tensor& v, const Tensor& key_padding_mask);
};

using AttentionFactory = std::function<std::shared_ptr<AttentionMechanism>(const AttentionOptions&, Generator&)>;
// Name -> factory for every registered mechanism.
const std::map<std::string, AttentionFactory>& attention_registry();
std::vector<std::string> attention_names();
// Throws std::invalid_argument listing the known names when name is unknown.
std::shared_ptr<AttentionMechanism> make_attention(const AttentionOptions& opt, Generator& gen);

// The mechanism knobs as command-line options: "half-steps" sets the knob "half_steps".
const std::vector<std::string>& attention_knob_options();
// Sets the knob of command-line option `option` from its text; "grad" takes implicit or
// unrolled. Throws std::invalid_argument naming --option on a bad value.
void set_attention_knob(std::map<std::string, double>& knobs, const std::string& option, const std::string& value);

// (B, n, D) -> (B, n, D): fused QKV projection, mechanism per head, output projection.
class MultiHeadAttention : public Module {
 public:
  MultiHeadAttention(int64_t d_model, const AttentionOptions& opt, Generator& gen);
  // pre_norm: a LayerNorm applied to x first, fused into the projection (pre-LN blocks: the
  // normalised x is recomputed in the backward instead of stored).
  // With a mechanism that has a qk_map (LOTFormer with r < d_head), queries and keys are not
  // formed (see AttentionMechanism::qk_map).
  Tensor forward(const Tensor& x, const Tensor& key_padding_mask = Tensor(), const LayerNorm* pre_norm = nullptr);
  // Per-head (B, H, n, dh) queries, keys and values for x (used by forward and the probe).
  void project(const Tensor& x, Tensor& q, Tensor& k, Tensor& v, const LayerNorm* pre_norm = nullptr) const;
  std::string type_name() const override { return "MultiHeadAttention(" + opt_.name + ")"; }
  const AttentionOptions& options() const { return opt_; }
  std::shared_ptr<Linear> qkv, out_proj;
  std::shared_ptr<AttentionMechanism> mechanism;

 private:
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
