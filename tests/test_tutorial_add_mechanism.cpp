// The code of docs/tutorial_add_mechanism.md, "Add an attention mechanism": cosine attention,
// softmax over the cosine similarity of queries and keys times a fixed scale,
// A = softmax(s · cos(q_i, k_j)) (a form used by Swin Transformer V2, Liu et al. 2022). The
// tutorial shows the regions between the snippet markers verbatim (tests/tutorial_docs_test.sh).
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <lotgrad/lotgrad.h>
#include <lotgrad/models/trainer.h>
#include <sstream>

using namespace lotgrad;

// [snippet class]
namespace tutorial {
namespace {
using namespace lotgrad::nn;

// q / |q| over the last dim (B, H, n, d); eps keeps a zero row finite.
Tensor unit_rows(const Tensor& x) { return div(x, sqrt(add(sum(mul(x, x), {-1}, true), 1e-6))); }

class CosineAttention : public AttentionMechanism {
 public:
  explicit CosineAttention(const AttentionOptions& o) : scale_(o.get("cos_scale")), causal_(o.causal) {}
  std::string type_name() const override { return "CosineAttention(scale " + std::to_string(scale_) + ")"; }
  // q, k, v (B, H, n, d) -> (B, H, n, d): the fused softmax kernel on unit queries and keys,
  // so padding and the causal mask come for free and no n×n matrix is stored.
  Tensor forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) override {
    return scaled_dot_product_attention(unit_rows(q), unit_rows(k), v, mask, causal_, scale_);
  }
  // The (B, H, n, n) weights, for lotgrad probe, maps, inspect and report.
  Tensor attention_matrix(const Tensor& q, const Tensor& k, const Tensor& mask) override {
    return attention_weights(unit_rows(q), unit_rows(k), mask, causal_, /*window=*/0, scale_);
  }

 private:
  double scale_;
  bool causal_;
};
}  // namespace
// [end class]

// [snippet spec]
// Everything about the mechanism, declared once: the command line (--cos-scale), validation,
// presets, `lotgrad info` and the shared tests come from here.
nn::MechanismSpec cosine_mechanism() {
  nn::MechanismSpec s;
  s.name = "cosine";
  s.summary = "softmax of a scaled cosine similarity (Swin V2's attention); O(n²)";
  s.knobs = {{.name = "cos_scale", .type = nn::KnobType::real, .def = 10, .lo = 1e-3, .hi = 1e3,
              .help = "s in softmax(s · cos(q, k)): the largest logit gap is 2s"}};
  s.presets["tiny"] = {{"cos_scale", 5}};
  s.caps = {.causal = true};
  s.make = [](const nn::AttentionOptions& o, Generator&) { return std::make_shared<CosineAttention>(o); };
  return s;
}
}  // namespace tutorial
// [end spec]

// [snippet register]
// A mechanism inside the library gets one line X(cosine) in LOTGRAD_MECHANISMS
// (nn/attention_registry.cpp); a program or a test of its own registers it at run time.
const bool registered = [] {
  nn::register_attention(tutorial::cosine_mechanism());
  return true;
}();
// [end register]

// [snippet tests]
TEST_CASE("tutorial cosine attention: registered and refusing a bad knob by its option") {
  const auto names = nn::attention_names();
  CHECK(std::find(names.begin(), names.end(), "cosine") != names.end());
  nn::AttentionOptions o;
  o.name = "cosine";
  o.knobs = {{"cos_scale", 0.0}};
  Generator g(1);
  CHECK_THROWS_WITH_AS(nn::make_attention(o, g), doctest::Contains("--cos-scale"), std::invalid_argument);
}

TEST_CASE("tutorial cosine attention: forward is A v, rows sum to 1, padded keys get no weight") {
  Generator g(2);
  nn::AttentionOptions o;
  o.name = "cosine";
  o.n_heads = 2;
  o.d_head = 4;
  auto att = nn::make_attention(o, g);
  const Tensor q = randn({1, 2, 6, 4}, g), k = randn({1, 2, 6, 4}, g), v = randn({1, 2, 6, 4}, g);
  const Tensor mask = Tensor::from_vector(std::vector<double>{0, 0, 0, 0, 1, 1}, {1, 6}).to(kBool);  // 2 pads
  const Tensor A = att->attention_matrix(q, k, mask);
  CHECK(max(abs(sub(att->forward(q, k, v, mask), matmul(A, v)))).item() < 1e-5);
  CHECK(max(abs(sub(sum(A, {-1}), 1.0))).item() < 1e-5);
  CHECK(max(A.narrow(-1, 4, 2)).item() == 0.0);
  // bounded logits: no weight above e^{2s} / (e^{2s} + n_valid - 1)
  const double s = 10, bound = std::exp(2 * s) / (std::exp(2 * s) + 3);
  CHECK(max(A).item() <= bound + 1e-6);
}

TEST_CASE("tutorial cosine attention: a classifier trains with it like any built-in mechanism") {
  models::TrainConfig c;
  c.attention = "cosine";
  c.knobs = {{"cos_scale", 8}};
  c.min_len = 3, c.max_len = 12, c.gen_train = 64, c.gen_val = 16, c.gen_test = 16;
  c.d_model = 16, c.mlp = 16, c.steps = 3, c.batch = 8, c.quiet = true, c.overwrite = true;
  c.out_dir = (std::filesystem::temp_directory_path() / ("lotgrad_tutorial_cosine_" + std::to_string(::getpid()))).string();
  std::ostringstream log;
  const models::TrainResult r = models::train(c, log);
  CHECK(r.steps_done == 3);
  CHECK(std::isfinite(r.losses.back()));
  CHECK(models::stored_config(c.out_dir + "/best.ckpt").knobs.at("cos_scale") == 8);
  std::filesystem::remove_all(c.out_dir);
}
// [end tests]
