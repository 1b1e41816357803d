#include "progress.h"

#include <cmath>
#include <cstdio>
#include <ostream>

namespace lotgrad::models {

std::string format_duration(double s) {
  char buf[32];
  if (s < 0 || !std::isfinite(s)) return "?";
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", (int)(s / 3600), (int)std::fmod(s / 60, 60));
  else std::snprintf(buf, sizeof buf, "%dm%02ds", (int)(s / 60), (int)std::fmod(s, 60));
  return buf;
}

void Progress::draw(const std::string& text) {
  // Pad with spaces over what a longer previous line left on the terminal.
  const size_t pad = last_width_ > text.size() ? last_width_ - text.size() : 0;
  log_ << '\r' << text << std::string(pad, ' ') << std::flush;
  last_width_ = text.size();
}

void Progress::step(int64_t done, int64_t total, const std::string& text) {
  if (quiet_) return;
  if (!tty_) {
    log_ << text << "\n" << std::flush;
    return;
  }
  const int width = 30, filled = total > 0 ? (int)(width * done / total) : width;
  std::string bar = "[";  // appended, not "[" + ...: g++ 12 warns (-Wrestrict) on that form
  bar += std::string(filled, '#');
  bar += std::string(width - filled, '.');
  bar += "] ";
  draw(bar + text);
}

void Progress::eval(const std::string& what, int64_t done, int64_t total) {
  if (quiet_ || !tty_) return;
  draw(what + " " + std::to_string(done) + "/" + std::to_string(total) + " examples");
}

void Progress::line(const std::string& text) {
  if (quiet_) return;
  if (tty_ && last_width_ > 0) {
    draw("");  // clear the redrawn line
    log_ << '\r';
    last_width_ = 0;
  }
  log_ << text << "\n" << std::flush;
}

}  // namespace lotgrad::models
