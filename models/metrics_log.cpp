#include "metrics_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "../core/error.h"
#include "../core/fault.h"
#include "../core/io.h"

namespace lotgrad::models {

using json = nlohmann::json;

namespace {
// Calls each(record, line) for every record of the log's text, in order. A line that is not a
// record throws naming file and line, but for a torn last line (no newline) when tolerated.
void for_each_record(const std::string& path, const std::string& text, bool tolerate_torn_tail,
                     const std::function<void(MetricsRecord&&, const std::string&)>& each) {
  size_t pos = 0;
  for (int64_t lineno = 1; pos < text.size(); ++lineno) {
    const size_t end = text.find('\n', pos);
    const bool torn = end == std::string::npos;
    const std::string line = text.substr(pos, torn ? std::string::npos : end - pos);
    pos = torn ? text.size() : end + 1;
    if (line.empty()) continue;
    MetricsRecord r;
    try {
      const json j = json::parse(line);
      if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) throw std::invalid_argument("no step");
      r.step = j["step"].get<int64_t>();
      for (auto it = j.begin(); it != j.end(); ++it)
        if (it.key() != "step" && it.value().is_number()) r.values[it.key()] = it.value().get<double>();
    } catch (const std::exception&) {
      if (torn && tolerate_torn_tail) break;
      throw IOError(path + ":" + std::to_string(lineno) + ": not a metrics line: " + line.substr(0, 80));
    }
    each(std::move(r), line);
  }
}
}  // namespace

std::vector<MetricsRecord> read_metrics(const std::string& path, bool tolerate_torn_tail) {
  std::vector<MetricsRecord> out;
  for_each_record(path, read_file(path), tolerate_torn_tail,
                  [&](MetricsRecord&& r, const std::string&) { out.push_back(std::move(r)); });
  return out;
}

MetricsLog::MetricsLog(const std::string& path, bool fresh, int64_t keep_through) : path_(path) {
  std::string kept;  // a resume keeps the lines as written, through the checkpoint's step
  if (!fresh && std::filesystem::exists(path))
    for_each_record(path, read_file(path), /*tolerate_torn_tail=*/true, [&](MetricsRecord&& r, const std::string& line) {
      if (r.step <= keep_through) kept += line + "\n";
    });
  write_file_atomic(path, kept);
  fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd_ < 0) throw IOError("metrics log: cannot open " + path + " for writing: " + std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::write(const MetricsRecord& r) {
  json j = {{"step", r.step}};
  for (const auto& [k, v] : r.values) j[k] = v;
  const std::string line = j.dump() + "\n";
  const off_t before = ::lseek(fd_, 0, SEEK_END);
  const fault::Action fault = fault::at("metrics");  // core/fault.h: half the line, then the fault
  const size_t n = fault == fault::Action::none ? line.size() : line.size() / 2;
  int err = 0;
  for (size_t done = 0; done < n && !err;) {
    const ssize_t k = ::write(fd_, line.data() + done, n - done);
    if (k > 0) done += (size_t)k;
    else if (k < 0 && errno != EINTR) err = errno;
    else if (k == 0) err = EIO;
  }
  if (!err && fault == fault::Action::kill) fault::kill_now();
  if (!err && fault == fault::Action::enospc) err = ENOSPC;
  if (!err) return;
  const bool cut = before >= 0 && ::ftruncate(fd_, before) == 0;  // no torn line when the disk frees up
  throw IOError("metrics log: " + path_ + ": write failed: " + std::strerror(err) + " (the line of step " +
                std::to_string(r.step) + (cut ? "; the log keeps the lines before it)" : ")") +
                (fault == fault::Action::enospc ? " (injected by LOTGRAD_FAULT_ENOSPC)" : ""));
}

void MetricsLog::sync() {
  if (::fsync(fd_) != 0) throw IOError("metrics log: " + path_ + ": fsync failed: " + std::strerror(errno));
}

}  // namespace lotgrad::models
