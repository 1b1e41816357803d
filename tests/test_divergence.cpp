// When training goes wrong: anomaly mode names the op that first made a NaN/Inf (forward or
// backward), a step with a non-finite gradient is refused before the optimiser steps with the
// parameter named and the checkpoints untouched, and a loss that grows tenfold is warned about.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <lotgrad/lotgrad.h>
#include <lotgrad/models/divergence.h>
#include <sstream>

#include "support/same_bits.h"

using namespace lotgrad;
using lotgrad::testing::same_bits;
namespace fs = std::filesystem;

namespace {
bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

Tensor leaf(const std::vector<float>& v) {
  Tensor t = Tensor::from_vector(v, {(int64_t)v.size()});
  t.requires_grad_();
  return t;
}

// The AnomalyError that fn throws (fails the test when it throws none).
AnomalyError anomaly_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const AnomalyError& e) {
    return e;
  }
  FAIL("no AnomalyError");
  return AnomalyError("", "");
}

// Sets an environment variable while it lives.
class EnvVar {
 public:
  EnvVar(const char* name, const std::string& value) : name_(name) { setenv(name, value.c_str(), 1); }
  ~EnvVar() { unsetenv(name_); }

 private:
  const char* name_;
};

models::TrainConfig tiny(const std::string& out) {
  models::TrainConfig c;
  c.task = "listops";
  c.min_len = 3;
  c.max_len = 12;
  c.gen_train = 400;
  c.gen_val = 50;
  c.gen_test = 50;
  c.attention = "softmax";
  c.d_model = 32;
  c.mlp = 64;
  c.lr = 3e-3;
  c.batch = 16;
  c.steps = 12;
  c.eval_every = 3;
  c.checkpoint_every = 3;
  c.out_dir = out;
  c.quiet = true;
  c.threads = 1;  // tiny: one thread is faster, and ctest -j2 runs two suites at once
  c.seed = 3;
  return c;
}
std::string tmpdir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("lotgrad_test_divergence_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  return p.string();
}

// The DivergenceError train(cfg) throws (fails the test when it throws none).
models::DivergenceError divergence_of(const models::TrainConfig& cfg) {
  std::ostringstream log;
  try {
    models::train(cfg, log);
  } catch (const models::DivergenceError& e) {
    return e;
  }
  FAIL("the run finished without a DivergenceError");
  return models::DivergenceError("", 0, 0, "");
}
}  // namespace

// ---- anomaly mode on tiny graphs ------------------------------------------------------

TEST_CASE("anomaly mode names the op whose forward made a NaN: log of a negative number") {
  Tensor x = leaf({1.0, -1.0, 2.0});
  {
    DetectAnomalyGuard on;
    Tensor loss = sum(log(x));
    CHECK(std::isnan(loss.item()));
    const AnomalyError e = anomaly_of([&] { loss.backward(); });
    CHECK(e.op == "LogBackward");
    const std::string m = e.what();
    CHECK(has(m, "detect_anomaly: backward from a root () f32 holding 1 nan of 1 values"));
    CHECK(has(m, "the first op to make a NaN from inputs without one: LogBackward (inputs (3) f32 [finite]; output (3) f32 [1 nan])"));
    CHECK_FALSE(x.grad().defined());  // nothing ran
  }
  // Off (the default): backward goes through; log's gradient 1/x is finite even at -1.
  CHECK_FALSE(AnomalyMode::is_enabled());
  Tensor loss = sum(log(x));
  CHECK(anomaly_origin(loss).empty());  // nothing was noted
  loss.backward();
  CHECK(x.grad().to_vector() == std::vector<double>{1.0, -1.0, 0.5});
}

TEST_CASE("anomaly mode names 0/0 in the forward pass and an Inf made by a backward node") {
  DetectAnomalyGuard on;
  Tensor a = leaf({0.0, 1.0}), b = leaf({0.0, 2.0});
  const AnomalyError e = anomaly_of([&] { sum(div(a, b)).backward(); });
  CHECK(e.op == "DivBackward");
  CHECK(has(e.what(), "DivBackward (inputs (2) f32 [finite], (2) f32 [finite]; output (2) f32 [1 nan])"));

  // sqrt at 0: the forward (0, 2) and the loss are finite; its gradient 1/(2 sqrt x) is not.
  Tensor x = leaf({0.0, 4.0});
  Tensor loss = sum(sqrt(x));
  CHECK(loss.item() == 2.0);
  const AnomalyError s = anomaly_of([&] { loss.backward(); });
  CHECK(s.op == "SqrtBackward");
  const std::string m = s.what();
  CHECK(has(m, "detect_anomaly: SqrtBackward returned a gradient holding 1 inf of 2 values for its input 0, (2) f32"));
  CHECK(has(m, "incoming gradients: (2) f32 non-contiguous [finite]; the op's inputs: (2) f32 [finite]"));  // sum's expanded 1
}

TEST_CASE("anomaly mode: a NaN that the loss does not show is traced to the forward op that made it") {
  // sqrt(-1) is NaN; a where that keeps only positive entries maps it to 0 (relu would pass it
  // on, as PyTorch's does), so the loss is finite, but w's gradient g * sqrt(x) is NaN:
  // MulBackward returns it, and the NaN's origin in the forward pass is sqrt.
  auto positive_part = [](const Tensor& y) { return where(gt(y, 0.0), y, Tensor::scalar(0.0, y.dtype())); };
  DetectAnomalyGuard on;
  Tensor x = Tensor::from_vector(std::vector<float>{-1.0, 4.0}, {2});
  Tensor w = leaf({3.0, 5.0});
  Tensor loss = sum(positive_part(mul(sqrt(x), w)));
  CHECK(loss.item() == 10.0);
  CHECK(anomaly_origin(loss).empty());  // x needs no grad: sqrt was not recorded, and no recorded op made the NaN
  Tensor x2 = leaf({-1.0, 4.0});
  Tensor loss2 = sum(positive_part(mul(sqrt(x2), w)));
  const AnomalyError e = anomaly_of([&] { loss2.backward(); });
  CHECK(e.op == "MulBackward");
  const std::string m = e.what();
  CHECK(has(m, "MulBackward returned a gradient holding 1 nan of 2 values for its input"));
  CHECK(has(m, "the op's inputs: (2) f32 [1 nan], (2) f32 [finite]"));
  CHECK(has(m, "in the forward pass, the first op to make a NaN from inputs without one: SqrtBackward"));
  CHECK(has(anomaly_origin(loss2), "SqrtBackward (inputs (2) f32 [finite]; output (2) f32 [1 nan])"));
}

TEST_CASE("anomaly mode changes no value or gradient and its guard restores the previous mode") {
  auto grads = [&](bool anomaly) {
    DetectAnomalyGuard mode(anomaly);
    Generator gg(5);
    Tensor q = randn({2, 2, 9, 8}, gg).requires_grad_(), k = randn({2, 2, 9, 8}, gg).requires_grad_();
    Tensor v = randn({2, 2, 9, 8}, gg).requires_grad_(), w = randn({8, 8}, gg).requires_grad_();
    Tensor out = scaled_dot_product_attention(q, k, v, Tensor(), /*is_causal=*/true);
    Tensor loss = mean(mul(matmul(out, w), matmul(out, w)));
    loss.backward();
    return std::vector<Tensor>{loss.detach(), q.grad(), k.grad(), v.grad(), w.grad()};
  };
  const auto off = grads(false), on = grads(true);
  for (size_t i = 0; i < off.size(); ++i) CHECK(same_bits(off[i], on[i]));
  CHECK_FALSE(AnomalyMode::is_enabled());
  {
    DetectAnomalyGuard on1;
    {
      DetectAnomalyGuard off1(false);
      CHECK_FALSE(AnomalyMode::is_enabled());
    }
    CHECK(AnomalyMode::is_enabled());
  }
  CHECK_FALSE(AnomalyMode::is_enabled());
}

TEST_CASE("count_nonfinite counts NaN and Inf in views and both float types") {
  Tensor a = Tensor::from_vector(std::vector<double>{1, NAN, INFINITY, -INFINITY, 5, NAN}, {2, 3});
  CHECK(count_nonfinite(a).nan == 2);
  CHECK(count_nonfinite(a).inf == 2);
  CHECK(count_nonfinite(a).str() == "2 nan, 2 inf");
  CHECK(count_nonfinite(a.t()).total() == 4);                        // non-contiguous
  CHECK(count_nonfinite(a.select(0, 1).unsqueeze(0).expand({4, 3})).nan == 4);  // stride 0: each counted
  CHECK(count_nonfinite(a.to(kFloat64)).total() == 4);
  CHECK(count_nonfinite(Tensor::ones({3})).str() == "finite");
  CHECK(count_nonfinite(Tensor::arange(4)).total() == 0);  // integers are finite
  // Large: counted in blocks over threads, the same for any thread count.
  Tensor big = Tensor::zeros({100003});
  float* p = big.data_ptr<float>();
  for (int64_t i = 0; i < 100003; i += 997) p[i] = (i % 2) ? NAN : INFINITY;
  const NonFiniteCount c = count_nonfinite(big);
  CHECK(c.total() == 101);
  CHECK(c.nan == 50);
}

TEST_CASE("list_nonfinite and diagnose_nonfinite name every bad parameter in order") {
  Generator g(1);
  nn::Linear lin(3, 2, g);
  Tensor wv = lin.weight.detach();
  wv.data_ptr<float>()[4] = INFINITY;  // (1, 1)
  models::NonFiniteParameter d = models::diagnose_nonfinite(lin, FiniteCheck::values);
  CHECK(d.parameter == "weight");
  CHECK(d.text == "value of 'weight' (2, 3) f32 holds 1 inf of 6 values (first at index (1, 1))");
  CHECK(models::diagnose_nonfinite(lin, FiniteCheck::grads).text.empty());
  lin.weight.set_grad(Tensor::full({2, 3}, NAN));
  lin.bias.set_grad(Tensor::from_vector(std::vector<float>{0, -INFINITY}, {2}));
  d = models::diagnose_nonfinite(lin, FiniteCheck::grads);
  CHECK(d.parameter == "weight");
  CHECK(d.text == "gradient of 'weight' (2, 3) f32 holds 6 nan of 6 values (first at index (0, 0)); in all 2 tensors hold "
                  "6 nan, 1 inf");
  const auto all = list_nonfinite({lin.weight, lin.bias}, {"w", "b"});
  REQUIRE(all.size() == 3);  // w's value, w's grad, b's grad
  CHECK((!all[0].in_grad && all[0].name == "w" && all[0].count.inf == 1));
  CHECK((all[1].in_grad && all[1].count.nan == 6));
  CHECK((all[2].name == "b" && all[2].count.inf == 1 && all[2].numel == 2));
  CHECK(list_nonfinite({lin.bias}, {}, FiniteCheck::grads)[0].name == "#0");
  CHECK_THROWS_AS(list_nonfinite({lin.bias}, {"a", "b"}), std::invalid_argument);
}

TEST_CASE("the loss-growth rule fires once past ten times the first step's loss") {
  models::LossWatch w;
  w.start(1, 2.0);
  CHECK(w.observe(5, 5, 19.9).empty());
  CHECK(w.summary().empty());
  const std::string first = w.observe(10, 5, 20.5);
  CHECK(first == "the loss rose from 2 (step 1) to 20.5 (the mean of steps 6-10), over 10x: the run is unstable; a lower "
                 "--lr may help");
  CHECK(w.observe(15, 5, 8e9).empty());  // once
  CHECK(w.summary() == first + "; the last mean loss was 8e+09 (to step 15)");
  models::LossWatch zero;
  zero.start(1, 0.0);
  CHECK(zero.observe(2, 1, 1.0).empty());
}

// ---- the training loop ------------------------------------------------------------------

TEST_CASE("a NaN gradient stops the run before the optimiser steps: the parameter is named and the checkpoints are untouched") {
  models::TrainConfig c = tiny(tmpdir("nan_grad"));
  c.stop_after = 6;  // last.ckpt and best.ckpt at steps 3 and 6
  std::ostringstream log;
  models::train(c, log);
  const std::string last = c.out_dir + "/last.ckpt", best = c.out_dir + "/best.ckpt";
  const std::string last_bytes = read_file(last), best_bytes = read_file(best);
  c.stop_after = 0;
  c.resume = true;
  {
    // Step 9 would write both checkpoints (and evaluate) if it went ahead.
    EnvVar fault("LOTGRAD_FAULT_NAN_GRAD", "9:encoder.layers.1.mlp.fc2.weight");
    const models::DivergenceError e = divergence_of(c);
    CHECK(e.step == 9);
    CHECK(e.parameter == "encoder.layers.1.mlp.fc2.weight");
    CHECK(std::isfinite(e.loss));
    const std::string m = e.what();
    CHECK(has(m, "train: step 9 diverged: the loss is "));
    CHECK(has(m, "gradient of 'encoder.layers.1.mlp.fc2.weight' (32, 64) f32 holds 1 nan of 2048 values (first at index (0, 0))"));
    CHECK(has(m, "The optimiser did not step and nothing was written: resume from " + last + " (step 6) with: lotgrad train --out " +
                     c.out_dir + " --resume"));
    CHECK(has(m, "the best-on-dev model is in " + best + " (step "));
    CHECK(read_file(last) == last_bytes);
    CHECK(read_file(best) == best_bytes);
  }
  {
    EnvVar fault("LOTGRAD_FAULT_NAN_GRAD", "8");  // no name: the first parameter with a gradient
    const models::DivergenceError e = divergence_of(c);
    CHECK(e.step == 8);
    CHECK_FALSE(e.parameter.empty());
    CHECK(has(e.what(), "holds 1 nan of"));
    CHECK(read_file(last) == last_bytes);
  }
  {
    EnvVar bad("LOTGRAD_FAULT_NAN_GRAD", "soon");
    CHECK_THROWS_WITH_AS(models::train(c, log), doctest::Contains("LOTGRAD_FAULT_NAN_GRAD=\"soon\""), std::invalid_argument);
    EnvVar unknown("LOTGRAD_FAULT_NAN_GRAD", "7:no.such.weight");
    CHECK_THROWS_WITH_AS(models::train(c, log), doctest::Contains("no parameter 'no.such.weight'"), std::invalid_argument);
  }
  // Without the fault the resume runs to the end.
  const models::TrainResult r = models::train(c, log);
  CHECK(r.steps_done == 12);
  CHECK(r.warning.empty());
  fs::remove_all(c.out_dir);
}

TEST_CASE("--detect-anomaly names the op of a run driven to overflow and changes nothing in a normal run") {
  // lr 10 with weight decay 10: every step multiplies the weights by 1 - 10 * 10 = -99 until
  // the attention scores overflow (step 10 here): the attention's output is NaN, ReLU passes it
  // on (as PyTorch's does), so the loss is NaN and every parameter is still finite.
  models::TrainConfig c = tiny(tmpdir("anomaly"));
  c.lr = 10;
  c.weight_decay = 10;
  c.warmup = 0;
  c.clip = 0;
  c.steps = 40;
  c.eval_every = c.checkpoint_every = 40;
  const models::DivergenceError plain = divergence_of(c);
  const std::string pm = plain.what();
  INFO(pm);
  CHECK(has(pm, "the loss is nan; every parameter is finite, so the forward pass made it"));
  CHECK(has(pm, "--detect-anomaly names the op"));
  CHECK(plain.parameter.empty());
  CHECK(has(plain.what(), "resume from " + c.out_dir + "/last.ckpt (step 0)"));  // a fresh run writes step 0
  c.overwrite = true;
  c.detect_anomaly = true;
  const models::DivergenceError e = divergence_of(c);
  CHECK(e.step == plain.step);
  const std::string m = e.what();
  INFO(m);
  CHECK(has(m, "the first op to make a NaN from inputs without one: "));
  CHECK(has(m, "Backward (inputs "));
  CHECK_FALSE(AnomalyMode::is_enabled());  // the run's guard is gone
  // A normal run: the same losses, bit for bit, with anomaly mode on (and no false alarm).
  for (std::string mech : {"softmax", "lotformer"}) {
    INFO(mech);
    models::TrainConfig n = tiny(tmpdir("normal_" + mech));
    n.attention = mech;
    n.steps = 4;
    n.eval_every = n.checkpoint_every = 4;
    std::ostringstream log;
    const std::vector<double> off = models::train(n, log).losses;
    n.overwrite = true;
    n.detect_anomaly = true;
    CHECK(models::train(n, log).losses == off);
    fs::remove_all(n.out_dir);
  }
  fs::remove_all(c.out_dir);
}

TEST_CASE("a loss that climbs tenfold is warned about once and in the summary") {
  models::TrainConfig c = tiny(tmpdir("growth"));
  c.lr = 10;  // with the default clipping: finite, but the loss leaves 2.3 for 1e5 and more
  c.warmup = 0;
  c.steps = 20;
  c.eval_every = c.checkpoint_every = 20;
  c.log_every = 5;
  c.quiet = false;
  std::ostringstream log;
  const models::TrainResult r = models::train(c, log);
  CHECK(has(r.warning, "the loss rose from "));
  CHECK(has(r.summary, "; warning: the loss rose from "));
  const std::string text = log.str();
  const size_t at = text.find("warning: the loss rose");
  REQUIRE(at != std::string::npos);
  CHECK(text.find("warning: the loss rose", at + 1) == std::string::npos);  // once
  // A normal run says nothing.
  c.lr = 3e-3;
  c.overwrite = true;
  std::ostringstream quiet_log;
  const models::TrainResult ok = models::train(c, quiet_log);
  CHECK(ok.warning.empty());
  CHECK_FALSE(has(ok.summary, "warning"));
  CHECK_FALSE(has(quiet_log.str(), "warning"));
  fs::remove_all(c.out_dir);
}
