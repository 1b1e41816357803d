// InLine, injective linear attention with a local residual (Han et al., "Bridging the Divide:
// Reconsidering Softmax and Linear Attention", NeurIPS 2024, arXiv:2412.06590; the released
// layer: github.com/LeapLabTHU/InLine, models/inline_swin.py, InLineAttention), for sequences.
// A block-input mechanism, per head, from the block input x (B, n, D):
// 1. q, k, v = x W_qkv + b (one Linear D -> 3D); the kernel φ on q and k (knob inline_kernel:
//    identity, the reference's default; relu; leakyrelu; exp(0.2x) clamped, see the header).
// 2. Weights over the N valid tokens, s = d^{-1/2}:
//      w_ij = (s/N)(φ(q_i)·φ(k_j) − (1/N) Σ_m φ(q_i)·φ(k_m)) + 1/N.
//    Each row sums to 1 exactly and nothing divides by data. Normalised linear attention,
//    φ(q_i)·φ(k_j) / Σ_m φ(q_i)·φ(k_m), gives φ(q_i) and λφ(q_i) the same row (it is not
//    injective); subtracting the row mean instead keeps the scale of q_i in w.
// 3. o_i = Σ_j w_ij v_j, in O(n·d²): w_ij = (s/N) φ(q_i)·(φ(k_j) − k̄) + 1/N, so
//      o_i = φ(q_i)ᵀ M + v̄,   M = (s/N) Σ_j (φ(k_j) − k̄) v_jᵀ = (s/N) φ(K)ᵀV − s k̄ v̄ᵀ   (d × d)
//    with k̄, v̄ the means of φ(k) and v over the valid tokens (the reference's
//    (s/N) φ(q)ᵀ φ(K)ᵀV + (1 − s φ(q)·k̄) v̄, with the k̄ term folded into the state).
// 4. The local residual: a depthwise convolution of v over positions with 3 taps, added to o
//    (MultiHeadAttention's out_proj is the reference's proj). Knob local_residual 0 drops it.
//    - Not causal: taps {t−1, t, t+1}; the kernel is PREDICTED per example and channel from the
//      mean of x over the valid tokens by the reference's grouped 1×1 convolutions (per head:
//      Linear d -> d, GELU, Linear d -> 3d), the 1-d form of its 3×3 kernel.
//    - Causal: taps {t, t−1, t−2} with a STATIC learned kernel (D, 3): a predicted kernel would
//      need the mean over the whole sequence, which sees the future.
// Causal (AttentionOptions::causal): query t sees the valid keys j <= t, N -> t_i (how many it
// sees), k̄, v̄ -> their prefix means. o_t = (s/t) φ(q_t)ᵀ S_t + (1 − s φ(q_t)·k̄_t) v̄_t,
// S_t = Σ_{j<=t} φ(k_j) v_jᵀ, is one unnormalised causal linear attention with (d + 1)-wide
// features, φ_q = [(s/t) φ(q_t) ; c_t] and φ_k = [φ(k_j) ; 1], c_t = 1/t − (s/t) φ(q_t)·k̄_t. Its last
// feature contributes c_t Σ_{j<=t} v_j, a cumulative sum, so it is computed as one: the first d
// features go through causal_linear_prefix (a running (d, d) state per head, knob chunk) and
// c_t cumsum(v)_t is added: the same sums, in about half the time of the (d + 1)-wide product,
// forward + backward (measured at n = 4096, d = 64, B·H = 16, 2 threads). k̄_t = cumsum(φ(k))/t
// is an (n, d) tensor, O(n·d): no (n, d, d) prefix tensor anywhere.
// Padding: pads are left out of every sum and mean, and N (or t) counts valid tokens only (zeroing
// φ(k) and v alone is not enough: 1/N and the means would still count the pads). The residual's
// mean of x is over valid tokens too, and its convolution runs over the sequence with the pads
// removed: a valid token's neighbours are the valid tokens just before and after it (0 at the
// sequence's ends). So an example's valid outputs are the same whatever the padding, left, right
// or scattered inside, and whatever the pads hold (tests/test_inline.cpp).
#include "attention_inline.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "../ops/causal_linear.h"
#include "../ops/elementwise.h"
#include "../ops/heads.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "../ops/shape.h"
#include "init.h"

namespace lotgrad::nn {

namespace {
// φ(x) = exp(kExpRate · min(x, kExpClampMax)) <= e^20 ≈ 4.9e8: φ(q)·φ(k) over 64 channels stays
// below 1e20 and a million of them summed below 1e26, far from f32's 3.4e38. (Unclamped, a pad
// holding x ≈ 450 makes φ = inf in f32 and inf · 0 a NaN.)
constexpr double kExpRate = 0.2, kExpClampMax = 100.0;

// valid (B, 1, n, 1), ones when undefined.
Tensor valid_or_ones(const InLineInputs& in) {
  return in.valid.defined() ? in.valid : Tensor::ones({in.fq.size(0), 1, in.fq.size(2), 1}, in.fq.dtype());
}

void check_inputs(const InLineInputs& in) {
  const Tensor &q = in.fq, &k = in.fk, &v = in.v;
  if (!q.defined() || !k.defined() || !v.defined() || q.dim() != 4 || k.shape() != q.shape() || v.dim() != 4 ||
      v.size(0) != q.size(0) || v.size(1) != q.size(1) || v.size(2) != q.size(2) ||
      (in.valid.defined() && in.valid.shape() != Shape{q.size(0), 1, q.size(2), 1}))
    throw_shape("inline attention", "φ(q), φ(k) must be (B, H, n, d), v (B, H, n, e) and valid (B, 1, n, 1)",
                {{"fq", &q}, {"fk", &k}, {"v", &v}, {"valid", &in.valid}});
}

// The valid tokens' (row) indices into v padded with one zero row per (batch row, head), (B·H·(n + 1), e):
// row n of each sequence is "no token". out[b, h, t] = the valid token `offset` places from t in
// the sequence with its pads removed, or that zero row (t a pad, or past an end).
Tensor neighbour_index(const std::vector<std::vector<int64_t>>& pos, int64_t H, int64_t n, int64_t offset) {
  const int64_t B = (int64_t)pos.size();
  std::vector<int64_t> idx((size_t)(B * H * n)), nb((size_t)n);
  for (int64_t b = 0; b < B; ++b) {
    const auto& P = pos[(size_t)b];
    const int64_t L = (int64_t)P.size();
    std::fill(nb.begin(), nb.end(), n);
    for (int64_t r = 0; r < L; ++r)
      if (r + offset >= 0 && r + offset < L) nb[(size_t)P[(size_t)r]] = P[(size_t)(r + offset)];
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < n; ++t) idx[(size_t)((b * H + h) * n + t)] = (b * H + h) * (n + 1) + nb[(size_t)t];
  }
  return Tensor::from_vector(idx, {B * H * n});
}
}  // namespace

Tensor inline_feature(const Tensor& x, InLineKernel kernel) {
  switch (kernel) {
    case InLineKernel::identity:
      return x;
    case InLineKernel::relu:
      return relu(x);
    case InLineKernel::leakyrelu:
      return where(gt(x, 0.0), x, mul(x, 0.01));
    case InLineKernel::exp:
      return exp(mul(clamp(x, std::nullopt, kExpClampMax), kExpRate));
  }
  throw std::invalid_argument("inline attention: unknown kernel " + std::to_string((int)kernel));
}

InLineInputs inline_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, InLineKernel kernel) {
  InLineInputs in{.fq = q, .fk = k, .v = v};
  check_inputs(in);
  const int64_t B = q.size(0), n = q.size(2);
  if (mask.defined() && (mask.dtype() != kBool || mask.shape() != Shape{B, n}))
    throw_shape("inline attention", "key_padding_mask must be bool (B, n) = (" + std::to_string(B) + ", " + std::to_string(n) + ")",
                {{"q", &q}, {"key_padding_mask", &mask}});
  in.fq = inline_feature(q, kernel);
  in.fk = inline_feature(k, kernel);
  if (mask.defined()) {
    in.valid = logical_not(mask).to(q.dtype()).reshape({B, 1, n, 1});
    in.fk = mul(in.fk, in.valid);
    in.v = mul(v, in.valid);
  }
  return in;
}

Tensor inline_linear_form(const InLineInputs& in, bool causal, int64_t chunk) {
  check_inputs(in);
  if (chunk < 1) throw std::invalid_argument("inline attention: chunk must be >= 1, got " + std::to_string(chunk));
  const double s = 1.0 / std::sqrt((double)in.fq.size(3));
  const Tensor valid = valid_or_ones(in);
  if (!causal) {
    const Tensor count = clamp(sum(valid, {2}, true), 1.0);  // (B, 1, 1, 1): N
    const Tensor kbar = div(sum(in.fk, {2}, true), count);   // (B, H, 1, d)
    const Tensor vbar = div(sum(in.v, {2}, true), count);    // (B, H, 1, e)
    const Tensor M = sub(mul(matmul(in.fk.transpose(-2, -1), in.v), rdiv(count, s)),
                         mul(matmul(kbar.transpose(-2, -1), vbar), s));  // (B, H, d, e)
    return add(matmul(in.fq, M), vbar);
  }
  const Tensor t = clamp(cumsum(valid, 2), 1.0);                           // (B, 1, n, 1): keys seen
  const Tensor a = rdiv(t, s);                                              // s/t
  const Tensor qk = sum(mul(in.fq, div(cumsum(in.fk, 2), t)), {-1}, true);  // φ(q_t)·k̄_t (B, H, n, 1)
  const Tensor c = sub(rdiv(t, 1.0), mul(a, qk));                           // 1/t − (s/t) φ(q_t)·k̄_t
  // the key feature 1 of the (d + 1)-wide form gives c_t Σ_{j<=t} v_j: a cumulative sum
  return add(causal_linear_prefix(mul(in.fq, a), in.fk, in.v, chunk), mul(c, cumsum(in.v, 2)));
}

Tensor inline_weights(const InLineInputs& in, bool causal) {
  check_inputs(in);
  const int64_t B = in.fq.size(0), n = in.fq.size(2), d = in.fq.size(3);
  const double s = 1.0 / std::sqrt((double)d);
  Tensor seen = valid_or_ones(in).reshape({B, 1, 1, n});  // seen[i, j]: query i sees key j
  if (causal) seen = mul(seen, causal_mask(n, in.fq.dtype()));
  const Tensor count = clamp(sum(seen, {-1}, true), 1.0);              // (B, 1, n or 1, 1)
  const Tensor S = matmul(in.fq, in.fk.transpose(-2, -1));             // (B, H, n, n)
  const Tensor qk = div(sum(mul(S, seen), {-1}, true), count);         // φ(q_i)·k̄_i
  return mul(seen, add(mul(sub(S, qk), rdiv(count, s)), rdiv(count, 1.0)));
}

Tensor inline_local_conv(const Tensor& v, const Tensor& kernel, const Tensor& mask, bool causal) {
  if (v.dim() != 4 || kernel.dim() != 4 || (kernel.size(0) != 1 && kernel.size(0) != v.size(0)) ||
      kernel.size(1) != v.size(1) || kernel.size(2) != v.size(3) || kernel.size(3) != 3)
    throw_shape("inline local residual", "v must be (B, H, n, e) and the kernel (B or 1, H, e, 3)",
                {{"v", &v}, {"kernel", &kernel}});
  const int64_t B = v.size(0), H = v.size(1), n = v.size(2), e = v.size(3);
  const auto pos = valid_positions(mask, B, n);
  const Tensor vz = pad(v, {0, 0, 0, 1}).reshape({B * H * (n + 1), e});  // a zero row after each sequence
  const int64_t offsets[3] = {causal ? 0 : -1, causal ? -1 : 0, causal ? -2 : 1};
  Tensor out;
  for (int64_t m = 0; m < 3; ++m) {
    const Tensor shifted = index_select(vz, 0, neighbour_index(pos, H, n, offsets[m])).view({B, H, n, e});
    const Tensor term = mul(kernel.select(3, m).unsqueeze(2), shifted);  // (B or 1, H, 1, e) (B, H, n, e)
    out = out.defined() ? add(out, term) : term;
  }
  return out;
}

InLineAttention::InLineAttention(const AttentionOptions& o, Generator& gen)
    : H_(o.n_heads), d_(o.d_head), chunk_((int64_t)o.get("chunk")), causal_(o.causal),
      residual_(o.get("local_residual") != 0), kernel_((InLineKernel)(int)o.get("inline_kernel")) {
  const int64_t D = H_ * d_;
  qkv = register_module("qkv", std::make_shared<Linear>(D, 3 * D, gen));
  if (!residual_) return;
  auto uniform = [&](Tensor& t, Shape shape, double bound, const char* name) {
    t = Tensor::empty(shape);
    init::uniform_(t, gen, -bound, bound);
    register_parameter(name, &t);
  };
  if (causal_) {  // PyTorch's default for a depthwise Conv1d of 3 taps (fan_in 3)
    uniform(res_kernel, {D, 3}, 1.0 / std::sqrt(3.0), "res_kernel");
    return;
  }
  // PyTorch's default for the reference's grouped 1×1 convolutions (fan_in d), weights and biases
  const double bound = 1.0 / std::sqrt((double)d_);
  uniform(res_w1, {H_, d_, d_}, bound, "res_w1");
  uniform(res_b1, {D}, bound, "res_b1");
  uniform(res_w2, {H_, 3 * d_, d_}, bound, "res_w2");
  uniform(res_b2, {3 * D}, bound, "res_b2");
}

std::string InLineAttention::type_name() const {
  static const char* names[] = {"identity", "relu", "leakyrelu", "exp"};
  return std::string("InLineAttention(") + names[(int)kernel_] + (causal_ ? ", causal" : ", two-sided") +
         (residual_ ? (causal_ ? ", static local residual" : ", predicted local residual") : ", no residual") + ")";
}

InLineInputs InLineAttention::inputs(const Tensor& x, const Tensor& mask) const {
  if (x.dim() != 3 || x.size(2) != H_ * d_)
    throw_shape("inline attention", "expects the block input x (B, n, D = " + std::to_string(H_ * d_) + ")",
                {{"x", &x}, {"key_padding_mask", &mask}});
  auto [q, k, v] = linear_qkv_heads(x, qkv->weight, qkv->bias, H_);
  return inline_inputs(q, k, v, mask, kernel_);
}

Tensor InLineAttention::residual_kernel(const Tensor& x, const Tensor& mask) const {
  if (!residual_) return Tensor();
  const DType dt = x.dtype();
  if (causal_) return res_kernel.to(dt).view({1, H_, d_, 3});
  const int64_t B = x.size(0), n = x.size(1);
  Tensor xbar;  // (B, D): the mean of x over the valid tokens
  if (mask.defined()) {
    const Tensor valid = logical_not(mask).to(dt).reshape({B, n, 1});
    xbar = div(sum(mul(x, valid), {1}), clamp(sum(valid, {1}), 1.0));
  } else {
    xbar = mean(x, {1});
  }
  const Tensor hidden = gelu(add(matmul(xbar.reshape({B, H_, 1, d_}), res_w1.to(dt).transpose(-2, -1)),
                                 res_b1.to(dt).view({1, H_, 1, d_})));  // (B, H, 1, d)
  const Tensor kappa = add(matmul(hidden, res_w2.to(dt).transpose(-2, -1)), res_b2.to(dt).view({1, H_, 1, 3 * d_}));
  return kappa.view({B, H_, d_, 3});
}

Tensor InLineAttention::forward_block(const Tensor& x, const Tensor& mask) {
  const InLineInputs in = inputs(x, mask);
  Tensor o = inline_linear_form(in, causal_, chunk_);
  if (residual_) o = add(o, inline_local_conv(in.v, residual_kernel(x, mask), mask, causal_));
  return o;
}

Tensor InLineAttention::attention_matrix_block(const Tensor& x, const Tensor& mask) {
  return inline_weights(inputs(x, mask), causal_);
}

MechanismSpec inline_mechanism() {
  MechanismSpec s;
  s.name = "inline";
  s.summary = "InLine injective linear attention (Han et al. 2024): mean-subtracted weights that sum to 1, "
              "plus a local convolution residual; O(n·d²)";
  s.knobs = {{.name = "chunk", .type = KnobType::integer, .def = 64, .lo = 1, .hi = 65536,
              .help = "causal: positions per chunk of the prefix form (a running state carries the past)"},
             {.name = "inline_kernel", .type = KnobType::choice, .def = 0,
              .help = "kernel φ on q and k: identity (the reference's default), relu, leakyrelu (0.01), exp(0.2x)",
              .choices = {"identity", "relu", "leakyrelu", "exp"}},
             {.name = "local_residual", .type = KnobType::flag, .def = 1,
              .help = "1: add the 3-tap depthwise convolution of v (kernel predicted from the mean of x; "
                      "causal: a static learned kernel); 0: off (ablation)"}};
  s.presets["tiny"] = {{"chunk", 3}};
  s.caps = {.causal = true, .linear_time = true, .block_input = true};
  s.make = [](const AttentionOptions& o, Generator& g) { return std::make_shared<InLineAttention>(o, g); };
  return s;
}

}  // namespace lotgrad::nn
