// H3, Hungry Hungry Hippos (Fu et al. 2023, arXiv:2212.14052, §3), the layer as released
// (HazyResearch/H3, src/models/ssm/h3.py), a block-input mechanism:
//   q, k, v = x W + b                                  one Linear D -> 3D (bias)
//   k̄ = shift(k)                                       a learned causal FIR of shift_taps taps per
//                                                      channel, lag 0 included (the shift SSM's
//                                                      kernel plus its D skip, parameterised directly)
//   Y_t = Σ_{j<=t} K_h[t − j] k̄_j v_jᵀ + D_h k̄_t v_tᵀ   per head (d × d), a long convolution over time
//   y_t = q_tᵀ Y_t                                     -> (B, H, n, d); MultiHeadAttention's out_proj is W_O
// The diagonal SSM (S4D) kernel, ZOH: K_h[ℓ] = 2 Re Σ_m C̃_m λ_m^ℓ, λ = exp(ΔA), A = −exp(a) + i b,
// C̃ = C (e^{ΔA} − 1)/A (B folded into C), Δ = exp(log_dt), ssm_state/2 complex modes per head,
// computed in real arithmetic (magnitude exp(ℓ Δ Re A), phase ℓ Δ Im A) with autograd ops so the
// gradient reaches a, b, log_dt and C. Init S4D-Lin (a = log ½, b = π m), log_dt ~ U[log 1e-3, log 1e-1].
// long_filter "free": a learned per-head filter f[0, filter_len) in place of K (and D): the one-layer
// H3 of Li, Rawat & Oymak (arXiv:2407.10005), weighted preconditioned GD; initialised f ≡ 1, so with
// shift_taps 1 (no shift) it starts as plain causal linear attention Σ_j (q_t·k_j) v_j.
// The read-out never forms Y: y_t = Σ_j f[t − j] (q_t·k̄_j) v_j. Long sequences with the S4D filter
// run in chunks with a running complex state per mode (conv "chunked", ops/ssm_linear.h):
// O(n·(chunk·d + M·d²)) time, memory linear in n, nothing n·d² wide. Short ones, the free filter, or
// conv "direct"/"fft" go through the Toeplitz-weighted causal linear attention
// (ops/toeplitz_linear.h): tiled, O(n·min(n, L)·d), or by FFT over the outer products,
// O(d²·n log n) time and n·d² memory. conv "auto" picks by size (modal_uses_chunks, then
// toeplitz_uses_fft): with d 32 and 32 modes the chunked form from n ≈ 3,600.
// Causal by construction; padding and the two-sided (non-causal) form through run_directions
// (valid tokens compacted to the front; reversed pass summed).
#include <cmath>
#include <numbers>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../ops/conv.h"
#include "../ops/elementwise.h"
#include "../ops/matmul.h"
#include "../ops/reduce.h"
#include "../ops/shape.h"
#include "../ops/ssm_linear.h"
#include "../ops/toeplitz_linear.h"
#include "attention.h"
#include "init.h"
#include "recurrent.h"

namespace lotgrad::nn {

namespace {

// (B, n, H·d) -> (B, H, n, d)
Tensor heads(const Tensor& x, int64_t H) {
  return x.view({x.size(0), x.size(1), H, x.size(2) / H}).permute({0, 2, 1, 3});
}

class H3Attention : public AttentionMechanism {
 public:
  H3Attention(const AttentionOptions& o, Generator& gen)
      : H_(o.n_heads), d_(o.d_head), causal_(o.causal), taps_((int64_t)o.get("shift_taps")),
        modes_((int64_t)o.get("ssm_state") / 2), free_(o.get("long_filter") == 1), filter_len_((int64_t)o.get("filter_len")),
        conv_((int)o.get("conv")), chunk_((int64_t)o.get("chunk")) {
    if (!free_ && (int64_t)o.get("ssm_state") % 2 != 0)
      throw std::invalid_argument("h3: ssm_state must be even (ssm_state/2 complex modes, each with its conjugate); got " +
                                  std::to_string((int64_t)o.get("ssm_state")));
    if (free_ && conv_ == 3)
      throw std::invalid_argument("h3: conv chunked needs long_filter ssm (a free filter has no modes to carry as a "
                                  "state); got long_filter free, filter_len " + std::to_string(filter_len_));
    const int64_t D = H_ * d_;
    qkv = register_module("qkv", std::make_shared<Linear>(D, 3 * D, gen));
    if (taps_ > 1) {  // U(±1/√taps) (PyTorch's depthwise conv init) plus the D_k skip at lag 0, 1
      shift = Tensor::empty({D, taps_});
      init::uniform_(shift, gen, -1.0 / std::sqrt((double)taps_), 1.0 / std::sqrt((double)taps_));
      float* w = shift.data_ptr<float>();
      for (int64_t c = 0; c < D; ++c) w[c * taps_] += 1.0f;
      register_parameter("shift", &shift);
    }
    if (free_) {
      filter = Tensor::ones({H_, filter_len_});
      register_parameter("filter", &filter);
      return;
    }
    std::vector<double> la((size_t)(H_ * modes_), std::log(0.5)), b((size_t)(H_ * modes_)), ldt((size_t)H_);
    for (int64_t h = 0; h < H_; ++h) {
      for (int64_t m = 0; m < modes_; ++m) b[(size_t)(h * modes_ + m)] = std::numbers::pi * (double)m;
      ldt[(size_t)h] = std::log(1e-3) + gen.uniform() * (std::log(1e-1) - std::log(1e-3));
    }
    log_a = Tensor::from_vector(la, {H_, modes_}).to(kFloat32);
    a_imag = Tensor::from_vector(b, {H_, modes_}).to(kFloat32);
    log_dt = Tensor::from_vector(ldt, {H_, 1}).to(kFloat32);
    c_re = Tensor::empty({H_, 1, modes_});
    c_im = Tensor::empty({H_, 1, modes_});
    skip = Tensor::empty({H_, 1});
    init::normal_(c_re, gen, 0.0, std::sqrt(0.5));  // C ~ CN(0, 1)
    init::normal_(c_im, gen, 0.0, std::sqrt(0.5));
    init::normal_(skip, gen, 0.0, 1.0);
    register_parameter("log_a", &log_a);
    register_parameter("a_imag", &a_imag);
    register_parameter("log_dt", &log_dt);
    register_parameter("c_re", &c_re);
    register_parameter("c_im", &c_im);
    register_parameter("skip", &skip);
  }
  std::string type_name() const override {
    return std::string("H3Attention(") + (free_ ? "free filter " + std::to_string(filter_len_) : "ssm " + std::to_string(2 * modes_)) +
           ", shift " + std::to_string(taps_) + (causal_ ? ", causal" : ", two-sided") + ")";
  }
  Tensor forward_block(const Tensor& x, const Tensor& mask) override {
    return run_directions(x, mask, causal_, [this](const Tensor& xc) { return core(xc); });
  }
  // A[t, j] = f[t − j] (q_t·k̄_j) for j <= t (f the SSM kernel with D at lag 0, or the free
  // filter), so y = A v for the mechanism's own values v (B, H, n, d).
  Tensor attention_matrix_block(const Tensor& x, const Tensor& mask) override {
    return run_directions_matrix(x, mask, causal_, [this](const Tensor& xc) { return core_matrix(xc); });
  }

  // The study's view (AttentionMechanism::time_filter): the weight of lag 0..n−1, (H, n), lags
  // beyond a free filter's length 0.
  Tensor time_filter(int64_t n) const override {
    NoGradGuard ng;
    const Tensor f = lag_filter(n, kFloat64);
    if (f.size(1) >= n) return f.narrow(1, 0, n).contiguous();
    return pad(f, {0, n - f.size(1)});
  }
  // The per-head filter over lags 0..n-1 (SSM, with D at lag 0) or 0..filter_len-1 (free): (H, L).
  Tensor lag_filter(int64_t n, DType dt) const {
    if (free_) return filter.to(dt);
    const Modes md = modes(dt);
    std::vector<double> e0((size_t)n, 0.0);
    if (n > 0) e0[0] = 1.0;
    return add(modal_filter(md.re, md.im, md.c_re, md.c_im, n), mul(skip.to(dt), Tensor::from_vector(e0, {1, n}).to(dt)));
  }

  std::shared_ptr<Linear> qkv;
  Tensor shift, filter, log_a, a_imag, log_dt, c_re, c_im, skip;

 private:
  // q, k̄, v (B, H, n, d) of a block input (B, n, D)
  void project(const Tensor& x, Tensor& q, Tensor& k, Tensor& v) const {
    const int64_t D = H_ * d_;
    if (x.dim() != 3 || x.size(2) != D)
      throw_shape("H3 attention", "expects the block input x (B, n, " + std::to_string(D) + ")", {{"x", &x}});
    const Tensor p = qkv->forward(x);  // (B, n, 3D)
    Tensor kk = p.narrow(2, D, D);
    if (taps_ > 1) kk = causal_conv1d(kk, shift.to(x.dtype()));
    q = heads(p.narrow(2, 0, D), H_);
    k = heads(kk, H_);
    v = heads(p.narrow(2, 2 * D, D), H_);
  }
  // The ZOH-discretised modes of every head, λ = exp(ΔA) as log λ = ΔA, and C̃, each (H, M).
  struct Modes {
    Tensor re, im, c_re, c_im;
  };
  Modes modes(DType dt) const {
    const Tensor dtm = exp(log_dt.to(dt));                                                // Δ (H, 1)
    const Tensor are = mul(neg(exp(log_a.to(dt))), dtm), aim = mul(a_imag.to(dt), dtm);  // ΔA (H, M)
    // C̃ = C (e^{ΔA} − 1) / A = C (e^{ΔA} − 1) conj(ΔA) Δ / |ΔA|²
    const Tensor mag1 = exp(are), er = sub(mul(mag1, cos(aim)), 1.0), ei = mul(mag1, sin(aim));
    const Tensor inv = div(dtm, add(mul(are, are), mul(aim, aim)));
    const Tensor fr = mul(add(mul(er, are), mul(ei, aim)), inv), fi = mul(sub(mul(ei, are), mul(er, aim)), inv);
    const Tensor cr = c_re.to(dt).squeeze(1), ci = c_im.to(dt).squeeze(1);
    return {are, aim, sub(mul(cr, fr), mul(ci, fi)), add(mul(cr, fi), mul(ci, fr))};
  }
  Tensor core(const Tensor& x) const {
    Tensor q, k, v;
    project(x, q, k, v);
    const bool chunked = !free_ && (conv_ == 3 || (conv_ == 0 && modal_uses_chunks(x.size(1), modes_, d_, d_)));
    if (!chunked) {
      const ConvAlgo algo = conv_ == 1 ? ConvAlgo::direct : conv_ == 2 ? ConvAlgo::fft : ConvAlgo::automatic;
      return toeplitz_causal_linear(q, k, v, lag_filter(x.size(1), x.dtype()), algo);
    }
    const Modes md = modes(x.dtype());
    const Tensor y = modal_causal_linear(q, k, v, md.re, md.im, md.c_re, md.c_im, chunk_);
    // + D (q_t·k̄_t) v_t, the skip at lag 0
    return add(y, mul(mul(sum(mul(q, k), {-1}, true), v), skip.to(x.dtype()).view({1, H_, 1, 1})));
  }
  Tensor core_matrix(const Tensor& x) const {
    Tensor q, k, v;
    project(x, q, k, v);
    const int64_t n = x.size(1);
    Tensor f = lag_filter(n, x.dtype());
    const int64_t L = std::min(f.size(1), n);
    f = pad(f.narrow(1, 0, L), {0, n - L + 1});  // (H, n + 1): index n is a zero
    std::vector<int64_t> idx((size_t)(n * n));
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < n; ++j) idx[(size_t)(t * n + j)] = j <= t ? t - j : n;
    const Tensor toeplitz = index_select(f, 1, Tensor::from_vector(idx, {n * n})).view({1, H_, n, n});
    return mul(matmul(q, k.transpose(-2, -1)), toeplitz);
  }

  int64_t H_, d_;
  bool causal_;
  int64_t taps_, modes_;
  bool free_;
  int64_t filter_len_;
  int conv_;  // the knob: auto, direct, fft, chunked
  int64_t chunk_;
};
}  // namespace

MechanismSpec h3_mechanism() {
  MechanismSpec s;
  s.name = "h3";
  s.summary = "H3 (Fu et al. 2023): shift filter on k, S4D long convolution of k vᵀ read out by q; "
              "tiled direct for short sequences, linear time (chunks with a running state per mode) for long ones";
  s.knobs = {{.name = "shift_taps", .type = KnobType::integer, .def = 4, .lo = 1, .hi = 4096,
              .help = "taps of the learned causal shift filter on k, lag 0 included (1: no shift, k̄ = k)"},
             {.name = "ssm_state", .type = KnobType::integer, .def = 64, .lo = 2, .hi = 4096,
              .help = "S4D state size per head: ssm_state/2 complex modes (long_filter ssm)"},
             {.name = "long_filter", .type = KnobType::choice, .def = 0,
              .help = "long filter: the S4D kernel, or a free learned filter per head (starts at 1)",
              .choices = {"ssm", "free"}},
             {.name = "filter_len", .type = KnobType::integer, .def = 256, .lo = 1, .hi = 1 << 20,
              .help = "long_filter free: lags of the free filter (beyond it 0)"},
             {.name = "conv", .type = KnobType::choice, .def = 0,
              .help = "long convolution: auto (by size), the tiled direct Toeplitz form, FFT, or chunks with a "
                      "running state per S4D mode (linear time: long sequences)",
              .choices = {"auto", "direct", "fft", "chunked"}},
             {.name = "chunk", .type = KnobType::integer, .def = 64, .lo = 1, .hi = 4096,
              .help = "positions per chunk of the chunked S4D form"}};
  s.presets["tiny"] = {{"shift_taps", 2}, {"ssm_state", 4}};
  // Zoology's MQAR configs: d_state = L, short filter on k.
  s.presets["mqar"] = {{"shift_taps", 4}, {"ssm_state", 64}};
  // The one-layer model of Li, Rawat & Oymak: no shift, a free filter over every lag.
  s.presets["icl-regression"] = {{"shift_taps", 1}, {"long_filter", 1}, {"filter_len", 1024}};
  s.no_decay = {"log_a", "a_imag", "log_dt", "filter"};
  // Linear time with the defaults: long sequences with the S4D filter in chunks with a running
  // state, the free filter over filter_len lags (O(n·filter_len·d)); conv direct/fft forced over
  // every lag are not (docs/benchmarks.md).
  s.caps = {.causal = true, .linear_time = true, .block_input = true};
  s.make = [](const AttentionOptions& o, Generator& gen) { return std::make_shared<H3Attention>(o, gen); };
  return s;
}

}  // namespace lotgrad::nn
