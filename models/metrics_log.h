// A run's metrics log, metrics.jsonl: one JSON object per line, each with a "step". The
// trainer appends to it (checked writes: a full disk is an error, not a cut line), a resume
// cuts it back to the checkpoint's step (dropping a line torn by a kill), and `lotgrad plot`
// reads it with the same reader.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lotgrad::models {

// One line: "step" and named numbers (loss, train_acc, lr, tokens_per_s, dev_acc, best_dev).
struct MetricsRecord {
  int64_t step = 0;
  std::map<std::string, double> values;
  bool has(const std::string& k) const { return values.count(k) > 0; }
};

// Reads a log. Throws IOError naming the file and line of a line that is not a record; a
// torn last line (no newline: a write cut by a kill) is skipped when tolerate_torn_tail.
std::vector<MetricsRecord> read_metrics(const std::string& path, bool tolerate_torn_tail = false);

class MetricsLog {
 public:
  // fresh: start an empty log; else keep the records with step <= keep_through (a resume).
  MetricsLog(const std::string& path, bool fresh, int64_t keep_through = 0);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  // One line, handed to the OS whole. A failed write (a full disk) throws IOError naming the
  // file and the reason, and cuts the file back to the lines before it (best effort).
  void write(const MetricsRecord& r);
  // The lines written so far reach the disk (fsync): called before a checkpoint, so the log
  // holds every line up to the checkpoint's step whenever the checkpoint exists.
  void sync();

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace lotgrad::models
