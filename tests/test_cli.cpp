// tools/: the declared command line. Every declared setting and every knob of every mechanism
// is an option; bad values are refused by name before any work, never by a signal.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <sstream>
#include <lotgrad/lotgrad.h>

#include "commands.h"
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
    for (const char* v : {"-1"}) CHECK(train_args({opt, v}).rc == 2);
  for (const char* opt : {"--eval-every", "--checkpoint-every", "--depth", "--d-model", "--batch", "--steps"})
    CHECK(train_args({opt, "0"}).rc == 2);
  // --mlp 0 (no MLP) is for the sequence tasks; the LRA classifier refuses it by name
  CHECK(train_args({"--mlp", "0"}).error.find("--mlp 0") != std::string::npos);
  const Outcome mq = train_args({"--task", "mqar", "--mlp", "0"});
  CHECK((mq.rc == -1 && mq.error.empty()));
  CHECK(mq.cfg.attention == "softmax");  // the task's declared default mechanism
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

namespace {
using Command = int (*)(int, char**);
// Runs a command's parser (and its after-parse checks) on args, without its work.
// numeric: the names of the command's options that take an INT or a FLOAT.
int parse_only(Command cmd, std::vector<std::string> args, std::vector<std::string>* numeric = nullptr) {
  cli::ParseProbe probe;
  probe.inspect = [&](const CLI::App& app) {  // read while the app lives
    if (!numeric) return;
    for (const CLI::Option* o : app.get_options()) {
      const std::string t = o->get_type_name();
      if (t.rfind("INT", 0) == 0 || t.rfind("FLOAT", 0) == 0) numeric->push_back(o->get_name());
    }
  };
  cli::set_parse_probe(&probe);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  int rc = 0;
  try {
    rc = cmd((int)argv.size(), argv.data());
  } catch (...) {
    cli::set_parse_probe(nullptr);
    throw;
  }
  cli::set_parse_probe(nullptr);
  return rc;
}
}  // namespace

TEST_CASE("every command and benchmark: each numeric option refuses a non-number, and 0 and -1 are parsed or refused, never a crash") {
  // A real checkpoint for eval and inspect, and a metrics log for plot.
  models::TrainConfig c;
  c.min_len = 3;
  c.max_len = 12;
  c.gen_train = 64;
  c.gen_val = 16;
  c.gen_test = 16;
  c.attention = "softmax";
  c.steps = 1;
  c.batch = 8;
  c.quiet = true;
  c.overwrite = true;
  c.out_dir = (std::filesystem::temp_directory_path() / ("lotgrad_test_cli_run_" + std::to_string(::getpid()))).string();
  std::ostringstream log;
  models::train(c, log);
  const std::string ck = c.out_dir + "/best.ckpt", metrics = c.out_dir + "/metrics.jsonl";
  struct Entry {
    const char* name;
    Command cmd;
    std::vector<std::string> required;
  };
  const std::vector<Entry> commands = {
      {"demo", cli::cmd_demo, {}},
      {"lra", cli::cmd_lra, {}},
      {"train", cli::cmd_train, {}},
      {"eval", cli::cmd_eval, {"--checkpoint", ck}},
      {"inspect", cli::cmd_inspect, {"--checkpoint", ck}},
      {"plot", cli::cmd_plot, {metrics}},
      {"info", cli::cmd_info, {}},
      {"probe", cli::cmd_probe, {}},
      {"maps", cli::cmd_maps, {}},
      {"report", cli::cmd_report, {c.out_dir}},
      {"bench matmul", bench_matmul_main, {}},
      {"bench ops", bench_ops_main, {}},
      {"bench attention", bench_attention_main, {}},
      {"bench attention-kernel", bench_attention_kernel_main, {}},
      {"bench step", bench_step_main, {}},
      {"bench sinkhorn", bench_sinkhorn_main, {}},
  };
  int swept = 0;
  for (const auto& e : commands) {
    INFO(std::string(e.name));
    std::vector<std::string> numeric;
    REQUIRE(parse_only(e.cmd, e.required, &numeric) == 0);  // the required arguments alone parse
    const std::string name = e.name;
    CHECK((!numeric.empty() || name == "plot"));  // plot alone has no numeric option
    for (const auto& opt : numeric) {
      for (const std::string v : {"0", "-1", "abc"}) {
        INFO(std::string(opt + " " + v));
        std::vector<std::string> args = e.required;
        args.push_back(opt);
        args.push_back(v);
        const int rc = parse_only(e.cmd, args);
        CHECK((rc == 0 || rc == 2));
        if (v == "abc") CHECK(rc == 2);
        ++swept;
      }
      std::vector<std::string> args = e.required;
      args.push_back(opt);  // a value-taking option with no value
      CHECK(parse_only(e.cmd, args) == 2);
    }
  }
  CHECK(swept > 300);
}
