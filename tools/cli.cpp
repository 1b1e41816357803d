#include "cli.h"

#include <algorithm>
#include <sstream>

namespace lotgrad::cli {

Args::Args(int argc, char** argv, const std::vector<std::string>& flags) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      pos_.push_back(a);
      continue;
    }
    a = a.substr(2);
    auto eq = a.find('=');
    if (eq != std::string::npos) {
      kv_[a.substr(0, eq)] = a.substr(eq + 1);
    } else if (std::find(flags.begin(), flags.end(), a) != flags.end() || i + 1 >= argc ||
               std::string(argv[i + 1]).rfind("--", 0) == 0) {
      kv_[a] = "1";
    } else {
      kv_[a] = argv[++i];
    }
  }
}
bool Args::flag(const std::string& key) const {
  auto it = kv_.find(key);
  return it != kv_.end() && it->second != "0" && it->second != "false";
}
std::string Args::get(const std::string& key, const std::string& def) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? def : it->second;
}
int64_t Args::get_int(const std::string& key, int64_t def) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return def;
  try {
    size_t used = 0;
    int64_t v = std::stoll(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument("");
    return v;
  } catch (...) {
    throw std::invalid_argument("--" + key + " expects an integer, got \"" + it->second + "\"");
  }
}
double Args::get_double(const std::string& key, double def) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return def;
  try {
    size_t used = 0;
    double v = std::stod(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument("");
    return v;
  } catch (...) {
    throw std::invalid_argument("--" + key + " expects a number, got \"" + it->second + "\"");
  }
}
std::vector<int64_t> Args::get_int_list(const std::string& key, const std::vector<int64_t>& def) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return def;
  std::vector<int64_t> out;
  std::stringstream ss(it->second);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stoll(item));
    } catch (...) {
      throw std::invalid_argument("--" + key + " expects comma-separated integers, got \"" + it->second + "\"");
    }
  }
  return out;
}
void Args::check_known(const std::vector<std::string>& known) const {
  for (auto& [k, v] : kv_)
    if (std::find(known.begin(), known.end(), k) == known.end())
      throw std::invalid_argument("unknown option --" + k);
}

}  // namespace lotgrad::cli
