// Bilinear BTT attention (nn/attention_btt.h): the split of D; the structured product W_h x
// against the dense W_h built from the cores by the index formula; gradient checks of the
// product, the RMS cap (acting and not) and the whole mechanism (causal and not, with a mask,
// cores capped and not); the ranks (W_h full rank D at s = 1, each block of rank s, beside the
// rank-d W_Q W_Kᵀ of standard attention); the parameter count; the mechanism against a naive
// reference (dense W_h, explicit softmax, loops) causal and not with padding; padding and
// causality; knobs and refusals.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <lotgrad/lotgrad.h>
#include <lotgrad/nn/attention.h>
#include <lotgrad/nn/attention_btt.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {

nn::AttentionOptions btt_opts(int64_t H, int64_t d, int64_t s, bool causal) {
  nn::AttentionOptions o;
  o.name = "btt";
  o.n_heads = H;
  o.d_head = d;
  o.causal = causal;
  o.knobs = {{"btt_rank", (double)s}};
  return o;
}

std::shared_ptr<nn::BttAttention> make_btt(int64_t H, int64_t d, int64_t s, bool causal, uint64_t seed) {
  Generator g(seed);
  auto m = std::dynamic_pointer_cast<nn::BttAttention>(nn::make_attention(btt_opts(H, d, s, causal), g));
  REQUIRE(m);
  m->to_(kFloat64);
  return m;
}

// W[h][(α·b + β)·D + γ·d' + δ] = Σ_σ L[(h·b + β), α, γ·s + σ] · R[γ, δ, (h·b + β)·s + σ], from the
// index formula, element by element.
std::vector<std::vector<double>> dense_w(const Tensor& R, const Tensor& L, int64_t H) {
  const int64_t c = R.size(0), dp = R.size(1), a = L.size(1), b = L.size(0) / H, s = L.size(2) / c, D = a * b;
  const std::vector<double> r = R.to_vector(), l = L.to_vector();
  std::vector<std::vector<double>> W((size_t)H, std::vector<double>((size_t)(D * D), 0.0));
  for (int64_t h = 0; h < H; ++h)
    for (int64_t al = 0; al < a; ++al)
      for (int64_t be = 0; be < b; ++be)
        for (int64_t ga = 0; ga < c; ++ga)
          for (int64_t de = 0; de < dp; ++de) {
            double sum = 0;
            for (int64_t si = 0; si < s; ++si)
              sum += l[(size_t)((((h * b + be) * a + al) * c + ga) * s + si)] *
                     r[(size_t)((ga * dp + de) * H * b * s + (h * b + be) * s + si)];
            W[(size_t)h][(size_t)((al * b + be) * D + ga * dp + de)] = sum;
          }
  return W;
}

// Numerical rank by Gaussian elimination with full pivoting: pivots above rtol × the largest
// entry count.
int64_t numerical_rank(std::vector<double> M, int64_t rows, int64_t cols, double rtol = 1e-9) {
  double top = 0;
  for (double v : M) top = std::max(top, std::abs(v));
  int64_t rank = 0;
  std::vector<int64_t> col(cols);
  for (int64_t j = 0; j < cols; ++j) col[(size_t)j] = j;
  for (int64_t k = 0; k < std::min(rows, cols); ++k) {
    int64_t pi = k, pj = k;
    for (int64_t i = k; i < rows; ++i)
      for (int64_t j = k; j < cols; ++j)
        if (std::abs(M[(size_t)(i * cols + j)]) > std::abs(M[(size_t)(pi * cols + pj)])) pi = i, pj = j;
    const double p = M[(size_t)(pi * cols + pj)];
    if (std::abs(p) <= rtol * top) break;
    for (int64_t j = 0; j < cols; ++j) std::swap(M[(size_t)(k * cols + j)], M[(size_t)(pi * cols + j)]);
    for (int64_t i = 0; i < rows; ++i) std::swap(M[(size_t)(i * cols + k)], M[(size_t)(i * cols + pj)]);
    for (int64_t i = k + 1; i < rows; ++i) {
      const double f = M[(size_t)(i * cols + k)] / p;
      for (int64_t j = k; j < cols; ++j) M[(size_t)(i * cols + j)] -= f * M[(size_t)(k * cols + j)];
    }
    ++rank;
  }
  return rank;
}

// The block (β, γ) of W (a × d'): rows α·b + β, columns γ·d' + δ.
std::vector<double> w_block(const std::vector<double>& W, int64_t a, int64_t b, int64_t dp, int64_t be, int64_t ga) {
  const int64_t D = a * b;
  std::vector<double> blk((size_t)(a * dp));
  for (int64_t al = 0; al < a; ++al)
    for (int64_t de = 0; de < dp; ++de) blk[(size_t)(al * dp + de)] = W[(size_t)((al * b + be) * D + ga * dp + de)];
  return blk;
}

// The reference's cap, written out: w / max(1, sqrt(mean(w²) + 1e-8)/scale).
std::vector<double> capped(const Tensor& w, double scale) {
  std::vector<double> v = w.to_vector();
  double ms = 0;
  for (double e : v) ms += e * e;
  const double f = std::max(1.0, std::sqrt(ms / (double)v.size() + 1e-8) / scale);
  for (double& e : v) e /= f;
  return v;
}

struct Naive {
  std::vector<double> out;  // (B, H, n, d)
  std::vector<double> p;    // (B, H, n, n)
};

// The mechanism from its definition, in loops: W_h dense from the capped cores, k = LN(W_h x)·gain,
// scores x_i·k_j/√D over the keys seen (unpadded, and j <= i when causal), explicit softmax (a
// row with no key: zeros), values x W_vᵀ + b_v.
Naive naive_btt(const nn::BttAttention& m, const Tensor& x, const Tensor& mask, int64_t H) {
  const int64_t B = x.size(0), n = x.size(1), D = x.size(2), d = D / H;
  const nn::BttSplit sp = m.split();
  const int64_t a = sp.a, b = sp.b, s = m.rank();
  const Tensor R = Tensor::from_vector(capped(m.btt_r, nn::btt_cap_scale(b, H * b * s)), m.btt_r.shape());
  const Tensor L = Tensor::from_vector(capped(m.btt_l, nn::btt_cap_scale(a * s, a)), m.btt_l.shape());
  const auto W = dense_w(R, L, H);
  const std::vector<double> X = x.to_vector(), g = m.k_norm_weight.to_vector();
  const std::vector<double> Wv = m.v_proj->weight.to_vector(), bv = m.v_proj->bias.to_vector();
  const std::vector<double> pad = mask.defined() ? mask.to_vector() : std::vector<double>((size_t)(B * n), 0.0);
  std::vector<double> K((size_t)(B * H * n * D)), Vv((size_t)(B * n * D));
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t t = 0; t < n; ++t) {
      const double* xt = &X[(size_t)((bb * n + t) * D)];
      for (int64_t o = 0; o < D; ++o) {
        double v = bv[(size_t)o];
        for (int64_t i = 0; i < D; ++i) v += Wv[(size_t)(o * D + i)] * xt[i];
        Vv[(size_t)((bb * n + t) * D + o)] = v;
      }
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> wx((size_t)D, 0.0);
        double mu = 0, var = 0;
        for (int64_t r = 0; r < D; ++r) {
          for (int64_t i = 0; i < D; ++i) wx[(size_t)r] += W[(size_t)h][(size_t)(r * D + i)] * xt[i];
          mu += wx[(size_t)r] / (double)D;
        }
        for (int64_t r = 0; r < D; ++r) var += (wx[(size_t)r] - mu) * (wx[(size_t)r] - mu) / (double)D;
        for (int64_t r = 0; r < D; ++r)
          K[(size_t)(((bb * H + h) * n + t) * D + r)] = (wx[(size_t)r] - mu) / std::sqrt(var + 1e-5) * g[(size_t)r];
      }
    }
  Naive res{std::vector<double>((size_t)(B * H * n * d), 0.0), std::vector<double>((size_t)(B * H * n * n), 0.0)};
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> sc((size_t)n, -INFINITY);
        double top = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
          if (pad[(size_t)(bb * n + j)] != 0.0 || (m.causal() && j > i)) continue;
          double v = 0;
          for (int64_t r = 0; r < D; ++r) v += X[(size_t)((bb * n + i) * D + r)] * K[(size_t)(((bb * H + h) * n + j) * D + r)];
          sc[(size_t)j] = v / std::sqrt((double)D);
          top = std::max(top, sc[(size_t)j]);
        }
        if (top == -INFINITY) continue;  // no key to see: zeros
        double z = 0;
        for (int64_t j = 0; j < n; ++j) z += std::exp(sc[(size_t)j] - top);
        for (int64_t j = 0; j < n; ++j) {
          const double p = std::exp(sc[(size_t)j] - top) / z;
          res.p[(size_t)(((bb * H + h) * n + i) * n + j)] = p;
          for (int64_t e = 0; e < d; ++e)
            res.out[(size_t)(((bb * H + h) * n + i) * d + e)] += p * Vv[(size_t)((bb * n + j) * D + h * d + e)];
        }
      }
  return res;
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

void scale_cores(nn::BttAttention& m, double f) {
  NoGradGuard ng;
  m.btt_r.mul_(f);
  m.btt_l.mul_(f);
}

std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("btt_split: the split closest to square, a D without one is refused, naming D and the mechanism") {
  const std::vector<std::array<int64_t, 3>> cases = {{4, 2, 2},  {6, 2, 3},  {8, 2, 4},   {12, 3, 4},  {16, 4, 4},
                                                     {32, 4, 8}, {64, 8, 8}, {96, 8, 12}, {256, 16, 16}};
  for (const auto& [D, a, b] : cases) {
    INFO("D " << D);
    CHECK(nn::btt_split(D).a == a);
    CHECK(nn::btt_split(D).b == b);
  }
  for (int64_t D : {1, 2, 3, 7, 13}) {
    const std::string e = refusal([&] { nn::btt_split(D); });
    CHECK(e.find("btt attention") != std::string::npos);
    CHECK(e.find("D = " + std::to_string(D) + " ") != std::string::npos);
  }
  Generator g(1);
  const std::string e = refusal([&] { nn::MultiHeadAttention(7, btt_opts(1, 7, 1, false), g); });
  CHECK(e.find("btt attention: d_model D = 7") != std::string::npos);
  CHECK_NOTHROW(nn::MultiHeadAttention(14, btt_opts(2, 7, 1, false), g));  // 2·7
}

TEST_CASE("btt_project equals the dense W_h of the index formula times x") {
  struct Case {
    int64_t D, H, s;
  };
  for (const Case& cs : {Case{12, 2, 1}, Case{8, 3, 2}, Case{64, 2, 1}, Case{16, 1, 3}}) {
    INFO("D " << cs.D << " H " << cs.H << " s " << cs.s);
    const auto [a, b] = nn::btt_split(cs.D);
    Generator g(cs.D + cs.s);
    const Tensor R = randn({a, b, cs.H * b * cs.s}, g, kFloat64), L = randn({cs.H * b, a, a * cs.s}, g, kFloat64);
    const Tensor xt = randn({cs.D, 3, 2}, g, kFloat64);
    for (const Tensor& x : {randn({2, 3, cs.D}, g, kFloat64), xt.permute({2, 1, 0})}) {  // contiguous and not
      const Tensor y = nn::btt_project(x, R, L, cs.H);
      REQUIRE(y.shape() == Shape{2, cs.H, 3, cs.D});
      const auto W = dense_w(R, L, cs.H);
      std::vector<double> ref;
      const std::vector<double> X = x.contiguous().to_vector();
      for (int64_t bb = 0; bb < 2; ++bb)
        for (int64_t h = 0; h < cs.H; ++h)
          for (int64_t t = 0; t < 3; ++t)
            for (int64_t r = 0; r < cs.D; ++r) {
              double v = 0;
              for (int64_t i = 0; i < cs.D; ++i) v += W[(size_t)h][(size_t)(r * cs.D + i)] * X[(size_t)((bb * 3 + t) * cs.D + i)];
              ref.push_back(v);
            }
      CHECK(max_diff(y.to_vector(), ref) < 1e-12);
    }
  }
  // shapes that do not agree are refused, naming the op and the operands
  Generator g(2);
  const Tensor x = randn({1, 2, 12}, g, kFloat64), R = randn({3, 4, 8}, g, kFloat64), L = randn({8, 3, 3}, g, kFloat64);
  CHECK_NOTHROW(nn::btt_project(x, R, L, 2));
  CHECK_THROWS_AS(nn::btt_project(x, R, L, 3), ShapeError);                               // H·b != L's rows
  CHECK_THROWS_AS(nn::btt_project(randn({1, 2, 10}, g, kFloat64), R, L, 2), ShapeError);  // D != c·d'
  CHECK_THROWS_AS(nn::btt_project(x, randn({3, 4, 9}, g, kFloat64), L, 2), ShapeError);   // H·b·s mismatch
  const std::string e = refusal([&] { nn::btt_project(x, R, L, 3); });
  CHECK(e.find("btt_project") != std::string::npos);
  CHECK(e.find("R (3, 4, 8)") != std::string::npos);
}

TEST_CASE("btt_project and the RMS cap: gradient checks, the cap acts only above its scale") {
  GradcheckOptions go;
  go.max_checks_per_input = 30;
  const Tensor x = noncontig_leaf({2, 3, 12}, 1), R = leaf({3, 4, 2 * 4 * 2}, 2), L = leaf({2 * 4, 3, 3 * 2}, 3);
  CHECK_GRAD([](const V& v) { return nn::btt_project(v[0], v[1], v[2], 2); }, {x, R, L}, go);
  // acting: w·scale/rms, so the result's rms is the scale (up to the 1e-8 inside the root)
  const Tensor w = leaf({3, 4, 5}, 4);
  const Tensor c = nn::btt_rms_cap(w, 0.2);
  CHECK(std::sqrt(mean(mul(c, c)).item()) == doctest::Approx(0.2).epsilon(1e-7));
  CHECK(max_diff(c.to_vector(), capped(w, 0.2)) < 1e-15);
  CHECK_GRAD([](const V& v) { return nn::btt_rms_cap(v[0], 0.2); }, {w});
  // not acting: w itself
  const Tensor small = leaf({3, 4, 5}, 5, 0.01);
  CHECK(max_diff(nn::btt_rms_cap(small, 1.0).to_vector(), small.to_vector()) == 0.0);
  CHECK_GRAD([](const V& v) { return mul(nn::btt_rms_cap(v[0], 1.0), v[0]); }, {small});
  CHECK(nn::btt_cap_scale(8, 64) == doctest::Approx(std::sqrt(8.0) / 8));
  CHECK(nn::btt_cap_scale(16, 4) == doctest::Approx(2.0 / 16));
}

TEST_CASE("btt ranks: W_h has rank D at s = 1, each (a × d') block has rank min(s, a, d'), W_Q W_Kᵀ has rank d") {
  struct Case {
    int64_t H, d, s;
  };
  for (const Case& cs : {Case{8, 8, 1}, Case{2, 6, 1}, Case{2, 8, 2}, Case{1, 16, 3}, Case{1, 16, 5}, Case{3, 4, 1}}) {
    const int64_t D = cs.H * cs.d;
    INFO("D " << D << " H " << cs.H << " s " << cs.s);
    auto m = make_btt(cs.H, cs.d, cs.s, true, 7 + (uint64_t)D);
    const auto [a, b] = m->split();
    const auto W = dense_w(m->r_core(kFloat64), m->l_core(kFloat64), cs.H);
    for (int64_t h = 0; h < cs.H; ++h) {
      CHECK(numerical_rank(W[(size_t)h], D, D) == D);
      for (int64_t be = 0; be < b; ++be)
        for (int64_t ga = 0; ga < a; ++ga)
          CHECK(numerical_rank(w_block(W[(size_t)h], a, b, b, be, ga), a, b) == std::min({cs.s, a, b}));
    }
  }
  // beside it, standard attention at the same width and heads: W_q,hᵀ W_k,h (D × D) has rank d = D/H
  Generator g(3);
  nn::MultiHeadAttention sm(64, [] {
    nn::AttentionOptions o;
    o.name = "softmax";
    o.n_heads = 8;
    return o;
  }(), g);
  sm.to_(kFloat64);
  const Tensor wq = sm.qkv->weight.narrow(0, 0, 8), wk = sm.qkv->weight.narrow(0, 64, 8);  // head 0: (8, 64) each
  CHECK(numerical_rank(matmul(wq.t(), wk).to_vector(), 64, 64) == 8);
}

TEST_CASE("btt parameter count: 2·H·s·D^{3/2} in the cores, W_Q and W_K's count at D = 64, H = 8, s = 1") {
  auto cores = [](int64_t H, int64_t d, int64_t s) {
    auto m = make_btt(H, d, s, false, 1);
    return m->btt_r.numel() + m->btt_l.numel();
  };
  CHECK(cores(8, 8, 1) == 8192);   // 2·8·1·64^{3/2}
  CHECK(cores(8, 8, 1) == 2 * 64 * 64);  // W_Q and W_K of standard attention at D = 64
  CHECK(cores(8, 8, 2) == 16384);
  CHECK(cores(8, 32, 1) == 65536);  // D = 256 = 16·16
  CHECK(cores(4, 8, 1) == 4 * 32 * (4 + 8));  // D = 32 = 4·8: H·s·D·(a + b) = 1536 (2·H·D^{3/2} ≈ 1448)
  // the whole mechanism: the cores, the LayerNorm gain (D), v (D·D + D)
  auto m = make_btt(8, 8, 1, false, 1);
  int64_t total = 0;
  for (const auto& [name, t] : m->named_parameters()) total += t.numel();
  CHECK(total == 8192 + 64 + 64 * 64 + 64);
  // initialised at the cap: N(0, 1/fan_in), the cap's scale at s = 1
  auto rms = [](const Tensor& t) { return std::sqrt(mean(mul(t, t)).item()); };
  CHECK(rms(m->btt_r) == doctest::Approx(nn::btt_cap_scale(8, 64)).epsilon(0.05));
  CHECK(rms(m->btt_l) == doctest::Approx(nn::btt_cap_scale(8, 8)).epsilon(0.05));
}

TEST_CASE("btt equals the naive reference (dense W_h, explicit softmax), causal and not, with padding, cores capped and not") {
  const int64_t H = 3, d = 4, D = H * d, B = 2, n = 7;
  Generator gx(11);
  const Tensor x = randn({B, n, D}, gx, kFloat64);
  // row 0: the last two padded; row 1: the first and a middle one (a causal row 0 sees no key)
  const Tensor mask = Tensor::from_vector(std::vector<bool>{false, false, false, false, false, true, true,  //
                                                            true, false, false, true, false, false, false},
                                          {B, n});
  for (bool causal : {false, true})
    for (double f : {1.0, 6.0, 0.05}) {  // at init (at the cap), well above it (capped), below it (passed)
      INFO("causal " << causal << " core scale " << f);
      auto m = make_btt(H, d, 2, causal, 5);
      Generator g(6);
      nn::reset_linears_uniform_(*m, g);
      {
        NoGradGuard ng;
        m->k_norm_weight.copy_(add(randn({D}, g, kFloat64), 1.0));
      }
      scale_cores(*m, f);
      for (const Tensor& mk : {mask, Tensor()}) {
        const Naive ref = naive_btt(*m, x, mk, H);
        CHECK(max_diff(m->forward_block(x, mk).to_vector(), ref.out) < 1e-12);
        CHECK(max_diff(m->attention_matrix_block(x, mk).to_vector(), ref.p) < 1e-12);
      }
      // the map times the mechanism's values is the output
      const Tensor A = m->attention_matrix_block(x, mask);
      CHECK(max_abs_diff(matmul(A, m->values(x)), m->forward_block(x, mask)) < 1e-12);
    }
}

TEST_CASE("btt through MultiHeadAttention: gradient checks of every parameter, causal and not, with a mask") {
  const int64_t D = 8, n = 5;
  GradcheckOptions go;
  go.max_checks_per_input = 12;
  Generator gx(9);
  const Tensor x0 = randn({2, n, D}, gx, kFloat64);
  const Tensor mask = Tensor::from_vector(std::vector<bool>{false, false, false, true, true,  //
                                                            true, false, false, false, false},
                                          {2, n});
  for (bool causal : {false, true})
    for (double f : {1.0, 4.0, 0.1}) {
      INFO("causal " << causal << " core scale " << f);
      Generator g(1);
      nn::MultiHeadAttention mha(D, btt_opts(2, 4, 2, causal), g);
      nn::reset_linears_uniform_(mha, g);
      mha.to_(kFloat64);
      auto& m = dynamic_cast<nn::BttAttention&>(*mha.mechanism);
      scale_cores(m, f);
      {
        NoGradGuard ng;
        m.k_norm_weight.add_(randn({D}, g, kFloat64), 0.3);
      }
      V inputs{x0.detach().clone().requires_grad_(), m.btt_r, m.btt_l, m.k_norm_weight, m.v_proj->weight, m.v_proj->bias};
      CHECK_GRAD([&](const V& v) { return mha.forward(v[0], mask); }, inputs, go);
    }
}

TEST_CASE("btt: pads change no valid output, causal outputs do not see later tokens") {
  const int64_t D = 12, n = 9;
  Generator gx(3);
  const Tensor x0 = randn({2, n, D}, gx, kFloat64);
  const Tensor mask = Tensor::from_vector(std::vector<bool>{false, false, true, false, false, false, false, true, true,  //
                                                            true, true, false, false, false, false, false, false, false},
                                          {2, n});
  const Tensor keep = logical_not(mask).to(kFloat64).unsqueeze(-1);
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    Generator g(2);
    nn::MultiHeadAttention mha(D, btt_opts(3, 4, 1, causal), g);
    nn::reset_linears_uniform_(mha, g);
    mha.to_(kFloat64);
    Tensor x2 = x0.clone();
    x2.select(0, 0).narrow(0, 7, 2).fill_(9.0);
    x2.select(0, 0).narrow(0, 2, 1).fill_(-4.0);
    x2.select(0, 1).narrow(0, 0, 2).fill_(5.0);
    CHECK(max_abs_diff(mul(mha.forward(x0, mask), keep), mul(mha.forward(x2, mask), keep)) < 1e-12);
    Tensor x3 = x0.clone();
    x3.narrow(1, 5, n - 5).fill_(2.0);
    const double early = max_abs_diff(mha.forward(x0).narrow(1, 0, 5), mha.forward(x3).narrow(1, 0, 5));
    const double late = max_abs_diff(mha.forward(x0).narrow(1, 5, n - 5), mha.forward(x3).narrow(1, 5, n - 5));
    CHECK(late > 1e-3);
    if (causal) CHECK(early < 1e-12);
    else CHECK(early > 1e-3);  // two-sided: earlier tokens see later ones
  }
}

TEST_CASE("btt: knobs reach the layer, f32 agrees with f64, the declaration, refusals") {
  Generator g(4);
  auto m = std::dynamic_pointer_cast<nn::BttAttention>(nn::make_attention(btt_opts(2, 8, 3, true), g));
  REQUIRE(m);
  CHECK(m->rank() == 3);
  CHECK(m->btt_r.shape() == Shape{4, 4, 2 * 4 * 3});
  CHECK(m->btt_l.shape() == Shape{2 * 4, 4, 4 * 3});
  CHECK(m->type_name() == "BttAttention(4·4, rank 3, causal)");
  CHECK(nn::make_attention(btt_opts(2, 8, 1, false), g)->type_name() == "BttAttention(4·4, rank 1)");
  // f32 (the parameters' dtype) against the same model in f64, n = 70 (more than one kernel tile)
  Tensor x = randn({2, 70, 16}, g);
  const Tensor y32 = m->forward_block(x, Tensor());
  m->to_(kFloat64);
  const Tensor y64 = m->forward_block(x.to(kFloat64), Tensor());
  CHECK(y32.dtype() == kFloat32);
  CHECK(max_abs_diff(y32.to(kFloat64), y64) < 1e-4);
  const std::string e = refusal([&] { m->forward_block(randn({1, 3, 12}, g, kFloat64), Tensor()); });
  CHECK(e.find("btt attention") != std::string::npos);
  CHECK(e.find("(1, 3, 12)") != std::string::npos);
  CHECK_THROWS_AS(nn::make_attention(btt_opts(2, 8, 0, false), g), std::invalid_argument);  // rank >= 1
  const nn::MechanismSpec& s = nn::mechanism_spec("btt");
  CHECK(s.caps.block_input);
  CHECK(s.caps.causal);
  CHECK_FALSE(s.caps.linear_time);
  CHECK(s.preset("icl-regression").at("btt_rank") == 1);
}
