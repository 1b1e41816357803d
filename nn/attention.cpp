#include "attention.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "../ops/elementwise.h"
#include "../ops/heads.h"
#include "../ops/matmul.h"
#include "../ops/shape.h"

namespace lotgrad::nn {

Tensor zero_padded_rows(const Tensor& x, const Tensor& mask) {
  if (!mask.defined()) return x;
  // keep: (B, 1, n, 1) with 1 for valid tokens
  Tensor keep = logical_not(mask).to(x.dtype()).unsqueeze(1).unsqueeze(-1);
  return mul(x, keep);
}

std::vector<std::vector<int64_t>> valid_positions(const Tensor& mask, int64_t B, int64_t n) {
  std::vector<std::vector<int64_t>> pos((size_t)B);
  if (mask.defined() && (mask.dtype() != kBool || mask.shape() != Shape{B, n}))
    throw_shape("valid_positions", "mask must be bool (" + std::to_string(B) + ", " + std::to_string(n) + ")",
                {{"mask", &mask}});
  Tensor m = mask.defined() ? mask.contiguous() : Tensor();
  const bool* mp = m.defined() ? m.data_ptr<bool>() : nullptr;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j)
      if (!mp || !mp[b * n + j]) pos[b].push_back(j);
  return pos;
}

void token_log_weights(const Tensor& mask, int64_t B, int64_t n, DType dt, Tensor& log_w, Tensor& n_valid) {
  std::vector<double> lw((size_t)(B * n)), nv((size_t)B);
  const auto pos = valid_positions(mask, B, n);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = (int64_t)pos[b].size();
    if (L == 0 || L == n) {  // no padding, or nothing valid (its outputs are zeroed anyway): uniform
      std::fill(lw.begin() + b * n, lw.begin() + (b + 1) * n, -std::log((double)n));
      nv[b] = (double)n;
      continue;
    }
    std::fill(lw.begin() + b * n, lw.begin() + (b + 1) * n, -INFINITY);
    for (int64_t j : pos[b]) lw[b * n + j] = -std::log((double)L);
    nv[b] = (double)L;
  }
  log_w = Tensor::from_vector(lw, {B, 1, n}).to(dt);
  n_valid = Tensor::from_vector(nv, {B, 1, 1, 1}).to(dt);
}

MultiHeadAttention::MultiHeadAttention(int64_t d_model, const AttentionOptions& opt, Generator& gen)
    : spec_(&mechanism_spec(opt.name)), opt_(opt), d_model_(d_model) {
  if (opt.n_heads <= 0 || d_model <= 0 || d_model % opt.n_heads)
    throw std::invalid_argument("MultiHeadAttention: d_model " + std::to_string(d_model) +
                                " must be a positive multiple of n_heads " + std::to_string(opt.n_heads));
  opt_.d_head = d_model / opt.n_heads;
  if (!spec_->caps.block_input) qkv = register_module("qkv", std::make_shared<Linear>(d_model, 3 * d_model, gen));
  out_proj = register_module("out_proj", std::make_shared<Linear>(d_model, d_model, gen));
  mechanism = register_module("mechanism", make_attention(opt_, gen));
}

void MultiHeadAttention::project(const Tensor& x, Tensor& q, Tensor& k, Tensor& v, const LayerNorm* pre_norm) const {
  if (!qkv) throw std::logic_error(type_name() + ": a block-input mechanism has no q, k, v projection");
  if (x.dim() != 3 || x.size(2) != d_model_)
    throw_shape("MultiHeadAttention", "expects x of shape (B, n, " + std::to_string(d_model_) + ")", {{"x", &x}});
  // x (B, n, D) -> three contiguous (B, H, n, dh), projected a sequence at a time
  const PreNorm pn = pre_norm ? pre_norm->as_pre_norm() : PreNorm{};
  auto h = linear_qkv_heads(x, qkv->weight, qkv->bias, opt_.n_heads, pre_norm ? &pn : nullptr);
  q = h[0];
  k = h[1];
  v = h[2];
}

Tensor AttentionMechanism::forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  throw std::logic_error(type_name() + ": a block-input mechanism is called through forward_block");
}
Tensor AttentionMechanism::attention_matrix(const Tensor&, const Tensor&, const Tensor&) {
  throw std::logic_error(type_name() + ": a block-input mechanism is probed through attention_matrix_block");
}
Tensor AttentionMechanism::forward_block(const Tensor&, const Tensor&) {
  throw std::logic_error(type_name() + ": a q, k, v mechanism is called through forward");
}
Tensor AttentionMechanism::attention_matrix_block(const Tensor&, const Tensor&) {
  throw std::logic_error(type_name() + ": a q, k, v mechanism is probed through attention_matrix");
}
Tensor AttentionMechanism::qk_map(DType) const { return Tensor(); }
Tensor AttentionMechanism::forward_mapped(const Tensor&, const Tensor&, const Tensor&, const Tensor&) {
  throw std::logic_error(type_name() + ": forward_mapped called on a mechanism without a qk_map");
}

Tensor MultiHeadAttention::forward(const Tensor& x, const Tensor& mask, const LayerNorm* pre_norm) {
  if (mask.defined() && (mask.dtype() != kBool || mask.dim() != 2 || mask.size(0) != x.size(0) || mask.size(1) != x.size(1)))
    throw_shape("MultiHeadAttention", "key_padding_mask must be bool (B, n) matching x", {{"x", &x}, {"mask", &mask}});
  if (x.dim() != 3 || x.size(2) != d_model_)
    throw_shape("MultiHeadAttention", "expects x of shape (B, n, " + std::to_string(d_model_) + ")", {{"x", &x}});
  Tensor o;  // (B, H, n, dh)
  const Tensor M = qkv ? mechanism->qk_map(x.dtype()) : Tensor();  // (H, r, dh)
  if (!qkv) {
    o = mechanism->forward_block(pre_norm ? pre_norm->forward(x) : x, mask);
  } else if (M.defined()) {
    // q·Mᵀ = x·(M W_q)ᵀ + M b_q per head: the query and key weights folded into (H·r, D) maps.
    const int64_t H = opt_.n_heads, dh = opt_.d_head, D = d_model_, r = M.size(1);
    const Tensor& W = qkv->weight;  // (3D, D): rows q, k, v
    // M_h times part p (0: q, 1: k) of the weight (cols = D) or bias (cols = 1): (H, r, cols)
    auto fold = [&](const Tensor& t, int64_t p, int64_t cols) { return matmul(M, t.narrow(0, p * D, D).view({H, dh, cols})); };
    const Tensor F = cat({fold(W, 0, D), fold(W, 1, D)}, 0).view({2 * H * r, D});
    Tensor b;
    if (qkv->bias.defined()) {
      const Tensor& bb = qkv->bias;
      b = cat({fold(bb, 0, 1).view({H * r}), fold(bb, 1, 1).view({H * r}), bb.narrow(0, 2 * D, D)}, 0);  // (2·H·r + D)
    }
    const PreNorm pn = pre_norm ? pre_norm->as_pre_norm() : PreNorm{};
    // [q·Mᵀ | k·Mᵀ | v] per head: (B, H, n, r), (B, H, n, r), (B, H, n, dh)
    auto h = linear_heads(x, cat({F, W.narrow(0, 2 * D, D)}, 0), b, H, {r, r, dh}, pre_norm ? &pn : nullptr);
    const Tensor &qm = h[0], &km = h[1], &v = h[2];
    o = mechanism->forward_mapped(qm, km, v, mask);
  } else {
    Tensor q, k, v;
    project(x, q, k, v, pre_norm);
    o = mechanism->forward(q, k, v, mask);
  }
  return out_proj->forward(merge_heads(zero_padded_rows(o, mask)));  // (B, n, D)
}

}  // namespace lotgrad::nn
