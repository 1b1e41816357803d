// Small command-line helpers shared by the lotgrad subcommands: `--key value`, `--key=value`
// and `--flag` parsing with typed getters and errors that name the option.
#pragma once
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace lotgrad::cli {

class Args {
 public:
  // argv[0..argc) are the subcommand's own arguments (after the subcommand name).
  Args(int argc, char** argv, const std::vector<std::string>& flags = {});
  bool has(const std::string& key) const { return kv_.count(key) > 0; }
  bool flag(const std::string& key) const;
  std::string get(const std::string& key, const std::string& def) const;
  int64_t get_int(const std::string& key, int64_t def) const;
  double get_double(const std::string& key, double def) const;
  std::vector<int64_t> get_int_list(const std::string& key, const std::vector<int64_t>& def) const;
  const std::vector<std::string>& positional() const { return pos_; }
  // Throws if an option was given that is not in `known` (catches typos).
  void check_known(const std::vector<std::string>& known) const;

 private:
  std::map<std::string, std::string> kv_;
  std::vector<std::string> pos_;
};

}  // namespace lotgrad::cli
