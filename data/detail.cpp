#include "detail.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace lotgrad::data::detail {

void fail(const std::string& path, const std::string& what) { throw IOError(path + ": " + what); }
void fail_line(const std::string& path, int64_t line, const std::string& what) {
  throw IOError(path + ":" + std::to_string(line) + ": " + what);
}

int open_regular(const std::string& path, uint64_t* size) {
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever; no effect on the
  // regular files accepted below.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, S_ISDIR(st.st_mode) ? "is a directory, expected a file" : "not a regular file");
  }
  if (size) *size = (uint64_t)st.st_size;
  return fd;
}

std::string read_file(const std::string& path, uint64_t max_bytes) {
  uint64_t size = 0;
  const int fd = open_regular(path, &size);
  if (size > max_bytes) {
    ::close(fd);
    fail(path, "file of " + std::to_string(size) + " bytes is larger than the " + std::to_string(max_bytes) +
                   " bytes this reader accepts");
  }
  std::string out((size_t)size, '\0');
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t k = ::read(fd, out.data() + got, out.size() - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      const std::string why = k < 0 ? std::strerror(errno) : "file shrank while reading";
      ::close(fd);
      fail(path, "read error after " + std::to_string(got) + " of " + std::to_string(size) + " bytes: " + why);
    }
    got += (size_t)k;
  }
  ::close(fd);
  return out;
}

void make_dirs(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) fail(path, "cannot create folder: " + ec.message());
}

void write_file(const std::string& path, const std::string& bytes) {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) make_dirs(parent.string());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) fail(path, std::string("cannot open for writing: ") + std::strerror(errno));
  f.write(bytes.data(), (std::streamsize)bytes.size());
  f.close();
  if (!f) fail(path, "write error");
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b < text.size()) {
    size_t e = text.find('\n', b);
    if (e == std::string::npos) e = text.size();
    size_t end = e;
    if (end > b && text[end - 1] == '\r') --end;
    out.emplace_back(text, b, end - b);
    b = e + 1;
  }
  return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (;;) {
    size_t e = s.find(sep, b);
    if (e == std::string::npos) { out.emplace_back(s, b); break; }
    out.emplace_back(s, b, e - b);
    b = e + 1;
  }
  return out;
}

std::vector<std::string> split_ws(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) ++i;
    size_t b = i;
    while (i < s.size() && !(s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) ++i;
    if (i > b) out.emplace_back(s, b, i - b);
  }
  return out;
}

static std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r"), e = s.find_last_not_of(" \t\r");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

bool parse_int(const std::string& s0, int64_t& out) {
  const std::string s = trim(s0);
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || end != s.c_str() + s.size()) return false;
  out = v;
  return true;
}

bool parse_double(const std::string& s0, double& out) {
  const std::string s = trim(s0);
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (errno != 0 || end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  out = v;
  return true;
}

}  // namespace lotgrad::data::detail
