// data/: generators (determinism, ListOps labels and lengths, Pathfinder balance), every
// reader on small files written here, malformed files (IOError naming file and line), and
// batching (padding masks, per-token targets, shuffling, bucketing, loader resume).
#include <doctest/doctest.h>
#include <lotgrad/data/dataset.h>
#include <lotgrad/data/image.h>
#include <lotgrad/data/listops.h>
#include <lotgrad/data/pathfinder.h>
#include <lotgrad/data/text.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "support/tmp_dir.h"

using namespace lotgrad;
using namespace lotgrad::data;
namespace fs = std::filesystem;
using lotgrad::testing::TmpDir;

namespace {
void write(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}
std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}
// Runs f, which must throw IOError; returns the message.
template <class F>
std::string io_error(F&& f) {
  try {
    f();
  } catch (const IOError& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected IOError, got: " << e.what());
    return "";
  }
  FAIL("expected IOError, nothing thrown");
  return "";
}
bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }
std::vector<token_t> ids(std::initializer_list<int> v) { return std::vector<token_t>(v.begin(), v.end()); }
std::vector<token_t> bytes_plus1(const std::string& s) {
  std::vector<token_t> v;
  for (unsigned char c : s) v.push_back((token_t)c + 1);
  return v;
}
}  // namespace

// ---- ListOps --------------------------------------------------------------------------------

TEST_CASE("listops: evaluation of hand-written expressions") {
  auto ev = [](const std::string& s) { return listops_evaluate(listops_tokenize(s)); };
  CHECK(ev("[MAX 2 9 ]") == 9);
  CHECK(ev("( ( ( [MAX 2 ) 9 ) ] )") == 9);  // official printed form
  CHECK(ev("[MIN 3 [MAX 1 0 ] 2 ]") == 1);
  CHECK(ev("[MED 3 8 1 ]") == 3);
  CHECK(ev("[MED 1 2 ]") == 1);       // int(1.5)
  CHECK(ev("[MED 2 4 7 9 ]") == 5);   // int(5.5)
  CHECK(ev("[MED 9 8 ]") == 8);       // int(8.5)
  CHECK(ev("[SM 9 8 7 ]") == 4);      // 24 mod 10
  CHECK(ev("[SM [MIN 4 5 ] [MED 0 9 ] 3 ]") == 1);  // 4 + 4 + 3 = 11
  CHECK(ev("7") == 7);
  CHECK(ev("[MAX [MIN 9 [SM 5 5 ] ] [MED 1 1 1 ] ]") == 1);
  // "]" and "X" are the same symbol; ids documented in listops.h
  CHECK(listops_tokenize("[MIN 0 9 ]") == ids({11, 1, 10, 15}));
  CHECK(listops_tokenize("[MAX [MED [SM 5 X X X") == ids({12, 13, 14, 6, 15, 15, 15}));
  for (const char* bad : {"[MAX 2 9", "[MAX ]", "2 ]", "3 4", ""}) {
    INFO(bad);
    CHECK_THROWS_AS(ev(bad), std::invalid_argument);
  }
  CHECK_THROWS_AS(listops_tokenize("[MAX 2 Y ]"), std::invalid_argument);
  // Printing follows the official left-nested tuple form.
  CHECK(listops_source(listops_tokenize("[MAX 2 9 ]")) == "( ( ( [MAX 2 ) 9 ) ] )");
  CHECK(listops_source(listops_tokenize("[SM 1 [MIN 3 4 ] ]")) == "( ( ( [SM 1 ) ( ( ( [MIN 3 ) 4 ) ] ) ) ] )");
}

TEST_CASE("listops: generator is deterministic, unique and respects the length limits") {
  ListOpsOptions o;
  o.min_length = 30;
  o.max_length = 150;
  o.train = 200;
  o.val = 20;
  o.test = 20;
  o.seed = 3;
  ListOpsStats st;
  ListOpsSplits a = generate_listops_splits(o, &st), b = generate_listops_splits(o);
  CHECK(st.attempts > st.accepted);
  REQUIRE(a.train.size() == 200);
  REQUIRE(a.val.size() == 20);
  REQUIRE(a.test.size() == 20);
  std::set<std::vector<token_t>> seen;
  for (const Dataset* d : {&a.train, &a.val, &a.test})
    for (const Example& e : d->examples) {
      CHECK(e.tokens.size() > 30);
      CHECK(e.tokens.size() < 150);
      CHECK(e.label == listops_evaluate(e.tokens));
      CHECK(seen.insert(e.tokens).second);  // unique across splits
      for (token_t t : e.tokens) CHECK((t >= 1 && t < kListOpsVocab));
    }
  for (size_t i = 0; i < a.train.size(); ++i) {
    CHECK(a.train[i].tokens == b.train[i].tokens);
    CHECK(a.train[i].label == b.train[i].label);
  }
  o.seed = 4;
  CHECK(generate_listops(5, o)[0].tokens != a.train[0].tokens);

  // Same seed, same files, byte for byte.
  TmpDir t1, t2;
  o.seed = 3;
  write_listops(t1.path.string(), generate_listops_splits(o));
  write_listops(t2.path.string(), generate_listops_splits(o));
  for (const char* f : {"basic_train.tsv", "basic_val.tsv", "basic_test.tsv"}) {
    INFO(f);
    const std::string x = slurp(t1 / f);
    CHECK(x.rfind("Source\tTarget\n", 0) == 0);
    CHECK(x == slurp(t2 / f));
  }

  CHECK_THROWS_AS(generate_listops(1, ListOpsOptions{.min_length = 10, .max_length = 11}), std::invalid_argument);
}

TEST_CASE("listops: official lengths, acceptance rate and label distribution") {
  ListOpsOptions o;  // official 500 < length < 2000
  o.seed = 11;
  ListOpsStats st;
  const std::vector<Example> ex = generate_listops(400, o, &st);
  const double rate = (double)st.accepted / (double)st.attempts;
  CHECK(rate > 0.05);  // docs/lra.md §2: ~8%
  CHECK(rate < 0.12);
  std::vector<double> frac(10, 0.0);
  double mean_len = 0;
  for (const Example& e : ex) {
    CHECK(e.tokens.size() > 500);
    CHECK(e.tokens.size() < 2000);
    frac[(size_t)e.label] += 1.0 / (double)ex.size();
    mean_len += (double)e.tokens.size() / (double)ex.size();
  }
  // docs/lra.md §2: 0 and 9 ~17% each, 1..8 7-9% each; mean length ~1035 (loose bounds for 400).
  CHECK(frac[0] > 0.10);
  CHECK(frac[0] < 0.25);
  CHECK(frac[9] > 0.10);
  CHECK(frac[9] < 0.25);
  for (int k = 1; k <= 8; ++k) CHECK(frac[(size_t)k] < 0.15);
  CHECK(mean_len > 850);
  CHECK(mean_len < 1250);
}

TEST_CASE("listops: TSV round trip and malformed files") {
  TmpDir t;
  ListOpsOptions o;
  o.min_length = 20;
  o.max_length = 80;
  o.train = 30;
  o.val = 5;
  o.test = 5;
  o.seed = 9;
  const ListOpsSplits g = generate_listops_splits(o);
  write_listops(t.path.string(), g);
  const ListOpsSplits r = read_listops(t.path.string(), {.verify_labels = true});
  REQUIRE(r.train.size() == g.train.size());
  REQUIRE(r.test.size() == g.test.size());
  CHECK(r.train.vocab_size == 16);
  CHECK(r.train.num_classes == 10);
  for (size_t i = 0; i < g.train.size(); ++i) {
    CHECK(r.train[i].tokens == g.train[i].tokens);
    CHECK(r.train[i].label == g.train[i].label);
  }
  // Windows line ends and truncation.
  write(t / "crlf.tsv", "Source\tTarget\r\n( ( ( [MAX 2 ) 9 ) ] )\t9\r\n");
  Dataset c = read_listops_tsv(t / "crlf.tsv", {.max_length = 3});
  REQUIRE(c.size() == 1);
  CHECK(c[0].tokens == ids({12, 3, 10}));

  const std::string good = "( ( ( [MAX 2 ) 9 ) ] )\t9\n";
  struct Bad { const char* line; const char* why; };
  for (Bad bad : {Bad{"( ( ( [MAX 2 ) 9 ) ] )\tnine\n", "label"}, Bad{"( ( ( [MAX 2 ) 9 ) ] )\t12\n", "label"},
                  Bad{"( ( ( [MAX 2 ) 9 ) ] )\n", "2 tab-separated columns"},
                  Bad{"( ( ( [MAX 2 ) 9 ) ] )\t9\textra\n", "2 tab-separated columns"},
                  Bad{"( ( ( [MAX 2 ) Q ) ] )\t9\n", "unknown ListOps symbol"}}) {
    INFO(bad.line);
    const std::string path = t / "bad.tsv";
    write(path, "Source\tTarget\n" + good + bad.line + good);
    const std::string msg = io_error([&] { read_listops_tsv(path); });
    CHECK(contains(msg, path + ":3:"));
    CHECK(contains(msg, bad.why));
  }
  // A label that disagrees with the expression, when asked to verify.
  write(t / "wrong.tsv", "Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t3\n");
  CHECK(contains(io_error([&] { read_listops_tsv(t / "wrong.tsv", {.verify_labels = true}); }), "wrong.tsv:2:"));
  CHECK(contains(io_error([&] { read_listops_tsv(t / "missing.tsv"); }), "missing.tsv"));
}

// ---- Pathfinder -----------------------------------------------------------------------------

TEST_CASE("pathfinder: deterministic, balanced, PNG + metadata round trip") {
  PathfinderOptions o;
  o.contour_length = 6;
  o.count = 60;
  o.seed = 5;
  o.images_per_dir = 25;  // three imgs/<k> folders
  const Dataset a = generate_pathfinder(o), b = generate_pathfinder(o);
  REQUIRE(a.size() == 60);
  CHECK(a.num_classes == 2);
  CHECK(a.vocab_size == 256);
  const auto counts = label_counts(a);
  CHECK(counts[0] == 30);
  CHECK(counts[1] == 30);
  std::set<std::vector<token_t>> distinct;
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].tokens == b[i].tokens);
    CHECK(a[i].label == b[i].label);
    REQUIRE(a[i].tokens.size() == 1024);
    int lit = 0, full = 0;
    for (token_t t : a[i].tokens) {
      CHECK((t >= 0 && t <= 255));
      lit += t > 0;
      full += t == 255;
    }
    CHECK(lit > 50);   // paths
    CHECK(lit < 600);  // mostly background
    CHECK(full >= 4);  // the markers
    distinct.insert(a[i].tokens);
  }
  CHECK(distinct.size() == 60);
  // A single image is the same wherever it is generated from.
  const PathfinderImage one = generate_pathfinder_image(o, 17);
  CHECK(std::vector<token_t>(one.pixels.begin(), one.pixels.end()) == a[17].tokens);
  o.seed = 6;
  CHECK(generate_pathfinder_image(o, 0).pixels != generate_pathfinder_image(PathfinderOptions{.contour_length = 6, .seed = 5}, 0).pixels);
  o.seed = 5;

  TmpDir t;
  const std::string dir = write_pathfinder(t.path.string(), o);
  CHECK(dir == t / "curv_baseline");
  CHECK(fs::exists(t / "curv_baseline/imgs/2/sample_59.png"));
  CHECK(fs::exists(t / "curv_baseline/metadata/2.npy"));
  const std::string meta = slurp(t / "curv_baseline/metadata/0.npy");
  CHECK(meta.rfind("imgs/0 sample_0.png 0 " + std::to_string(a[0].label) + " ", 0) == 0);
  const Dataset r = read_pathfinder(dir);
  REQUIRE(r.size() == 60);
  for (size_t i = 0; i < r.size(); ++i) {
    CHECK(r[i].tokens == a[i].tokens);
    CHECK(r[i].label == a[i].label);
  }
  // Same seed, same PNG bytes.
  TmpDir t2;
  write_pathfinder(t2.path.string(), o);
  CHECK(slurp(t / "curv_baseline/imgs/1/sample_30.png") == slurp(t2 / "curv_baseline/imgs/1/sample_30.png"));

  // Token-0 quirk option: shift every pixel id by one.
  const Dataset s = read_pathfinder(dir, {.image = {.pixel_shift = 1}});
  CHECK(s.vocab_size == 257);
  CHECK(s[3].tokens[0] == a[3].tokens[0] + 1);

  // Hard difficulty works and names its folder as the release does.
  CHECK(pathfinder_dir_name(14) == "curv_contour_length_14");
  CHECK(pathfinder_dir_name(9) == "curv_contour_length_9");
  const Dataset hard = generate_pathfinder(PathfinderOptions{.contour_length = 14, .count = 8, .seed = 1});
  CHECK(label_counts(hard)[1] == 4);
}

TEST_CASE("pathfinder: malformed metadata and images") {
  TmpDir t;
  PathfinderOptions o;
  o.contour_length = 6;
  o.count = 4;
  const std::string dir = write_pathfinder(t.path.string(), o);
  const std::string m = dir + "/metadata/0.npy";
  const std::string good = slurp(m);
  write(m, good + "imgs/0 sample_0.png 0\n");
  CHECK(contains(io_error([&] { read_pathfinder(dir); }), m + ":5:"));
  write(m, good + "imgs/0 sample_0.png 0 7 6 2 10\n");
  CHECK(contains(io_error([&] { read_pathfinder(dir); }), "label '7'"));
  write(m, good + "imgs/0 nothere.png 4 1 6 2 10\n");
  CHECK(contains(io_error([&] { read_pathfinder(dir); }), m + ":5:"));
  // Not a PNG: names the image and the metadata line.
  write(dir + "/imgs/0/junk.png", "this is not a png");
  write(m, good + "imgs/0 junk.png 4 1 6 2 10\n");
  const std::string msg = io_error([&] { read_pathfinder(dir); });
  CHECK(contains(msg, m + ":5:"));
  CHECK(contains(msg, "junk.png"));
  CHECK(contains(io_error([&] { int w, h; read_png_gray(dir + "/imgs/0/junk.png", &w, &h); }), "junk.png"));
  // Empty images are skipped (S4 skips the known empty file in the release) ...
  write(dir + "/imgs/0/empty.png", "");
  write(m, good + "imgs/0 empty.png 4 1 6 2 10\n");
  CHECK(read_pathfinder(dir).size() == 4);
  // ... unless asked not to.
  CHECK(contains(io_error([&] { read_pathfinder(dir, {.skip_empty_files = false}); }), "empty"));
  // Wrong image size.
  write_png_gray(dir + "/imgs/0/big.png", 8, 4, std::vector<uint8_t>(32, 7));
  write(m, good + "imgs/0 big.png 4 1 6 2 10\n");
  CHECK(contains(io_error([&] { read_pathfinder(dir); }), "8x4"));
  CHECK(contains(io_error([&] { read_pathfinder(t / "nowhere"); }), "metadata"));
}

TEST_CASE("png: round trip") {
  TmpDir t;
  std::vector<uint8_t> px(6 * 5);
  for (size_t i = 0; i < px.size(); ++i) px[i] = (uint8_t)(i * 37 % 256);
  write_png_gray(t / "a/b.png", 6, 5, px);
  int w = 0, h = 0;
  CHECK(read_png_gray(t / "a/b.png", &w, &h) == px);
  CHECK(w == 6);
  CHECK(h == 5);
}

// ---- text and retrieval ---------------------------------------------------------------------

TEST_CASE("text: IMDb folder and Source,Target CSV") {
  TmpDir t;
  write(t / "imdb/pos/1_10.txt", "Great film!");
  write(t / "imdb/pos/0_9.txt", "caf\xc3\xa9");
  write(t / "imdb/neg/3_1.txt", "Bad.");
  write(t / "imdb/neg/notes.md", "ignored");
  const Dataset d = read_text_folder(t / "imdb", {.max_length = 5});
  REQUIRE(d.size() == 3);
  CHECK(d.vocab_size == 257);
  CHECK(d[0].label == 0);
  CHECK(d[0].tokens == bytes_plus1("Bad."));
  CHECK(d[1].label == 1);
  CHECK(d[1].tokens == bytes_plus1("caf\xc3\xa9"));  // bytes, not characters
  CHECK(d[2].tokens == bytes_plus1("Great"));        // cut to 5
  CHECK(decode_bytes(d[2].tokens) == "Great");
  CHECK(contains(io_error([&] { read_text_folder(t / "nowhere"); }), "nowhere"));

  // CSV with quoting: commas, doubled quotes and newlines inside quotes.
  write(t / "text_train.tsv",
        "Source,Target\n"
        "plain text,1\n"
        "\"with, comma\",0\n"
        "\"say \"\"hi\"\"\",1\r\n"
        "\"two\nlines\",0\n"
        "\n");
  const Dataset c = read_text_csv(t / "text_train.tsv", {.max_length = 0});
  REQUIRE(c.size() == 4);
  CHECK(decode_bytes(c[0].tokens) == "plain text");
  CHECK(decode_bytes(c[1].tokens) == "with, comma");
  CHECK(decode_bytes(c[2].tokens) == "say \"hi\"");
  CHECK(decode_bytes(c[3].tokens) == "two\nlines");
  CHECK(c[0].label == 1);
  CHECK(c[3].label == 0);
  // write_text_csv quotes what needs quoting; reading it back gives the same texts.
  write_text_csv(t / "w.csv", {{"a,b", 1}, {"q\"x\"\nz", 0}, {"plain", 1}});
  const Dataset w = read_text_csv(t / "w.csv");
  REQUIRE(w.size() == 3);
  CHECK(decode_bytes(w[1].tokens) == "q\"x\"\nz");
  CHECK(w[2].label == 1);

  // Malformed: the line where the bad record starts (after a two-line record).
  const std::string head = "Source,Target\n\"multi\nline\",1\n";
  write(t / "bad.csv", head + "text,x\n");
  CHECK(contains(io_error([&] { read_text_csv(t / "bad.csv"); }), t / "bad.csv:4:"));
  write(t / "bad.csv", head + "text,1,2\n");
  CHECK(contains(io_error([&] { read_text_csv(t / "bad.csv"); }), "bad.csv:4: expected 2"));
  write(t / "bad.csv", head + "text,5\n");
  CHECK(contains(io_error([&] { read_text_csv(t / "bad.csv"); }), "bad.csv:4:"));
  write(t / "bad.csv", head + "\"never closed,1\nmore\n");
  CHECK(contains(io_error([&] { read_text_csv(t / "bad.csv"); }), "bad.csv:4: unterminated"));
  write(t / "bad.csv", head + "\"quoted\"junk,1\n");
  CHECK(contains(io_error([&] { read_text_csv(t / "bad.csv"); }), "bad.csv:4:"));
}

TEST_CASE("retrieval: AAN TSV round trip and malformed lines") {
  TmpDir t;
  write(t / "new_aan_pairs.train.tsv", "1.0\tp1\tp2\tfirst doc\tsecond doc\n0\tp3\tp4\tx\t\n1\tp5\tp6\t\"q\"\tz\n");
  const Dataset d = read_aan_tsv(t / "new_aan_pairs.train.tsv", {.max_length = 5});
  REQUIRE(d.size() == 3);
  CHECK(d.paired);
  CHECK(d[0].label == 1);
  CHECK(d[0].tokens == bytes_plus1("first"));
  CHECK(d[0].tokens2 == bytes_plus1("secon"));
  CHECK(d[1].label == 0);
  CHECK(d[1].tokens2.empty());
  CHECK(decode_bytes(d[2].tokens) == "\"q\"");  // no quoting
  write_aan_tsv(t / "w.tsv", {{1, "a", "b", "hello", "world"}, {0, "c", "d", "x", "y"}});
  const Dataset w = read_aan_tsv(t / "w.tsv", {.max_length = 0});
  REQUIRE(w.size() == 2);
  CHECK(decode_bytes(w[0].tokens2) == "world");
  CHECK(w[1].label == 0);

  write(t / "bad.tsv", "1\ta\tb\tc\td\n1\ta\tb\tc\n");
  CHECK(contains(io_error([&] { read_aan_tsv(t / "bad.tsv"); }), "bad.tsv:2: expected 5"));
  write(t / "bad.tsv", "1\ta\tb\tc\td\nyes\ta\tb\tc\td\n");
  CHECK(contains(io_error([&] { read_aan_tsv(t / "bad.tsv"); }), "bad.tsv:2: label"));
  write(t / "bad.tsv", "3.0\ta\tb\tc\td\n");
  CHECK(contains(io_error([&] { read_aan_tsv(t / "bad.tsv"); }), "bad.tsv:1: label"));
}

// ---- images ---------------------------------------------------------------------------------

TEST_CASE("cifar10: binary batches, grayscale, splits, truncated record") {
  TmpDir t;
  auto record = [](uint8_t label, uint8_t r, uint8_t g, uint8_t b) {
    std::string s(1 + 3072, '\0');
    s[0] = (char)label;
    for (int i = 0; i < 1024; ++i) {
      s[(size_t)(1 + i)] = (char)r;
      s[(size_t)(1 + 1024 + i)] = (char)g;
      s[(size_t)(1 + 2048 + i)] = (char)b;
    }
    s[1] = (char)0;  // first pixel black in every channel
    s[1 + 1024] = 0;
    s[1 + 2048] = 0;
    return s;
  };
  write(t / "data_batch_1.bin", record(3, 255, 255, 255) + record(9, 100, 50, 200) + record(0, 10, 20, 30));
  const Dataset d = read_cifar10_bin(t / "data_batch_1.bin");
  REQUIRE(d.size() == 3);
  CHECK(d[0].label == 3);
  CHECK(d[1].label == 9);
  REQUIRE(d[0].tokens.size() == 1024);
  CHECK(d[0].tokens[0] == 0);
  CHECK(d[0].tokens[5] == 255);  // TF: trunc(0.9999 * 255.5) = 255
  // trunc((0.2989 r + 0.5870 g + 0.1140 b) / 255 * 255.5), TF's uint8 -> float -> uint8
  auto want = [](double r, double g, double b) { return (int)std::floor((0.2989 * r + 0.5870 * g + 0.1140 * b) / 255.0 * 255.5); };
  CHECK(d[1].tokens[7] == want(100, 50, 200));
  CHECK(d[2].tokens[7] == want(10, 20, 30));
  CHECK(cifar_gray(0, 0, 0) == 0);
  // Every value agrees with the double-precision formula except at float rounding ties.
  int off = 0;
  for (int v = 0; v < 256; v += 5) off += std::abs((int)cifar_gray((uint8_t)v, (uint8_t)v, (uint8_t)v) - want(v, v, v)) > 0;
  CHECK(off <= 1);
  const Dataset s = read_cifar10_bin(t / "data_batch_1.bin", {.pixel_shift = 1});
  CHECK(s[0].tokens[0] == 1);
  CHECK(s.vocab_size == 257);

  // A folder of 5 training batches + test: 90/10 train/val split in order.
  const std::string rec = record(1, 1, 2, 3);
  std::string two = rec + rec;
  for (int b = 1; b <= 5; ++b) write(t / ("c/cifar-10-batches-bin/data_batch_" + std::to_string(b) + ".bin"), two);
  write(t / "c/cifar-10-batches-bin/test_batch.bin", rec);
  const ImageSplits sp = read_cifar10(t / "c", {}, 0.1);
  CHECK(sp.train.size() == 9);
  CHECK(sp.val.size() == 1);
  CHECK(sp.test.size() == 1);

  write(t / "trunc.bin", rec + rec.substr(0, 100));
  const std::string msg = io_error([&] { read_cifar10_bin(t / "trunc.bin"); });
  CHECK(contains(msg, "trunc.bin"));
  CHECK(contains(msg, "record 1 is truncated"));
  std::string badlabel = rec;
  badlabel[0] = 10;
  write(t / "label.bin", rec + badlabel);
  CHECK(contains(io_error([&] { read_cifar10_bin(t / "label.bin"); }), "record 1: label 10"));
}

namespace {
std::string idx_bytes(uint8_t ndim, std::vector<uint32_t> dims, const std::vector<uint8_t>& data) {
  std::string s = {0, 0, 8, (char)ndim};
  for (uint32_t d : dims) s += std::string{(char)(d >> 24), (char)(d >> 16), (char)(d >> 8), (char)d};
  s.append(data.begin(), data.end());
  return s;
}
void write_gz(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  gzwrite(f, bytes.data(), (unsigned)bytes.size());
  gzclose(f);
}
}  // namespace

TEST_CASE("idx: gzip IDX images padded to 32 x 32, splits, bad magic") {
  TmpDir t;
  const int n = 10;
  std::vector<uint8_t> px((size_t)n * 28 * 28), lab((size_t)n);
  for (size_t i = 0; i < px.size(); ++i) px[i] = (uint8_t)(1 + i % 200);
  for (int i = 0; i < n; ++i) lab[(size_t)i] = (uint8_t)(i % 10);
  write_gz(t / "fm/train-images-idx3-ubyte.gz", idx_bytes(3, {(uint32_t)n, 28, 28}, px));
  write_gz(t / "fm/train-labels-idx1-ubyte.gz", idx_bytes(1, {(uint32_t)n}, lab));
  write(t / "fm/t10k-images-idx3-ubyte", idx_bytes(3, {2, 28, 28}, std::vector<uint8_t>(2 * 784, 9)));  // plain
  write(t / "fm/t10k-labels-idx1-ubyte", idx_bytes(1, {2}, {4, 5}));
  const ImageSplits s = read_fashion_mnist(t / "fm");
  REQUIRE(s.train.size() == 9);
  REQUIRE(s.val.size() == 1);
  REQUIRE(s.test.size() == 2);
  CHECK(s.val[0].label == 9);  // the last 10% of train
  const Example& e = s.train[1];
  REQUIRE(e.tokens.size() == 1024);
  CHECK(e.label == 1);
  // Centred: 2 rows and columns of black on each side.
  CHECK(e.tokens[0] == 0);
  CHECK(e.tokens[31] == 0);
  CHECK(e.tokens[2 * 32 + 1] == 0);
  CHECK(e.tokens[2 * 32 + 2] == px[784]);
  CHECK(e.tokens[29 * 32 + 29] == px[784 + 27 * 28 + 27]);
  CHECK(e.tokens[29 * 32 + 30] == 0);
  CHECK(s.test[1].label == 5);
  CHECK(s.test[0].tokens[2 * 32 + 2] == 9);

  std::string bad = idx_bytes(3, {1, 28, 28}, std::vector<uint8_t>(784));
  bad[2] = 0x0d;  // float IDX
  write_gz(t / "bad.gz", bad);
  std::string msg = io_error([&] { read_idx(t / "bad.gz"); });
  CHECK(contains(msg, "bad.gz"));
  CHECK(contains(msg, "magic"));
  write_gz(t / "short.gz", idx_bytes(3, {2, 28, 28}, std::vector<uint8_t>(784)));
  CHECK(contains(io_error([&] { read_idx(t / "short.gz"); }), "header says 1568"));
  write(t / "broken.gz", std::string("\x1f\x8b\x08\x00garbage-garbage", 19));
  CHECK(contains(io_error([&] { read_idx(t / "broken.gz"); }), "broken.gz"));
  CHECK(contains(io_error([&] { read_fashion_mnist(t / "none"); }), "dataset-fashion-mnist"));
}

TEST_CASE("fashion-mnist: the Debian package, when installed") {
  if (!fs::exists(std::string(kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz")) {
    MESSAGE("dataset-fashion-mnist not installed; skipped");
    return;
  }
  const std::string d = kFashionMnistDir;
  const Dataset test = read_idx_dataset(d + "/t10k-images-idx3-ubyte.gz", d + "/t10k-labels-idx1-ubyte.gz");
  CHECK(test.size() == 10000);
  CHECK(test[0].tokens.size() == 1024);
  const auto c = label_counts(test);
  for (int64_t k : c) CHECK(k == 1000);  // balanced test set
}

// ---- batching -------------------------------------------------------------------------------

namespace {
Dataset toy(size_t n, bool paired = false) {
  Dataset d;
  d.name = "toy";
  d.vocab_size = 50;
  d.num_classes = 3;
  d.paired = paired;
  for (size_t i = 0; i < n; ++i) {
    Example e;
    e.label = (int64_t)(i % 3);
    for (size_t j = 0; j < 1 + (i * 7) % 11; ++j) e.tokens.push_back((token_t)(1 + (i + j) % 40));
    if (paired)
      for (size_t j = 0; j < 1 + i % 4; ++j) e.tokens2.push_back((token_t)(2 + j));
    d.examples.push_back(std::move(e));
  }
  return d;
}
}  // namespace

TEST_CASE("batching: padding, masks and labels") {
  Dataset d = toy(6);
  d.examples[2].tokens = {5, 0, 7};  // a genuine id 0 (black pixel) is not padding
  const Batch b = collate(d, {2, 0, 4});
  REQUIRE(b.size() == 3);
  const int64_t n = b.tokens.size(1);
  CHECK(n == 7);  // longest: example 4 has 1 + 28 % 11 = 7 tokens
  CHECK(b.tokens.dtype() == kInt64);
  CHECK(b.mask.dtype() == kBool);
  CHECK(b.labels.shape() == Shape{3});
  const int64_t* t = b.tokens.data_ptr<int64_t>();
  const bool* m = b.mask.data_ptr<bool>();
  CHECK(t[0] == 5);
  CHECK(t[1] == 0);
  CHECK(!m[1]);  // real token
  CHECK(m[3]);   // padding
  CHECK(t[3] == 0);
  for (int64_t r = 0; r < 3; ++r) {
    const auto& src = d.examples[(size_t)std::vector<int64_t>{2, 0, 4}[(size_t)r]].tokens;
    for (int64_t j = 0; j < n; ++j) {
      CHECK(m[r * n + j] == (j >= (int64_t)src.size()));
      if (j < (int64_t)src.size()) CHECK(t[r * n + j] == src[(size_t)j]);
    }
  }
  CHECK(b.labels.data_ptr<int64_t>()[0] == 2);
  CHECK(b.real_tokens() == 3 + 1 + 7);
  CHECK(!b.tokens2.defined());

  const Batch f = collate(d, {0, 1}, {.pad_to = 16});
  CHECK(f.tokens.shape() == Shape{2, 16});
  CHECK_THROWS_AS(collate(d, {4}, {.pad_to = 3}), ShapeError);
  CHECK(collate(d, {4}, {.pad_to = 3, .truncate = true}).mask.shape() == Shape{1, 3});
  CHECK_THROWS_AS(collate(d, {6}), std::out_of_range);

  const Dataset p = toy(5, true);
  const Batch pb = collate(p, {3, 1});
  REQUIRE(pb.tokens2.defined());
  CHECK(pb.tokens2.shape() == Shape{2, 4});
  CHECK(pb.mask2.data_ptr<bool>()[4 + 2]);   // row 1 has 2 tokens
  CHECK(!pb.mask2.data_ptr<bool>()[4 + 1]);
}

TEST_CASE("batching: per-token targets are padded with kIgnoreIndex and cut with the tokens") {
  static_assert(kIgnoreIndex == -100);
  Dataset d = toy(5);
  CHECK(!collate(d, {0, 1}).targets.defined());  // classification: no targets
  for (Example& e : d.examples) {
    e.targets.clear();
    for (size_t j = 0; j < e.tokens.size(); ++j) e.targets.push_back(j % 3 ? (token_t)(10 + j) : kIgnoreIndex);
  }
  // Examples 1 and 0 have 8 and 1 tokens: row 1 is padded with 7 kIgnoreIndex.
  const Batch b = collate(d, {1, 0});
  REQUIRE(b.targets.defined());
  CHECK(b.targets.dtype() == kInt64);
  CHECK(b.targets.shape() == b.tokens.shape());
  const int64_t n = b.targets.size(1);
  CHECK(n == 8);
  const int64_t* t = b.targets.data_ptr<int64_t>();
  const bool* m = b.mask.data_ptr<bool>();
  for (int64_t r = 0; r < 2; ++r) {
    const auto& src = d.examples[r == 0 ? 1 : 0].targets;
    for (int64_t j = 0; j < n; ++j) {
      CHECK(t[r * n + j] == (j < (int64_t)src.size() ? src[(size_t)j] : kIgnoreIndex));
      if (m[r * n + j]) CHECK(t[r * n + j] == kIgnoreIndex);  // every padded position is ignored
    }
  }
  // pad_to pads targets too; truncate cuts them with the tokens.
  const Batch wide = collate(d, {0}, {.pad_to = 5});
  CHECK(wide.targets.shape() == Shape{1, 5});
  CHECK(wide.targets.data_ptr<int64_t>()[4] == kIgnoreIndex);
  const Batch cut = collate(d, {1}, {.pad_to = 3, .truncate = true});
  CHECK(cut.targets.shape() == Shape{1, 3});
  for (int64_t j = 0; j < 3; ++j) CHECK(cut.targets.data_ptr<int64_t>()[j] == d.examples[1].targets[(size_t)j]);
  // Through a loader, and kept by split_tail.
  DataLoader loader(d, {.batch_size = 2, .seed = 3});
  CHECK(loader.next().targets.defined());
  auto [head, tail] = split_tail(d, 0.4);
  CHECK(tail[0].targets == d.examples[3].targets);
  // A row whose target count differs from its token count is refused naming the example.
  d.examples[2].targets.pop_back();
  try {
    collate(d, {0, 2});
    FAIL("expected a ShapeError");
  } catch (const ShapeError& e) {
    CHECK(contains(e.what(), "example 2 of toy has 3 targets for 4 tokens"));
  }
}

TEST_CASE("batching: seeded shuffling, drop_last, bucketing, resume") {
  const Dataset d = toy(23);
  LoaderOptions o;
  o.batch_size = 5;
  o.seed = 42;
  DataLoader a(d, o), b(d, o);
  CHECK(a.batches_per_epoch() == 5);
  for (int64_t e = 0; e < 3; ++e) CHECK(a.epoch_plan(e) == b.epoch_plan(e));
  CHECK(a.epoch_plan(0) != a.epoch_plan(1));
  o.seed = 43;
  CHECK(DataLoader(d, o).epoch_plan(0) != a.epoch_plan(0));
  // Each epoch covers every example once.
  for (int64_t e = 0; e < 2; ++e) {
    std::vector<int64_t> all;
    for (const auto& batch : a.epoch_plan(e)) all.insert(all.end(), batch.begin(), batch.end());
    std::sort(all.begin(), all.end());
    CHECK(all.size() == 23);
    for (int64_t i = 0; i < 23; ++i) CHECK(all[(size_t)i] == i);
  }
  o.shuffle = false;
  CHECK(DataLoader(d, o).epoch_plan(3)[0] == std::vector<int64_t>{0, 1, 2, 3, 4});
  o.shuffle = true;
  o.drop_last = true;
  DataLoader dl(d, o);
  CHECK(dl.batches_per_epoch() == 4);
  for (const auto& batch : dl.epoch_plan(0)) CHECK(batch.size() == 5);

  // Bucketing: same examples, batches of similar lengths, less padding.
  LoaderOptions ob;
  ob.batch_size = 4;
  ob.seed = 1;
  ob.bucket_batches = 3;
  const Dataset big = toy(60);
  DataLoader plain(big, {.batch_size = 4, .seed = 1}), bucket(big, ob);
  std::vector<int64_t> all;
  int64_t pad_plain = 0, pad_bucket = 0;
  for (int64_t i = 0; i < plain.batches_per_epoch(); ++i) {
    const Batch x = plain.next(), y = bucket.next();
    pad_plain += x.tokens.numel() - x.real_tokens();
    pad_bucket += y.tokens.numel() - y.real_tokens();
    all.insert(all.end(), y.indices.begin(), y.indices.end());
  }
  std::sort(all.begin(), all.end());
  CHECK(all.size() == 60);
  CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
  CHECK(pad_bucket < pad_plain);
  CHECK(bucket.state() == LoaderState{1, 0});
  CHECK(DataLoader(big, ob).epoch_plan(2) == bucket.epoch_plan(2));

  // Resume: a loader restored to a saved position produces the same batches.
  DataLoader run(d, {.batch_size = 5, .seed = 7});
  std::vector<std::vector<int64_t>> seen;
  LoaderState saved;
  for (int step = 0; step < 13; ++step) {
    if (step == 7) saved = run.state();
    seen.push_back(run.next().indices);
  }
  CHECK(saved == LoaderState{1, 2});
  DataLoader resumed(d, {.batch_size = 5, .seed = 7});
  resumed.set_state(saved);
  for (int step = 7; step < 13; ++step) {
    const Batch x = resumed.next();
    CHECK(x.indices == seen[(size_t)step]);
  }
  CHECK(resumed.state() == run.state());
  CHECK(run.batch_at(0, 3).indices == seen[3]);

  Dataset empty;
  CHECK_THROWS_AS(DataLoader(empty, {}).next(), std::invalid_argument);
  CHECK_THROWS_AS(DataLoader(d, {.batch_size = 0}), std::invalid_argument);
}

TEST_CASE("dataset: split_tail and majority rate") {
  Dataset d = toy(10);
  CHECK(majority_rate(d) == doctest::Approx(0.4));
  auto [a, b] = split_tail(d, 0.3);
  CHECK(a.size() == 7);
  CHECK(b.size() == 3);
  CHECK(b[0].tokens == d[7].tokens);  // in order without a seed
  CHECK(b.name == "toy/val");
  auto [c, e] = split_tail(d, 0.3, "val", 5);
  CHECK(c.size() == 7);
  auto [c2, e2] = split_tail(d, 0.3, "val", 5);
  CHECK(e[0].tokens == e2[0].tokens);
}
