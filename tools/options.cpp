#include "options.h"

#include <omp.h>

#include <cmath>
#include <cstdio>
#include <lotgrad/core/parse.h>

namespace lotgrad::cli {

namespace {
ParseProbe* g_probe = nullptr;
}
void set_parse_probe(ParseProbe* probe) { g_probe = probe; }

int parse(CLI::App& app, int argc, char** argv) {
  if (g_probe && g_probe->inspect) g_probe->inspect(app);
  std::vector<std::string> args;
  for (int i = argc - 1; i >= 0; --i) args.push_back(argv[i]);  // CLI11 takes them reversed
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: error: %s\n", app.get_name().c_str(), e.what());
    return 2;
  }
  return g_probe && g_probe->stop_after_parse ? 0 : -1;
}

CLI::Validator in_range(double lo, double hi, bool whole) {
  const std::string r = "[" + format_number(lo) + ", " + format_number(hi) + "]";
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        const std::optional<double> n = parse_number(text);
        if (!n) return "\"" + text + "\": expected " + (whole ? "an integer" : "a number") + " in " + r;
        const double d = *n;
        if (d < lo || d > hi || (whole && d != std::floor(d)))
          return text + " is outside " + r + (whole ? " (an integer)" : "");
        return "";
      },
      "in " + r);
}

CLI::Option* add_choice(CLI::App& app, const std::string& name, std::string& v, const std::vector<std::string>& choices,
                        const std::string& help) {
  return app.add_option(name, v, help)->check(CLI::IsMember(choices))->capture_default_str();
}

CLI::Option* add_threads(CLI::App& app, int64_t& threads) {
  return add_number(app, "--threads", threads, 1, omp_get_num_procs(),
                    "threads (default: all cores, or LOTGRAD_NUM_THREADS)");
}

namespace {
// The value kind of a knob option (a name shared by mechanisms has one type: the registry checks it).
std::string knob_kind(const std::string& knob) {
  for (const auto& s : nn::attention_registry())
    if (const nn::Knob* k = s.knob(knob)) {
      switch (k->type) {
        case nn::KnobType::integer: return "INT";
        case nn::KnobType::real: return "FLOAT";
        default: return k->range();  // 0|1, or the choices
      }
    }
  return "TEXT";
}
}  // namespace

std::string knob_help(const std::string& knob) {
  std::string h;
  for (const auto& s : nn::attention_registry())
    if (const nn::Knob* k = s.knob(knob))
      h += (h.empty() ? "" : "; ") + s.name + ": " + k->help + " (" + k->range() + ", default " +
           (k->optional ? std::string("none") : k->format(k->def)) + ")";
  return h;
}

namespace {
const char* group_of(models::Role r) {
  switch (r) {
    case models::Role::data: return "Data";
    case models::Role::model: return "Model";
    case models::Role::run: return "Training";
    default: return "Output and run";
  }
}
}  // namespace

namespace {
// One option per knob name of every registered mechanism, keyed by option name ("half-steps").
void add_knob_options(CLI::App& app, std::map<std::string, std::string>& text, std::map<std::string, CLI::Option*>& opts) {
  for (const auto& k : models::knob_names()) {
    const std::string opt = models::knob_option(k);
    opts[opt] = app.add_option("--" + opt, text[opt], knob_help(k))->type_name(knob_kind(k))->group("Mechanism knobs (lotgrad info)");
  }
}
}  // namespace

RunOptions::RunOptions(CLI::App& app, const std::vector<models::Role>& roles, const models::TrainConfig& defaults,
                       const std::vector<std::string>& skip, bool knobs) {
  for (const auto& f : models::config_fields()) {
    if (std::find(roles.begin(), roles.end(), f.role) == roles.end()) continue;
    if (std::find(skip.begin(), skip.end(), f.option) != skip.end()) continue;
    const std::string name = "--" + f.option;
    CLI::Option* o;
    if (f.flag) {
      o = app.add_flag(name, flags_[f.option], f.help);
    } else {
      const models::ConfigField* fp = &f;
      const char* kind = std::visit(
          [](auto m) {
            using T = std::decay_t<decltype(models::TrainConfig{}.*m)>;
            return std::is_same_v<T, std::string> ? "TEXT" : std::is_same_v<T, bool> ? "0|1" : std::is_integral_v<T> ? "INT" : "FLOAT";
          },
          f.member);
      const std::string range = f.range() == "text" ? "" : f.range() + ", ";
      o = app.add_option(name, text_[f.option],
                         f.help + " (" + range + "default " + (f.get(defaults).empty() ? "none" : f.get(defaults)) + ")")
              ->check(CLI::Validator([fp](std::string& t) { return fp->problem(t); }, ""))
              ->type_name(kind);
    }
    o->group(group_of(f.role));
    opts_[f.option] = o;
  }
  if (knobs) add_knob_options(app, text_, opts_);
}

std::map<std::string, std::string> RunOptions::given() const {
  std::map<std::string, std::string> g;
  for (const auto& [name, o] : opts_)
    if (o->count() > 0) g[name] = flags_.count(name) ? std::string("1") : text_.at(name);
  return g;
}

MechanismOptions::MechanismOptions(CLI::App& app, const std::string& default_attention) : attention(default_attention) {
  add_choice(app, "--attention", attention, nn::attention_names(), "the attention mechanism (lotgrad info)");
  app.add_flag("--causal", causal, "causal attention: position i sees positions j <= i (mechanisms with a causal form)");
  add_knob_options(app, text_, opts_);
}

std::map<std::string, double> MechanismOptions::knobs(const std::string& mechanism) const {
  models::TrainConfig c;
  std::map<std::string, std::string> given = {{"attention", mechanism}};
  for (const auto& [opt, o] : opts_)
    if (o->count() > 0) given[opt] = text_.at(opt);
  return nn::resolve_knobs(nn::mechanism_spec(mechanism), models::apply_given(c, given).knobs);
}

nn::AttentionOptions MechanismOptions::options(int64_t heads) const {
  nn::AttentionOptions o;
  o.name = attention;
  o.n_heads = heads;
  o.knobs = knobs(attention);
  o.causal = causal;
  return o;
}

}  // namespace lotgrad::cli
