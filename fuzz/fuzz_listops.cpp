// ListOps TSV reader (data/listops.h read_listops_tsv), with and without label verification
// and truncation. Oracles: an IOError names the file and line; the labels are in 0..9; with
// verify_labels every label equals the evaluated expression; every well-formed expression that
// loads prints (listops_source) to text that tokenizes back to the same ids.
#include <lotgrad/data/listops.h>

#include "fuzz_common.h"

using namespace lotgrad;
using namespace lotgrad::data;

static const fuzz::Scratch scratch("listops");

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = scratch.write("basic_train.tsv", {reinterpret_cast<const char*>(data), size});
  for (const ListOpsReadOptions opt : {ListOpsReadOptions{}, ListOpsReadOptions{.max_length = 5, .verify_labels = true}}) {
    Dataset d;
    try {
      d = read_listops_tsv(path, opt);
    } catch (const IOError& e) {
      fuzz::expect_names(e, path + ":");  // file and line
      continue;
    }
    for (const Example& e : d.examples) {
      FUZZ_CHECK(e.label >= 0 && e.label < kListOpsClasses, "label " + std::to_string(e.label));
      FUZZ_CHECK(!e.tokens.empty(), "an example without tokens");
      FUZZ_CHECK(opt.max_length == 0 || (int64_t)e.tokens.size() <= opt.max_length, "not truncated");
      for (token_t t : e.tokens) FUZZ_CHECK(t > kListOpsPad && t < kListOpsVocab, "token id " + std::to_string(t));
      std::string source;
      try {
        source = listops_source(e.tokens);  // throws for ids that are not one tree (truncated ones)
      } catch (const std::invalid_argument&) {
        continue;
      }
      FUZZ_CHECK(listops_tokenize(source) == e.tokens, "listops_source does not tokenize back: " + source);
    }
  }
  return 0;
}
