// Command-line helpers beside options.h, for the commands and benchmarks declared with CLI11:
// run settings as options, --threads applied as soon as it is parsed, and checks that involve
// more than one option (--pad below --n, --d-model a multiple of --heads, a mechanism's knobs
// against the chosen --attention).
#pragma once
#include <CLI/CLI.hpp>
#include <exception>
#include <functional>
#include <lotgrad/core/parallel.h>
#include <stdexcept>
#include <string>
#include <utility>

#include "options.h"

namespace lotgrad::cli {

// Runs check once the command line is parsed (never after --help). A std::exception it throws
// becomes a CLI11 parse error, so cli::parse prints "<app name>: error: <message>" and returns
// 2 before any work; the message should name the option.
inline void after_parse(CLI::App& app, std::function<void()> check) {
  app.callback([check = std::move(check)] {
    try {
      check();
    } catch (const CLI::Error&) {
      throw;
    } catch (const std::exception& e) {
      throw CLI::ValidationError(e.what());
    }
  });
}

// --threads N (add_threads), applied with set_num_threads as soon as it is parsed; threads is
// the option's storage (it must outlive the parse).
inline CLI::Option* add_threads_applied(CLI::App& app, int64_t& threads) {
  return add_threads(app, threads)->default_str("")->each([](const std::string& t) { set_num_threads(std::stoi(t)); });
}

// Refuses a model width that the heads do not divide, naming both options.
inline void check_heads(int64_t d_model, int64_t heads) {
  if (d_model % heads)
    throw std::invalid_argument("--d-model " + std::to_string(d_model) + " is not a multiple of --heads " +
                                std::to_string(heads));
}

// An option that is also a run setting (models::config_fields(): --d-model, --heads, --depth,
// --mlp, --batch): the setting's declared range and help; the default is v's value (the
// command's own).
template <class T>
CLI::Option* add_setting(CLI::App& app, const std::string& option, T& v) {
  const models::ConfigField* f = models::config_field(option);
  if (!f) throw std::logic_error("no run setting --" + option);
  return add_number(app, "--" + option, v, f->lo, f->hi, f->help);
}

}  // namespace lotgrad::cli
