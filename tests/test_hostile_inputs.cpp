// Readers of untrusted bytes (.npy, checkpoints, IDX/gzip, PNG, Pathfinder metadata) and the
// shape arithmetic under them: every reproducer here is built by the test itself. A hostile
// input must give an exception naming the file (and line or byte offset) and the values
// involved: no signal, no overflowed shape, no allocation out of proportion to the input.
#include <doctest/doctest.h>
#include <lotgrad/data/image.h>
#include <lotgrad/data/pathfinder.h>
#include <lotgrad/lotgrad.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <limits>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "support/tmp_dir.h"

using namespace lotgrad;
namespace fs = std::filesystem;
using lotgrad::testing::TmpDir;

namespace {

void write(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}
bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// The message of the exception of type E that f throws; a test failure if f throws nothing
// or something else.
template <class E, class F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("wrong exception type: " << e.what());
    return "";
  }
  FAIL("nothing thrown");
  return "";
}
template <class F> std::string io_error(F&& f) { return error_of<IOError>(f); }

// Peak resident memory of this process (VmHWM, bytes), reset first where the kernel allows
// it, so the difference across a call bounds what the call touched.
int64_t peak_rss_reset() {
  std::ofstream("/proc/self/clear_refs") << "5";
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}
int64_t peak_rss() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

template <class T> std::string le(T v) { return std::string(reinterpret_cast<const char*>(&v), sizeof(T)); }
std::string be32(uint32_t v) { return {(char)(v >> 24), (char)(v >> 16), (char)(v >> 8), (char)v}; }

// A .npy (format 1.0) with the given header dict and raw data bytes.
std::string npy(const std::string& dict, const std::string& data = "") {
  std::string h = dict;
  while ((10 + h.size() + 1) % 64) h += ' ';
  h += '\n';
  return std::string("\x93NUMPY\x01\x00", 8) + le<uint16_t>((uint16_t)h.size()) + h + data;
}

// One checkpoint tensor entry in the version-1 layout (io.h), data given raw.
std::string ckpt_entry(const std::string& name, uint8_t code, const Shape& shape, uint64_t nbytes,
                       const std::string& data = "") {
  std::string e = le<uint32_t>((uint32_t)name.size()) + name + le<uint8_t>(code) + le<uint8_t>((uint8_t)shape.size());
  for (int64_t d : shape) e += le<int64_t>(d);
  return e + le<uint64_t>(nbytes) + data;
}
// A checkpoint with a correct header, payload size and CRC around the given payload.
std::string ckpt(const std::string& payload) {
  std::string b = std::string("LOTGCKPT") + le<uint32_t>(1) + le<uint32_t>(0) + le<uint64_t>(payload.size()) + payload;
  return b + le<uint32_t>(lotgrad::crc32(b.data(), b.size()));
}

std::string idx_header(std::vector<uint32_t> dims) {
  std::string s = {0, 0, 8, (char)dims.size()};
  for (uint32_t d : dims) s += be32(d);
  return s;
}
// One gzip member holding bytes (gzip readers decode concatenated members as one stream).
std::string gzip_member(const std::string& bytes) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, 9, Z_DEFLATED, 16 + 15, 9, Z_DEFAULT_STRATEGY) == Z_OK);
  std::string out(deflateBound(&z, bytes.size()), '\0');
  z.next_in = (Bytef*)bytes.data();
  z.avail_in = (uInt)bytes.size();
  z.next_out = (Bytef*)out.data();
  z.avail_out = (uInt)out.size();
  REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}
// prefix followed by n zero bytes, deflated in one stream (gzip or zlib framing) without
// holding the zeros in memory.
std::string deflate_zeros(const std::string& prefix, size_t n, bool gzip) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, 1, Z_DEFLATED, gzip ? 16 + 15 : 15, 9, Z_DEFAULT_STRATEGY) == Z_OK);
  const std::string zeros(1 << 20, '\0');
  std::string out;
  char buf[1 << 16];
  auto feed = [&](const char* p, size_t k, int flush) {
    z.next_in = (Bytef*)p;
    z.avail_in = (uInt)k;
    do {
      z.next_out = (Bytef*)buf;
      z.avail_out = sizeof buf;
      deflate(&z, flush);
      out.append(buf, sizeof buf - z.avail_out);
    } while (z.avail_out == 0);
  };
  feed(prefix.data(), prefix.size(), Z_NO_FLUSH);
  for (size_t left = n; left > 0;) {
    const size_t k = std::min(left, zeros.size());
    feed(zeros.data(), k, Z_NO_FLUSH);
    left -= k;
  }
  feed(nullptr, 0, Z_FINISH);
  deflateEnd(&z);
  return out;
}
std::string zlib_compress(const std::string& bytes) {
  uLongf n = compressBound(bytes.size());
  std::string out(n, '\0');
  REQUIRE(compress2((Bytef*)out.data(), &n, (const Bytef*)bytes.data(), bytes.size(), 9) == Z_OK);
  out.resize(n);
  return out;
}

// ---- a minimal PNG writer, for files stb_image_write cannot make ---------------------------
std::string png_chunk(const std::string& type, const std::string& data) {
  const std::string td = type + data;
  return be32((uint32_t)data.size()) + td + be32(lotgrad::crc32(td.data(), td.size()));
}
std::string png_ihdr(uint32_t w, uint32_t h, int depth, int ctype, int interlace = 0) {
  return png_chunk("IHDR", be32(w) + be32(h) + std::string{(char)depth, (char)ctype, 0, 0, (char)interlace});
}
const std::string kPngSig("\x89PNG\r\n\x1a\n", 8);

int png_channels(int ctype) { return ctype == 2 ? 3 : ctype == 4 ? 2 : ctype == 6 ? 4 : 1; }
// Filter-0 scanlines of a w x h image (Adam7 passes when interlaced) whose samples are
// sample(x, y, channel) masked to depth bits.
template <class F> std::string png_raw(int w, int h, int depth, int ctype, bool interlace, F sample) {
  static const int pass[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4}, {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
  const int C = png_channels(ctype);
  std::string raw;
  for (int p = 0; p < (interlace ? 7 : 1); ++p) {
    const int x0 = interlace ? pass[p][0] : 0, y0 = interlace ? pass[p][1] : 0;
    const int dx = interlace ? pass[p][2] : 1, dy = interlace ? pass[p][3] : 1;
    if (x0 >= w || y0 >= h) continue;
    for (int y = y0; y < h; y += dy) {
      raw += '\0';
      uint32_t acc = 0;
      int bits = 0;
      for (int x = x0; x < w; x += dx)
        for (int c = 0; c < C; ++c) {
          const uint32_t v = (uint32_t)sample(x, y, c) & ((1u << depth) - 1);
          if (depth == 16) {
            raw += (char)(v >> 8);
            raw += (char)v;
            continue;
          }
          acc = acc << depth | v;
          bits += depth;
          if (bits == 8) {
            raw += (char)acc;
            acc = 0;
            bits = 0;
          }
        }
      if (bits) raw += (char)(acc << (8 - bits));
    }
  }
  return raw;
}
std::string png_file(int w, int h, int depth, int ctype, bool interlace, const std::string& raw) {
  std::string s = kPngSig + png_ihdr((uint32_t)w, (uint32_t)h, depth, ctype, interlace);
  if (ctype == 3) {
    std::string pal;
    for (int i = 0; i < 256; ++i) pal += std::string{(char)i, (char)i, (char)i};
    s += png_chunk("PLTE", pal);
  }
  return s + png_chunk("IDAT", zlib_compress(raw)) + png_chunk("IEND", "");
}

}  // namespace

// ---- shapes: element counts and strides --------------------------------------------------

TEST_CASE("shape arithmetic: sizes that multiply past int64 throw instead of wrapping") {
  const int64_t big = int64_t(1) << 62;
  // The shape: numel used to be 0 (a zero dimension) and the strides wrapped.
  for (const Shape& s : {Shape{big, 4, 0}, Shape{2, big, 4, 0}, Shape{big, 4}, Shape{3, big, 2}}) {
    INFO(shape_str(s));
    const std::string m = error_of<ShapeError>([&] { shape_numel(s); });
    CHECK(contains(m, shape_str(s)));
    CHECK(contains(error_of<ShapeError>([&] { contiguous_strides(s); }), shape_str(s)));
    CHECK(contains(error_of<ShapeError>([&] { Tensor::empty(s); }), shape_str(s)));
    CHECK(contains(error_of<ShapeError>([&] { Tensor::zeros(s, kFloat64); }), shape_str(s)));
  }
  // Elements fit but bytes do not: 2^62 f64 elements are 2^65 bytes (the size_t product wrapped
  // to 0 and a 64-byte storage was handed out for them).
  CHECK(contains(error_of<ShapeError>([&] { Tensor::empty({big}, kFloat64); }), "(4611686018427387904)"));
  CHECK(contains(error_of<ShapeError>([&] { shape_numel({3, -2}); }), "(3, -2)"));
  // Views cannot make such a shape either.
  const std::string ex = error_of<ShapeError>([&] { Tensor::scalar(1.0).expand({big, 4}); });
  CHECK(contains(ex, "expand"));
  CHECK(contains(ex, "(4611686018427387904, 4)"));
  CHECK(contains(error_of<ShapeError>([&] { Tensor::empty({0}).reshape({big, 4, 0}); }), "(4611686018427387904, 4, 0)"));
  // Large but representable shapes still work, empty ones included.
  CHECK(shape_numel({big, 1}) == big);
  CHECK(shape_numel({int64_t(1) << 31, int64_t(1) << 31, 0}) == 0);
  CHECK(contiguous_strides({int64_t(1) << 31, int64_t(1) << 31, 0}) == Shape{int64_t(1) << 31, 1, 1});
  CHECK(Tensor::empty({big, 0}).numel() == 0);
  CHECK(shape_numel({}) == 1);
}

TEST_CASE("arange: a range with no finite element count is an error naming its values") {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(contains(error_of<ShapeError>([&] { Tensor::arange(0.0, inf, 1.0); }), "arange: start 0, end inf, step 1"));
  CHECK(contains(error_of<ShapeError>([&] { Tensor::arange(nan, 3.0, 1.0); }), "start nan"));
  CHECK(contains(error_of<ShapeError>([&] { Tensor::arange(0.0, 1e300, 1e-300); }), "no finite element count"));
  CHECK(contains(error_of<ShapeError>([&] { Tensor::arange(0.0, 1e19, 1.0); }), "got 1e+19"));
  CHECK(contains(error_of<ShapeError>([&] { Tensor::arange(0.0, 1.0, 0.0); }), "step must be non-zero"));
  CHECK(Tensor::arange(3.0, 0.0, 1.0).numel() == 0);  // an empty range is fine
  CHECK(Tensor::arange(0.0, 1.0, 0.25, kFloat64).to_vector() == std::vector<double>{0, 0.25, 0.5, 0.75});
}

// ---- .npy ---------------------------------------------------------------------------------

TEST_CASE("npy: a shape that overflows behind a zero dimension names the file and the shape") {
  TmpDir t;
  const std::string p = t / "huge.npy";
  write(p, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4, 0), }"));
  std::string m = io_error([&] { load_npy(p); });
  CHECK(contains(m, p));
  CHECK(contains(m, "(4611686018427387904, 4, 0)"));
  // Sizes that fit in int64 but not in bytes at 8 per element, behind a zero.
  write(p, npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952, 0), }"));
  m = io_error([&] { load_npy(p); });
  CHECK(contains(m, "(2305843009213693952, 0)"));
  CHECK(contains(m, "<f8"));
  // fuzz_npy, crash-f8eee681: an int32 array is read as int64, so its sizes are checked at
  // 8 bytes, not 4: (0, 1.5 * 2^60) of '<i4' loaded and then could not be saved and read back.
  write(p, npy("{'descr': '<i4', 'fortran_order': False, 'shape': (0, 1729382256910270464), }"));
  m = io_error([&] { load_npy(p); });
  CHECK(contains(m, "(0, 1729382256910270464)"));
  CHECK(contains(m, "times 8 bytes"));
  write(p, npy("{'descr': '<i4', 'fortran_order': False, 'shape': (0, 576460752303423488), }"));
  const Tensor widened = load_npy(p);
  CHECK(npy_from_bytes(npy_to_bytes(widened)).shape() == widened.shape());
  // The largest representable empty array still loads.
  write(p, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1152921504606846976, 0), }"));
  CHECK(load_npy(p).shape() == Shape{int64_t(1) << 60, 0});
}

TEST_CASE("npy: a long header is quoted in errors only in part") {
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x" + std::string(60000, 'y') + "': 1}";
  const std::string m = io_error([&] { npy_from_bytes(npy(dict), "long.npy"); });
  CHECK(contains(m, "long.npy"));
  CHECK(contains(m, "unexpected key"));
  CHECK(m.size() < 2000);
}

// ---- checkpoints ----------------------------------------------------------------------------

TEST_CASE("checkpoint: an overflowing shape with a valid CRC names the file and tensor and shape") {
  TmpDir t;
  const std::string p = t / "huge.ckpt";
  const Shape bad{int64_t(1) << 62, 4, 0};
  write(p, ckpt(le<uint32_t>(0) + le<uint32_t>(1) + ckpt_entry("w", 0, bad, 0)));
  const std::string m = io_error([&] { load_checkpoint(p); });
  CHECK(contains(m, p));
  CHECK(contains(m, "'w'"));
  CHECK(contains(m, "(4611686018427387904, 4, 0)"));
  // A negative dimension, and one that fits as elements but not as bytes.
  CHECK(contains(io_error([&] { checkpoint_from_bytes(ckpt(le<uint32_t>(0) + le<uint32_t>(1) + ckpt_entry("v", 1, {3, -1}, 0)), "neg"); }),
                 "(3, -1)"));
  CHECK(contains(io_error([&] {
                   checkpoint_from_bytes(ckpt(le<uint32_t>(0) + le<uint32_t>(1) + ckpt_entry("v", 1, {int64_t(1) << 61, 0}, 0)), "b");
                 }),
                 "(2305843009213693952, 0)"));
  // A sane empty tensor beside them still loads.
  const Checkpoint ok = checkpoint_from_bytes(ckpt(le<uint32_t>(0) + le<uint32_t>(1) + ckpt_entry("e", 0, {5, 0}, 0)));
  CHECK(ok.at("e").shape() == Shape{5, 0});
}

TEST_CASE("checkpoint: counts that cannot fit in the file are rejected before the loop") {
  // 2^32 - 1 metadata entries promised in a 4-byte payload.
  std::string m = io_error([&] { checkpoint_from_bytes(ckpt(le<uint32_t>(0xFFFFFFFFu) + le<uint32_t>(0)), "cnt"); });
  CHECK(contains(m, "cnt"));
  CHECK(contains(m, "4294967295"));
  CHECK(contains(m, "metadata"));
  m = io_error([&] { checkpoint_from_bytes(ckpt(le<uint32_t>(0) + le<uint32_t>(100000)), "cnt"); });
  CHECK(contains(m, "100000"));
  CHECK(contains(m, "tensor"));
  // Duplicate metadata keys name the key.
  const std::string kv = le<uint32_t>(1) + "k" + le<uint32_t>(1) + "v";
  CHECK(contains(io_error([&] { checkpoint_from_bytes(ckpt(le<uint32_t>(2) + kv + kv + le<uint32_t>(0)), "dup"); }), "'k'"));
}

// ---- IDX and gzip --------------------------------------------------------------------------

TEST_CASE("idx: dimensions whose product overflows or exceeds the data are rejected") {
  TmpDir t;
  // The header: (2^20, 2^20, 2^24) = 2^64 bytes wrapped to 0 and matched an empty body.
  const std::vector<uint32_t> dims{1u << 20, 1u << 20, 1u << 24};
  for (const std::string& name : {std::string("wrap"), std::string("wrap.gz")}) {
    const std::string p = t / name;
    write(p, name.ends_with(".gz") ? gzip_member(idx_header(dims)) : idx_header(dims));
    const std::string m = io_error([&] { data::read_idx(p); });
    CHECK(contains(m, p));
    CHECK(contains(m, "(1048576, 1048576, 16777216)"));
    CHECK(contains(io_error([&] { data::read_idx_dataset(p, p); }), p));
  }
  // No overflow, but far more than the file holds: caught from the header alone.
  const std::string p = t / "big";
  write(p, idx_header({1u << 20, 1u << 20, 1u << 10}) + "abc");
  std::string m = io_error([&] { data::read_idx(p); });
  CHECK(contains(m, "1125899906842624"));  // 2^50, what the header says
  CHECK(contains(m, "3"));                 // what the file has
  write(p + ".gz", gzip_member(idx_header({1u << 20, 1u << 20, 1u << 10}) + "abc"));
  m = io_error([&] { data::read_idx(p + ".gz"); });
  CHECK(contains(m, "1125899906842624"));
  // A zero dimension does not excuse the others: their product must still fit in int64.
  write(p, idx_header({0, 0xFFFFFFFFu, 0xFFFFFFFFu}));
  CHECK(contains(io_error([&] { data::read_idx(p); }), "(0, 4294967295, 4294967295)"));
  write(p, idx_header({0, 0xFFFFFFFFu, 2}));
  CHECK(data::read_idx(p).data.empty());
}

TEST_CASE("idx: a gzip bomb behind a small header is cut off at the header's size") {
  TmpDir t;
  // 784 bytes promised, then 256 MiB of zeros (about 256 KiB on disk), and a second gzip
  // member after it (readers decode concatenated members as one stream).
  const std::string file = deflate_zeros(idx_header({1, 28, 28}), size_t(256) << 20, true) + gzip_member("x");
  const std::string p = t / "bomb.gz";
  write(p, file);
  const int64_t before = peak_rss_reset();
  const std::string m = io_error([&] { data::read_idx(p); });
  const int64_t grew = peak_rss() - before;
  CHECK(contains(m, p));
  CHECK(contains(m, "784"));
  CHECK(contains(m, "(1, 28, 28)"));
  MESSAGE("peak RSS grew by " << grew / 1024 << " KiB reading a " << file.size() / 1024 << " KiB gzip of 256 MiB");
  CHECK(grew < (int64_t(32) << 20));
  // The same file with the true size in its header is read whole (the bound is the header's).
  write(p, deflate_zeros(idx_header({4, 1024, 1024}), size_t(4) << 20, true));
  CHECK(data::read_idx(p).data.size() == size_t(4) << 20);
  // Too short, and a plain file with trailing bytes: both sizes named.
  write(p, gzip_member(idx_header({2, 3}) + "12345"));
  CHECK(contains(io_error([&] { data::read_idx(p); }), "has 5 bytes, header says 6"));
  write(t / "plain", idx_header({2, 3}) + "1234567");
  CHECK(contains(io_error([&] { data::read_idx(t / "plain"); }), "has 7 bytes, header says 6"));
}

// ---- PNG ----------------------------------------------------------------------------------

TEST_CASE("png: other image formats stb knows are rejected by name") {
  TmpDir t;
  // Binary PGM, BMP, and a GIF header: stb decodes the first two.
  const std::string pgm = std::string("P5\n2 2\n255\n") + std::string{1, 2, 3, 4};
  std::string bmp = "BM" + le<uint32_t>(58) + le<uint32_t>(0) + le<uint32_t>(54) + le<uint32_t>(40) + le<int32_t>(1) +
                    le<int32_t>(1) + le<uint16_t>(1) + le<uint16_t>(24) + le<uint32_t>(0) + le<uint32_t>(4) +
                    le<int32_t>(2835) + le<int32_t>(2835) + le<uint32_t>(0) + le<uint32_t>(0) + std::string{9, 9, 9, 0};
  for (const auto& [name, bytes] : {std::pair<std::string, std::string>{"a.pgm", pgm}, {"b.bmp", bmp}, {"c.png", pgm}}) {
    INFO(name);
    write(t / name, bytes);
    const std::string m = io_error([&] { int w, h; data::read_png_gray(t / name, &w, &h); });
    CHECK(contains(m, t / name));
    CHECK(contains(m, "not a PNG"));
  }
  write(t / "short.png", kPngSig.substr(0, 5));
  CHECK(contains(io_error([&] { data::read_png_gray(t / "short.png", nullptr, nullptr); }), "not a PNG"));
}

TEST_CASE("png: every colour type and bit depth and interlacing still decodes") {
  TmpDir t;
  const std::vector<std::pair<int, int>> kinds{{0, 1}, {0, 2}, {0, 4}, {0, 8}, {0, 16}, {2, 8}, {2, 16}, {3, 1},
                                                {3, 2}, {3, 4}, {3, 8}, {4, 8}, {4, 16}, {6, 8}, {6, 16}};
  for (const auto& [ctype, depth] : kinds)
    for (int interlace = 0; interlace < 2; ++interlace)
      for (const auto& [w, h] : {std::pair{1, 1}, std::pair{5, 3}, std::pair{9, 10}, std::pair{3, 17}}) {
        INFO("colour type " << ctype << " depth " << depth << " interlace " << interlace << " " << w << "x" << h);
        auto sample = [&](int x, int y, int c) { return (x * 7 + y * 13 + c * 5) * 37 + 11; };
        const std::string p = t / "k.png";
        write(p, png_file(w, h, depth, ctype, interlace, png_raw(w, h, depth, ctype, interlace, sample)));
        int W = 0, H = 0;
        const std::vector<uint8_t> px = data::read_png_gray(p, &W, &H);
        CHECK(W == w);
        CHECK(H == h);
        REQUIRE(px.size() == (size_t)(w * h));
        if ((ctype == 0 || ctype == 3) && depth == 8)
          for (int y = 0; y < h; ++y)
            for (int x = 0; x < w; ++x) CHECK(px[(size_t)(y * w + x)] == (uint8_t)sample(x, y, 0));
      }
}

// fuzz_png, crash-47f43cee: an empty IDAT chunk first made stb memcpy into a buffer it had not
// allocated yet (memcpy(NULL, src, 0), flagged by UBSan in the fuzz build, which compiles stb).
// Empty IDAT chunks are legal and carry nothing: wherever they sit, the image is the same.
TEST_CASE("png: empty IDAT chunks anywhere decode to the same image") {
  TmpDir t;
  const int w = 7, h = 5;
  auto sample = [](int x, int y, int) { return x * 31 + y * 17 + 3; };
  const std::string z = zlib_compress(png_raw(w, h, 8, 0, false, sample));
  const std::string head = kPngSig + png_ihdr(w, h, 8, 0), empty = png_chunk("IDAT", ""), end = png_chunk("IEND", "");
  const std::string a = png_chunk("IDAT", z.substr(0, 9)), b = png_chunk("IDAT", z.substr(9));
  for (const std::string& file : {head + empty + a + b + end, head + empty + empty + a + empty + b + empty + end,
                                  head + a + b + end + "trailing bytes"}) {
    write(t / "e.png", file);
    int W = 0, H = 0;
    const std::vector<uint8_t> px = data::read_png_gray(t / "e.png", &W, &H);
    CHECK(W == w);
    CHECK(H == h);
    REQUIRE(px.size() == (size_t)(w * h));
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) CHECK(px[(size_t)(y * w + x)] == (uint8_t)sample(x, y, 0));
  }
  // Only empty IDAT chunks: no image data, named as such.
  write(t / "none.png", head + empty + empty + end);
  const std::string m = io_error([&] { int W, H; data::read_png_gray(t / "none.png", &W, &H); });
  CHECK(contains(m, "inflates to 0 bytes"));
}

TEST_CASE("png: sizes and chunk lengths and pixel data that do not add up are rejected before decoding") {
  TmpDir t;
  const std::string p = t / "x.png";
  auto err = [&](const std::string& bytes) {
    write(p, bytes);
    return io_error([&] { int w, h; data::read_png_gray(p, &w, &h); });
  };
  // 4000 x 4000 promised, 12 bytes of pixel data: stb allocated the promised 16 MB first.
  std::string m = err(png_file(4000, 4000, 8, 0, false, std::string(12, '\0')));
  CHECK(contains(m, p));
  CHECK(contains(m, "4000x4000"));
  CHECK(contains(m, "16004000"));  // 4000 rows of 1 filter byte + 4000 pixels
  // An IDAT chunk claiming 2^31 - 1 bytes in a tiny file (stb reallocated to that size).
  m = err(kPngSig + png_ihdr(4, 4, 8, 0) + be32(0x7FFFFFFFu) + "IDAT" + "abcd");
  CHECK(contains(m, "IDAT"));
  CHECK(contains(m, "2147483647"));
  CHECK(contains(m, "byte 33"));
  // Larger than the reader accepts (stb allows up to 2^30 bytes).
  m = err(png_file(4097, 4096, 8, 0, false, "x"));
  CHECK(contains(m, "4097x4096"));
  CHECK(contains(m, "16777216"));
  // A bomb: a 2 x 2 image whose IDAT inflates to 128 MiB of zeros; stb decoded all of it and
  // kept the first 6 bytes.
  const std::string ihdr = png_ihdr(2, 2, 8, 0);
  const std::string bomb = kPngSig + ihdr + png_chunk("IDAT", deflate_zeros("", size_t(128) << 20, false)) + png_chunk("IEND", "");
  const int64_t before = peak_rss_reset();
  m = err(bomb);
  const int64_t grew = peak_rss() - before;
  CHECK(contains(m, "more than"));
  CHECK(contains(m, " 6 bytes"));
  MESSAGE("peak RSS grew by " << grew / 1024 << " KiB reading a " << bomb.size() / 1024 << " KiB PNG of 128 MiB");
  CHECK(grew < (int64_t(32) << 20));
  // Structure: no IHDR first, no IEND, bad IHDR values, Apple's CgBI variant.
  CHECK(contains(err(kPngSig + png_chunk("IDAT", "") + png_chunk("IEND", "")), "IHDR"));
  CHECK(contains(err(kPngSig + png_ihdr(2, 2, 8, 0) + png_chunk("IDAT", zlib_compress(std::string(6, '\0')))), "IEND"));
  CHECK(contains(err(kPngSig + png_ihdr(2, 2, 3, 0) + png_chunk("IEND", "")), "bit depth 3"));
  CHECK(contains(err(kPngSig + png_ihdr(0, 2, 8, 0) + png_chunk("IEND", "")), "0x2"));
  CHECK(contains(err(kPngSig + png_chunk("CgBI", "abcd") + png_ihdr(2, 2, 8, 0) + png_chunk("IEND", "")), "CgBI"));
  // Too little pixel data is named with both sizes.
  m = err(png_file(3, 3, 8, 0, false, std::string(5, '\0')));
  CHECK(contains(m, "5 bytes"));
  CHECK(contains(m, "12"));
}

// ---- Pathfinder metadata ----------------------------------------------------------------------

TEST_CASE("pathfinder: metadata paths are confined to the dataset root") {
  TmpDir t;
  data::PathfinderOptions o;
  o.contour_length = 6;
  o.count = 2;
  const std::string dir = data::write_pathfinder(t / "root", o);
  const std::string m = dir + "/metadata/0.npy";
  std::string good;
  {
    std::ifstream f(m, std::ios::binary);
    std::ostringstream s;
    s << f.rdbuf();
    good = s.str();
  }
  // A perfectly good PNG outside the root, reachable by '..' or an absolute path.
  data::write_png_gray(t / "outside.png", 32, 32, std::vector<uint8_t>(1024, 200));
  data::write_png_gray(dir + "/imgs/0/inside.png", 32, 32, std::vector<uint8_t>(1024, 100));
  const std::string outside = t / "outside.png";
  const std::vector<std::pair<std::string, std::string>> bad{
      {"imgs/0 ../../../../outside.png 2 1 6 2 6", "'..'"},
      {"../.. outside.png 2 1 6 2 6", "'..'"},
      {"imgs/0/../.. ../../outside.png 2 1 6 2 6", "'..'"},
      {fs::path(outside).parent_path().string() + " outside.png 2 1 6 2 6", "absolute"},
      {"imgs/0 " + outside + " 2 1 6 2 6", "absolute"},
  };
  for (const auto& [line, why] : bad) {
    INFO(line);
    write(m, good + line + "\n");
    const std::string msg = io_error([&] { data::read_pathfinder(dir); });
    CHECK(contains(msg, m + ":3:"));
    CHECK(contains(msg, why));
  }
  // A NUL byte in a field.
  write(m, good + "imgs/0 inside.png" + std::string(1, '\0') + "x 2 1 6 2 6\n");
  CHECK(contains(io_error([&] { data::read_pathfinder(dir); }), m + ":3:"));
  // A symbolic link inside the root that leads out of it.
  fs::create_symlink(outside, dir + "/imgs/0/link.png");
  write(m, good + "imgs/0 link.png 2 1 6 2 6\n");
  std::string msg = io_error([&] { data::read_pathfinder(dir); });
  CHECK(contains(msg, m + ":3:"));
  CHECK(contains(msg, "outside the dataset root"));
  fs::create_directory_symlink(t.path, dir + "/up");
  write(m, good + "up outside.png 2 1 6 2 6\n");
  CHECK(contains(io_error([&] { data::read_pathfinder(dir); }), "outside the dataset root"));
  // Links that stay inside the root, and a root reached through a link, are fine.
  fs::create_symlink("inside.png", dir + "/imgs/0/alias.png");
  write(m, good + "imgs/0 alias.png 2 1 6 2 6\n./imgs/0 ./inside.png 3 0 6 2 6\n");
  data::Dataset d = data::read_pathfinder(dir);
  REQUIRE(d.size() == 4);
  CHECK(d[2].tokens[0] == 100);
  CHECK(d[3].label == 0);
  fs::create_directory_symlink(dir, t / "via_link");
  CHECK(data::read_pathfinder(t / "via_link").size() == 4);
}

TEST_CASE("pathfinder: metadata files are scanned in place and confined too") {
  TmpDir t;
  data::PathfinderOptions o;
  o.contour_length = 6;
  o.count = 2;
  const std::string dir = data::write_pathfinder(t / "root", o);
  // 16 MiB of blank lines: one std::string per line cost about 512 MiB.
  write(dir + "/metadata/1.npy", std::string(size_t(16) << 20, '\n'));
  const int64_t before = peak_rss_reset();
  CHECK(data::read_pathfinder(dir).size() == 2);
  const int64_t grew = peak_rss() - before;
  MESSAGE("peak RSS grew by " << grew / 1024 << " KiB reading 16 MiB of blank metadata lines");
  CHECK(grew < (int64_t(48) << 20));
  // A huge label field is quoted in part.
  write(dir + "/metadata/1.npy", "imgs/0 sample_0.png 0 " + std::string(100000, '7') + "\n");
  const std::string m = io_error([&] { data::read_pathfinder(dir); });
  CHECK(contains(m, dir + "/metadata/1.npy:1:"));
  CHECK(m.size() < 2000);
  // A metadata file that is a link out of the root.
  write(t / "elsewhere.npy", "imgs/0 sample_0.png 0 1\n");
  fs::remove(dir + "/metadata/1.npy");
  fs::create_symlink(t / "elsewhere.npy", dir + "/metadata/1.npy");
  CHECK(contains(io_error([&] { data::read_pathfinder(dir); }), "outside the dataset root"));
}

TEST_CASE("readers: special files are refused and not read forever") {
  TmpDir t;
  REQUIRE(::mkfifo((t / "fifo.png").c_str(), 0600) == 0);
  CHECK(contains(io_error([&] { data::read_png_gray(t / "fifo.png", nullptr, nullptr); }), "not a regular file"));
  REQUIRE(::mkfifo((t / "fifo.gz").c_str(), 0600) == 0);
  CHECK(contains(io_error([&] { data::read_idx(t / "fifo.gz"); }), "not a regular file"));
  CHECK(contains(io_error([&] { load_npy(t / "fifo.gz"); }), "not a regular file"));
}
