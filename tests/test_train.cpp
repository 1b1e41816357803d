// The training loop: a tiny run learns, a killed run resumes with bit-identical losses,
// checkpoints are atomic and usable, and the metrics log is JSON lines.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <lotgrad/lotgrad.h>
#include <sstream>

#include "support/same_bits.h"

using namespace lotgrad;
namespace fs = std::filesystem;

namespace {
models::TrainConfig tiny(const std::string& out, const std::string& attention) {
  models::TrainConfig c;
  c.task = "listops";
  c.min_len = 3;
  c.max_len = 12;
  c.gen_train = 3000;
  c.gen_val = 300;
  c.gen_test = 300;
  c.attention = attention;
  c.d_model = 32;
  c.mlp = 64;
  c.dropout = 0.1;  // exercised by the resume test: its generator state must be restored
  c.lr = 3e-3;
  c.batch = 32;
  c.steps = 300;
  c.eval_every = 100;
  c.checkpoint_every = 100;
  c.out_dir = out;
  c.quiet = true;
  c.threads = 2;
  c.seed = 3;
  return c;
}

// A run of `steps` steps that evaluates and checkpoints every `every` steps.
void set_steps(models::TrainConfig& c, int64_t steps, int64_t every) {
  c.steps = steps;
  c.eval_every = every;
  c.checkpoint_every = every;
}
std::string tmpdir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("lotgrad_test_train_" + std::to_string(::getpid()) + "_" + name);  // per process: concurrent suites do not collide
  fs::remove_all(p);
  return p.string();
}
}  // namespace

TEST_CASE("packing masked tokens out changes nothing but the cost (softmax, LOTFormer, mean and CLS pooling, 1-D and 2-D positions)") {
  // Interior masked tokens (LRA's black pixels): the packed batch is a third shorter.
  const int64_t B = 3, n = 24;
  Generator tg(5);
  Tensor tokens = randint(1, 16, {B, n}, tg);
  Tensor mask = Tensor::zeros({B, n}, kBool);
  bool* mp = mask.data_ptr<bool>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < n; ++i) mp[b * n + i] = (i * 7 + b * 3) % 3 == 0 || (b == 2 && i >= 12);
  for (std::string mech : {"softmax", "lotformer"})
    for (std::string pooling : {"mean", "cls"})
    for (int64_t grid : {0, 6}) {
      if (mech == "lotformer" && grid) continue;
      INFO(mech, " pooling ", pooling, " grid width ", grid);
      models::ClassifierConfig c;
      c.vocab = 16;
      c.max_len = n + 1;
      c.num_classes = 5;
      c.pooling = pooling;
      c.pos_grid_width = grid;  // 2-D positions: a 6-wide image of 4 rows
      c.encoder.d_model = 16;
      c.encoder.n_heads = 2;
      c.encoder.mlp_hidden = 32;
      nn::AttentionOptions a;
      a.name = mech;
      a.n_heads = 2;
      if (mech == "lotformer") a.knobs = {{"half_steps", 300}};
      c.encoder.attention = {a};
      Generator g1(9), g2(9);
      models::SequenceClassifier plain(c, g1);
      c.pack = true;
      models::SequenceClassifier packed(c, g2);
      plain.eval();
      packed.eval();
      const std::vector<double> want = plain.forward(tokens, mask).to_vector(), got = packed.forward(tokens, mask).to_vector();
      REQUIRE(got.size() == want.size());
      for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-4).scale(1.0));
      // Gradients reach the position table through the gathered rows.
      packed.train();
      Tensor loss = cross_entropy(packed.forward(tokens, mask), Tensor::from_vector(std::vector<int64_t>{0, 1, 2}, {B}));
      loss.backward();
      CHECK((grid ? packed.pos_grid->row.grad() : packed.pos->weight.grad()).defined());
    }
}

TEST_CASE("inspect: a trained LOTFormer obeys its weight bound and is doubly stochastic, softmax is not") {
  for (std::string mech : {"lotformer", "softmax"}) {
    INFO(mech);
    models::TrainConfig c = tiny(tmpdir("inspect_" + mech), mech);
    c.steps = 40;
    c.eval_every = 40;
    c.gen_train = 600;
    c.gen_val = 50;
    c.gen_test = 50;
    if (mech == "lotformer") c.knobs = {{"learn_masses", 1}};
    std::ostringstream log;
    models::train(c, log);
    const auto rows = models::inspect_checkpoint(c, c.out_dir + "/best.ckpt", "val", 8, log);
    REQUIRE(rows.size() == (size_t)(c.depth * c.heads));
    for (const auto& r : rows) {
      INFO("layer ", r.layer, " head ", r.head);
      CHECK(r.n > 3);
      CHECK(r.row_max <= r.max_weight + 1e-12);
      CHECK(r.entropy > 0);
      CHECK(r.entropy <= 1 + 1e-9);
      // Token weights times n are column sums: each row gives at most 1 in all.
      CHECK(r.first_token > 0);
      CHECK(r.second_token > 0);
      CHECK(r.first_token + r.second_token <= r.n + 1e-9);
      if (mech == "lotformer") {
        CHECK(r.first_token == doctest::Approx(1.0).epsilon(1e-3));  // doubly stochastic: every column sums to 1
        CHECK(r.second_token == doctest::Approx(1.0).epsilon(1e-3));
        CHECK(r.bound > 0);
        CHECK(r.bound_used > 0);
        CHECK(r.bound_used <= 1 + 1e-6);  // A_ij <= 1 / (n min b) in every example (docs/lotformer.md §9)
        CHECK(r.col_dev < 1e-3);                       // columns sum to 1: mean pooling returns mean(V)
        CHECK(r.row_dev < 1e-3);                       // and rows
      } else {
        CHECK(r.bound == 0);
        CHECK(r.col_dev > 1e-3);  // softmax rows sum to 1, its columns do not
        CHECK(r.row_dev < 1e-5);
      }
    }
  }
  // Sinkhorn stopped after one half-step that ends on the columns: the columns still sum to 1,
  // the rows do not, and inspect says so.
  models::TrainConfig c = tiny(tmpdir("inspect_rows"), "lotformer");
  c.steps = 4;
  c.eval_every = 4;
  c.knobs = {{"half_steps", 1}, {"last", 1}};
  std::ostringstream log;
  models::train(c, log);
  for (const auto& r : models::inspect_checkpoint(c, c.out_dir + "/best.ckpt", "val", 4, log)) {
    CHECK(r.col_dev < 1e-3);
    CHECK(r.row_dev > 1e-2);
  }
}

TEST_CASE("a tiny ListOps run learns well above the majority class") {
  std::ostringstream log;
  models::TrainConfig c = tiny(tmpdir("learn"), "softmax");
  c.dropout = 0.0;
  models::TrainResult r = models::train(c, log);
  INFO(r.summary);
  CHECK(r.steps_done == 300);
  CHECK(r.test_at_best > r.baseline_test + 0.12);
  CHECK(r.losses.back() < r.losses.front());
  CHECK(fs::exists(c.out_dir + "/best.ckpt"));
  // the best checkpoint evaluates to the reported test accuracy
  CHECK(models::evaluate_checkpoint(c, c.out_dir + "/best.ckpt", "test", log) == doctest::Approx(r.test_at_best));
  // metrics: JSON lines with steps and dev accuracy
  std::ifstream m(c.out_dir + "/metrics.jsonl");
  std::string line;
  int lines = 0, evals = 0;
  while (std::getline(m, line)) {
    ++lines;
    CHECK(line.front() == '{');
    CHECK(line.back() == '}');
    evals += line.find("dev_acc") != std::string::npos;
  }
  CHECK(lines > 10);
  CHECK(evals == 3);
}

TEST_CASE("a killed run resumes with bit-identical losses") {
  for (const std::string att : {"softmax", "lotformer"}) {
    INFO(att);
    std::ostringstream log;
    models::TrainConfig full = tiny(tmpdir("full_" + att), att);
    full.steps = 12;
    full.checkpoint_every = 4;
    full.eval_every = 6;
    if (att == "lotformer") full.knobs = {{"half_steps", 9}};
    models::TrainResult ref = models::train(full, log);
    REQUIRE(ref.losses.size() == 12);

    models::TrainConfig part = full;
    part.out_dir = tmpdir("part_" + att);
    part.stop_after = 7;  // "killed" after step 7: the last checkpoint is at step 4
    models::TrainResult first = models::train(part, log);
    CHECK(first.steps_done == 7);
    // a stopped run reports its best dev so far, and no test figure
    CHECK(first.summary.find("stopped at step 7 of 12, best dev") != std::string::npos);
    CHECK(first.summary.find("test") == std::string::npos);
    for (int i = 0; i < 7; ++i) CHECK(first.losses[i] == ref.losses[i]);
    part.stop_after = 0;
    part.resume = true;
    models::TrainResult rest = models::train(part, log);
    REQUIRE(rest.losses.size() == 8);  // steps 5..12
    for (int i = 0; i < 8; ++i) CHECK(rest.losses[i] == ref.losses[4 + i]);
    CHECK(rest.test_at_best == ref.test_at_best);
    CHECK(rest.best_step == ref.best_step);
    CHECK(rest.best_dev == ref.best_dev);  // stored at full precision
    // no temporary files left behind
    for (auto& e : fs::directory_iterator(part.out_dir)) CHECK(e.path().string().find(".tmp") == std::string::npos);
  }
}

TEST_CASE("resume refuses a checkpoint from another run, a corrupt checkpoint is a clear error") {
  std::ostringstream log;
  models::TrainConfig c = tiny(tmpdir("other"), "softmax");
  c.steps = 4;
  c.checkpoint_every = 2;
  models::train(c, log);
  models::TrainConfig d = c;
  d.attention = "linear";
  d.resume = true;
  CHECK_THROWS_WITH_AS(models::train(d, log), doctest::Contains("--attention linear contradicts"), std::invalid_argument);
  for (const char* name : {"/last.ckpt", "/prev.ckpt"}) {  // truncate the checkpoint and its fallback (test_run_dir.cpp)
    std::string path = c.out_dir + name;
    auto size = fs::file_size(path);
    fs::resize_file(path, size / 2);
  }
  c.resume = true;
  CHECK_THROWS_AS(models::train(c, log), IOError);
}

TEST_CASE("a run remembers its settings: config.json, checkpoints, eval from the checkpoint alone, refusals") {
  std::ostringstream log;
  models::TrainConfig c = tiny(tmpdir("remember"), "lotformer");
  set_steps(c, 4, 2);
  c.knobs = {{"half_steps", 9}};
  const models::TrainResult r = models::train(c, log);
  // config.json and both checkpoints hold the whole configuration, knobs resolved
  const std::string best = c.out_dir + "/best.ckpt";
  for (const std::string& where : {c.out_dir + "/last.ckpt", best}) {
    INFO(where);
    const models::TrainConfig s = models::stored_config(where);
    for (const auto& f : models::config_fields())
      if (f.role != models::Role::free && f.option != "no-preset") CHECK(f.get(s) == f.get(c));
    CHECK(models::effective_knobs(s) == models::effective_knobs(c));
    CHECK(s.knobs.at("half_steps") == 9);
    CHECK(s.knobs.at("r") == nn::mechanism_spec("lotformer").preset("listops").at("r"));  // the preset, stored resolved
  }
  const models::TrainConfig j = models::config_from_json(read_file(c.out_dir + "/config.json"), "config.json");
  CHECK(models::config_to_json(j) == models::config_to_json(c));
  // eval needs nothing but the checkpoint; a contradicting option is refused, naming both values
  const models::TrainConfig stored = models::stored_config(best);
  CHECK(models::evaluate_checkpoint(stored, best, "test", log) == doctest::Approx(r.test_at_best));
  CHECK_THROWS_WITH_AS(models::merge_given(stored, {{"seed", "7"}}, false, {}, best),
                       doctest::Contains("--seed 7 contradicts"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(models::merge_given(stored, {{"seed", "7"}}, false, {}, best), doctest::Contains("seed is 3"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(models::merge_given(stored, {{"half-steps", "10"}}, false, {}, best),
                       doctest::Contains("half_steps is 9"), std::invalid_argument);
  CHECK(models::merge_given(stored, {{"seed", "3"}, {"threads", "1"}}, false, {}, best).threads == 1);
  // lr alters the run: refused on resume unless --override
  CHECK_THROWS_WITH_AS(models::merge_given(stored, {{"lr", "0.1"}}, false, {}, best), doctest::Contains("--override"),
                       std::invalid_argument);
  CHECK(models::merge_given(stored, {{"lr", "0.1"}}, true, {}, best).lr == 0.1);
  // a new run into a directory that holds checkpoints is refused; --overwrite replaces it
  CHECK_THROWS_WITH_AS(models::train(c, log), doctest::Contains("already holds a run's checkpoints"), std::invalid_argument);
  models::TrainConfig o = c;
  o.overwrite = true;
  CHECK(models::train(o, log).steps_done == 4);
  // --resume with nothing to resume says so
  models::TrainConfig nothing = c;
  nothing.out_dir = tmpdir("remember_empty");
  nothing.resume = true;
  CHECK_THROWS_WITH_AS(models::train(nothing, log), doctest::Contains("nothing to resume"), std::invalid_argument);
}

TEST_CASE("per-layer mixing: --layer-attention gives layers their own mechanism, knobs go where they are declared") {
  models::TrainConfig c = tiny(tmpdir("layer_mix"), "lotformer");
  c.layer_attention = "1:window";
  CHECK(models::layer_mechanisms(c) == std::vector<std::string>{"lotformer", "window"});
  CHECK(models::run_mechanisms(c) == std::vector<std::string>{"lotformer", "window"});
  c.depth = 3;
  c.layer_attention = "2:softmax,0:window";
  CHECK(models::layer_mechanisms(c) == std::vector<std::string>{"window", "lotformer", "softmax"});
  c.layer_attention = "";
  CHECK(models::layer_mechanisms(c) == std::vector<std::string>(3, "lotformer"));
  // malformed lists name the option and the item
  for (const auto& [text, says] : std::vector<std::pair<std::string, std::string>>{
           {"1softmax", "\"1softmax\" is not LAYER:MECHANISM"}, {"a:softmax", "\"a:softmax\" is not"},
           {"1:window,", "\"\" is not"}, {"3:softmax", "layer 3 is outside [0, 2] (--depth 3)"},
           {"1:window,1:softmax", "layer 1 is named twice"}, {"1:foo", "unknown attention mechanism \"foo\""}}) {
    INFO(text);
    c.layer_attention = text;
    CHECK_THROWS_WITH_AS(models::validate(c), doctest::Contains(("--layer-attention " + text).c_str()), std::invalid_argument);
    CHECK_THROWS_WITH_AS(models::validate(c), doctest::Contains(says.c_str()), std::invalid_argument);
  }
  // each layer takes the knobs its mechanism declares; one that no layer declares is refused
  c.depth = 2;
  c = models::apply_given(c, {{"attention", "lotformer"}, {"layer-attention", "1:window"}, {"window", "5"}, {"r", "3"}});
  const std::vector<nn::AttentionOptions> opts = models::encoder_config(c).attention;
  REQUIRE(opts.size() == 2);
  CHECK(opts[0].name == "lotformer");
  CHECK(opts[0].knobs.at("r") == 3);
  CHECK(opts[0].knobs.count("window") == 0);
  CHECK(opts[1].name == "window");
  CHECK(opts[1].knobs.at("window") == 5);
  CHECK(opts[1].knobs.count("r") == 0);
  CHECK_THROWS_WITH_AS(models::apply_given(c, {{"softmax-window", "3"}}),
                       doctest::Contains("lotformer and window attention has no knob softmax_window"), std::invalid_argument);
  // lotformer's no-decay parameters stay out of weight decay when only a mixed-in layer has them
  models::TrainConfig w = c;
  w.attention = "window";
  w.layer_attention = "0:lotformer";
  w.knobs = {};
  const std::vector<std::string> nd = models::no_decay_names(w);
  for (const auto& name : nn::mechanism_spec("lotformer").no_decay)
    CHECK(std::find(nd.begin(), nd.end(), name) != nd.end());
  // a knob two mechanisms declare takes one value: differing presets are refused until it is given
  models::TrainConfig s = c;
  s.layer_attention = "1:sinkformer";
  s.knobs = {};
  CHECK_THROWS_WITH_AS(models::validate(s), doctest::Contains("--eps (lotformer 0.1, sinkformer 1)"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(models::validate(s), doctest::Contains("--half-steps (lotformer 50, sinkformer 3)"), std::invalid_argument);
  s.knobs = {{"eps", 0.5}, {"half_steps", 5}, {"grad", 0}};
  CHECK_NOTHROW(models::validate(s));
  // a causal task refuses a mixed-in mechanism without a causal form, naming it
  models::TrainConfig q = c;
  q.task = "mqar";
  q.attention = "softmax";
  q.layer_attention = "1:lotformer";
  q.knobs = {};
  CHECK_THROWS_WITH_AS(models::validate(q), doctest::Contains("lotformer attention has no causal form"), std::invalid_argument);
  // trained, stored and read back: layer 0 is LOTFormer (bounded, doubly stochastic), layer 1 softmax
  models::TrainConfig t = tiny(tmpdir("layer_mix_run"), "lotformer");
  set_steps(t, 6, 3);
  t.layer_attention = "1:softmax";
  t.quiet = false;  // the model line names both mechanisms
  std::ostringstream log;
  models::train(t, log);
  CHECK(log.str().find("attention lotformer, softmax (") != std::string::npos);
  const models::TrainConfig stored = models::stored_config(t.out_dir + "/last.ckpt");
  CHECK(stored.layer_attention == "1:softmax");
  CHECK(models::effective_knobs(stored) == models::effective_knobs(t));
  CHECK_THROWS_WITH_AS(models::merge_given(stored, {{"layer-attention", "0:softmax"}}, true, {}, "last.ckpt"),
                       doctest::Contains("layer-attention is 1:softmax"), std::invalid_argument);
  const auto rows = models::inspect_checkpoint(stored, t.out_dir + "/best.ckpt", "val", 4, log);
  REQUIRE(rows.size() == 4);
  for (const auto& r : rows) {
    INFO("layer ", r.layer, " head ", r.head);
    CHECK(r.mechanism == (r.layer == 0 ? "lotformer" : "softmax"));
    if (r.layer == 0) {
      CHECK(r.bound > 0);
      CHECK(r.col_dev < 1e-3);
    } else {
      CHECK(r.bound == 0);
      CHECK(r.col_dev > 1e-3);
    }
  }
}

TEST_CASE("--init-from starts from a checkpoint's weights with a fresh optimiser, a mismatch names the file") {
  std::ostringstream log;
  models::TrainConfig a = tiny(tmpdir("init_a"), "softmax");
  set_steps(a, 30, 10);
  models::train(a, log);
  const std::string from = a.out_dir + "/last.ckpt";
  // The model tensors of two checkpoints, bitwise equal or not.
  auto same_model = [](const std::string& p, const std::string& q) {
    Checkpoint x = load_checkpoint(p), y = load_checkpoint(q);
    int64_t compared = 0;
    for (const auto& [name, t] : x.tensors) {
      if (name.rfind("model.", 0) != 0) continue;
      if (!y.contains(name) || !testing::same_bits(t, y.at(name))) return false;
      ++compared;
    }
    return compared > 10;
  };

  // lr 0: the weights stay exactly those loaded, so the run's checkpoint equals the source and
  // its test accuracy is the source checkpoint's.
  models::TrainConfig b = a;
  b.out_dir = tmpdir("init_b");
  b.init_from = from;
  b.lr = 0;
  set_steps(b, 2, 2);
  models::TrainResult rb = models::train(b, log);
  CHECK(same_model(from, b.out_dir + "/last.ckpt"));
  CHECK(rb.test_at_best == doctest::Approx(models::evaluate_checkpoint(a, from, "test", log)));
  CHECK(rb.steps_done == 2);  // the step count starts at 0, not at the source's 30

  // Control: the same run without --init-from starts from the seed's initialisation.
  models::TrainConfig c = b;
  c.out_dir = tmpdir("init_c");
  c.init_from.clear();
  models::train(c, log);
  CHECK_FALSE(same_model(from, c.out_dir + "/last.ckpt"));

  // A model of another shape: the error names the checkpoint.
  models::TrainConfig d = b;
  d.out_dir = tmpdir("init_d");
  d.d_model = 16;
  try {
    models::train(d, log);
    FAIL("a mismatched --init-from was accepted");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find(from) != std::string::npos);
  }

  // --resume continues that run; longer, with --override (without it the change is refused,
  // naming the option); --init-from is not read again.
  models::TrainConfig e = b;
  e.resume = true;
  e.steps = 4;
  CHECK_THROWS_WITH_AS(models::train(e, log), doctest::Contains("--steps 4 contradicts"), std::invalid_argument);
  e.override_run = true;
  e.init_from = b.out_dir + "/no_such.ckpt";
  models::TrainResult re = models::train(e, log);
  CHECK(re.losses.size() == 2);
}

TEST_CASE("--max-pos: a curriculum from short to long ListOps keeps one position table") {
  std::ostringstream log;
  models::TrainConfig a = tiny(tmpdir("maxpos_a"), "softmax");
  set_steps(a, 10, 10);
  a.max_positions = 40;  // the short stage (lengths < 12) sizes its table for the long one
  models::train(a, log);
  const Checkpoint ck = load_checkpoint(a.out_dir + "/last.ckpt");
  CHECK(ck.at("model.pos.weight").size(0) == 42);  // 40 tokens, + 1 for a CLS slot, + 1 (max_len)

  models::TrainConfig b = a;  // the long stage: lengths 12..39, from the short stage's weights
  b.out_dir = tmpdir("maxpos_b");
  b.min_len = 12;
  b.max_len = 40;
  b.init_from = a.out_dir + "/last.ckpt";
  models::TrainResult rb = models::train(b, log);
  CHECK(rb.steps_done == 10);
  CHECK(load_checkpoint(b.out_dir + "/last.ckpt").at("model.pos.weight").size(0) == 42);

  // Without --max-pos the short stage's table is too small for the long data: refused, named.
  models::TrainConfig c = a;
  c.out_dir = tmpdir("maxpos_c");
  c.max_positions = 0;
  models::train(c, log);
  models::TrainConfig d = b;
  d.out_dir = tmpdir("maxpos_d");
  d.init_from = c.out_dir + "/last.ckpt";
  CHECK_THROWS_WITH_AS(models::train(d, log), doctest::Contains("pos.weight"), std::invalid_argument);

  // A table shorter than the data is an error that names the option and the longest sequence.
  models::TrainConfig e = b;
  e.out_dir = tmpdir("maxpos_e");
  e.init_from.clear();
  e.max_positions = 20;
  CHECK_THROWS_WITH_AS(models::train(e, log), doctest::Contains("--max-pos 20 is shorter"), std::invalid_argument);
}

TEST_CASE("progress: a redrawn line clears what a longer previous line left, plain lines elsewhere") {
  std::ostringstream tty, plain;
  models::Progress p(tty, /*tty=*/true, /*quiet=*/false), q(plain, /*tty=*/false, /*quiet=*/false);
  p.step(1, 10, "ETA 5m37s and a long tail");
  p.step(2, 10, "ETA 5m3s");
  const std::string s = tty.str();
  const size_t second = s.rfind('\r');
  const std::string last = s.substr(second + 1);
  CHECK(last.size() == s.substr(1, second - 1).size());  // as wide as the line before: the tail is blanked
  CHECK(last.find("ETA 5m3s ") != std::string::npos);
  CHECK(last.find("tail") == std::string::npos);
  p.eval("eval (dev)", 64, 1000);
  CHECK(tty.str().find("eval (dev) 64/1000 examples") != std::string::npos);
  p.line("eval step 2: dev acc 0.5");
  CHECK(tty.str().substr(tty.str().size() - 25) == "eval step 2: dev acc 0.5\n");
  q.step(1, 10, "step 1");
  q.eval("eval (dev)", 64, 1000);  // not on a terminal: no redrawn progress
  q.line("done");
  CHECK(plain.str() == "step 1\ndone\n");
  CHECK(models::format_duration(337) == "5m37s");
}

TEST_CASE("metrics log: written and read by one pair, a resume cuts it back and skips a torn line, bad lines name file and line") {
  const std::string dir = tmpdir("metrics"), path = dir + "/metrics.jsonl";
  fs::create_directories(dir);
  {
    models::MetricsLog log(path, /*fresh=*/true);
    for (int64_t s = 1; s <= 4; ++s) log.write({s, {{"loss", 1.0 / (double)s}}});
    log.write({4, {{"dev_acc", 0.25}, {"best_dev", 0.25}}});
  }
  auto r = models::read_metrics(path);
  REQUIRE(r.size() == 5);
  CHECK(r[2].values.at("loss") == 1.0 / 3);  // full precision
  CHECK(r[4].has("dev_acc"));
  std::ofstream(path, std::ios::app) << "{\"step\":";  // a write cut by a kill
  CHECK_THROWS_WITH_AS(models::read_metrics(path), doctest::Contains("metrics.jsonl:6"), IOError);
  {
    models::MetricsLog log(path, /*fresh=*/false, /*keep_through=*/2);  // a resume from step 2
    log.write({3, {{"loss", 9.0}}});
  }
  r = models::read_metrics(path);
  REQUIRE(r.size() == 3);
  CHECK(r[2].step == 3);
  CHECK(r[2].values.at("loss") == 9.0);
  std::ofstream(path, std::ios::app) << "not json\n{\"step\":5}\n";
  CHECK_THROWS_WITH_AS(models::read_metrics(path), doctest::Contains("metrics.jsonl:4: not a metrics line"), IOError);
}
