// The causal sequence models (models/decoder.h) and the sequence tasks' training loops
// (models/workload.h): causality end to end, logits at labelled positions only, a one-layer
// plain linear-attention regressor that holds one step of gradient descent exactly, and
// training runs of mqar, icl-regression and lm that learn, resume bit for bit and refuse bad
// settings clearly.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <lotgrad/lotgrad.h>
#include <sstream>

using namespace lotgrad;
namespace fs = std::filesystem;

namespace {
std::string tmpdir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("lotgrad_test_seq_" + std::to_string(::getpid()) + "_" + name);  // per process: concurrent suites do not collide
  fs::remove_all(p);
  return p.string();
}

nn::EncoderConfig blocks(const std::string& mech, int64_t depth, int64_t D, int64_t H, int64_t mlp) {
  nn::EncoderConfig e;
  e.depth = depth;
  e.d_model = D;
  e.n_heads = H;
  e.mlp_hidden = mlp;
  nn::AttentionOptions a;
  a.name = mech;
  a.n_heads = H;
  a.knobs = nn::mechanism_spec(mech).preset("tiny");
  a.causal = true;
  e.attention = {a};
  return e;
}

std::vector<std::string> causal_mechanisms() {
  std::vector<std::string> out;
  for (const auto& s : nn::attention_registry())
    if (s.caps.causal) out.push_back(s.name);
  return out;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector(), y = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}
}  // namespace

TEST_CASE("the decoder LM is causal end to end for every mechanism with a causal form") {
  REQUIRE(causal_mechanisms().size() >= 2);
  for (const auto& mech : causal_mechanisms()) {
    for (int64_t mlp : {0, 24}) {
      INFO(mech << " mlp " << mlp);
      models::DecoderConfig cfg;
      cfg.vocab = 11;
      cfg.max_len = 16;
      cfg.blocks = blocks(mech, 2, 16, 2, mlp);
      Generator g(1);
      models::DecoderLM lm(cfg, g);
      lm.eval();
      Tensor tok = randint(0, 11, {2, 13}, g);
      const Tensor ref = lm.forward(tok);  // (2, 13, 11)
      CHECK(ref.shape() == Shape{2, 13, 11});
      for (int64_t t : {0, 5, 11}) {
        Tensor changed = tok.clone();
        do  // redrawn while it equals the original (likely when few tokens follow t): nothing would move
          changed.narrow(1, t + 1, 13 - t - 1).copy_(randint(0, 11, {2, 13 - t - 1}, g));
        while (max_abs_diff(changed, tok) == 0.0);
        const Tensor out = lm.forward(changed);
        CHECK(max_abs_diff(out.narrow(1, 0, t + 1), ref.narrow(1, 0, t + 1)) < 1e-5);
        CHECK(max_abs_diff(out.narrow(1, t + 1, 13 - t - 1), ref.narrow(1, t + 1, 13 - t - 1)) > 1e-4);  // later ones move
      }
    }
  }
  // A mechanism without a causal form cannot build a decoder.
  models::DecoderConfig bad;
  bad.blocks = blocks("linear", 1, 8, 1, 0);
  bad.blocks.attention[0].causal = false;
  Generator g(0);
  CHECK_THROWS_WITH_AS(models::DecoderLM(bad, g), doctest::Contains("must be causal"), std::invalid_argument);
}

TEST_CASE("--mlp 0 and --norm 0: attention-only blocks without LayerNorms") {
  models::DecoderConfig cfg;
  cfg.vocab = 7;
  cfg.max_len = 8;
  cfg.blocks = blocks("linear", 2, 8, 2, 0);
  Generator g(0);
  models::DecoderLM a(cfg, g);
  bool mlp = false, ln = false;
  for (const auto& [name, p] : a.named_parameters()) mlp = mlp || name.find("mlp") != std::string::npos;
  CHECK_FALSE(mlp);
  cfg.blocks.norm = false;
  models::DecoderLM b(cfg, g);
  for (const auto& [name, p] : b.named_parameters()) ln = ln || name.find("ln") != std::string::npos;
  CHECK_FALSE(ln);
  CHECK_FALSE(b.final_ln);
}

TEST_CASE("labelled_logits: the head runs on labelled rows only, same loss and gradients as ignore_index") {
  models::DecoderConfig cfg;
  cfg.vocab = 9;
  cfg.max_len = 10;
  cfg.blocks = blocks("linear", 1, 8, 2, 16);
  Generator g(2);
  models::DecoderLM lm(cfg, g);
  Tensor tok = randint(0, 9, {3, 10}, g);
  std::vector<int64_t> tv(30, data::kIgnoreIndex);
  for (int i : {1, 4, 9, 13, 22, 29}) tv[(size_t)i] = (i * 7) % 9;
  const Tensor targets = Tensor::from_vector(tv, {3, 10});
  Tensor h = lm.hidden(tok);
  const models::LabelledLogits ll = models::labelled_logits(lm, h, targets);
  CHECK(ll.logits.shape() == Shape{6, 9});
  Tensor sparse = cross_entropy(ll.logits, ll.labels);
  sparse.backward();
  const Tensor g_sparse = lm.embed->weight.grad().clone();  // the tied head: embedding and output
  lm.zero_grad();
  Tensor dense = cross_entropy(lm.forward(tok).reshape({30, 9}), targets.reshape({30}), data::kIgnoreIndex);
  dense.backward();
  CHECK(sparse.item() == doctest::Approx(dense.item()).epsilon(1e-6));
  CHECK(max_abs_diff(g_sparse, lm.embed->weight.grad()) < 1e-6);
  CHECK_FALSE(lm.head);
  cfg.tie_embeddings = false;
  models::DecoderLM untied(cfg, g);
  REQUIRE(untied.head);
  CHECK(untied.forward(tok).shape() == Shape{3, 10, 9});
  // Every position labelled: no gather.
  const Tensor all = randint(0, 9, {3, 10}, g);
  CHECK(models::labelled_logits(lm, lm.hidden(tok), all).logits.shape() == Shape{30, 9});
}

TEST_CASE("one plain linear-attention layer holds one step of preconditioned GD exactly (paired layout)") {
  // Tokens [x_i; y_i] and a query [x; 0], d = 3: read-in identity, q = k = x, v = y, the read-out
  // c times the y slot: the prediction is c·xᵀΣ x_i y_i, data::pgd_predictions with omega = 1.
  const int64_t d = 3, n = 6, D = d + 1;
  models::RegressorConfig cfg;
  cfg.d_in = D;
  cfg.max_len = n + 1;
  cfg.pos = "none";
  cfg.blocks = blocks("linear", 1, D, 1, 0);
  cfg.blocks.norm = false;
  cfg.blocks.attention[0].knobs = {{"feature_map", 1}, {"normalize", 0}};
  Generator g(0);
  models::IclRegressor m(cfg, g);
  auto eye = [](int64_t r, int64_t c, std::vector<int64_t> ones) {
    std::vector<float> w((size_t)(r * c), 0.0f);
    for (int64_t i = 0; i < (int64_t)ones.size(); ++i) w[(size_t)(i * c + ones[(size_t)i])] = ones[(size_t)i] >= 0 ? 1.0f : 0.0f;
    return Tensor::from_vector(w, {r, c});
  };
  const double c = 0.37;
  NoGradGuard ng;
  m.read_in->weight.copy_(eye(D, D, {0, 1, 2, 3}));
  m.read_in->bias.zero_();
  auto& attn = *m.blocks->layers[0]->attn;
  std::vector<float> qkv((size_t)(3 * D * D), 0.0f);
  for (int64_t i = 0; i < d; ++i) qkv[(size_t)(i * D + i)] = qkv[(size_t)((D + i) * D + i)] = 1.0f;  // q, k: x
  qkv[(size_t)((2 * D + d) * D + d)] = 1.0f;                                                          // v: y
  attn.qkv->weight.copy_(Tensor::from_vector(qkv, {3 * D, D}));
  attn.qkv->bias.zero_();
  attn.out_proj->weight.copy_(eye(D, D, {0, 1, 2, 3}));
  attn.out_proj->bias.zero_();
  std::vector<float> ro((size_t)D, 0.0f);
  ro[(size_t)d] = (float)c;
  m.read_out->weight.copy_(Tensor::from_vector(ro, {1, D}));
  m.read_out->bias.zero_();

  data::IclRegressionOptions o;
  o.dim = d;
  o.points = n + 1;
  o.seed = 4;
  for (int64_t k = 0; k < 3; ++k) {
    const data::IclPrompt p = data::icl_prompt(o, k);
    std::vector<float> tok((size_t)((n + 1) * D), 0.0f);
    for (int64_t i = 0; i <= n; ++i) {
      for (int64_t j = 0; j < d; ++j) tok[(size_t)(i * D + j)] = (float)p.x(i)[j];
      if (i < n) tok[(size_t)(i * D + d)] = (float)p.ys[(size_t)i];
    }
    const double got = m.forward(Tensor::from_vector(tok, {1, n + 1, D})).to_vector()[(size_t)n];
    const double want = data::pgd_predictions(p, std::vector<double>((size_t)(n + 1), 1.0), c)[(size_t)n];
    CHECK(got == doctest::Approx(want).epsilon(1e-4));
  }
}

namespace {
models::TrainConfig tiny_seq(const std::string& task, const std::string& out, const std::string& mech = "linear") {
  models::TrainConfig c;
  c.task = task;
  c.attention = mech;
  c.out_dir = out;
  c.quiet = true;
  c.threads = 2;
  c.depth = 1;
  c.d_model = 16;
  c.heads = 2;
  c.mlp = 0;
  c.dropout = 0.1;  // the resume test restores its generator
  c.batch = 8;
  c.steps = 10;
  c.eval_every = 5;
  c.checkpoint_every = 4;
  c.gen_train = 200;
  c.gen_val = 24;
  c.gen_test = 24;
  c.lr = 3e-3;
  c.seed = 5;
  if (task == "mqar") {
    c.vocab = 64;
    c.seq_len = 32;
    c.kv_pairs = 4;
  } else if (task == "icl-regression") {
    c.dim = 4;
    c.points = 8;
    c.dropout = 0;
  } else {
    c.seq_len = 16;
  }
  return c;
}
std::string text_file(const std::string& name, const std::string& text) {
  const std::string p = tmpdir(name);
  std::ofstream(p) << text;
  return p;
}
std::string sample_text() {
  std::string t;
  for (int i = 0; i < 400; ++i) t += "the cat sat on the mat " + std::to_string(i % 7) + (i % 5 == 4 ? "\n" : " ");
  return t;
}
}  // namespace

TEST_CASE("mqar, icl-regression and lm: a killed run resumes with bit-identical losses") {
  const std::string corpus = text_file("corpus.txt", sample_text());
  for (const std::string task : {"mqar", "icl-regression", "lm"}) {
    INFO(task);
    std::ostringstream log;
    models::TrainConfig full = tiny_seq(task, tmpdir("full_" + task));
    if (task == "lm") full.data_dir = corpus;
    if (task == "icl-regression") full.curriculum = 3;  // the curriculum's position survives too
    models::TrainResult ref = models::train(full, log);
    REQUIRE(ref.losses.size() == 10);
    models::TrainConfig part = full;
    part.out_dir = tmpdir("part_" + task);
    part.stop_after = 6;  // the last checkpoint is at step 4
    models::train(part, log);
    part.stop_after = 0;
    part.resume = true;
    models::TrainResult rest = models::train(part, log);
    REQUIRE(rest.losses.size() == 6);
    for (int i = 0; i < 6; ++i) CHECK(rest.losses[(size_t)i] == ref.losses[(size_t)(4 + i)]);
    CHECK(rest.test_at_best == ref.test_at_best);
    // eval from the checkpoint alone gives the run's own figure
    const models::TrainConfig stored = models::stored_config(part.out_dir + "/best.ckpt");
    models::TrainConfig ev = stored;
    ev.quiet = true;
    ev.threads = 2;
    CHECK(models::evaluate_checkpoint(ev, part.out_dir + "/best.ckpt", "test", log) == rest.test_at_best);
  }
}

TEST_CASE("the sequence tasks learn: lm well below the uniform guess, icl-regression well below the zero predictor") {
  std::ostringstream log;
  {
    models::TrainConfig c = tiny_seq("icl-regression", tmpdir("learn_icl"));
    c.steps = 200;
    c.batch = 32;
    c.eval_every = 200;
    c.d_model = 16;
    c.layout = "paired";
    c.pos = "none";
    c.norm = false;
    c.lr = 1e-2;
    c.init = "torch";  // from N(0, 0.02²) the product of five small maps is a long plateau
    c.gen_val = c.gen_test = 200;
    const models::TrainResult r = models::train(c, log);
    // The zero predictor scores E y² = d = 4; one step of GD from 8 examples at best
    // d(d + 1)/(n + d + 1) = 1.54.
    MESSAGE("icl-regression test mse " << r.test_at_best << " (least squares " << r.baseline_test << ")");
    CHECK(r.test_at_best < 2.5);
  }
  {
    models::TrainConfig c = tiny_seq("lm", tmpdir("learn_lm"));
    c.data_dir = text_file("corpus_learn.txt", sample_text());
    c.steps = 150;
    c.batch = 16;
    c.eval_every = 150;
    c.d_model = 32;
    c.mlp = 64;
    c.dropout = 0;
    const models::TrainResult r = models::train(c, log);
    MESSAGE("lm test bpc " << r.test_at_best << " (uniform " << r.baseline_test << ")");
    CHECK(r.test_at_best < 0.6 * r.baseline_test);
  }
}

// --x-std scales every x of the same draws, so y and the least-squares error on the same prompts
// scale exactly: --x-std 0 (1/sqrt(d) = 0.5 at d 4) gives a quarter of --x-std 1's.
TEST_CASE("icl regression: --x-std scales the inputs, 0 meaning 1/sqrt(d)") {
  std::ostringstream log;
  auto least_squares = [&](double x_std) {
    models::TrainConfig c = tiny_seq("icl-regression", tmpdir("xstd"));
    c.steps = 1;
    c.eval_every = 1;
    c.dim = 4;
    c.points = 3;  // fewer points than d: least squares cannot be exact
    c.x_std = x_std;
    c.overwrite = true;
    return models::train(c, log).baseline_test;
  };
  const double one = least_squares(1.0), zero = least_squares(0.0), half = least_squares(0.5);
  CHECK(one > 0.5);
  CHECK(zero == doctest::Approx(one / 4).epsilon(1e-5));
  CHECK(half == doctest::Approx(zero).epsilon(1e-12));
}

TEST_CASE("sequence tasks refuse bad settings, naming the option and the values") {
  auto refused = [](models::TrainConfig c, const std::string& what) {
    INFO(what);
    CHECK_THROWS_WITH_AS(models::validate(c), doctest::Contains(what.c_str()), std::invalid_argument);
  };
  models::TrainConfig m = tiny_seq("mqar", tmpdir("refuse"));
  models::TrainConfig v = m;
  v.vocab = 32;
  refused(v, "--vocab 32 and --seq-len 32");
  v = m;
  v.kv_pairs = 9;
  refused(v, "--kv-pairs 9 and --seq-len 32");
  v = m;
  v.seq_len = 31;
  refused(v, "--seq-len 31");
  v = m;
  v.attention = "lotformer";
  refused(v, "trains a causal model, but lotformer attention has no causal form");
  v = m;
  v.pos = "2d";
  refused(v, "--pos 2d");
  models::TrainConfig l = tiny_seq("listops", tmpdir("refuse_l"));
  l.task = "listops";
  l.pos = "none";
  refused(l, "--pos none");
  models::TrainConfig i = tiny_seq("icl-regression", tmpdir("refuse_i"));
  i.curriculum = 5;
  i.data_dir = "/nowhere";
  refused(i, "--curriculum 5 and --data /nowhere");
  models::TrainConfig ip = tiny_seq("icl-regression", tmpdir("refuse_ip"));
  ip.layout = "paired";
  ip.x_std = 0.25;
  refused(ip, "--layout paired and --x-std 0.25");
  // d < 1 and a bad text file are refused by the declared range and by the reader
  CHECK_THROWS_WITH_AS(models::config_field("dim")->set(i, "0"), doctest::Contains("--dim"), std::invalid_argument);
  std::ostringstream log;
  models::TrainConfig lm = tiny_seq("lm", tmpdir("refuse_lm"));
  lm.data_dir = text_file("empty.txt", "");
  CHECK_THROWS_WITH_AS(models::train(lm, log), doctest::Contains("empty.txt"), std::invalid_argument);
  lm.data_dir = text_file("short.txt", "too short");
  CHECK_THROWS_AS(models::train(lm, log), std::invalid_argument);
  std::string binary = "abc";
  binary += '\0';
  binary += "def";
  lm.data_dir = text_file("binary.txt", binary);
  CHECK_THROWS_WITH_AS(models::train(lm, log), doctest::Contains("binary.txt"), std::invalid_argument);
}
