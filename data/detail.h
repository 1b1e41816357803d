// Internal helpers shared by the data/ sources: a counter-based random stream and file I/O
// that reports errors as IOError naming the file (and line).
#pragma once
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.h"
#include "../core/random.h"

namespace lotgrad::data::detail {

// Sequential draws from lotgrad's counter-based generator: draw i = bits(seed, i). Portable and
// independent of the standard library's distributions.
struct Rng {
  uint64_t seed, counter = 0;
  explicit Rng(uint64_t s) : seed(s) {}
  uint64_t bits() { return Generator::bits(seed, counter++); }
  double uniform() { return (double)(bits() >> 11) * 0x1.0p-53; }  // [0, 1)
  // Uniform integer in [0, n), n > 0 (multiply-shift; bias < n / 2^64).
  uint64_t below(uint64_t n) { return (uint64_t)(((unsigned __int128)bits() * n) >> 64); }
  int64_t range(int64_t lo, int64_t hi_inclusive) { return lo + (int64_t)below((uint64_t)(hi_inclusive - lo + 1)); }
};

// Examples first, ..., first + count - 1 of a generator whose example i depends only on
// (seed, i): make(i) builds one.
template <class F>
auto generate_range(int64_t count, int64_t first, F make) {
  std::vector<decltype(make(first))> out;
  out.reserve((size_t)count);
  for (int64_t i = 0; i < count; ++i) out.push_back(make(first + i));
  return out;
}

// A sub-seed for stream `k` of `seed` (e.g. one per epoch or per image).
inline uint64_t subseed(uint64_t seed, uint64_t k) { return Generator::bits(seed ^ 0x6a09e667f3bcc909ULL, k); }

[[noreturn]] void fail(const std::string& path, const std::string& what);
[[noreturn]] void fail_line(const std::string& path, int64_t line, const std::string& what);

// Whole file, binary. Only regular files (a FIFO or device is an error, not a hang or an
// endless read); a file larger than max_bytes is an error before anything is read.
std::string read_file(const std::string& path, uint64_t max_bytes = UINT64_MAX);
// Opens a regular file for reading (O_RDONLY), its size in *size; fails naming the file for
// anything else. The caller closes the descriptor.
int open_regular(const std::string& path, uint64_t* size = nullptr);
void write_file(const std::string& path, const std::string& bytes);  // creates parent folders
void make_dirs(const std::string& path);

// Splits text into lines (without the terminator; a trailing "\r" is removed).
std::vector<std::string> split_lines(const std::string& text);
std::vector<std::string> split(const std::string& s, char sep);
std::vector<std::string> split_ws(const std::string& s);  // on runs of spaces/tabs
// Strict integer parse of the whole string (optional surrounding spaces); false on failure.
bool parse_int(const std::string& s, int64_t& out);
bool parse_double(const std::string& s, double& out);

// Parses the space-separated fields of text with std::from_chars into out. Returns the index of
// the first field that is not a whole T or that ok(value) rejects (bad: its text; out holds
// the fields before it), or -1 when every field parsed.
template <class T, class Ok>
int64_t parse_spaced(std::string_view text, std::vector<T>& out, std::string_view& bad, Ok ok) {
  out.clear();
  for (size_t i = 0; i < text.size();) {
    if (text[i] == ' ') {
      ++i;
      continue;
    }
    const size_t e = std::min(text.find(' ', i), text.size());
    T v{};
    const auto r = std::from_chars(text.data() + i, text.data() + e, v);
    if (r.ec != std::errc() || r.ptr != text.data() + e || !ok(v)) {
      bad = text.substr(i, e - i);
      return (int64_t)out.size();
    }
    out.push_back(v);
    i = e;
  }
  return -1;
}

}  // namespace lotgrad::data::detail
