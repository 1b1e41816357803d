// nn/: modules, the encoder, every attention mechanism, masks and the probe.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/nn/attention.h>
#include <lotgrad/nn/layers.h>
#include <lotgrad/nn/positional.h>
#include <lotgrad/nn/probe.h>
#include <lotgrad/nn/transformer.h>

#include "support/gradcheck.h"

using namespace lotgrad;
using namespace lotgrad::nn;
using namespace lotgrad::testing;
using V = std::vector<Tensor>;

namespace {
// The shared tests run over every registered mechanism, each at its declared "tiny" preset.
const std::vector<std::string> kMechs = attention_names();

AttentionOptions opts(const std::string& name, int64_t heads = 2) {
  AttentionOptions o;
  o.name = name;
  o.n_heads = heads;
  o.knobs = mechanism_spec(name).preset("tiny");
  return o;
}
// (B, n) mask with the last `pad` positions of batch row 1 padded.
Tensor tail_mask(int64_t B, int64_t n, int64_t pad) {
  std::vector<bool> m(B * n, false);
  for (int64_t j = n - pad; j < n; ++j) m[1 * n + j] = true;
  return Tensor::from_vector(m, {B, n});
}
}  // namespace

TEST_CASE("module names, counts, modes and state round trip") {
  Generator g(1);
  EncoderConfig cfg;
  cfg.depth = 2;
  cfg.d_model = 16;
  cfg.n_heads = 2;
  cfg.mlp_hidden = 32;
  TransformerEncoder enc(cfg, g);
  auto named = enc.named_parameters();
  REQUIRE(!named.empty());
  CHECK(named[0].first == "layers.0.ln1.weight");
  bool found = false;
  for (auto& [n, t] : named) found = found || n == "layers.1.attn.qkv.weight";
  CHECK(found);
  // per layer: 2 LN (2*16 each), qkv 16*48+48, out 16*16+16, mlp 16*32+32 + 32*16+16
  const int64_t per = 2 * 32 + (16 * 48 + 48) + (16 * 16 + 16) + (16 * 32 + 32) + (32 * 16 + 16);
  CHECK(enc.num_parameters() == 2 * per);
  enc.eval();
  CHECK_FALSE(enc.layers[1]->mlp->drop->is_training());
  enc.train();
  CHECK(enc.layers[1]->mlp->drop->is_training());
  Generator g2(2);
  TransformerEncoder other(cfg, g2);
  other.load_state_dict(enc.state_dict());
  Tensor x = randn({2, 5, 16}, g);
  CHECK(max_abs_diff(enc.forward(x), other.forward(x)) == 0.0);
  auto bad = enc.state_dict();
  bad.pop_back();
  CHECK_THROWS_AS(other.load_state_dict(bad), std::invalid_argument);
  CHECK_THROWS_AS(make_attention(opts("nope"), g), std::invalid_argument);
}

TEST_CASE("layers: gradient checks through Linear, LayerNorm, Embedding, MLP and positions") {
  Generator g(3);
  Linear lin(4, 3, g);
  lin.to_(kFloat64);
  Tensor x = leaf({2, 4}, 31);
  CHECK_GRAD([&](const V& v) { return lin.forward(v[0]); }, {x, lin.weight, lin.bias});
  LayerNorm ln(4);
  ln.to_(kFloat64);
  Tensor x2 = noncontig_leaf({3, 4}, 32);
  CHECK_GRAD([&](const V& v) { return ln.forward(v[0]); }, {x2, ln.weight, ln.bias});
  MLP mlp(4, 8, g);
  mlp.to_(kFloat64);
  CHECK_GRAD([&](const V& v) { return mlp.forward(v[0]); }, {x, mlp.fc1->weight, mlp.fc2->bias});
  Embedding emb(5, 3, g);
  emb.to_(kFloat64);
  Tensor idx = Tensor::from_vector(std::vector<int64_t>{0, 4, 4, 2}, {2, 2});
  CHECK_GRAD([&](const V& v) { return emb.forward(idx); }, {emb.weight});
  LearnedPositionalEmbedding pos(10, 3, g);
  pos.to_(kFloat64);
  CHECK_GRAD([&](const V& v) { return mul(pos.forward(4), pos.forward(4)); }, {pos.weight});
  // 2-D positions: a lead (CLS) slot, then row[y] + col[x] for a 3-wide grid; a table used
  // twice, and one that stops inside the second row.
  GridPositionalEmbedding grid(2, 3, 1, 4, g);
  grid.to_(kFloat64);
  Tensor t = grid.forward(7);  // lead + 2 x 3
  CHECK(t.shape() == Shape{7, 4});
  CHECK(t.at({0, 2}) == grid.lead_weight.at({0, 2}));
  CHECK(t.at({5, 1}) == doctest::Approx(grid.row.at({1, 1}) + grid.col.at({1, 1})));  // pixel 4 = (1, 1)
  CHECK(t.at({3, 3}) == doctest::Approx(grid.row.at({0, 3}) + grid.col.at({2, 3})));  // pixel 2 = (0, 2)
  CHECK_GRAD([&](const V& v) { return mul(grid.forward(6), grid.forward(6)); }, {grid.row, grid.col, grid.lead_weight});
  CHECK(grid.forward(1).shape() == Shape{1, 4});
  CHECK_THROWS_AS(grid.forward(8), ShapeError);
  // The tables start as a 2-D sine-cosine code: rows in the first half of the channels.
  CHECK(grid.row.at({1, 0}) == doctest::Approx(std::sqrt(2.0) * 0.02 * std::sin(1.0)));
  CHECK(grid.row.at({1, 1}) == doctest::Approx(std::sqrt(2.0) * 0.02 * std::cos(1.0)));
  CHECK(grid.row.at({1, 2}) == 0.0);
  CHECK(grid.col.at({2, 0}) == 0.0);
  CHECK(grid.col.at({2, 2}) == doctest::Approx(std::sqrt(2.0) * 0.02 * std::sin(2.0)));
  CHECK_THROWS_AS(GridPositionalEmbedding(2, 2, 0, 6, g), ShapeError);  // d not a multiple of 4
  GridPositionalEmbedding nolead(2, 2, 0, 4, g);
  CHECK(nolead.named_parameters().size() == 2);
  CHECK(nolead.forward(3).at({2, 0}) == doctest::Approx(nolead.row.at({1, 0}) + nolead.col.at({0, 0})));
  CHECK_THROWS_AS(GridPositionalEmbedding(0, 2, 0, 4, g), ShapeError);
  SinusoidalPositionalEncoding sp(8, 4);
  CHECK(sp.forward(3).at({0, 1}) == doctest::Approx(1.0));
  CHECK(sp.forward(3).at({2, 0}) == doctest::Approx(std::sin(2.0)));
  CHECK_THROWS_AS(sp.forward(9), ShapeError);
}

TEST_CASE("every mechanism: gradient check through multi-head attention with a mask") {
  for (const auto& name : kMechs) {
    INFO(name);
    Generator g(4);
    MultiHeadAttention mha(8, opts(name), g);
    mha.to_(kFloat64);
    Tensor x = leaf({2, 5, 8}, 41, 0.5);
    Tensor mask = tail_mask(2, 5, 2);
    GradcheckOptions o;
    o.max_checks_per_input = 24;
    V inputs{x, mha.out_proj->bias};
    if (mha.qkv) inputs.push_back(mha.qkv->weight);  // a block-input mechanism has its own projections
    CHECK_GRAD([&](const V& v) { return mha.forward(v[0], mask); }, inputs, o);
  }
}

TEST_CASE("every mechanism: padding has the right meaning") {
  for (const auto& name : kMechs) {
    INFO(name);
    Generator g(5);
    MultiHeadAttention mha(8, opts(name), g);
    const int64_t B = 2, n = 7, pad = 3;
    Tensor mask = tail_mask(B, n, pad);
    Tensor x = randn({B, n, 8}, g);
    Tensor y = mha.forward(x, mask);
    // changing what padded positions hold changes no valid output
    Tensor x2 = x.clone();
    x2.select(0, 1).narrow(0, n - pad, pad).copy_(mul(randn({pad, 8}, g), 10.0));
    Tensor y2 = mha.forward(x2, mask);
    CHECK(max_abs_diff(y.select(0, 1).narrow(0, 0, n - pad), y2.select(0, 1).narrow(0, 0, n - pad)) < 1e-5);
    CHECK(max_abs_diff(y.select(0, 0), y2.select(0, 0)) == 0.0);
    // padded keys get zero weight
    Tensor A = probe_attention(mha, x, mask);
    CHECK(A.shape() == Shape{B, 2, n, n});
    for (int64_t j = n - pad; j < n; ++j)
      for (int64_t i = 0; i < n; ++i) CHECK(std::abs(A.at({1, 0, i, j})) < 1e-7);
    if (mha.spec().caps.block_input) continue;  // its values are its own: the rest needs q, k, v
    // padded queries: attention output rows are zero (before out_proj adds its bias)
    Tensor q, k, v;
    mha.project(x, q, k, v);
    Tensor o = zero_padded_rows(mha.mechanism->forward(q, k, v, mask), mask);
    CHECK(max_abs_diff(o.select(0, 1).narrow(1, n - pad, pad), Tensor::zeros({2, pad, 4})) == 0.0);
    // the probe's matrix is what forward applies
    Tensor Av = matmul(A, v);
    CHECK(max_abs_diff(Av.select(0, 0), o.select(0, 0)) < 1e-4);
    CHECK(max_abs_diff(Av.select(0, 1).narrow(1, 0, n - pad), o.select(0, 1).narrow(1, 0, n - pad)) < 1e-4);
  }
}

TEST_CASE("registry: the shared tests cover every mechanism, each declaration is complete and consistent") {
  CHECK(kMechs == attention_names());  // the list the shared tests loop over is the registry's
  CHECK(kMechs.size() >= 7);
  for (const auto& s : attention_registry()) {
    INFO(s.name);
    CHECK(s.presets.count("tiny") == 1);  // the shared tests' setting
    CHECK(!s.summary.empty());
    CHECK((s.caps.causal || !s.caps.why_not_causal.empty()));
    const auto knobs = resolve_knobs(s, {});
    for (const auto& k : s.knobs) {
      INFO(k.name);
      CHECK(!k.help.empty());
      CHECK(knobs.count(k.name) == (k.optional ? 0u : 1u));
      // out of range and unknown knobs are refused, naming the option and the range
      const double bad = k.type == KnobType::flag || k.type == KnobType::choice ? 7.0 : k.lo - 1.0;
      if (!std::isinf(bad)) {
        try {
          resolve_knobs(s, {{k.name, bad}});
          FAIL("accepted");
        } catch (const std::invalid_argument& e) {
          CHECK(std::string(e.what()).find(k.option()) != std::string::npos);
          CHECK(std::string(e.what()).find(k.range()) != std::string::npos);
        }
      }
    }
    CHECK_THROWS_WITH_AS(resolve_knobs(s, {{"no_such_knob", 1}}), doctest::Contains("has no knob no_such_knob"),
                         std::invalid_argument);
  }
  CHECK_THROWS_WITH_AS(mechanism_spec("nope"), doctest::Contains("known: softmax"), std::invalid_argument);
}

namespace {
// A block-input mechanism of the kind DeltaNet or H3 are: it owns its value projection and a
// gate computed from x. out = sigmoid(x·g) * mean over valid tokens of (x W_v), per head.
class GatedMean : public AttentionMechanism {
 public:
  GatedMean(const AttentionOptions& o, Generator& gen) : H_(o.n_heads), d_(o.d_head) {
    const int64_t D = H_ * d_;
    wv = register_module("wv", std::make_shared<Linear>(D, D, gen));
    wg = register_module("wg", std::make_shared<Linear>(D, H_, gen));
  }
  std::string type_name() const override { return "GatedMean"; }
  Tensor forward_block(const Tensor& x, const Tensor& mask) override {
    const Tensor A = attention_matrix_block(x, mask);                          // (B, H, n, n)
    const int64_t B = x.size(0), n = x.size(1);
    Tensor v = wv->forward(x).view({B, n, H_, d_}).transpose(1, 2);           // (B, H, n, d)
    return mul(matmul(A, v), sigmoid(wg->forward(x)).transpose(1, 2).unsqueeze(-1));  // gate (B, H, n, 1)
  }
  Tensor attention_matrix_block(const Tensor& x, const Tensor& mask) override {
    const int64_t B = x.size(0), n = x.size(1);
    Tensor keep = mask.defined() ? logical_not(mask).to(x.dtype()) : Tensor::ones({B, n}, x.dtype());  // (B, n)
    Tensor w = div(keep, sum(keep, {-1}, true));                                // (B, n)
    return w.unsqueeze(1).unsqueeze(1).expand({B, H_, n, n}).contiguous();
  }
  std::shared_ptr<Linear> wv, wg;

 private:
  int64_t H_, d_;
};
}  // namespace

TEST_CASE("a block-input mechanism registered from outside: through MultiHeadAttention, the probe, gradients") {
  {
    MechanismSpec s;
    s.name = "test_gated_mean";
    s.summary = "a test of the block-input form";
    s.presets["tiny"] = {};
    s.caps = {.causal = false, .why_not_causal = "a test", .block_input = true};
    s.make = [](const AttentionOptions& o, Generator& g) { return std::make_shared<GatedMean>(o, g); };
    register_attention(s);
  }
  CHECK_THROWS_AS(register_attention(mechanism_spec("softmax")), std::logic_error);  // a name is taken once
  Generator g(8);
  MultiHeadAttention mha(8, opts("test_gated_mean"), g);
  CHECK(!mha.qkv);  // no q, k, v projection: the mechanism owns its own
  mha.to_(kFloat64);
  Tensor x = leaf({2, 5, 8}, 43, 0.5);
  Tensor mask = tail_mask(2, 5, 2);
  LayerNorm ln(8);
  ln.to_(kFloat64);
  Tensor y = mha.forward(x, mask, &ln);
  CHECK(y.shape() == Shape{2, 5, 8});
  Tensor A = probe_attention(mha, ln.forward(x), mask);
  CHECK(std::abs(A.at({1, 1, 0, 4})) == 0.0);  // padded key
  CHECK(A.at({1, 1, 0, 0}) == doctest::Approx(1.0 / 3));
  GradcheckOptions o;
  o.max_checks_per_input = 24;
  auto* gm = dynamic_cast<GatedMean*>(mha.mechanism.get());
  CHECK_GRAD([&](const V& v) { return mha.forward(v[0], mask, &ln); }, {x, gm->wv->weight, gm->wg->weight, mha.out_proj->weight}, o);
}

TEST_CASE("softmax attention: rows sum to 1, fused equals reference, fully padded rows are zero") {
  Generator g(6);
  AttentionOptions ref = opts("softmax");
  ref.knobs["fused"] = 0;
  MultiHeadAttention fused(8, opts("softmax"), g);
  Generator g2(6);
  MultiHeadAttention plain(8, ref, g2);
  Tensor x = randn({2, 9, 8}, g);
  Tensor mask = tail_mask(2, 9, 4);
  CHECK(max_abs_diff(fused.forward(x, mask), plain.forward(x, mask)) < 1e-5);
  AttentionStats st = attention_stats(probe_attention(fused, x, mask), mask);
  for (int64_t i = 0; i < 5; ++i) CHECK(st.row_sum.at({1, 1, i}) == doctest::Approx(1.0).epsilon(1e-5));
  CHECK(st.row_sum.at({1, 1, 8}) == 0.0);  // padded query row
  std::vector<bool> all(2 * 9, false);
  for (int j = 0; j < 9; ++j) all[9 + j] = true;
  Tensor full = Tensor::from_vector(all, {2, 9});
  Tensor y = fused.forward(x, full);
  for (double v : y.select(0, 1).to_vector()) CHECK(std::isfinite(v));
}

TEST_CASE("performer approaches softmax attention as features grow") {
  Generator g(7);
  Tensor q = mul(randn({1, 1, 32, 16}, g), 0.5), k = mul(randn({1, 1, 32, 16}, g), 0.5), v = randn({1, 1, 32, 16}, g);
  AttentionOptions so = opts("softmax", 1);
  so.d_head = 16;
  Tensor exact = make_attention(so, g)->forward(q, k, v, Tensor());
  double prev = 1e9;
  std::vector<double> errs;
  for (int64_t m : {16, 256, 4096}) {
    AttentionOptions po = opts("performer", 1);
    po.d_head = 16;
    po.knobs["features"] = (double)m;
    po.knobs["feature_seed"] = 11;
    double e = max_abs_diff(make_attention(po, g)->forward(q, k, v, Tensor()), exact);
    errs.push_back(e);
    prev = e;
  }
  INFO(errs[0] << " " << errs[1] << " " << errs[2]);
  CHECK(errs[2] < errs[0]);
  CHECK(errs[2] < 0.1);
  (void)prev;
}

TEST_CASE("attention stats: singular values and rank") {
  std::vector<double> a = {1, 2, 2, 4};  // rank 1
  auto sv = singular_values(a, 2, 2);
  CHECK(sv[0] == doctest::Approx(5.0));
  CHECK(std::abs(sv[1]) < 1e-12);
  Tensor A = Tensor::from_vector(std::vector<double>{0.5, 0.5, 0.5, 0.5}, {1, 1, 2, 2});
  AttentionStats st = attention_stats(A);
  CHECK(st.rank.at({0, 0}) == 1.0);
  CHECK(st.row_entropy.at({0, 0, 0}) == doctest::Approx(std::log(2.0)));
  CHECK(st.col_sum.at({0, 0, 1}) == doctest::Approx(1.0));
  CHECK(st.max_weight == doctest::Approx(0.5));
}

TEST_CASE("encoder: gradient check with mixed mechanisms per layer, dropout determinism") {
  Generator g(8);
  EncoderConfig cfg;
  cfg.depth = 2;
  cfg.d_model = 8;
  cfg.n_heads = 2;
  cfg.mlp_hidden = 16;
  cfg.attention = {opts("softmax"), opts("linear")};
  TransformerEncoder enc(cfg, g);
  enc.to_(kFloat64);
  Tensor x = leaf({2, 4, 8}, 81, 0.5);
  Tensor mask = tail_mask(2, 4, 1);
  GradcheckOptions o;
  o.max_checks_per_input = 16;
  CHECK_GRAD([&](const V& v) { return enc.forward(v[0], mask); }, {x, enc.layers[0]->attn->qkv->weight, enc.layers[1]->mlp->fc1->weight}, o);
  cfg.dropout = 0.1;
  auto run = [&]() {
    Generator gi(9);
    auto dg = std::make_shared<Generator>(10);
    TransformerEncoder e(cfg, gi, dg);
    Generator gx(11);
    return e.forward(randn({2, 4, 8}, gx), mask).to_vector();
  };
  CHECK(run() == run());
}

TEST_CASE("initialisers: xavier bounds, normal moments, zeros, performer redraw in training only") {
  Generator g(30);
  Tensor w = Tensor::zeros({64, 32});
  init::xavier_uniform_(w, g);
  const double a = std::sqrt(6.0 / (64 + 32));
  double mx = 0;
  for (double x : w.to_vector()) mx = std::max(mx, std::abs(x));
  CHECK(mx <= a);
  CHECK(mx > 0.9 * a);
  Tensor n = Tensor::zeros({200, 100});
  init::normal_(n, g, 0.0, 0.02);
  std::vector<double> v = n.to_vector();
  double s2 = 0;
  for (double x : v) s2 += x * x;
  CHECK(std::sqrt(s2 / v.size()) == doctest::Approx(0.02).epsilon(0.03));
  init::zeros_(n);
  CHECK(n.to_vector()[17] == 0.0);
  // PyTorch's Linear default, over a module tree: U(±1/sqrt(in)) for every Linear's weight and
  // bias, the other parameters untouched, the same bits from the same seed.
  Generator gm(31);
  MLP mlp(64, 128, gm);
  LayerNorm before(64);
  Generator r1(32), r2(32);
  CHECK(reset_linears_uniform_(mlp, r1) == 2);
  for (auto [lin, fan_in] : {std::pair{mlp.fc1, 64.0}, std::pair{mlp.fc2, 128.0}}) {
    const double bound = 1.0 / std::sqrt(fan_in);
    std::vector<double> wv = lin->weight.to_vector();
    double m = 0, sq = 0;
    for (double x : wv) m = std::max(m, std::abs(x)), sq += x * x;
    CHECK(m <= bound);
    CHECK(std::sqrt(sq / wv.size()) == doctest::Approx(bound / std::sqrt(3.0)).epsilon(0.05));
    double bm = 0;
    for (double x : lin->bias.to_vector()) bm = std::max(bm, std::abs(x));
    CHECK(bm <= bound);
    CHECK(bm > 0.5 * bound);  // no longer zero
  }
  MLP again(64, 128, gm);
  reset_linears_uniform_(again, r2);
  CHECK(max_abs_diff(again.fc2->weight, mlp.fc2->weight) == 0.0);
  AttentionOptions po = opts("performer");
  po.d_head = 4;
  po.knobs["redraw"] = 2;
  auto perf = make_attention(po, g);
  Tensor q = randn({1, 2, 5, 4}, g);
  Tensor f0 = perf->named_buffers()[0].second.clone();
  perf->eval();
  for (int i = 0; i < 3; ++i) perf->forward(q, q, q, Tensor());
  CHECK(max_abs_diff(perf->named_buffers()[0].second, f0) == 0.0);  // fixed at eval
  perf->train();
  for (int i = 0; i < 3; ++i) perf->forward(q, q, q, Tensor());
  CHECK(max_abs_diff(perf->named_buffers()[0].second, f0) > 0.0);  // redrawn every 2 training calls
}
