#include "chars.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "detail.h"

namespace lotgrad::data {

namespace fs = std::filesystem;

token_t char_id(unsigned char c) {
  if (c == '\n') return kCharNewline;
  if (c >= 32 && c <= 126) return (token_t)(c - 31);
  return kCharUnknown;
}

char char_of(token_t id, char unknown) {
  if (id < 0 || id >= kCharVocab)
    throw std::out_of_range("char_of: id " + std::to_string(id) + " is outside [0, " + std::to_string(kCharVocab) + ")");
  if (id == kCharNewline) return '\n';
  if (id == kCharUnknown) return unknown;
  return (char)(id + 31);
}

std::vector<token_t> encode_chars(std::string_view text) {
  std::vector<token_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = char_id((unsigned char)text[i]);
  return ids;
}

std::string decode_chars(const std::vector<token_t>& ids, char unknown) {
  std::string s(ids.size(), ' ');
  for (size_t i = 0; i < ids.size(); ++i) s[i] = char_of(ids[i], unknown);
  return s;
}

double unknown_fraction(const std::vector<token_t>& ids) {
  if (ids.empty()) return 0.0;
  return (double)std::count(ids.begin(), ids.end(), kCharUnknown) / (double)ids.size();
}

namespace {
[[noreturn]] void refuse(const std::string& path, const std::string& what) {
  throw std::invalid_argument(path + ": " + what);
}

// Length of the well-formed UTF-8 sequence starting at s[i] (2..4), or 0 when there is none.
// Overlong forms and surrogates are not singled out: this only tells text from binary.
size_t utf8_length(std::string_view s, size_t i) {
  const unsigned char c = (unsigned char)s[i];
  const size_t n = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if (((unsigned char)s[i + k] & 0xC0) != 0x80) return 0;
  return n;
}

// Bytes that are neither printable ASCII, whitespace, nor part of a well-formed UTF-8 character.
size_t non_text_bytes(std::string_view s) {
  size_t bad = 0;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = (unsigned char)s[i];
    if ((c >= 32 && c < 127) || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v') { ++i; continue; }
    if (c >= 0x80) {
      if (const size_t n = utf8_length(s, i)) { i += n; continue; }
    }
    ++bad, ++i;
  }
  return bad;
}
}  // namespace

std::string read_text_corpus(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) refuse(path, "not found (expected a text file)");
  std::string text;
  try {
    text = detail::read_file(path);
  } catch (const IOError& e) {
    throw std::invalid_argument(e.what());
  }
  if (text.empty()) refuse(path, "empty file, expected text");
  if (const size_t nul = text.find('\0'); nul != std::string::npos) {
    const int64_t line = 1 + std::count(text.begin(), text.begin() + (std::ptrdiff_t)nul, '\n');
    throw std::invalid_argument(path + ":" + std::to_string(line) + ": NUL byte at byte offset " + std::to_string(nul) +
                                ": a binary file, expected text");
  }
  const size_t bad = non_text_bytes(text);
  if (bad * 4 > text.size()) {
    std::ostringstream os;
    os << bad << " of " << text.size() << " bytes (" << 100.0 * (double)bad / (double)text.size()
       << "%) are control bytes or invalid UTF-8: a binary file, expected text";
    refuse(path, os.str());
  }
  return text;
}

std::vector<std::string> fortunes_corpus_files(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return files;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const fs::path& p = e.path();
    if (p.extension() == ".dat" || !e.is_regular_file(ec) || e.is_symlink(ec)) continue;  // skips the .u8 links
    if (fs::exists(p.string() + ".dat", ec)) files.push_back(p.string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string read_fortunes_corpus(const std::string& dir) {
  const std::vector<std::string> files = fortunes_corpus_files(dir);
  if (files.empty())
    throw std::invalid_argument("read_fortunes_corpus: no fortune files in " + dir +
                                ": install the Debian package fortunes (apt-get install fortunes), or give --data FILE");
  std::string all;
  for (const std::string& f : files) all += read_text_corpus(f);
  return all;
}

namespace {
// Windows of seq_len + 1 ids overlapping by one, over ids[begin, end).
Dataset windows(const std::vector<token_t>& ids, size_t begin, size_t end, int64_t seq_len, const std::string& name) {
  Dataset d;
  d.name = name;
  d.vocab_size = d.num_classes = kCharVocab;
  const size_t L = (size_t)seq_len, count = end - begin > L ? (end - begin - 1) / L : 0;
  d.examples.resize(count);
  for (size_t k = 0; k < count; ++k) {
    const auto w = ids.begin() + (std::ptrdiff_t)(begin + k * L);
    d.examples[k].tokens.assign(w, w + (std::ptrdiff_t)L);
    d.examples[k].targets.assign(w + 1, w + (std::ptrdiff_t)L + 1);
  }
  return d;
}

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
}  // namespace

CharSplits char_lm_splits(const std::vector<token_t>& ids, int64_t seq_len, double val_frac, double test_frac,
                          const std::string& name) {
  const std::string fn = "char_lm_splits(" + name + "): ";
  if (seq_len < 1) throw std::invalid_argument(fn + "seq_len = " + std::to_string(seq_len) + " must be >= 1");
  for (auto [opt, v] : {std::pair{"val_frac", val_frac}, {"test_frac", test_frac}})
    if (!(v >= 0.0 && v < 1.0)) throw std::invalid_argument(fn + opt + " = " + num(v) + " must be in [0, 1)");
  if (!(val_frac + test_frac < 1.0))
    throw std::invalid_argument(fn + "val_frac + test_frac = " + num(val_frac) + " + " + num(test_frac) +
                                " leaves no training text");
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= kCharVocab)
      throw std::invalid_argument(fn + "id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                  " is outside [0, " + std::to_string(kCharVocab) + ")");
  const int64_t n = (int64_t)ids.size();
  CharSplits s;
  s.val_chars = std::llround(val_frac * (double)n);
  s.test_chars = std::llround(test_frac * (double)n);
  s.train_chars = n - s.val_chars - s.test_chars;
  const std::string sizes = " (" + std::to_string(n) + " characters: train " + std::to_string(s.train_chars) +
                            ", val " + std::to_string(s.val_chars) + ", test " + std::to_string(s.test_chars) +
                            "; val_frac = " + num(val_frac) + ", test_frac = " + num(test_frac) + ")";
  const struct { const char* split; int64_t chars; double frac; } parts[3] = {
      {"train", s.train_chars, 1.0}, {"val", s.val_chars, val_frac}, {"test", s.test_chars, test_frac}};
  for (const auto& p : parts)
    if (p.frac > 0.0 && p.chars < seq_len + 1)
      throw std::invalid_argument(fn + "the " + p.split + " split has " + std::to_string(p.chars) +
                                  " characters, fewer than one context of seq_len + 1 = " + std::to_string(seq_len + 1) +
                                  sizes);
  const size_t a = (size_t)s.train_chars, b = a + (size_t)s.val_chars;
  s.train = windows(ids, 0, a, seq_len, name + "/train");
  s.val = windows(ids, a, b, seq_len, name + "/val");
  s.test = windows(ids, b, ids.size(), seq_len, name + "/test");
  return s;
}

}  // namespace lotgrad::data
