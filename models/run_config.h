// A run's settings, declared once. Every field of TrainConfig that a user sets has one entry in
// config_fields(): its option name, what it affects (its role), its allowed values and a
// one-line help. From that table come the command-line options and their help (tools/), the
// readable config.json of a run directory and the settings every checkpoint stores, and the
// checks that refuse a setting which contradicts a stored run.
#pragma once
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "trainer.h"

namespace lotgrad::models {

// What changing a setting changes.
enum class Role {
  data,   // which examples there are: eval, inspect and --resume refuse a contradiction
  model,  // the model's shape or function: the same
  run,    // the course of training (lr, steps, ...): --resume refuses a change unless --override
  free,   // nothing stored (threads, output, logging)
};

struct ConfigField {
  std::string option;  // "train-size": --train-size on the command line, "train_size" in config.json
  Role role;
  std::string help;    // one line
  std::variant<std::string TrainConfig::*, int64_t TrainConfig::*, double TrainConfig::*, bool TrainConfig::*> member;
  double lo = 0, hi = 0;             // numbers: the allowed range, inclusive
  std::vector<std::string> choices;  // strings: the allowed values (empty: any)
  bool flag = false;                 // bools: an option without a value (else it takes 0|1)
  bool inverted = false;             // a flag that sets its bool to false (--no-preset)

  std::string key() const;    // "train_size"
  std::string range() const;  // "[1, 1000000]", "mean|cls", "text", "flag"
  std::string get(const TrainConfig& c) const;  // the value as text (numbers at full precision)
  // What is wrong with text as this setting's value ("" when nothing): '"abc": expected an
  // integer in [1, 256]', '0 is outside [1, 256]'.
  std::string problem(const std::string& text) const;
  // Parses text into c. Throws std::invalid_argument naming --option, the text and the range.
  void set(TrainConfig& c, const std::string& text) const;
};

// Every declared setting, in help order (grouped: data, model, training, output).
const std::vector<ConfigField>& config_fields();
const ConfigField* config_field(const std::string& option);

// The mechanism of each of the cfg.depth layers: cfg.attention, but where cfg.layer_attention
// ("1:softmax,0:window") names another. Refuses a malformed list, naming --layer-attention.
std::vector<std::string> layer_mechanisms(const TrainConfig& cfg);
// The mechanisms the run uses, each once, cfg.attention first.
std::vector<std::string> run_mechanisms(const TrainConfig& cfg);

// The knob values `mechanism` takes in this run: its preset for the task (unless use_preset is
// off), then the knobs of cfg.knobs it declares, resolved against its declaration (defaults
// filled in, values out of range refused, naming the option).
std::map<std::string, double> effective_knobs(const TrainConfig& cfg, const std::string& mechanism);
// The run's knobs: those of every mechanism it uses, one value per knob (a knob two of them
// declare takes one value in both: given, or the same from their presets and defaults, else
// refused). A knob none of them declares is refused.
std::map<std::string, double> effective_knobs(const TrainConfig& cfg);
// A knob value as its declaration in the run's mechanisms prints it.
std::string format_knob(const TrainConfig& cfg, const std::string& knob, double v);

// Refuses a configuration before any work: every field in its range, the mechanism known, its
// knobs valid, settings that cannot go together. Messages name the option and the values.
void validate(const TrainConfig& cfg);

// The stored form: a JSON object with every declared field that is not Role::free, the
// mechanism's effective knobs ("knobs") and lotgrad's version.
std::string config_to_json(const TrainConfig& cfg);
// Reads config_to_json's output back (the stored knobs are complete, so the preset changes
// nothing); `where`
// names the file in errors.
TrainConfig config_from_json(const std::string& text, const std::string& where);

// A stored run's configuration with the options a user gave on top: `given` maps option names
// (fields and knobs, without "--") to their text. A given value that differs from the stored
// one is refused, naming the option and both values, when its role is data or model, and when
// its role is run unless allow_run; free options and the names in `ignore` are taken as given.
TrainConfig merge_given(const TrainConfig& stored, const std::map<std::string, std::string>& given, bool allow_run,
                        const std::vector<std::string>& ignore, const std::string& where);

// The settings a user gave on top of defaults (train without --resume): `given` as in
// merge_given; knobs are checked against the mechanism the result names. Without a given
// "attention" the task's default mechanism (TaskSpec::default_attention) is taken.
TrainConfig apply_given(TrainConfig base, const std::map<std::string, std::string>& given);

// Every knob of every registered mechanism, one per name (a name shared by mechanisms is one
// option): the command-line options for knobs come from this list.
std::vector<std::string> knob_names();
std::string knob_option(const std::string& knob);  // "half_steps" -> "half-steps"
std::string knob_name(const std::string& option);  // "half-steps" -> "half_steps"

}  // namespace lotgrad::models
