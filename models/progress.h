// The training run's terminal output: on a terminal one line redrawn in place (a bar, the
// step, loss, speed, ETA; a longer previous line is cleared, not left behind), elsewhere a
// plain line per report. Long evaluations report their progress on the same line.
#pragma once
#include <iosfwd>
#include <string>

namespace lotgrad::models {

class Progress {
 public:
  // tty: redraw in place (the log is a terminal); quiet: print nothing.
  Progress(std::ostream& log, bool tty, bool quiet) : log_(log), tty_(tty), quiet_(quiet) {}
  // A step report: `text` after a bar filled done/total.
  void step(int64_t done, int64_t total, const std::string& text);
  // An evaluation in progress: `what` with examples done of total (shown on a terminal only).
  void eval(const std::string& what, int64_t done, int64_t total);
  // A line of its own (ends a redrawn line first).
  void line(const std::string& text);

 private:
  void draw(const std::string& text);
  std::ostream& log_;
  bool tty_, quiet_;
  size_t last_width_ = 0;  // what the redrawn line holds now
};

// "1m05s", "2h03m"; "?" for a negative or infinite time.
std::string format_duration(double seconds);

}  // namespace lotgrad::models
