// AAN retrieval TSV reader (data/text.h read_aan_tsv: label, id1, id2, text1, text2).
// Oracles: an IOError names the file and line; labels are 0 or 1; both documents are encoded
// bytes; and the rows that load, written back with write_aan_tsv, read back identical (or the
// writer refuses them with std::invalid_argument).
#include <lotgrad/data/text.h>

#include "fuzz_common.h"

using namespace lotgrad;
using namespace lotgrad::data;

static const fuzz::Scratch scratch("aan");

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = scratch.write("new_aan_pairs.train.tsv", {reinterpret_cast<const char*>(data), size});
  for (const int64_t max_length : {0, 3}) {
    Dataset d;
    try {
      d = read_aan_tsv(path, RetrievalOptions{.max_length = max_length});
    } catch (const IOError& e) {
      fuzz::expect_names(e, path + ":");
      continue;
    }
    FUZZ_CHECK(d.paired, "a retrieval dataset that is not paired");
    std::vector<RetrievalRow> rows;
    for (const Example& e : d.examples) {
      FUZZ_CHECK(e.label == 0 || e.label == 1, "label " + std::to_string(e.label));
      for (const auto* toks : {&e.tokens, &e.tokens2}) {
        FUZZ_CHECK(max_length == 0 || (int64_t)toks->size() <= max_length, "not truncated");
        for (token_t t : *toks) FUZZ_CHECK(t >= 1 && t <= 256, "token id " + std::to_string(t));
      }
      rows.push_back({e.label, "a", "b", decode_bytes(e.tokens), decode_bytes(e.tokens2)});
    }
    if (max_length != 0) continue;
    const std::string again = scratch.path("again.tsv");
    try {
      write_aan_tsv(again, rows);
    } catch (const std::invalid_argument&) {
      continue;
    }
    const Dataset back = read_aan_tsv(again);
    FUZZ_CHECK(back.size() == d.size(), std::to_string(d.size()) + " rows came back as " + std::to_string(back.size()));
    for (size_t i = 0; i < d.size(); ++i)
      FUZZ_CHECK(back[i].tokens == d[i].tokens && back[i].tokens2 == d[i].tokens2 && back[i].label == d[i].label,
                 "row " + std::to_string(i) + " changed in a write/read round trip");
  }
  return 0;
}
