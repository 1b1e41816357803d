// LRA text CSV reader (data/text.h read_text_csv: `Source,Target`, RFC 4180 quoting).
// Oracles: an IOError names the file and line; labels are in range; token ids are bytes + 1;
// and the rows that load, written back with write_text_csv, read back identical.
#include <lotgrad/data/text.h>

#include "fuzz_common.h"

using namespace lotgrad;
using namespace lotgrad::data;

static const fuzz::Scratch scratch("text_csv");

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = scratch.write("text_train.tsv", {reinterpret_cast<const char*>(data), size});
  for (const TextOptions opt : {TextOptions{.max_length = 0, .num_classes = 2}, TextOptions{.max_length = 3, .num_classes = 10}}) {
    Dataset d;
    try {
      d = read_text_csv(path, opt);
    } catch (const IOError& e) {
      fuzz::expect_names(e, path + ":");
      continue;
    }
    std::vector<std::pair<std::string, int64_t>> rows;
    for (const Example& e : d.examples) {
      FUZZ_CHECK(e.label >= 0 && e.label < opt.num_classes, "label " + std::to_string(e.label));
      FUZZ_CHECK(opt.max_length == 0 || (int64_t)e.tokens.size() <= opt.max_length, "not truncated");
      for (token_t t : e.tokens) FUZZ_CHECK(t >= 1 && t <= 256, "token id " + std::to_string(t));
      rows.emplace_back(decode_bytes(e.tokens), e.label);
    }
    if (opt.max_length != 0) continue;
    const std::string again = scratch.path("again.tsv");
    write_text_csv(again, rows);
    const Dataset back = read_text_csv(again, opt);
    FUZZ_CHECK(back.size() == d.size(), std::to_string(d.size()) + " rows came back as " + std::to_string(back.size()));
    for (size_t i = 0; i < d.size(); ++i)
      FUZZ_CHECK(back[i].tokens == d[i].tokens && back[i].label == d[i].label,
                 "row " + std::to_string(i) + " changed in a write/read round trip: '" + rows[i].first + "'");
  }
  return 0;
}
