// InLine (injective linear attention with a local residual): the layer against a plain-loop
// reference built from its parameters (every kernel, causal and not, pads anywhere), rows of the
// weights summing to 1, the causal prefix form against the masked explicit form at chunk sizes
// that do and do not divide n (values and gradients), injectivity (a scaled query changes its
// weights; normalised linear attention's do not), padding invariance against the unpadded
// example alone, the local convolution against causal_conv1d, gradient checks, refusals.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention_inline.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::nn;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {
double max_diff(const Tensor& a, const Tensor& b) { return max_abs(sub(a, b)); }

// An InLine layer in f64, D = 8, H = 2, with uniform(±1/√D) projections (larger than the default
// N(0, 0.02), so that q·k and therefore the mean subtraction matter).
std::shared_ptr<InLineAttention> layer(bool causal, std::map<std::string, double> knobs = {}, uint64_t seed = 3) {
  Generator g(seed);
  AttentionOptions o;
  o.name = "inline";
  o.n_heads = 2;
  o.d_head = 4;
  o.knobs = knobs;
  o.causal = causal;
  auto m = std::dynamic_pointer_cast<InLineAttention>(make_attention(o, g));
  REQUIRE(m);
  m->to_(kFloat64);
  reset_linears_uniform_(*m, g);
  return m;
}
// (B, n) mask from a list of padded (batch row, position) pairs.
Tensor mask_of(int64_t B, int64_t n, const std::vector<std::pair<int64_t, int64_t>>& pads) {
  std::vector<bool> m((size_t)(B * n), false);
  for (auto [b, j] : pads) m[(size_t)(b * n + j)] = true;
  return Tensor::from_vector(m, {B, n});
}
// Rows of padded queries zeroed: x (B, H, n, ·).
Tensor valid_rows(const Tensor& x, const Tensor& mask) { return mask.defined() ? zero_padded_rows(x, mask) : x; }

double phi(double x, InLineKernel k) {
  switch (k) {
    case InLineKernel::identity: return x;
    case InLineKernel::relu: return std::max(x, 0.0);
    case InLineKernel::leakyrelu: return x > 0 ? x : 0.01 * x;
    case InLineKernel::exp: return std::exp(0.2 * std::min(x, 100.0));
  }
  return NAN;
}

// The plain-loop reference (f64, no graph) from the layer's parameters and the definitions in
// nn/attention_inline.cpp: per batch row and head the weights w (n, n) and the output o (n, d)
// with the local residual, for every valid query (pad rows and columns stay 0). The residual's
// neighbours are the valid tokens before and after, counted in the sequence without its pads.
struct Naive {
  std::vector<double> w, o;  // (B, H, n, n), (B, H, n, d)
};
Naive naive(InLineAttention& m, const Tensor& x, const Tensor& mask) {
  const int64_t B = x.size(0), n = x.size(1), D = x.size(2), H = 2, d = D / H;
  const bool causal = m.causal();
  const std::vector<double> X = x.to_vector(), Wqkv = m.qkv->weight.to_vector(), bqkv = m.qkv->bias.to_vector();
  const std::vector<double> M = mask.defined() ? mask.to(kFloat64).to_vector() : std::vector<double>((size_t)(B * n), 0.0);
  auto lin = [&](int64_t row, int64_t b, int64_t t) {
    double a = bqkv[(size_t)row];
    for (int64_t c = 0; c < D; ++c) a += Wqkv[(size_t)(row * D + c)] * X[(size_t)((b * n + t) * D + c)];
    return a;
  };
  const double s = 1 / std::sqrt((double)d);
  Naive r;
  r.w.assign((size_t)(B * H * n * n), 0.0);
  r.o.assign((size_t)(B * H * n * d), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> valid;
    for (int64_t t = 0; t < n; ++t)
      if (M[(size_t)(b * n + t)] == 0) valid.push_back(t);
    const int64_t L = (int64_t)valid.size();
    // the residual's kernel per channel (D, 3)
    std::vector<double> kappa((size_t)(D * 3), 0.0);
    if (m.has_residual() && causal) {
      kappa = m.res_kernel.to_vector();
    } else if (m.has_residual()) {
      const std::vector<double> W1 = m.res_w1.to_vector(), b1 = m.res_b1.to_vector(), W2 = m.res_w2.to_vector(),
                                b2 = m.res_b2.to_vector();
      std::vector<double> xbar((size_t)D, 0.0);
      for (int64_t t : valid)
        for (int64_t c = 0; c < D; ++c) xbar[(size_t)c] += X[(size_t)((b * n + t) * D + c)] / (double)L;
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> hid((size_t)d);
        for (int64_t o = 0; o < d; ++o) {
          double a = b1[(size_t)(h * d + o)];
          for (int64_t i = 0; i < d; ++i) a += W1[(size_t)((h * d + o) * d + i)] * xbar[(size_t)(h * d + i)];
          hid[(size_t)o] = 0.5 * a * (1 + std::erf(a / std::sqrt(2.0)));
        }
        for (int64_t o = 0; o < 3 * d; ++o) {
          double a = b2[(size_t)(h * 3 * d + o)];
          for (int64_t i = 0; i < d; ++i) a += W2[(size_t)((h * 3 * d + o) * d + i)] * hid[(size_t)i];
          kappa[(size_t)(h * 3 * d + o)] = a;  // channel h·d + o/3, tap o%3
        }
      }
    }
    for (int64_t h = 0; h < H; ++h) {
      std::vector<std::vector<double>> q(n), k(n), v(n);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t f = 0; f < d; ++f) {
          q[t].push_back(phi(lin(h * d + f, b, t), m.kernel()));
          k[t].push_back(phi(lin(D + h * d + f, b, t), m.kernel()));
          v[t].push_back(lin(2 * D + h * d + f, b, t));
        }
      for (int64_t r_i = 0; r_i < L; ++r_i) {
        const int64_t i = valid[(size_t)r_i];
        std::vector<int64_t> seen;
        for (int64_t j : valid)
          if (!causal || j <= i) seen.push_back(j);
        const double N = (double)seen.size();
        double qkbar = 0;
        for (int64_t j : seen)
          for (int64_t f = 0; f < d; ++f) qkbar += q[i][f] * k[j][f] / N;
        double* o = &r.o[(size_t)(((b * H + h) * n + i) * d)];
        for (int64_t j : seen) {
          double qk = 0;
          for (int64_t f = 0; f < d; ++f) qk += q[i][f] * k[j][f];
          const double w = s / N * (qk - qkbar) + 1 / N;
          r.w[(size_t)(((b * H + h) * n + i) * n + j)] = w;
          for (int64_t f = 0; f < d; ++f) o[f] += w * v[j][f];
        }
        if (!m.has_residual()) continue;
        for (int64_t tap = 0; tap < 3; ++tap) {
          const int64_t r_j = causal ? r_i - tap : r_i + tap - 1;
          if (r_j < 0 || r_j >= L) continue;
          for (int64_t f = 0; f < d; ++f) o[f] += kappa[(size_t)((h * d + f) * 3 + tap)] * v[valid[(size_t)r_j]][f];
        }
      }
    }
  }
  return r;
}
}  // namespace

TEST_CASE("inline: forward and the explicit weights equal a plain-loop reference, every kernel, pads anywhere") {
  const int64_t B = 2, n = 7, D = 8, H = 2, d = 4;
  // row 0 unpadded; row 1 padded at the start, inside and at the end
  const Tensor mask = mask_of(B, n, {{1, 0}, {1, 3}, {1, 6}});
  Generator g(11);
  const Tensor x = randn({B, n, D}, g, kFloat64);
  for (bool causal : {false, true})
    for (double kernel : {0.0, 1.0, 2.0, 3.0})
      for (double residual : {1.0, 0.0})
        for (const Tensor& mk : {Tensor(), mask}) {
          INFO("causal " << causal << ", kernel " << kernel << ", residual " << residual << ", mask " << mk.defined());
          auto m = layer(causal, {{"inline_kernel", kernel}, {"local_residual", residual}, {"chunk", 3}});
          CHECK(m->has_residual() == (residual != 0));
          const Naive ref = naive(*m, x, mk);
          const Tensor o_ref = Tensor::from_vector(ref.o, {B, H, n, d}), w_ref = Tensor::from_vector(ref.w, {B, H, n, n});
          CHECK(max_abs(o_ref) > 0.1);
          CHECK(max_diff(valid_rows(m->forward_block(x, mk), mk), o_ref) < 1e-12);
          // the map: the weights on valid rows, 0 in padded keys' columns (exactly)
          const Tensor A = m->attention_matrix_block(x, mk);
          CHECK(max_diff(valid_rows(A, mk), w_ref) < 1e-12);
          if (mk.defined())
            for (int64_t j : {0, 3, 6}) CHECK(max_abs(A.select(0, 1).narrow(2, j, 1)) == 0.0);
        }
}

TEST_CASE("inline: rows of the weights sum to 1 (causal or not, with pads) and the weights can be negative") {
  const int64_t B = 2, H = 2, n = 8, d = 4;
  const Tensor mask = mask_of(B, n, {{0, 0}, {0, 1}, {1, 2}, {1, 5}, {1, 7}});
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    const InLineInputs in = inline_inputs(leaf({B, H, n, d}, 1, 2.0), leaf({B, H, n, d}, 2, 2.0), leaf({B, H, n, 3}, 3),
                                          mask, InLineKernel::identity);
    const Tensor w = inline_weights(in, causal);
    const Tensor rows = valid_rows(sum(w, {-1}, true), mask);
    const Tensor ones = valid_rows(Tensor::ones({B, H, n, 1}, kFloat64), mask);
    CHECK(max_diff(rows, ones) < 1e-12);
    CHECK(min(w).item() < -0.05);  // not a probability: InLine subtracts, it does not divide
    // the linear-time form: constant values come out unchanged (its rows sum to 1 as well)
    InLineInputs c = in;
    c.v = mul(Tensor::full({B, H, n, 3}, 2.5, kFloat64), in.valid);
    CHECK(max_diff(valid_rows(inline_linear_form(c, causal, 3), mask), mul(valid_rows(Tensor::ones({B, H, n, 3}, kFloat64), mask), 2.5)) < 1e-12);
  }
}

TEST_CASE("inline: the linear-time forms equal the explicit weights times v, values and gradients, every chunk size") {
  const int64_t B = 2, H = 2, n = 7, d = 3, e = 4;
  const Tensor mask = mask_of(B, n, {{1, 0}, {1, 4}, {1, 6}});
  Tensor q = leaf({B, H, n, d}, 21), k = leaf({B, H, n, d}, 22), v = leaf({B, H, n, e}, 23);
  Generator gr(9);
  const Tensor R = randn({B, H, n, e}, gr, kFloat64);
  for (InLineKernel kern : {InLineKernel::identity, InLineKernel::relu, InLineKernel::leakyrelu, InLineKernel::exp})
    for (bool causal : {false, true})
      for (const Tensor& mk : {Tensor(), mask}) {
        INFO("kernel " << (int)kern << ", causal " << causal << ", mask " << mk.defined());
        auto explicit_form = [&](const V& x) {
          const InLineInputs in = inline_inputs(x[0], x[1], x[2], mk, kern);
          return valid_rows(matmul(inline_weights(in, causal), in.v), mk);
        };
        const Tensor ref = explicit_form({q, k, v});
        CHECK(max_abs(ref) > 0.1);
        const V ref_g = input_grads(sum(mul(explicit_form({q, k, v}), R)), {q, k, v});
        for (int64_t chunk : {1, 2, 3, 7, 64}) {  // 2, 3: chunks that do not divide n
          INFO("chunk " << chunk);
          auto fast = [&](const V& x) { return valid_rows(inline_linear_form(inline_inputs(x[0], x[1], x[2], mk, kern), causal, chunk), mk); };
          CHECK(max_diff(fast({q, k, v}), ref) < 1e-12);
          const V gf = input_grads(sum(mul(fast({q, k, v}), R)), {q, k, v});
          for (size_t i = 0; i < 3; ++i) CHECK(max_diff(gf[i], ref_g[i]) < 1e-12);
          if (chunk == 3) {
            GradcheckOptions o;
            o.max_checks_per_input = 12;
            CHECK_GRAD(fast, {q, k, v}, o);
          }
          if (!causal) break;  // the two-sided form has no chunks
        }
      }
}

TEST_CASE("inline: injective: scaling a query changes its weights, while normalised linear attention's stay") {
  const int64_t n = 6, d = 4;
  Generator g(5);
  // positive q, k: the normaliser of linear attention is far from 0
  const Tensor q = add(mul(rand({1, 1, n, d}, g, kFloat64), 0.9), 0.1), k = add(mul(rand({1, 1, n, d}, g, kFloat64), 0.9), 0.1);
  const Tensor v = randn({1, 1, n, 3}, g, kFloat64);
  Tensor q2 = q.clone();
  q2.narrow(2, 2, 1).mul_(3.0);  // query 2 -> 3 · query 2
  AttentionOptions lo;
  lo.name = "linear";
  lo.n_heads = 1;
  lo.d_head = d;
  lo.knobs = {{"feature_map", 1}};  // φ = identity: linear attention on exactly these q, k
  auto lin = make_attention(lo, g);
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    const Tensor w = inline_weights(inline_inputs(q, k, v, Tensor(), InLineKernel::identity), causal);
    const Tensor w2 = inline_weights(inline_inputs(q2, k, v, Tensor(), InLineKernel::identity), causal);
    CHECK(max_diff(w.narrow(2, 2, 1), w2.narrow(2, 2, 1)) > 1e-2);  // the scaled query's row changed
    CHECK(max_diff(w.narrow(2, 3, 3), w2.narrow(2, 3, 3)) == 0.0);  // the others did not
    // so did its output
    const Tensor o = inline_linear_form(inline_inputs(q, k, v, Tensor(), InLineKernel::identity), causal, 2);
    const Tensor o2 = inline_linear_form(inline_inputs(q2, k, v, Tensor(), InLineKernel::identity), causal, 2);
    CHECK(max_diff(o.narrow(2, 2, 1), o2.narrow(2, 2, 1)) > 1e-3);
  }
  // linear attention: the row is the same up to its 1e-6 guard, for q and 3q (not injective)
  const Tensor a = lin->attention_matrix(q, k, Tensor()), a2 = lin->attention_matrix(q2, k, Tensor());
  CHECK(max_diff(a, a2) < 1e-6);
  // the same by its formula: φ(q)·φ(k_j) / Σ_m φ(q)·φ(k_m) is homogeneous of degree 0 in φ(q)
  const Tensor s = matmul(q, k.transpose(-2, -1)), s2 = matmul(q2, k.transpose(-2, -1));
  CHECK(max_diff(div(s, sum(s, {-1}, true)), div(s2, sum(s2, {-1}, true))) < 1e-14);
}

TEST_CASE("inline: padding invariance: an example padded left, right, inside gives its unpadded outputs") {
  // The local residual's neighbours are counted among valid tokens, so this is exact for every
  // pattern (not only for pads at the ends).
  const int64_t L = 5, D = 8, pads = 3, n = L + pads;
  Generator g(17);
  const Tensor a = randn({1, L, D}, g, kFloat64), b = randn({1, L, D}, g, kFloat64);
  // where the 3 pads go, per pattern
  const std::vector<std::vector<int64_t>> patterns = {{0, 1, 2}, {5, 6, 7}, {1, 3, 4}, {0, 4, 7}};
  for (bool causal : {false, true})
    for (double kernel : {0.0, 3.0}) {
      auto m = layer(causal, {{"inline_kernel", kernel}, {"chunk", 2}});
      const Tensor ya = m->forward_block(a, Tensor()), yb = m->forward_block(b, Tensor());
      for (size_t pa = 0; pa < patterns.size(); ++pa) {
        INFO("causal " << causal << ", kernel " << kernel << ", pattern " << pa);
        // row 0: a padded by pattern pa; row 1: b padded by the next pattern
        const auto& P0 = patterns[pa];
        const auto& P1 = patterns[(pa + 1) % patterns.size()];
        Tensor x = mul(randn({2, n, D}, g, kFloat64), 30.0);  // pad content: large
        std::vector<std::pair<int64_t, int64_t>> pad_list;
        std::vector<int64_t> pos[2];
        for (int64_t r = 0; r < 2; ++r) {
          const auto& P = r == 0 ? P0 : P1;
          for (int64_t t = 0, i = 0; t < n; ++t) {
            if (std::find(P.begin(), P.end(), t) != P.end()) {
              pad_list.push_back({r, t});
              continue;
            }
            x.select(0, r).narrow(0, t, 1).copy_((r == 0 ? a : b).select(0, 0).narrow(0, i++, 1));
            pos[r].push_back(t);
          }
        }
        const Tensor y = m->forward_block(x, mask_of(2, n, pad_list));
        for (int64_t r = 0; r < 2; ++r)
          for (int64_t i = 0; i < L; ++i)
            CHECK(max_diff(y.select(0, r).narrow(1, pos[r][(size_t)i], 1), (r == 0 ? ya : yb).select(0, 0).narrow(1, i, 1)) < 1e-12);
      }
    }
}

TEST_CASE("inline: the local convolution equals causal_conv1d (causal taps, and the two-sided taps shifted)") {
  const int64_t B = 2, H = 2, n = 6, e = 3;
  Tensor v = leaf({B, H, n, e}, 31), kern = leaf({1, H, e, 3}, 32);
  // (B, H, n, e) -> (B, n, H·e) channels and the kernel as causal_conv1d's weight (H·e, 3)
  auto tokens = [&](const Tensor& t) { return t.permute({0, 2, 1, 3}).reshape({B, t.size(2), H * e}); };
  const Tensor w = kern.reshape({H * e, 3});
  CHECK(max_diff(tokens(inline_local_conv(v, kern, Tensor(), true)), causal_conv1d(tokens(v), w)) < 1e-14);
  // two-sided: r_t = κ0 v_{t−1} + κ1 v_t + κ2 v_{t+1} is the causal conv with taps reversed, one step later
  const Tensor later = causal_conv1d(pad(tokens(v), {0, 0, 0, 1}), index_select(w, 1, Tensor::from_vector(std::vector<int64_t>{2, 1, 0}, {3}))).narrow(1, 1, n);
  CHECK(max_diff(tokens(inline_local_conv(v, kern, Tensor(), false)), later) < 1e-14);
  // a per-example kernel (B, H, e, 3), pads in the middle: gradient check
  const Tensor mask = mask_of(B, n, {{0, 2}, {1, 0}, {1, 5}});
  Tensor kb = leaf({B, H, e, 3}, 33);
  GradcheckOptions o;
  o.max_checks_per_input = 20;
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    CHECK_GRAD([&](const V& x) { return inline_local_conv(x[0], x[1], mask, causal); }, {v, kb}, o);
    const Tensor r = inline_local_conv(v, kb, mask, causal);
    CHECK(max_abs(r.select(0, 1).narrow(1, 5, 1)) == 0.0);  // a pad's row
  }
}

TEST_CASE("inline: gradient checks of the whole mechanism, causal and not, through its residual") {
  const int64_t B = 2, n = 6, D = 8;
  const Tensor mask = mask_of(B, n, {{1, 1}, {1, 5}});
  Tensor x = leaf({B, n, D}, 41);
  GradcheckOptions o;
  o.max_checks_per_input = 16;
  for (bool causal : {false, true})
    for (double kernel : {0.0, 2.0, 3.0}) {
      INFO("causal " << causal << ", kernel " << kernel);
      auto m = layer(causal, {{"inline_kernel", kernel}, {"chunk", 4}});
      V inputs{x, m->qkv->weight, m->qkv->bias};
      if (causal) inputs.push_back(m->res_kernel);
      else inputs.insert(inputs.end(), {m->res_w1, m->res_b1, m->res_w2, m->res_b2});
      CHECK_GRAD([&](const V& in) { return valid_rows(m->forward_block(in[0], mask), mask); }, inputs, o);
    }
}

TEST_CASE("inline: parameters, the kernels' values, the exp clamp, refusals") {
  auto two = layer(false), causal = layer(true), plain = layer(false, {{"local_residual", 0}});
  CHECK(two->named_parameters().size() == 6);  // qkv weight, bias; res_w1, res_b1, res_w2, res_b2
  CHECK(causal->named_parameters().size() == 3);  // qkv weight, bias; res_kernel (4·2, 3)
  CHECK(causal->res_kernel.shape() == Shape{8, 3});
  CHECK(plain->named_parameters().size() == 2);
  CHECK(!plain->residual_kernel(Tensor::zeros({1, 3, 8}, kFloat64), Tensor()).defined());
  // with the residual off, forward is the linear form alone
  Generator g(2);
  const Tensor x = randn({2, 5, 8}, g, kFloat64);
  CHECK(max_diff(plain->forward_block(x, Tensor()), inline_linear_form(plain->inputs(x, Tensor()), false)) == 0.0);
  CHECK(two->type_name() == "InLineAttention(identity, two-sided, predicted local residual)");
  // the kernels
  const Tensor t = Tensor::from_vector(std::vector<double>{-2.0, 0.5, 1000.0}, {3});
  CHECK(max_diff(inline_feature(t, InLineKernel::relu), Tensor::from_vector(std::vector<double>{0, 0.5, 1000}, {3})) == 0.0);
  CHECK(max_diff(inline_feature(t, InLineKernel::leakyrelu), Tensor::from_vector(std::vector<double>{-0.02, 0.5, 1000}, {3})) == 0.0);
  const Tensor ex = inline_feature(t, InLineKernel::exp);
  CHECK(ex.at({0}) == doctest::Approx(std::exp(-0.4)).epsilon(1e-15));
  CHECK(ex.at({2}) == doctest::Approx(std::exp(20.0)).epsilon(1e-15));  // clamped at x = 100
  CHECK(std::isfinite(inline_feature(Tensor::full({1}, 1e4, kFloat32), InLineKernel::exp).at({0})));
  // refusals name the op and the operands
  CHECK_THROWS_WITH_AS(two->forward_block(Tensor::zeros({2, 5, 6}, kFloat64), Tensor()),
                       doctest::Contains("inline attention: expects the block input x (B, n, D = 8)"), ShapeError);
  CHECK_THROWS_WITH_AS(two->forward_block(x, mask_of(2, 4, {})), doctest::Contains("key_padding_mask must be bool (B, n) = (2, 5)"),
                       ShapeError);
  const InLineInputs in = two->inputs(x, Tensor());
  CHECK_THROWS_WITH_AS(inline_linear_form(in, true, 0), doctest::Contains("chunk must be >= 1, got 0"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(inline_local_conv(in.v, Tensor::zeros({1, 2, 4, 2}, kFloat64), Tensor(), false),
                       doctest::Contains("inline local residual: v must be (B, H, n, e) and the kernel (B or 1, H, e, 3)"), ShapeError);
  CHECK_THROWS_AS(inline_inputs(in.fq, in.fk.narrow(2, 0, 4), in.v, Tensor(), InLineKernel::identity), ShapeError);
}
