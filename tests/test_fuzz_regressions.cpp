// Inputs the fuzz targets of fuzz/ found (fuzz/README.md), kept as regression tests: each
// reproducer is embedded as bytes, written to a temporary file and fed to the reader it broke.
// Also: the committed seed corpora (fuzz/corpus/) load with the production readers, so a
// format change that makes them stale fails here and not only in a fuzz run.
#include <doctest/doctest.h>
#include <lotgrad/core/io.h>
#include <lotgrad/data/chars.h>
#include <lotgrad/data/image.h>
#include <lotgrad/data/listops.h>
#include <lotgrad/data/text.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "support/tmp_dir.h"

using namespace lotgrad;
using namespace lotgrad::data;
namespace fs = std::filesystem;
using lotgrad::testing::TmpDir;

namespace {
// The files of fuzz/corpus/<target>/, sorted.
std::vector<std::string> seeds(const std::string& target) {
  // ctest sets LOTGRAD_SOURCE_DIR; run by hand from the build folder, __FILE__ is ../tests/...
  const char* src = std::getenv("LOTGRAD_SOURCE_DIR");
  const fs::path dir = (src ? fs::path(src) : fs::path(__FILE__).parent_path().parent_path()) / "fuzz" / "corpus" / target;
  REQUIRE_MESSAGE(fs::is_directory(dir), "no seed corpus at " << dir << " (set LOTGRAD_SOURCE_DIR)");
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// The message of the std::invalid_argument f throws ("" when it throws nothing).
template <class F>
std::string invalid_argument_of(F f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}
}  // namespace

// fuzz_aan, crash-79c0ed81: the last line ends in "\r\r\n". The reader drops one '\r' as the
// CRLF line end, so text2 of row 2 keeps a trailing '\r'; write_aan_tsv used to write it as
// "...\r\n", which reads back without the '\r' (the write/read round trip changed the row).
TEST_CASE("fuzz_aan: a text2 ending in a carriage return is refused by write_aan_tsv") {
  const std::string repro =
      "1.0\tx\ty\tone\ttwo\r\n"
      "0.0\tx\ty\tt\xcb\xcb\xcb\xcb\xcb\xcb\xcb\xcb\xcb\xcb\xcb\xcb\xcb\xcb\ttwo\r\n"
      "0.0\tx\ty\tt\xcb\xcb\xcb\x92\x92\x92\x92\xcb\xcb\xcb\xcb\xcb\xcb\xcb\xcb\xcb\xcb\x10\xcb\xcbh\xcbhree\tfour\r\r\n";
  TmpDir t;
  const Dataset d = read_aan_tsv(t.write("repro.tsv", repro), RetrievalOptions{.max_length = 0});
  REQUIRE(d.size() == 3);
  CHECK(decode_bytes(d[2].tokens2) == "four\r");  // the reader keeps the lone '\r': it is text
  std::vector<RetrievalRow> rows;
  for (const Example& e : d.examples) rows.push_back({e.label, "a", "b", decode_bytes(e.tokens), decode_bytes(e.tokens2)});
  const std::string out = (t.path / "again.tsv").string();
  const std::string msg = invalid_argument_of([&] { write_aan_tsv(out, rows); });
  CHECK(msg.find("again.tsv") != std::string::npos);
  CHECK(msg.find("row 2 text2") != std::string::npos);
  CHECK(msg.find("carriage return") != std::string::npos);
  CHECK_FALSE(fs::exists(out));  // refused before anything is written
  // Without that row, what was read writes and reads back unchanged.
  rows.pop_back();
  write_aan_tsv(out, rows);
  const Dataset back = read_aan_tsv(out, RetrievalOptions{.max_length = 0});
  REQUIRE(back.size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(back[i].label == d[i].label);
    CHECK(back[i].tokens == d[i].tokens);
    CHECK(back[i].tokens2 == d[i].tokens2);
  }
  // A tab or newline inside a field names the row, the field and the byte.
  const std::string tab = invalid_argument_of([&] { write_aan_tsv(out, {{1, "a", "b", "x", "y"}, {0, "a", "b\tc", "x", "y"}}); });
  CHECK(tab.find("row 1 id2 has a tab at byte 1") != std::string::npos);
}

TEST_CASE("the committed seed corpora load with the production readers") {
  TmpDir t;
  for (const std::string& f : seeds("npy")) CHECK_NOTHROW(load_npy(f));
  for (const std::string& f : seeds("checkpoint")) CHECK_NOTHROW(load_checkpoint(f));
  for (const std::string& f : seeds("checkpoint_crc")) {  // payloads: wrap them as fuzz_checkpoint_crc does
    const std::string payload = read_file(f);
    const uint32_t version = kCheckpointVersion, flags = 0;
    const uint64_t size = payload.size();
    std::string file("LOTGCKPT", 8);
    file.append((const char*)&version, 4).append((const char*)&flags, 4).append((const char*)&size, 8) += payload;
    const uint32_t crc = crc32(file.data(), file.size());
    file.append((const char*)&crc, 4);
    CHECK_NOTHROW(checkpoint_from_bytes(file, f));
  }
  for (const std::string& f : seeds("listops"))
    CHECK(read_listops_tsv(f, ListOpsReadOptions{.verify_labels = true}).size() == 6);
  for (const std::string& f : seeds("text_csv")) CHECK(read_text_csv(f).size() >= 2);
  for (const std::string& f : seeds("aan")) CHECK(read_aan_tsv(f).size() == 2);
  for (const std::string& f : seeds("chars")) CHECK_NOTHROW(read_text_corpus(f));
  for (const std::string& f : seeds("cifar")) CHECK(read_cifar10_bin(f).size() == fs::file_size(f) / 3073);
  for (const std::string& f : seeds("idx")) {  // u16 images length, images file, labels file
    const std::string b = read_file(f);
    const size_t n = (unsigned char)b[0] | (unsigned char)b[1] << 8;
    const std::string im = t.write("im", b.substr(2, n)), lb = t.write("lb", b.substr(2 + n));
    CHECK(read_idx_dataset(im, lb, 32).size() == (size_t)read_idx(lb).dims[0]);
  }
  for (const std::string& f : seeds("png")) {
    int w = 0, h = 0;
    const size_t n = read_png_gray(f, &w, &h).size();
    CHECK(n == (size_t)w * h);
    CHECK(n > 0);
  }
}
