// tools/: the declared command line. Every declared setting and every knob of every mechanism
// is an option; bad values are refused by name before any work, never by a signal.
#include <doctest/doctest.h>

#include <cmath>
#include <lotgrad/lotgrad.h>

#include "options.h"

using namespace lotgrad;
using models::Role;

namespace {
// Parses args as `lotgrad train` does and applies them to a fresh configuration: the result,
// or the message of the refusal.
struct Outcome {
  int rc = -1;  // parse(): -1 parsed, 2 refused by the parser
  std::string error;  // refused by apply_given / validate
  models::TrainConfig cfg;
};
Outcome train_args(std::vector<std::string> args) {
  CLI::App app("test", "lotgrad train");
  cli::RunOptions opts(app, {Role::data, Role::model, Role::run, Role::free}, models::TrainConfig{});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  Outcome o;
  o.rc = cli::parse(app, (int)argv.size(), argv.data());
  if (o.rc >= 0) return o;
  try {
    o.cfg = models::apply_given(models::TrainConfig{}, opts.given());
    models::validate(o.cfg);
  } catch (const std::invalid_argument& e) {
    o.error = e.what();
  }
  return o;
}
}  // namespace

TEST_CASE("every declared numeric option with 0, -1 and a non-number: accepted in range or refused by name") {
  int refused = 0, accepted = 0;
  for (const auto& f : models::config_fields()) {
    if (f.flag || std::holds_alternative<std::string models::TrainConfig::*>(f.member)) continue;
    for (const std::string v : {"0", "-1", "abc", "1e400"}) {
      INFO("--" << f.option << " " << v);
      const Outcome o = train_args({"--" + f.option, v});
      if (o.rc == 2 || !o.error.empty()) {
        ++refused;
        if (!o.error.empty()) CHECK(o.error.find("--" + f.option) != std::string::npos);
        continue;
      }
      ++accepted;
      // accepted only inside the declared range
      CHECK(o.rc == -1);
      CHECK(f.problem(v).empty());
    }
  }
  CHECK(refused > 40);
  CHECK(accepted > 5);
  // the ones the issue found: a value-taking option without its value, 0 and -1 where they make no sense
  CHECK(train_args({"--steps", "3", "--lr"}).rc == 2);
  for (const char* opt : {"--eval-every", "--checkpoint-every", "--mlp", "--depth", "--d-model", "--batch", "--steps"})
    for (const char* v : {"0", "-1"}) CHECK(train_args({opt, v}).rc == 2);
  CHECK(train_args({"--clip", "-1"}).rc == 2);
  CHECK(train_args({"--threads", "100000"}).rc == 2);
  CHECK(train_args({"--seed", "1.5"}).rc == 2);
  CHECK(train_args({"--d-model", "30", "--heads", "4"}).error.find("--heads") != std::string::npos);
  CHECK(train_args({"--stepz", "3"}).rc == 2);
}

TEST_CASE("every knob of every mechanism is reachable from the command line and validated by its declaration") {
  for (const auto& s : nn::attention_registry()) {
    for (const auto& k : s.knobs) {
      INFO(s.name << " " << k.option());
      // a legal value different from the default where there is one
      double v = k.optional ? k.lo : k.def;
      if (k.type == nn::KnobType::flag || k.type == nn::KnobType::choice) v = k.def == 0 ? 1 : 0;
      else if (k.type == nn::KnobType::integer && v + 1 <= k.hi) v += 1;
      else if (k.type == nn::KnobType::real) v = std::isinf(k.hi) ? v * 2 + 1 : (v + k.hi) / 2;
      const Outcome o = train_args({"--attention", s.name, k.option(), k.format(v)});
      REQUIRE(o.rc == -1);
      REQUIRE(o.error.empty());
      CHECK(models::effective_knobs(o.cfg).at(k.name) == doctest::Approx(v));
      if (k.type != nn::KnobType::flag && k.type != nn::KnobType::choice && !std::isinf(k.lo)) {
        const Outcome bad = train_args({"--attention", s.name, k.option(), k.format(k.lo - 1)});
        CHECK(bad.error.find(k.option()) != std::string::npos);
        CHECK(bad.error.find(k.range()) != std::string::npos);
      }
    }
  }
  // a knob the chosen mechanism does not have names the option and the mechanism's knobs
  const Outcome o = train_args({"--attention", "softmax", "--tau", "0.5"});
  CHECK(o.error.find("--tau") != std::string::npos);
  CHECK(o.error.find("softmax attention has no knob tau") != std::string::npos);
  CHECK(train_args({"--attention", "espformer", "--tau", "0.5"}).cfg.knobs.at("tau") == 0.5);  // the example
  CHECK(train_args({"--attention", "lotformer", "--grad", "sideways"}).error.find("unrolled|implicit") != std::string::npos);
}
