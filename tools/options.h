// The command line, declared once. Every lotgrad command and benchmark builds a CLI11 app:
// run settings come from models::config_fields() (RunOptions), the attention mechanism and
// its knobs from the registry's declarations (MechanismOptions), a command's own options
// through add_number / add_choice, which carry their range into the help and the checks.
#pragma once
#include <CLI/CLI.hpp>
#include <lotgrad/lotgrad.h>
#include <lotgrad/models/run_config.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace lotgrad::cli {

// Parses argv[0..argc) (the command's own arguments). Returns -1 to go on; otherwise the
// exit code: 0 after printing --help, 2 after printing a parse error that names the option.
int parse(CLI::App& app, int argc, char** argv);

// For the tests that sweep every command's declared options: while a probe is set, parse()
// shows it each app before parsing and, when parsing (with its after-parse checks) succeeds,
// returns 0 instead of going on to the command's work when stop_after_parse.
struct ParseProbe {
  std::function<void(const CLI::App&)> inspect;
  bool stop_after_parse = true;
};
void set_parse_probe(ParseProbe* probe);  // nullptr: off (the default)

// CLI11 validator: a number (an integer when whole) in [lo, hi].
CLI::Validator in_range(double lo, double hi, bool whole);

// A numeric option with its allowed range in the help; the default is v's value.
template <class T>
CLI::Option* add_number(CLI::App& app, const std::string& name, T& v, double lo, double hi, const std::string& help) {
  return app.add_option(name, v, help)->check(in_range(lo, hi, std::is_integral_v<T>))->capture_default_str();
}
// A text option that takes one of choices.
CLI::Option* add_choice(CLI::App& app, const std::string& name, std::string& v, const std::vector<std::string>& choices,
                        const std::string& help);
// --threads N in [1, cores] (applied by the caller with set_num_threads when given).
CLI::Option* add_threads(CLI::App& app, int64_t& threads);

// The declared run settings (models::config_fields()) of the given roles, plus every knob of
// every registered mechanism (one option per knob name), as options of app. The values the
// user gave come back as text (given()), to be applied to a configuration: apply_given for a
// new run, merge_given over a stored one (run_config.h).
class RunOptions {
 public:
  RunOptions(CLI::App& app, const std::vector<models::Role>& roles, const models::TrainConfig& defaults,
             const std::vector<std::string>& skip = {}, bool knobs = true);
  std::map<std::string, std::string> given() const;

 private:
  std::map<std::string, std::string> text_;  // bound by CLI11 (map nodes do not move)
  std::map<std::string, bool> flags_;
  std::map<std::string, CLI::Option*> opts_;
};

// --attention NAME and every knob, for commands that build one attention layer (probe, maps,
// bench attention). options() resolves the knobs against the chosen mechanism.
class MechanismOptions {
 public:
  MechanismOptions(CLI::App& app, const std::string& default_attention);
  std::string attention;
  bool causal = false;
  // The knobs given, parsed by the mechanism's declarations (refused with the option named
  // when the mechanism has no such knob or the value is out of range).
  std::map<std::string, double> knobs(const std::string& mechanism) const;
  nn::AttentionOptions options(int64_t heads) const;

 private:
  std::map<std::string, std::string> text_;
  std::map<std::string, CLI::Option*> opts_;
};

// The help line of a knob option: what each mechanism that declares it means by it.
std::string knob_help(const std::string& knob);

}  // namespace lotgrad::cli
