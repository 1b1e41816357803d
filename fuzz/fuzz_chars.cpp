// Character-LM corpus reader (data/chars.h read_text_corpus, which refuses binary files) and
// the encoding and splitting that follow it. Oracles: refusals are std::invalid_argument naming
// the file; encode_chars ids are in [0, kCharVocab) and decode back to the printable text; the
// windows of char_lm_splits are shifted copies of the ids.
#include <lotgrad/data/chars.h>

#include "fuzz_common.h"

using namespace lotgrad;
using namespace lotgrad::data;

static const fuzz::Scratch scratch("chars");

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = scratch.write("corpus.txt", {reinterpret_cast<const char*>(data), size});
  std::string text;
  try {
    text = read_text_corpus(path);
  } catch (const std::invalid_argument& e) {
    fuzz::expect_names(e, path);
    return 0;
  }
  FUZZ_CHECK(text.size() == size && std::memcmp(text.data(), data, size) == 0, "the corpus is not the file's bytes");
  const std::vector<token_t> ids = encode_chars(text);
  const std::string back = decode_chars(ids, '\x01');
  for (size_t i = 0; i < ids.size(); ++i) {
    FUZZ_CHECK(ids[i] >= 0 && ids[i] < kCharVocab, "id " + std::to_string(ids[i]));
    FUZZ_CHECK(back[i] == (ids[i] == kCharUnknown ? '\x01' : text[i]), "decode_chars at byte " + std::to_string(i));
  }
  const int64_t seq_len = 1 + (int64_t)(size % 7);
  CharSplits s;
  try {
    s = char_lm_splits(ids, seq_len, 0.1, 0.1, "fuzz");
  } catch (const std::invalid_argument&) {
    return 0;  // too short for one context per split
  }
  FUZZ_CHECK(s.train_chars + s.val_chars + s.test_chars == (int64_t)ids.size(), "split sizes do not add up");
  size_t begin = 0;
  for (const auto& [split, chars] : {std::pair{&s.train, s.train_chars}, {&s.val, s.val_chars}, {&s.test, s.test_chars}}) {
    for (size_t k = 0; k < split->size(); ++k) {
      const Example& e = (*split)[k];
      FUZZ_CHECK((int64_t)e.tokens.size() == seq_len && (int64_t)e.targets.size() == seq_len,
                 split->name + " window " + std::to_string(k) + " has the wrong length");
      const auto w = ids.begin() + (std::ptrdiff_t)(begin + k * (size_t)seq_len);
      FUZZ_CHECK(std::equal(e.tokens.begin(), e.tokens.end(), w) && std::equal(e.targets.begin(), e.targets.end(), w + 1),
                 split->name + " window " + std::to_string(k));
    }
    FUZZ_CHECK((int64_t)split->size() * (seq_len) <= std::max<int64_t>(chars - 1, 0), split->name + " overruns its block");
    begin += (size_t)chars;
  }
  return 0;
}
