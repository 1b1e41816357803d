// A fresh temporary directory per object, removed with everything in it when the object goes
// out of scope. Unique per process (pid) and per object (a counter): test processes run in
// parallel under ctest -j.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

namespace lotgrad::testing {

struct TmpDir {
  std::filesystem::path path;
  TmpDir() {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("lotgrad_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TmpDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TmpDir(const TmpDir&) = delete;
  TmpDir& operator=(const TmpDir&) = delete;
  // The path of a file in the directory.
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  // Writes bytes to a file in the directory; returns its path.
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string p = (path / name).string();
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
};

}  // namespace lotgrad::testing
