// Character-level language modelling data.
//
// Vocabulary: the 96 characters of the small-vocabulary OpenWebText of Kuang et al.
// (arXiv 2509.07963; printable ASCII plus newline), and one id for everything else:
//   id 0       '\n'
//   ids 1..95  the printable ASCII characters 32 (space) .. 126 ('~'), id = c - 31
//   id 96      unknown: any other byte (tab, carriage return, other control bytes, and each
//              byte of a multi-byte UTF-8 character)
// There is no padding id: every window of a split is full, so batches have no padding.
//
// Corpus: any text file (read_text_corpus), or by default Debian's `fortunes` package
// (/usr/share/games/fortunes: about 2.6 MB of quotations separated by "%" lines, installs
// offline with apt-get). Its text files are the ones with a `.dat` index beside them; the
// `.u8` names are links to the same files and are skipped.
//
// Splits: contiguous blocks of the id sequence, train first, then val, then test (no example
// straddles two splits). Each block is cut into windows of seq_len + 1 characters that overlap
// by one: tokens = window[0 .. L-1], targets = window[1 .. L], so every character of a block
// except its first is predicted exactly once (a tail shorter than L is dropped). The metric is
// the mean cross-entropy over all positions, in bits per character.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dataset.h"

namespace lotgrad::data {

constexpr int64_t kCharVocab = 97;
constexpr token_t kCharNewline = 0;
constexpr token_t kCharUnknown = 96;

// Id of one byte (kCharUnknown outside '\n' and 32..126).
token_t char_id(unsigned char c);
// Character of an id; kCharUnknown decodes to `unknown`. Throws std::out_of_range naming an id
// outside [0, kCharVocab).
char char_of(token_t id, char unknown = '?');
std::vector<token_t> encode_chars(std::string_view text);
// Inverse of encode_chars on text made of '\n' and printable ASCII; lossy for kCharUnknown.
std::string decode_chars(const std::vector<token_t>& ids, char unknown = '?');
// Fraction of ids equal to kCharUnknown (0 for an empty list).
double unknown_fraction(const std::vector<token_t>& ids);

// The whole file as bytes. Throws std::invalid_argument naming the file when it is missing or
// unreadable, empty, or binary: it holds a NUL byte (the message gives its line and byte
// offset), or more than a quarter of its bytes are control bytes or invalid UTF-8.
std::string read_text_corpus(const std::string& path);

// Where Debian's `fortunes` package installs its files.
inline const std::string kFortunesDir = "/usr/share/games/fortunes";
// The plain-text fortune files of `dir` (those with a `.dat` index beside them, not the
// indexes and not the `.u8` links), sorted by file name. Empty when there are none.
std::vector<std::string> fortunes_corpus_files(const std::string& dir = kFortunesDir);
// Those files concatenated in that order, each checked by read_text_corpus. Throws
// std::invalid_argument saying "install the Debian package fortunes (apt-get install
// fortunes), or give --data FILE" when `dir` holds none.
std::string read_fortunes_corpus(const std::string& dir = kFortunesDir);

struct CharSplits {
  Dataset train, val, test;  // named <name>/train, <name>/val, <name>/test
  int64_t train_chars = 0, val_chars = 0, test_chars = 0;  // characters of each contiguous block
};
// Splits `ids` (values in [0, kCharVocab)) as described above: the val and test blocks hold
// round(val_frac · size) and round(test_frac · size) characters, train the rest. Each example
// has L = seq_len tokens and L targets; vocab_size = num_classes = kCharVocab. A fraction of 0
// gives an empty split. Throws std::invalid_argument naming the sizes when seq_len < 1, the
// fractions are outside [0, 1) or sum to 1 or more, an id is out of range, or a split (train
// always; val and test when their fraction is > 0) is shorter than one context, seq_len + 1.
CharSplits char_lm_splits(const std::vector<token_t>& ids, int64_t seq_len, double val_frac = 0.05,
                          double test_frac = 0.05, const std::string& name = "chars");

}  // namespace lotgrad::data
