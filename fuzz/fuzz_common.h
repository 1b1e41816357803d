// Shared helpers of the fuzz targets: a per-process scratch folder for readers that take a
// path, the check that a reader's error names its file, and a crash that says why.
//
// A target calls the reader, catches only the exceptions the reader documents (a clear error
// is the expected outcome for most inputs) and lets everything else escape: an uncaught
// exception aborts, which libFuzzer reports as a crash with the input saved.
#pragma once
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include <lotgrad/core/tensor.h>

namespace lotgrad::fuzz {

// Prints what broke and aborts (libFuzzer saves the input as crash-<sha1>).
[[noreturn]] inline void die(const std::string& what) {
  std::fprintf(stderr, "\nFUZZ CHECK FAILED: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}
#define FUZZ_CHECK(cond, what) \
  do {                         \
    if (!(cond)) ::lotgrad::fuzz::die(std::string(#cond) + ": " + (what)); \
  } while (0)

// A folder of this process's own under $TMPDIR, else /dev/shm (memory), else /tmp; removed at
// exit. Readers that only take a path read the fuzz bytes from files written here.
class Scratch {
 public:
  explicit Scratch(const std::string& target) {
    const char* env = std::getenv("TMPDIR");
    std::filesystem::path root = env && *env ? env : std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    dir_ = (root / ("lotgrad-fuzz-" + target + "-" + std::to_string((long long)::getpid()))).string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  const std::string& dir() const { return dir_; }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  // Writes bytes to dir/name (parent folders made) and returns the path.
  std::string write(const std::string& name, std::string_view bytes) const {
    const std::string p = path(name);
    std::filesystem::create_directories(std::filesystem::path(p).parent_path());
    FILE* f = std::fopen(p.c_str(), "wb");
    if (!f) die("cannot create scratch file " + p);
    if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) die("cannot write " + p);
    if (std::fclose(f) != 0) die("cannot close " + p);
    return p;
  }

 private:
  std::string dir_;
};

// A reader's error must say which file it is about.
inline void expect_names(const std::exception& e, const std::string& name) {
  FUZZ_CHECK(std::string_view(e.what()).find(name) != std::string_view::npos,
             std::string("the error does not name '") + name + "': " + e.what());
}

// Same dtype, shape and bytes (compared as bytes, so NaNs compare equal to themselves).
inline bool same_tensor(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  const size_t n = (size_t)ca.numel() * dtype_size(ca.dtype());
  return n == 0 || std::memcmp(ca.raw_data(), cb.raw_data(), n) == 0;
}

inline std::string as_string(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

}  // namespace lotgrad::fuzz
