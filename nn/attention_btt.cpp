// Bilinear BTT attention (Kuang et al., ICML 2025, arXiv:2509.07963, and the released
// github.com/YilunKuang/structured-attention, src/model.py BilinearBTTAttention), a block-input
// mechanism. Per head h, from the block input x (B, n, D):
//   s_h(i, j) = x_iᵀ · LN(W_h x_j) / √D,   out_i = Σ_j softmax_j(s_h(i, ·)) v_j,   v = x W_vᵀ + b_v
// W_h ∈ R^{D×D} replaces the rank-d product W_Q,h W_K,hᵀ of standard attention by a Block
// Tensor-Train matrix, generically of full rank D, with about as many parameters as W_Q and W_K:
//   W_h[(α,β), (γ,δ)] = Σ_σ L[(h,β), α, (γ,σ)] · R[γ, δ, (h,β,σ)],   D = a·b = c·d', σ < s
// (s the BTT rank, knob btt_rank). W_h is never formed: k = W_h x is two batched products with
// the cores (btt_project), O(n·H·s·D·(a + b)) flops. The cores hold H·s·D·(a + b) parameters;
// with the split closest to square (a = b = √D) that is 2·H·s·D^{3/2}: 8,192 at D = 64, H = 8,
// s = 1, the count of W_Q and W_K of standard attention at D = 64.
// Rank: each (β, γ) block of W_h (a × d', rows α·b + β, columns γ·d' + δ) is a sum of s outer
// products, so it has rank <= s; the rows of one β are L_β (a × c·s) times a block-diagonal
// (c·s × D), rank <= min(a, c·s) = a; so rank W_h <= b·a = D, no cap below D even at s = 1.
// As in the reference:
//  - the cores are RMS-capped in the forward, w / max(1, rms(w)/scale) with
//    scale = sqrt(min(fan_in, fan_out))/fan_in, and initialised N(0, 1/fan_in) (the reference's
//    μP initialisation, used by its in-context regression runs): at the cap (L above it when
//    s > 1). With the LayerNorm after W_h x, a common factor on the cores cancels, so the cap
//    changes the output only through the LayerNorm's ε; what it changes is the optimisation
//    (above the cap the cores are scale invariant, their gradient orthogonal to them);
//  - a LayerNorm over D on W_h x (its "QK-LayerNorm"), one gain shared by the heads. No bias:
//    a bias β on k adds x_i·β to every score of row i, which the softmax cancels;
//  - the logit scale 1/√D (its default; the μP 1/D is not offered).
// Differences: the split is the one closest to square (the reference's factorize takes the
// smallest divisor strictly above √D, so 64 = 4·16, 10,240 parameters instead of 8,192), and
// D prime is refused rather than run as a dense W_h; v has a bias like lotgrad's other projections.
// The attention itself is the fused kernel (ops/attention.h) with q = x expanded over the heads
// (a stride-0 view; the kernel packs every operand into its tiles anyway, so nothing extra is
// copied) and k (B, H, n, D), v (B, H, n, d): extra memory O(n·H·D), no (n, n) tensor. Scores cost
// O(H·n²·D), H times standard attention's O(H·n²·d). Padded keys get zero weight (the kernel's
// key mask); W_h x_j and v_j depend on token j only, so pads change no valid output.
#include "attention_btt.h"

#include <cmath>
#include <string>

#include "../ops/attention.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/norm.h"
#include "../ops/reduce.h"
#include "init.h"

namespace lotgrad::nn {

BttSplit btt_split(int64_t D) {
  int64_t a = 1;
  for (int64_t f = 2; f * f <= D; ++f)
    if (D % f == 0) a = f;
  if (a == 1)
    throw std::invalid_argument("btt attention: d_model D = " + std::to_string(D) +
                                " has no split D = a·b with 1 < a <= b (D is prime or 1), so W_h would be dense, "
                                "not a block tensor train; choose a d_model with a factor "
                                "between 2 and √D");
  return {a, D / a};
}

double btt_cap_scale(int64_t fan_in, int64_t fan_out) {
  return std::sqrt((double)std::min(fan_in, fan_out)) / (double)fan_in;
}

Tensor btt_rms_cap(const Tensor& w, double scale) {
  const Tensor rms = sqrt(add(mean(mul(w, w)), 1e-8));  // 0-d
  if (rms.item() <= scale) return w;                     // max(1, rms/scale) = 1
  return div(w, mul(rms, 1.0 / scale));
}

Tensor btt_project(const Tensor& x, const Tensor& R, const Tensor& L, int64_t H) {
  const char* op = "btt_project";
  const auto operands = {std::pair<const char*, const Tensor*>{"x", &x}, {"R", &R}, {"L", &L}};
  if (x.dim() != 3 || R.dim() != 3 || L.dim() != 3 || H < 1 || L.size(0) % H != 0)
    throw_shape(op, "needs x (B, n, D), R (c, d', H·b·s), L (H·b, a, c·s) with H = " + std::to_string(H) + " >= 1", operands);
  const int64_t B = x.size(0), n = x.size(1), D = x.size(2), N = B * n;
  const int64_t c = R.size(0), dp = R.size(1), a = L.size(1), b = L.size(0) / H;
  const int64_t s = c > 0 ? L.size(2) / c : 0;
  if (c * dp != D || a * b != D || s < 1 || L.size(2) != c * s || R.size(2) != H * b * s)
    throw_shape(op,
                "needs D = c·d' = a·b and ranks that agree: R (c, d', H·b·s), L (H·b, a, c·s) for x (B, n, D), H = " +
                    std::to_string(H),
                operands);
  // R with its columns regrouped (σ, h, β): (c, d', s·H·b), a copy of the (small) core
  const Tensor Rs = R.view({c, dp, H * b, s}).permute({0, 1, 3, 2}).reshape({c, dp, s * H * b});
  // (c, s·H·b, d') x (c, d', N) -> z (c, s·H·b, N), one GEMM per γ: tokens along the rows, so
  // that for each (h, β) the rows (γ, σ) are evenly spaced (stride H·b·N) and L needs no regroup
  const Tensor z = matmul(Rs.transpose(1, 2), x.reshape({N, c, dp}).permute({1, 2, 0}));
  // (H·b, a, c·s) x (H·b, c·s, N) -> (H·b, a, N), one GEMM per (h, β), z read in place
  const Tensor y = matmul(L, z.view({c * s, H * b, N}).permute({1, 0, 2}));
  // (h, β, α, t) -> (B, H, n, α·b + β)
  return y.view({H, b, a, B, n}).permute({3, 0, 4, 2, 1}).reshape({B, H, n, D});
}

BttAttention::BttAttention(const AttentionOptions& o, Generator& gen)
    : H_(o.n_heads), d_(o.d_head), s_((int64_t)o.get("btt_rank")), split_(btt_split(o.n_heads * o.d_head)),
      causal_(o.causal) {
  const int64_t D = H_ * d_, a = split_.a, b = split_.b;  // c = a, d' = b
  btt_r = Tensor::empty({a, b, H_ * b * s_});
  btt_l = Tensor::empty({H_ * b, a, a * s_});
  init::normal_(btt_r, gen, 0.0, 1.0 / std::sqrt((double)b));         // N(0, 1/fan_in), fan_in d'
  init::normal_(btt_l, gen, 0.0, 1.0 / std::sqrt((double)(a * s_)));  // fan_in c·s
  k_norm_weight = Tensor::ones({D});
  register_parameter("btt_r", &btt_r);
  register_parameter("btt_l", &btt_l);
  register_parameter("k_norm_weight", &k_norm_weight);
  v_proj = register_module("v_proj", std::make_shared<Linear>(D, D, gen));
}

std::string BttAttention::type_name() const {
  return "BttAttention(" + std::to_string(split_.a) + "·" + std::to_string(split_.b) + ", rank " + std::to_string(s_) +
         (causal_ ? ", causal)" : ")");
}

Tensor BttAttention::r_core(DType dt) const {
  return btt_rms_cap(btt_r.to(dt), btt_cap_scale(split_.b, H_ * split_.b * s_));
}
Tensor BttAttention::l_core(DType dt) const {
  return btt_rms_cap(btt_l.to(dt), btt_cap_scale(split_.a * s_, split_.a));
}

Tensor BttAttention::keys(const Tensor& x) const {
  const int64_t D = H_ * d_;
  if (x.dim() != 3 || x.size(2) != D)
    throw_shape("btt attention", "expects the block input x (B, n, D = " + std::to_string(D) + ")", {{"x", &x}});
  const DType dt = x.dtype();
  return layer_norm(btt_project(x, r_core(dt), l_core(dt), H_), {D}, k_norm_weight.to(dt), Tensor(), 1e-5);
}

Tensor BttAttention::values(const Tensor& x) const {
  const Tensor v = v_proj->forward(x);  // (B, n, D)
  return v.view({x.size(0), x.size(1), H_, d_}).permute({0, 2, 1, 3});
}

Tensor BttAttention::forward_block(const Tensor& x, const Tensor& mask) {
  const Tensor k = keys(x);  // checks x
  const Tensor q = x.unsqueeze(1).expand({x.size(0), H_, x.size(1), x.size(2)});  // stride 0 over heads
  return scaled_dot_product_attention(q, k, values(x), mask, causal_, 1.0 / std::sqrt((double)x.size(2)));
}

Tensor BttAttention::attention_matrix_block(const Tensor& x, const Tensor& mask) {
  const Tensor k = keys(x);
  const Tensor q = x.unsqueeze(1).expand({x.size(0), H_, x.size(1), x.size(2)});
  return attention_weights(q, k, mask, causal_, 0, 1.0 / std::sqrt((double)x.size(2)));
}

MechanismSpec btt_mechanism() {
  MechanismSpec s;
  s.name = "btt";
  s.summary = "bilinear BTT scores (Kuang et al. 2025): softmax(x_i·LN(W_h x_j)/√D), W_h a full-rank Block "
              "Tensor-Train per head with W_Q, W_K's parameter count; O(H·n²·D)";
  s.knobs = {{.name = "btt_rank", .type = KnobType::integer, .def = 1, .lo = 1, .hi = 4096,
              .help = "BTT rank s: each (a × b) block of W_h has rank <= s; the cores hold H·s·D·(a + b) parameters"}};
  s.presets["tiny"] = {{"btt_rank", 2}};            // exercises the sum over σ in the shared tests
  s.presets["icl-regression"] = {{"btt_rank", 1}};  // the reference's runs (btt_tt_rank 1)
  s.caps = {.causal = true, .linear_time = false, .block_input = true};
  s.make = [](const AttentionOptions& o, Generator& gen) { return std::make_shared<BttAttention>(o, gen); };
  return s;
}

}  // namespace lotgrad::nn
