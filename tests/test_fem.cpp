// Free Energy Mixer (nn/attention_fem.h): the two reads μ and F against their definitions
// from the prior's explicit map (f64), Jensen (F ≥ μ), the limits β → 0 (F → μ) and β → ∞
// (F → the largest value in the prior's support), the key padding mask inside the softmax
// prior, causal = masked, finite reads for rows with no key, gradient checks (the reads and the
// layer through MultiHeadAttention, both priors, causal and not), the gates' wiring, the
// registry declarations and the errors.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention_fem.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using nn::FemPrior;
using V = std::vector<Tensor>;

namespace {
const FemPrior kPriors[] = {FemPrior::softmax, FemPrior::linear};
const char* name(FemPrior p) { return p == FemPrior::softmax ? "softmax prior" : "linear prior"; }

Tensor rnd(const Shape& s, uint64_t seed, double scale = 1.0) {
  Generator g(seed);
  return mul(randn(s, g, kFloat64), scale);
}
// (H, d) inverse temperatures in [lo, hi]
Tensor betas(int64_t H, int64_t d, uint64_t seed, double lo, double hi) {
  Generator g(seed);
  return add(mul(rand({H, d}, g, kFloat64), hi - lo), lo);
}
Tensor make_mask(int64_t B, int64_t n, const std::vector<std::pair<int64_t, int64_t>>& pads) {
  std::vector<bool> m((size_t)(B * n), false);
  for (auto [b, j] : pads) m[(size_t)(b * n + j)] = true;
  return Tensor::from_vector(m, {B, n});
}
bool is_pad(const Tensor& mask, int64_t b, int64_t j) { return mask.defined() && mask.at({b, j}) != 0.0; }

// μ and F by their definitions from the prior's explicit map p (f64, no stabiliser):
// v̂ = clip(v, ±cap/β) element by element, μ = p v̂, F = log(p exp(βv̂))/β.
nn::FreeEnergyReads direct(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Tensor& mask,
                           FemPrior prior, bool causal, double cap) {
  const int64_t H = v.size(1), n = v.size(2), d = v.size(3);
  std::vector<double> vc = v.contiguous().to_vector(), bv((size_t)(v.numel()));
  const std::vector<double> be = beta.to_vector();
  for (size_t i = 0; i < vc.size(); ++i) {
    const int64_t c = (int64_t)i % d, h = ((int64_t)i / (n * d)) % H;
    const double b = be[(size_t)(h * d + c)], lim = cap / b;
    vc[i] = std::min(std::max(vc[i], -lim), lim);
    bv[i] = b * vc[i];
  }
  const Tensor p = nn::fem_prior_map(q, k, mask, prior, causal);
  const Tensor vt = Tensor::from_vector(vc, v.shape()), bt = Tensor::from_vector(bv, v.shape());
  return {matmul(p, vt), div(log(matmul(p, exp(bt))), beta.view({1, H, 1, d}))};
}

// Largest |a - b| over the rows (b, h, t, :) whose batch row b has an unpadded key that query
// t can see (so both forms are finite there).
double max_diff_seen(const Tensor& a, const Tensor& b, const Tensor& mask, bool causal) {
  const int64_t B = a.size(0), H = a.size(1), n = a.size(2), d = a.size(3);
  const std::vector<double> x = a.contiguous().to_vector(), y = b.contiguous().to_vector();
  double worst = 0;
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t t = 0; t < n; ++t) {
      bool sees = false;
      for (int64_t j = 0; j <= (causal ? t : n - 1); ++j) sees = sees || !is_pad(mask, bb, j);
      if (!sees) continue;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t c = 0; c < d; ++c) {
          const size_t o = (size_t)(((bb * H + h) * n + t) * d + c);
          worst = std::max(worst, std::isfinite(x[o]) && std::isfinite(y[o]) ? std::abs(x[o] - y[o]) : INFINITY);
        }
    }
  return worst;
}

nn::AttentionOptions fem_opts(FemPrior prior, bool causal, std::map<std::string, double> knobs = {}) {
  nn::AttentionOptions o;
  o.name = prior == FemPrior::softmax ? "fem" : "fem_linear";
  o.n_heads = 2;
  o.causal = causal;
  o.knobs = knobs;
  if (prior == FemPrior::linear && !o.has("chunk")) o.knobs["chunk"] = 3;
  return o;
}
nn::FreeEnergyMixer& mixer(nn::MultiHeadAttention& mha) { return dynamic_cast<nn::FreeEnergyMixer&>(*mha.mechanism); }
}  // namespace

TEST_CASE("fem reads: the stable form equals the direct form (f64), with padding, clipping, causal and not") {
  const int64_t B = 2, H = 2, n = 11, d = 4;
  const Tensor q = rnd({B, H, n, 6}, 1), k = rnd({B, H, n, 6}, 2), v = rnd({B, H, n, d}, 3, 2.0);
  // batch row 0 unpadded; row 1 with pads inside (3, 7) and at the end (9, 10)
  const Tensor mask = make_mask(B, n, {{1, 3}, {1, 7}, {1, 9}, {1, 10}});
  for (FemPrior prior : kPriors)
    for (bool causal : {false, true})
      for (double cap : {40.0, 1.5})  // 1.5: many values clipped (|v| up to ~6, β up to 3)
        for (const Tensor& m : {Tensor(), mask}) {
          INFO(name(prior) << (causal ? " causal" : "") << " cap " << cap << (m.defined() ? " masked" : ""));
          const Tensor beta = betas(H, d, 4, 0.2, 3.0);
          const nn::FreeEnergyReads s = nn::free_energy_reads(q, k, v, beta, m, prior, causal, cap, 4);
          const nn::FreeEnergyReads r = direct(q, k, v, beta, m, prior, causal, cap);
          CHECK(max_diff_seen(s.mu, r.mu, m, causal) < 1e-12);
          CHECK(max_diff_seen(s.F, r.F, m, causal) < 1e-12);
          CHECK(max_diff_seen(s.F, s.mu, m, causal) > 1e-2);  // the two reads differ
        }
}

TEST_CASE("fem reads: F >= mu (Jensen), F -> mu as beta -> 0, F -> the largest value in the support as beta grows") {
  const int64_t B = 2, H = 2, n = 9, d = 3;
  const Tensor q = rnd({B, H, n, 4}, 11), k = rnd({B, H, n, 4}, 12), v = rnd({B, H, n, d}, 13);
  const Tensor mask = make_mask(B, n, {{1, 2}, {1, 6}, {1, 8}});
  const double inf = INFINITY;
  for (FemPrior prior : kPriors)
    for (bool causal : {false, true}) {
      INFO(name(prior) << (causal ? " causal" : ""));
      // Jensen, at ordinary and large β
      for (double hi : {3.0, 30.0}) {
        const auto r = nn::free_energy_reads(q, k, v, betas(H, d, 14, 0.1, hi), mask, prior, causal, 40.0);
        double worst = INFINITY;
        for (double x : sub(r.F, r.mu).to_vector()) worst = std::min(worst, x);
        CHECK(worst > -1e-12);
        CHECK(max_abs_diff(r.F, r.mu) > 1e-2);
      }
      // β → 0: F − μ ≈ β·Var_p(v)/2
      const auto small = nn::free_energy_reads(q, k, v, Tensor::full({H, d}, 1e-7, kFloat64), mask, prior, causal, inf);
      CHECK(max_abs_diff(small.F, small.mu) < 1e-6);
      // β → ∞ (no cap): F → the max over the keys with p > 0 (valid, and j <= t when causal),
      // from below: max + log(p_t(argmax))/β <= F <= max. (β stays <= 100 here: with |v| < 3.5
      // every exp(βv − M) >= e^-700 is a normal f64, see value_cap.)
      const Tensor p = nn::fem_prior_map(q, k, mask, prior, causal);
      const std::vector<double> P = p.to_vector(), vv = v.to_vector();
      CHECK(max(abs(v)).item() < 3.5);
      double last_gap = INFINITY;
      for (double b : {3.0, 10.0, 100.0}) {
        const auto big = nn::free_energy_reads(q, k, v, Tensor::full({H, d}, b, kFloat64), mask, prior, causal, inf);
        const std::vector<double> F = big.F.to_vector();
        double gap = 0, outside = 0;
        for (int64_t bb = 0; bb < B; ++bb)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t t = 0; t < n; ++t)
              for (int64_t c = 0; c < d; ++c) {
                double mx = -INFINITY, p_at = 0;
                for (int64_t j = 0; j <= (causal ? t : n - 1); ++j) {
                  const double x = vv[(size_t)(((bb * H + h) * n + j) * d + c)];
                  if (!is_pad(mask, bb, j) && x > mx) {
                    mx = x;
                    p_at = P[(size_t)(((bb * H + h) * n + t) * n + j)];
                  }
                }
                const double f = F[(size_t)(((bb * H + h) * n + t) * d + c)];
                gap = std::max(gap, mx - f);
                outside = std::max({outside, f - mx - 1e-12, mx + std::log(p_at) / b - f - 1e-12});
              }
        CHECK(outside <= 0.0);
        CHECK(gap < last_gap);
        last_gap = gap;
      }
      CHECK(last_gap < 0.1);
      // With the default cap, |β v̂| <= 40: F is held to cap/β however large β is.
      const auto capped = nn::free_energy_reads(q, k, v, Tensor::full({H, d}, 1e4, kFloat64), mask, prior, causal, 40.0);
      CHECK(max(abs(capped.F)).item() <= 40.0 / 1e4 + 1e-15);
    }
}

TEST_CASE("fem reads: the key mask is applied inside the softmax prior, a padded key's content changes nothing") {
  const int64_t B = 2, H = 2, n = 10, d = 4;
  const Tensor q = rnd({B, H, n, 4}, 21), k = rnd({B, H, n, 4}, 22), v = rnd({B, H, n, d}, 23);
  const Tensor mask = make_mask(B, n, {{0, 4}, {1, 1}, {1, 5}, {1, 9}});
  Tensor k2 = k.clone(), v2 = v.clone();
  for (auto [b, j] : {std::pair<int64_t, int64_t>{0, 4}, {1, 1}, {1, 5}, {1, 9}}) {
    k2.select(0, b).narrow(1, j, 1).copy_(rnd({H, 1, 4}, 24 + j, 50.0));
    v2.select(0, b).narrow(1, j, 1).copy_(rnd({H, 1, d}, 25 + j, 50.0));
  }
  const Tensor beta = betas(H, d, 26, 0.5, 2.0);
  for (FemPrior prior : kPriors)
    for (bool causal : {false, true}) {
      INFO(name(prior) << (causal ? " causal" : ""));
      const auto a = nn::free_energy_reads(q, k, v, beta, mask, prior, causal);
      const auto b = nn::free_energy_reads(q, k2, v2, beta, mask, prior, causal);
      CHECK(max_abs_diff(a.mu, b.mu) < 1e-14);
      CHECK(max_abs_diff(a.F, b.F) < 1e-14);
      // the map gives the pads zero weight
      const Tensor p = nn::fem_prior_map(q, k2, mask, prior, causal);
      CHECK(sum(abs(p.select(0, 1).select(-1, 5))).item() == 0.0);
    }
  // Zeroing the pads' keys and values without the mask (what suffices for a linear prior) is not
  // masking for softmax: a zero key has logit 0 and still takes weight.
  Tensor kz = k.clone(), vz = v.clone();
  for (auto [b, j] : {std::pair<int64_t, int64_t>{0, 4}, {1, 1}, {1, 5}, {1, 9}}) {
    kz.select(0, b).narrow(1, j, 1).zero_();
    vz.select(0, b).narrow(1, j, 1).zero_();
  }
  const auto masked = nn::free_energy_reads(q, k, v, beta, mask, FemPrior::softmax, false);
  const auto zeroed = nn::free_energy_reads(q, kz, vz, beta, Tensor(), FemPrior::softmax, false);
  CHECK(max_abs_diff(masked.mu, zeroed.mu) > 1e-2);
  const auto lin = nn::free_energy_reads(q, kz, vz, beta, mask, FemPrior::linear, false);
  CHECK(max_abs_diff(lin.mu, nn::free_energy_reads(q, k, v, beta, mask, FemPrior::linear, false).mu) < 1e-14);
}

TEST_CASE("fem reads: causal = masked (row t equals the non-causal reads with the keys after t padded)") {
  const int64_t B = 2, H = 2, n = 8, d = 3;
  const Tensor q = rnd({B, H, n, 4}, 31), k = rnd({B, H, n, 4}, 32), v = rnd({B, H, n, d}, 33, 3.0);
  const Tensor beta = betas(H, d, 34, 0.3, 3.0);
  for (FemPrior prior : kPriors) {
    INFO(name(prior));
    const auto c = nn::free_energy_reads(q, k, v, beta, Tensor(), prior, true, 40.0, 3);
    for (int64_t t = 0; t < n; ++t) {
      std::vector<std::pair<int64_t, int64_t>> later;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = t + 1; j < n; ++j) later.push_back({b, j});
      const auto m = nn::free_energy_reads(q, k, v, beta, make_mask(B, n, later), prior, false);
      CHECK(max_abs_diff(c.mu.narrow(2, t, 1), m.mu.narrow(2, t, 1)) < 1e-12);
      CHECK(max_abs_diff(c.F.narrow(2, t, 1), m.F.narrow(2, t, 1)) < 1e-12);
    }
  }
}

TEST_CASE("fem reads: a row with no key to see is finite (mu 0, F log(tiny)/beta), in f64 and f32") {
  const int64_t B = 2, H = 1, n = 5, d = 2;
  // batch row 1 wholly padded; batch row 0 with key 0 padded, so causal query 0 sees nothing
  const Tensor mask = make_mask(B, n, {{0, 0}, {1, 0}, {1, 1}, {1, 2}, {1, 3}, {1, 4}});
  for (DType dt : {kFloat64, kFloat32})
    for (FemPrior prior : kPriors)
      for (bool causal : {false, true}) {
        INFO(name(prior) << (causal ? " causal" : "") << " " << dtype_name(dt));
        Tensor q = rnd({B, H, n, 2}, 41).to(dt), k = rnd({B, H, n, 2}, 42).to(dt), v = rnd({B, H, n, d}, 43).to(dt);
        Tensor beta = Tensor::full({H, d}, 2.0, dt);
        q.requires_grad_();
        v.requires_grad_();
        const auto r = nn::free_energy_reads(q, k, v, beta, mask, prior, causal);
        const double floor_ = std::log(dt == kFloat64 ? std::numeric_limits<double>::min() : std::numeric_limits<float>::min()) / 2.0;
        for (int64_t t = 0; t < n; ++t)
          for (int64_t c = 0; c < d; ++c) {
            CHECK(r.mu.at({1, 0, t, c}) == 0.0);
            CHECK(r.F.at({1, 0, t, c}) == doctest::Approx(floor_));
          }
        if (causal) CHECK(r.F.at({0, 0, 0, 0}) == doctest::Approx(floor_));
        sum(add(r.mu, r.F)).backward();
        bool finite = true;
        for (double x : q.grad().to_vector()) finite = finite && std::isfinite(x);
        for (double x : v.grad().to_vector()) finite = finite && std::isfinite(x);
        CHECK(finite);
      }
}

TEST_CASE("fem reads: f32 agrees with f64 at the default cap with values at the cap") {
  const int64_t B = 1, H = 2, n = 70, d = 8;  // n > 64: more than one key tile in the fused kernel
  const Tensor q = rnd({B, H, n, 8}, 51), k = rnd({B, H, n, 8}, 52), v = rnd({B, H, n, d}, 53, 30.0);
  const Tensor beta = betas(H, d, 54, 1.0, 4.0);  // |βv| reaches the cap 40: exp(βv̂ − M) down to e^-80
  for (FemPrior prior : kPriors)
    for (bool causal : {false, true}) {
      INFO(name(prior) << (causal ? " causal" : ""));
      const auto r64 = nn::free_energy_reads(q, k, v, beta, Tensor(), prior, causal, 40.0, 16);
      const auto r32 = nn::free_energy_reads(q.to(kFloat32), k.to(kFloat32), v.to(kFloat32), beta.to(kFloat32), Tensor(),
                                             prior, causal, 40.0, 16);
      CHECK(max_abs_diff(r32.F, r64.F) < 1e-4 * 40.0);
      CHECK(max_abs_diff(r32.mu, r64.mu) < 1e-4 * 40.0);
    }
}

TEST_CASE("fem reads: gradient checks with respect to q, k, v and beta, with clipping active") {
  const int64_t B = 2, H = 2, n = 6, d = 3;
  const Tensor mask = make_mask(B, n, {{1, 2}, {1, 5}});
  GradcheckOptions go;
  go.max_checks_per_input = 20;
  for (FemPrior prior : kPriors)
    for (bool causal : {false, true})
      for (double cap : {40.0, 1.0}) {
        INFO(name(prior) << (causal ? " causal" : "") << " cap " << cap);
        Tensor q = leaf({B, H, n, 4}, 61), k = leaf({B, H, n, 4}, 62), v = leaf({B, H, n, d}, 63, 1.5);
        Tensor beta = betas(H, d, 64, 0.5, 2.0);
        beta.requires_grad_();
        CHECK_GRAD([&](const V& in) {
          const auto r = nn::free_energy_reads(in[0], in[1], in[2], in[3], mask, prior, causal, cap, 4);
          return cat({r.mu, r.F}, -1);
        }, {q, k, v, beta}, go);
      }
}

TEST_CASE("fem layer: out = g * ((1 - lambda) mu + lambda F) with the gates from x") {
  const int64_t B = 2, n = 7, D = 8, H = 2, d = 4;
  for (FemPrior prior : kPriors) {
    INFO(name(prior));
    Generator g(71);
    nn::MultiHeadAttention mha(D, fem_opts(prior, false), g);
    mha.to_(kFloat64);
    auto& fem = mixer(mha);
    const Tensor x = rnd({B, n, D}, 72), mask = make_mask(B, n, {{1, 5}, {1, 6}});
    const auto r = fem.reads(x, mask);
    const Tensor lam = sigmoid(fem.lambda_proj->forward(x)).view({B, n, H, d}).transpose(1, 2);
    Tensor gt = add(softplus(fem.gate_proj->forward(x)), 1e-6);  // (B, n, D)
    std::vector<double> gv = gt.to_vector();
    for (int64_t row = 0; row < B * n * H; ++row) {  // L2-normalise each head's d entries to √d
      double s = 0;
      for (int64_t c = 0; c < d; ++c) s += gv[(size_t)(row * d + c)] * gv[(size_t)(row * d + c)];
      for (int64_t c = 0; c < d; ++c) gv[(size_t)(row * d + c)] *= std::sqrt((double)d / s);
    }
    const Tensor gate = Tensor::from_vector(gv, {B, n, H, d}).transpose(1, 2);
    const Tensor want = mul(gate, add(mul(rsub(lam, 1.0), r.mu), mul(lam, r.F)));
    CHECK(max_abs_diff(fem.forward_block(x, mask), want) < 1e-13);
    // λ pinned near 1 and near 0 by the bias: the layer reads F, then μ
    {
      NoGradGuard ng;
      fem.lambda_proj->bias.fill_(60.0);
    }
    CHECK(max_abs_diff(fem.forward_block(x, mask), mul(gate, r.F)) < 1e-12);
    {
      NoGradGuard ng;
      fem.lambda_proj->bias.fill_(-60.0);
    }
    CHECK(max_abs_diff(fem.forward_block(x, mask), mul(gate, r.mu)) < 1e-12);
    // β: softplus(1.8) + 1e-6 at the default init, one per channel
    CHECK(fem.beta().shape() == Shape{H, d});
    CHECK(fem.beta().at({1, 3}) == doctest::Approx(std::log1p(std::exp(1.8)) + 1e-6).epsilon(1e-6));  // beta_raw was an f32 1.8
    // the probe's map is the prior's: μ = A v̂ (no clipping at these sizes)
    auto h = linear_qkv_heads(x, fem.qkv->weight, fem.qkv->bias, H);
    const Tensor A = fem.attention_matrix_block(x, mask);
    CHECK(max_diff_seen(matmul(A, h[2]), r.mu, mask, false) < 1e-13);
  }
}

TEST_CASE("fem layer: gradient checks through MultiHeadAttention, both priors, causal and not, inner pads") {
  const int64_t B = 2, n = 7, D = 8;
  const Tensor mask = make_mask(B, n, {{1, 1}, {1, 4}, {1, 6}});
  GradcheckOptions go;
  go.max_checks_per_input = 16;
  for (FemPrior prior : kPriors)
    for (bool causal : {false, true}) {
      INFO(name(prior) << (causal ? " causal" : ""));
      Generator g(81);
      // a small cap so that some values are clipped and β's gradient has both paths
      nn::MultiHeadAttention mha(D, fem_opts(prior, causal, {{"value_cap", 0.05}, {"beta_init", 0.5}}), g);
      mha.to_(kFloat64);
      nn::reset_linears_uniform_(mha, g);  // larger weights than the 0.02 init: the gates and F matter
      auto& fem = mixer(mha);
      const Tensor x = leaf({B, n, D}, 82);
      CHECK_GRAD([&](const V& in) { return mha.forward(in[0], mask); },
                 {x, fem.qkv->weight, fem.lambda_proj->weight, fem.gate_proj->weight, fem.beta_raw, mha.out_proj->weight}, go);
      // the clip is active for some values
      auto h = linear_qkv_heads(x.detach(), fem.qkv->weight.detach(), fem.qkv->bias.detach(), 2);
      CHECK(max(abs(h[2])).item() > 0.05 / min(fem.beta()).item());
      // pads' content changes no valid output (inner pads, too)
      Tensor x2 = x.detach().clone();
      x2.select(0, 1).narrow(0, 4, 1).copy_(rnd({1, D}, 83, 100.0));
      x2.select(0, 1).narrow(0, 1, 1).copy_(rnd({1, D}, 84, 100.0));
      const Tensor y = mha.forward(x.detach(), mask), y2 = mha.forward(x2, mask);
      CHECK(max_abs_diff(y, y2) < 1e-12);  // valid rows unchanged, padded rows zeroed before out_proj
    }
}

TEST_CASE("fem registry: two mechanisms, honest capabilities, beta without weight decay, errors name the op") {
  const nn::MechanismSpec &s = nn::mechanism_spec("fem"), &l = nn::mechanism_spec("fem_linear");
  CHECK(s.caps.block_input);
  CHECK(l.caps.block_input);
  CHECK(s.caps.causal);
  CHECK(l.caps.causal);
  CHECK(!s.caps.linear_time);
  CHECK(l.caps.linear_time);
  CHECK(s.knob("chunk") == nullptr);
  CHECK(l.knob("chunk") != nullptr);
  for (const auto* spec : {&s, &l}) {
    Generator g(91);
    nn::AttentionOptions o;
    o.name = spec->name;
    nn::MultiHeadAttention mha(8, o, g);
    CHECK(!mha.qkv);
    int no_decay = 0;
    for (const auto& [pname, t] : mha.named_parameters())
      for (const auto& sub : spec->no_decay) no_decay += pname.find(sub) != std::string::npos;
    CHECK(no_decay == 1);  // mechanism.beta_raw only
    CHECK(mha.num_parameters() == 6 * 8 * 8 + 6 * 8 + 8);  // q, k, v, λ, g, out_proj: D×D and a bias each; β
    CHECK_THROWS_WITH_AS(mha.mechanism->forward_block(Tensor::zeros({1, 3, 6}), Tensor()),
                         doctest::Contains("FreeEnergyMixer"), ShapeError);
  }
  const Tensor q = Tensor::zeros({1, 2, 3, 4}, kFloat64), v = Tensor::zeros({1, 2, 3, 2}, kFloat64);
  CHECK_THROWS_WITH_AS(nn::free_energy_reads(q, q, v, Tensor::ones({2, 3}, kFloat64), Tensor(), FemPrior::softmax, false),
                       doctest::Contains("free_energy_reads"), ShapeError);
  CHECK_THROWS_WITH_AS(nn::free_energy_reads(q, q, v, Tensor::zeros({2, 2}, kFloat64), Tensor(), FemPrior::softmax, false),
                       doctest::Contains("beta must be > 0"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(nn::free_energy_reads(q, q, v, Tensor::ones({2, 2}, kFloat64), Tensor(), FemPrior::linear, true, 0.0),
                       doctest::Contains("cap must be > 0"), std::invalid_argument);
}
