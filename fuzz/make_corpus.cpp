// Remakes the seed corpora under <out>/<target>/ (fuzz/corpus/ is its committed output) with
// the project's own writers where there is one (npy_to_bytes, checkpoint_to_bytes,
// write_listops_tsv, write_text_csv, write_aan_tsv, write_png_gray, write_pathfinder), and
// small hand-made files otherwise (IDX, CIFAR-10). Deterministic: the same files every run.
//   make_corpus fuzz/corpus
#include <stb/stb_image_write.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <lotgrad/core/io.h>
#include <lotgrad/data/image.h>
#include <lotgrad/data/listops.h>
#include <lotgrad/data/pathfinder.h>
#include <lotgrad/data/text.h>
#include <string>
#include <vector>

using namespace lotgrad;
using namespace lotgrad::data;
namespace fs = std::filesystem;

namespace {

fs::path out_root;

void put(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path p = out_root / target / name;
  fs::create_directories(p.parent_path());
  write_file_atomic(p.string(), bytes);
}
std::string slurp(const fs::path& p) { return read_file(p.string()); }

void replace_once(std::string& s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  if (at == std::string::npos || from.size() != to.size()) throw std::logic_error("replace_once: " + from);
  s.replace(at, from.size(), to);
}

void npy() {
  put("npy", "f32_2x3.npy", npy_to_bytes(Tensor::arange(-1.0, 2.0, 0.5).view({2, 3})));
  put("npy", "f64_scalar.npy", npy_to_bytes(Tensor::scalar(3.25, DType::f64)));
  put("npy", "i64_4.npy", npy_to_bytes(Tensor::arange(4)));
  put("npy", "bool_2x2.npy", npy_to_bytes(Tensor::from_vector(std::vector<bool>{true, false, false, true}, {2, 2})));
  put("npy", "f32_empty_0x3.npy", npy_to_bytes(Tensor::zeros({0, 3})));
  // The dtypes lotgrad reads but never writes: big-endian '>f8' (bytes swapped) and '<i4'.
  std::string be = npy_to_bytes(Tensor::from_vector(std::vector<double>{1.5, -2.0}, {2}));
  replace_once(be, "'<f8'", "'>f8'");
  for (size_t k = be.size() - 16; k < be.size(); k += 8) std::reverse(be.begin() + (long)k, be.begin() + (long)k + 8);
  put("npy", "f64_big_endian.npy", be);
  std::string i4 = npy_to_bytes(Tensor::arange(4));  // 32 data bytes = eight int32
  replace_once(i4, "'<i8'", "'<i4'");
  replace_once(i4, "(4,)", "(8,)");
  put("npy", "i32_8.npy", i4);
}

void checkpoint() {
  const NamedTensors full = {{"encoder.weight", Tensor::arange(-1.0, 2.0, 0.5).view({2, 3})},
                             {"encoder.bias", Tensor::from_vector(std::vector<double>{0.5, -0.25, 1.0}, {3})},
                             {"step", Tensor::scalar(7, DType::i64)},
                             {"mask", Tensor::from_vector(std::vector<bool>{true, false}, {2})}};
  const Metadata meta = {{"config", "{\"model\": \"tiny\", \"d\": 4}"}, {"lotgrad_version", "0.1.0"}};
  const std::vector<std::pair<std::string, std::string>> files = {
      {"full.ckpt", checkpoint_to_bytes(full, meta)},
      {"empty.ckpt", checkpoint_to_bytes({})},
      {"one_tensor.ckpt", checkpoint_to_bytes({{"w", Tensor::ones({1, 2})}}, {{"k", "v"}})}};
  for (const auto& [name, bytes] : files) {
    put("checkpoint", name, bytes);
    // fuzz_checkpoint_crc: the payload alone (no 24-byte header, no CRC footer).
    put("checkpoint_crc", name, bytes.substr(24, bytes.size() - 28));
  }
}

void listops() {
  const fs::path tmp = out_root / ".listops-tmp";
  ListOpsOptions o{.min_length = 4, .max_length = 60, .max_depth = 4, .max_args = 4, .seed = 1};
  for (int f = 0; f < 3; ++f) {
    o.seed = (uint64_t)f + 1;
    Dataset d;
    d.examples = generate_listops(6, o);
    write_listops_tsv((tmp / "t.tsv").string(), d);
    put("listops", "basic_" + std::to_string(f) + ".tsv", slurp(tmp / "t.tsv"));
  }
  fs::remove_all(tmp);
}

void text() {
  const fs::path tmp = out_root / ".text-tmp";
  write_text_csv((tmp / "a.tsv").string(), {{"A plain review, with a comma.", 1},
                                            {"He said \"no\"\nand left.", 0},
                                            {"windows line\r\nend", 1},
                                            {"", 0}});
  put("text_csv", "quoted.tsv", slurp(tmp / "a.tsv"));
  write_text_csv((tmp / "b.tsv").string(), {{"caf\xc3\xa9 \xe2\x98\x95 utf-8 bytes", 1}, {"short", 0}});
  put("text_csv", "utf8.tsv", slurp(tmp / "b.tsv"));
  put("text_csv", "crlf_no_header.tsv", "\"x,y\",1\r\nplain,0\r\n");
  write_aan_tsv((tmp / "c.tsv").string(), {{1, "P01-1001", "W02-2002", "we study parsing .", "a parser for text ."},
                                           {0, "A00-1", "B00-2", "first document", ""}});
  put("aan", "pairs.tsv", slurp(tmp / "c.tsv"));
  put("aan", "float_labels_crlf.tsv", "1.0\tx\ty\tone\ttwo\r\n0.0\tx\ty\tthree\tfour\r\n\n");
  fs::remove_all(tmp);
  put("chars", "fortune.txt",
      "The best way to predict the future is to invent it.\n\t\t-- Alan Kay\n%\nSimplicity is prerequisite for "
      "reliability.\n\t\t-- Edsger W. Dijkstra\n%\n");
  put("chars", "utf8.txt", "na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 r\xc3\xa9sum\xc3\xa9\r\nline two\fpage\n");
  put("chars", "one_line.txt", "abcdefghijklmnopqrstuvwxyz0123456789");
}

std::string cifar_records(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    s += (char)(i * 3 % 10);
    for (int j = 0; j < 3072; ++j) s += (char)((j * 7 + i * 13) % 256);
  }
  return s;
}

// Big-endian u32.
std::string be32(uint32_t v) {
  return {(char)(v >> 24), (char)(v >> 16), (char)(v >> 8), (char)v};
}
std::string idx_file(const std::vector<uint32_t>& dims, uint8_t seed) {
  std::string s = {0, 0, 8, (char)dims.size()};
  uint64_t n = 1;
  for (uint32_t d : dims) s += be32(d), n *= d;
  for (uint64_t k = 0; k < n; ++k) s += (char)((k * 29 + seed) % (dims.size() == 1 ? 10 : 256));
  return s;
}
// fuzz_idx input: u16 little-endian images length, images file, labels file.
std::string idx_pair(const std::string& images, const std::string& labels) {
  return std::string{(char)(images.size() & 0xFF), (char)(images.size() >> 8)} + images + labels;
}

void images() {
  put("cifar", "one_record.bin", cifar_records(1));
  put("cifar", "two_records.bin", cifar_records(2));
  for (const char* t : {"idx", "idx_gzip"}) {
    put(t, "n2_3x3.idx", idx_pair(idx_file({2, 3, 3}, 1), idx_file({2}, 0)));
    put(t, "n1_28x28.idx", idx_pair(idx_file({1, 28, 28}, 5), idx_file({1}, 3)));
    put(t, "n3_2x5.idx", idx_pair(idx_file({3, 2, 5}, 9), idx_file({3}, 7)));
  }
  const fs::path tmp = out_root / ".png-tmp";
  fs::create_directories(tmp);
  std::vector<uint8_t> px(32 * 32);
  for (size_t k = 0; k < px.size(); ++k) px[k] = (uint8_t)(k * 37 % 251);
  write_png_gray((tmp / "a.png").string(), 32, 32, px);
  put("png", "gray_32x32.png", slurp(tmp / "a.png"));
  write_png_gray((tmp / "b.png").string(), 1, 1, {255});
  put("png", "gray_1x1.png", slurp(tmp / "b.png"));
  // Colour PNGs (stb converts them to gray): RGB 4 x 3 and RGBA 2 x 2.
  std::vector<uint8_t> rgb(4 * 3 * 3);
  for (size_t k = 0; k < rgb.size(); ++k) rgb[k] = (uint8_t)(k * 20);
  if (!stbi_write_png((tmp / "c.png").string().c_str(), 4, 3, 3, rgb.data(), 4 * 3)) throw std::runtime_error("png");
  put("png", "rgb_4x3.png", slurp(tmp / "c.png"));
  const uint8_t rgba[16] = {255, 0, 0, 255, 0, 255, 0, 128, 0, 0, 255, 0, 9, 9, 9, 9};
  if (!stbi_write_png((tmp / "d.png").string().c_str(), 2, 2, 4, rgba, 8)) throw std::runtime_error("png");
  put("png", "rgba_2x2.png", slurp(tmp / "d.png"));
  fs::remove_all(tmp);
}

void pathfinder() {
  // Metadata as write_pathfinder writes it (4 images in imgs/0, the folder fuzz_pathfinder
  // builds), and lines naming the odd files of that folder.
  const fs::path tmp = out_root / ".pathfinder-tmp";
  const std::string dir = write_pathfinder(tmp.string(), PathfinderOptions{.contour_length = 6, .count = 4});
  put("pathfinder", "written.npy", slurp(fs::path(dir) / "metadata" / "0.npy"));
  fs::remove_all(tmp);
  put("pathfinder", "odd_files.npy",
      "imgs/0 sample_1.png 1 0 14 4 5\nimgs/1 empty.png 2 1 14 4 5\n\nimgs/1 small.png 3 1 14 4 5\n");
  put("pathfinder", "not_png.npy", "imgs/1 text.png 0 1 6 2 3\r\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR (e.g. fuzz/corpus)\n", argv[0]);
    return 2;
  }
  out_root = argv[1];
  npy();
  checkpoint();
  listops();
  text();
  images();
  pathfinder();
  std::printf("seed corpora written under %s\n", argv[1]);
  return 0;
}
