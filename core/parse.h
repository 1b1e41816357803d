// Numbers in option values, knob values and environment variables: one strict reader and one
// writer, so every message about a value reads the same.
#pragma once
#include <optional>
#include <string>

namespace lotgrad {

// The whole text as a finite number ("12", "0.5", "1e-3"); nothing for "", "abc", "1x", "inf".
std::optional<double> parse_number(const std::string& text);
// For ranges and messages: whole numbers in full (9007199254740992, not 9.007e+15), others to
// 10 significant digits.
std::string format_number(double v);

}  // namespace lotgrad
