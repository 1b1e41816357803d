#include "parse.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace lotgrad {

std::optional<double> parse_number(const std::string& text) {
  size_t used = 0;
  double d = 0;
  try {
    d = std::stod(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (text.empty() || used != text.size() || !std::isfinite(d)) return std::nullopt;
  return d;
}

std::string format_number(double v) {
  char b[40];
  std::snprintf(b, sizeof b, v == std::floor(v) && std::abs(v) < 1e18 ? "%.0f" : "%.10g", v);
  return b;
}

}  // namespace lotgrad
