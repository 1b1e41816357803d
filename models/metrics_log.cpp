#include "metrics_log.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "../core/io.h"

namespace lotgrad::models {

using json = nlohmann::json;

std::vector<MetricsRecord> read_metrics(const std::string& path, bool tolerate_torn_tail) {
  const std::string text = read_file(path);
  std::vector<MetricsRecord> out;
  size_t pos = 0;
  for (int64_t lineno = 1; pos < text.size(); ++lineno) {
    const size_t end = text.find('\n', pos);
    const bool torn = end == std::string::npos;
    const std::string line = text.substr(pos, torn ? std::string::npos : end - pos);
    pos = torn ? text.size() : end + 1;
    if (line.empty()) continue;
    try {
      const json j = json::parse(line);
      if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) throw std::invalid_argument("no step");
      MetricsRecord r;
      r.step = j["step"].get<int64_t>();
      for (auto it = j.begin(); it != j.end(); ++it)
        if (it.key() != "step" && it.value().is_number()) r.values[it.key()] = it.value().get<double>();
      out.push_back(std::move(r));
    } catch (const std::exception&) {
      if (torn && tolerate_torn_tail) break;
      throw IOError(path + ":" + std::to_string(lineno) + ": not a metrics line: " + line.substr(0, 80));
    }
  }
  return out;
}

MetricsLog::MetricsLog(const std::string& path, bool fresh, int64_t keep_through) : path_(path) {
  std::string kept;
  if (!fresh && std::filesystem::exists(path))
    for (const auto& r : read_metrics(path, /*tolerate_torn_tail=*/true)) {
      if (r.step > keep_through) continue;
      json j = {{"step", r.step}};
      for (const auto& [k, v] : r.values) j[k] = v;
      kept += j.dump() + "\n";
    }
  write_file_atomic(path, kept);
  out_.open(path, std::ios::app);
  if (!out_) throw IOError("cannot open " + path + " for writing");
}

void MetricsLog::write(const MetricsRecord& r) {
  json j = {{"step", r.step}};
  for (const auto& [k, v] : r.values) j[k] = v;
  out_ << j.dump() << '\n' << std::flush;
  if (!out_) throw IOError("cannot write to " + path_ + " (disk full?)");
}

}  // namespace lotgrad::models
