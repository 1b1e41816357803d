// core/io: .npy round trips and exact bytes, malformed files, checkpoints (round trip,
// truncation at every offset, flipped bytes, atomic writes).
#include <doctest/doctest.h>
#include <lotgrad/lotgrad.h>

#include "support/same_bits.h"
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

using namespace lotgrad;
using lotgrad::testing::same_bits;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test case, removed at the end.
struct TempDir {
  fs::path dir;
  TempDir() {
    static int counter = 0;
    dir = fs::temp_directory_path() / ("lotgrad_test_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string path(const std::string& name) const { return (dir / name).string(); }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

// The message of the IOError thrown by f ("" if none was thrown).
template <class F> std::string io_error(F&& f) {
  try {
    f();
  } catch (const IOError& e) {
    return e.what();
  }
  return "";
}

Tensor sample(DType dt, const Shape& shape) {
  const int64_t n = shape_numel(shape);
  if (dt == kBool) {
    std::vector<bool> b(n);
    for (int64_t i = 0; i < n; ++i) b[i] = (i * 5) % 3 == 0;
    return Tensor::from_vector(b, shape);
  }
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = (i % 7) * 1.25 - 3.0 + (i % 3 == 0 ? 0.1 : 0.0);
  return Tensor::from_vector(v, shape).to(dt);
}

}  // namespace

TEST_CASE("npy: round trip for every dtype, shapes incl. 0-d and empty") {
  TempDir tmp;
  for (DType dt : {kFloat32, kFloat64, kInt64, kBool}) {
    for (const Shape& s : {Shape{2, 3}, Shape{5}, Shape{}, Shape{0, 4}, Shape{2, 1, 3, 2}}) {
      INFO(dtype_name(dt) << " " << shape_str(s));
      Tensor t = sample(dt, s);
      const std::string p = tmp.path("a.npy");
      save_npy(p, t);
      Tensor u = load_npy(p);
      CHECK(same_bits(t, u));
      CHECK(same_bits(t, npy_from_bytes(npy_to_bytes(t))));
      // The data start on a 64-byte boundary, as NumPy requires of writers.
      const std::string b = npy_to_bytes(t);
      CHECK((b.size() - (size_t)t.numel() * dtype_size(dt)) % 64 == 0);
    }
  }
  // Special float values survive bit for bit.
  Tensor f = Tensor::from_vector(std::vector<double>{NAN, INFINITY, -INFINITY, -0.0, 1e-310}, {5});
  CHECK(same_bits(f, npy_from_bytes(npy_to_bytes(f))));
}

TEST_CASE("npy: non-contiguous tensors are written in logical row-major order") {
  Tensor base = sample(kFloat32, {4, 6});
  Tensor tr = base.t();                  // (6, 4) transposed view
  Tensor sl = base.slice(1, 1, 6, 2);    // (4, 3) strided
  for (const Tensor& v : {tr, sl}) {
    REQUIRE_FALSE(v.is_contiguous());
    Tensor u = npy_from_bytes(npy_to_bytes(v));
    CHECK(u.is_contiguous());
    CHECK(u.shape() == v.shape());
    CHECK(u.to_vector() == v.to_vector());
  }
  // A view with a storage offset.
  Tensor row = base.select(0, 2);
  CHECK(npy_from_bytes(npy_to_bytes(row)).to_vector() == row.to_vector());
}

TEST_CASE("npy: bytes match NumPy's np.save exactly") {
  // np.save(f, np.arange(6, dtype=np.float32).reshape(2, 3)) with NumPy >= 1.24: magic,
  // version 1.0, header length 118 (0x76), the dict, 21 - len("2") = 20 growth spaces,
  // 38 alignment spaces, newline, then the data at offset 128.
  std::string expected("\x93NUMPY\x01\x00\x76\x00", 10);
  expected += "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  expected += std::string(58, ' ') + "\n";
  REQUIRE(expected.size() == 128);
  const float vals[6] = {0, 1, 2, 3, 4, 5};
  expected.append(reinterpret_cast<const char*>(vals), sizeof vals);
  Tensor t = Tensor::arange(0, 6, 1, kFloat32).reshape({2, 3});
  CHECK(npy_to_bytes(t) == expected);

  // 0-d int64 (np.save(f, np.int64(7))): no growth spaces for shape ().
  std::string e0("\x93NUMPY\x01\x00\x76\x00", 10);
  e0 += "{'descr': '<i8', 'fortran_order': False, 'shape': (), }";
  e0 += std::string(62, ' ') + "\n";
  const int64_t seven = 7;
  e0.append(reinterpret_cast<const char*>(&seven), 8);
  CHECK(npy_to_bytes(Tensor::scalar(7, kInt64)) == e0);

  // 1-d bool: the shape tuple has a trailing comma.
  std::string eb("\x93NUMPY\x01\x00\x76\x00", 10);
  eb += "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }";
  eb += std::string(60, ' ') + "\n";
  eb += std::string("\x01\x00\x01", 3);
  CHECK(npy_to_bytes(Tensor::from_vector(std::vector<bool>{true, false, true}, {3})) == eb);
}

TEST_CASE("npy: reading other writers' files (int32, big-endian, v2.0, old 16-byte padding)") {
  // Old-NumPy style header: no growth spaces, 16-byte alignment, double-quoted keys allowed.
  auto make = [](const std::string& dict, int major, const std::string& data) {
    std::string h = dict + "\n";
    std::string out("\x93NUMPY", 6);
    out += (char)major;
    out += '\0';
    if (major == 1) {
      const uint16_t L = (uint16_t)h.size();
      out.append(reinterpret_cast<const char*>(&L), 2);
    } else {
      const uint32_t L = (uint32_t)h.size();
      out.append(reinterpret_cast<const char*>(&L), 4);
    }
    return out + h + data;
  };
  const int32_t i32[3] = {-5, 0, 2147483647};
  Tensor a = npy_from_bytes(make("{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }", 1,
                                 std::string(reinterpret_cast<const char*>(i32), 12)));
  CHECK(a.dtype() == kInt64);  // int32 is widened
  CHECK(a.to_vector() == std::vector<double>{-5, 0, 2147483647});

  // Big-endian f8, 1.0 and 2.0 as one double: 0x3FF0000000000000.
  std::string be("\x3F\xF0\x00\x00\x00\x00\x00\x00", 8);
  for (int major : {1, 2, 3}) {
    Tensor b = npy_from_bytes(make("{\"descr\": \">f8\", \"fortran_order\": False, \"shape\": (1, 1)}", major, be));
    CHECK(b.dtype() == kFloat64);
    CHECK(b.shape() == Shape{1, 1});
    CHECK(b.item() == 1.0);
  }
  // Bool bytes other than 0/1 become canonical true.
  Tensor c = npy_from_bytes(make("{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }", 1, std::string("\x00\x07", 2)));
  CHECK(c.to_vector() == std::vector<double>{0, 1});
}

TEST_CASE("npy: malformed files give IOError naming the file") {
  TempDir tmp;
  const std::string good = npy_to_bytes(sample(kFloat32, {2, 3}));
  auto check_bad = [&](const std::string& bytes, const std::string& want) {
    const std::string p = tmp.path("bad.npy");
    write_bytes(p, bytes);
    const std::string msg = io_error([&] { load_npy(p); });
    INFO(msg);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find(want) != std::string::npos);
  };
  std::string bad_magic = good;
  bad_magic[1] = 'X';
  check_bad(bad_magic, "bad magic");
  check_bad("", "empty file");
  check_bad(good.substr(0, good.size() - 3), "truncated data");
  check_bad(good.substr(0, 9), "truncated");
  check_bad(good.substr(0, 60), "truncated");  // inside the header
  check_bad(good + "xx", "unexpected bytes");
  std::string v9 = good;
  v9[6] = 9;
  check_bad(v9, "version 9");
  auto with_dict = [&](const std::string& dict) {
    std::string h = dict;
    h.resize(117, ' ');
    return std::string("\x93NUMPY\x01\x00\x76\x00", 10) + h + "\n" + good.substr(128);
  };
  check_bad(with_dict("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }"), "Fortran");
  check_bad(with_dict("{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3), }"), "unsupported dtype");
  check_bad(with_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 9), }"), "truncated data");
  check_bad(with_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999), }"),
            "impossible shape");
  check_bad(with_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }"), "malformed .npy header");
  check_bad(with_dict("{'descr': '<f4', 'fortran_order': False}"), "missing");
  check_bad(with_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}"), "unexpected key");
  check_bad(with_dict("not a dict"), "malformed .npy header");
  check_bad(with_dict("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }"), "structured");
  // A missing file.
  const std::string missing = tmp.path("nope.npy");
  CHECK(io_error([&] { load_npy(missing); }).find(missing) != std::string::npos);
  // Every truncation of a valid file fails cleanly.
  for (size_t k = 0; k < good.size(); ++k) CHECK_THROWS_AS(npy_from_bytes(good.substr(0, k)), IOError);
}

TEST_CASE("checkpoint: round trip with metadata, every dtype, non-contiguous entries") {
  TempDir tmp;
  Tensor w = sample(kFloat32, {3, 4});
  NamedTensors entries = {{"model.w", w},
                          {"model.wt", w.t()},
                          {"model.b", sample(kFloat64, {4})},
                          {"data.idx", sample(kInt64, {2, 2})},
                          {"data.mask", sample(kBool, {5})},
                          {"scalar", Tensor::scalar(2.5, kFloat64)},
                          {"empty", Tensor::empty({0, 3})}};
  Metadata meta = {{"format", "test"}, {"step", "42"}, {"note", std::string("bytes \0 and \xff", 13)}};
  const std::string p = tmp.path("ck.bin");
  save_checkpoint(p, entries, meta);
  Checkpoint ck = load_checkpoint(p);
  CHECK(ck.metadata == meta);
  REQUIRE(ck.tensors.size() == entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    CHECK(ck.tensors[i].first == entries[i].first);
    CHECK(same_bits(ck.tensors[i].second, entries[i].second));
  }
  CHECK(ck.contains("model.b"));
  CHECK(same_bits(ck.at("data.idx"), entries[3].second));
  CHECK(io_error([&] { ck.at("nope"); }).find("model.w") != std::string::npos);
  // The same bytes through the buffer helpers.
  const std::string bytes = checkpoint_to_bytes(entries, meta);
  CHECK(bytes == read_file(p));
  CHECK(checkpoint_from_bytes(bytes).metadata == meta);
  // Bad input is refused before anything is written.
  CHECK_THROWS_AS(save_checkpoint(tmp.path("dup.bin"), {{"a", w}, {"a", w}}), ShapeError);
  CHECK_THROWS_AS(save_checkpoint(tmp.path("dup.bin"), {{"", w}}), ShapeError);
  CHECK_FALSE(fs::exists(tmp.path("dup.bin")));
}

TEST_CASE("checkpoint: truncation at every offset and flipped bytes give IOError") {
  TempDir tmp;
  NamedTensors entries = {{"a", sample(kFloat32, {3, 5})}, {"b", sample(kInt64, {4})}, {"c", sample(kBool, {3})}};
  const std::string good = checkpoint_to_bytes(entries, {{"k", "v"}});
  for (size_t k = 0; k < good.size(); ++k) {
    const std::string msg = io_error([&] { checkpoint_from_bytes(good.substr(0, k), "trunc.bin"); });
    INFO("length " << k << ": " << msg);
    CHECK(msg.find("trunc.bin") != std::string::npos);
  }
  for (size_t k = 0; k < good.size(); ++k) {
    std::string bad = good;
    bad[k] ^= 0x20;
    const std::string msg = io_error([&] { checkpoint_from_bytes(bad, "flip.bin"); });
    INFO("byte " << k << ": " << msg);
    CHECK(msg.find("flip.bin") != std::string::npos);
  }
  // Specific diagnoses, through a real file.
  const std::string p = tmp.path("x.ckpt");
  std::string bad = good;
  bad[good.size() / 2] ^= 1;
  write_bytes(p, bad);
  std::string msg = io_error([&] { load_checkpoint(p); });
  CHECK(msg.find(p) != std::string::npos);
  CHECK(msg.find("checksum mismatch") != std::string::npos);
  write_bytes(p, good.substr(0, good.size() - 10));
  CHECK(io_error([&] { load_checkpoint(p); }).find("truncated") != std::string::npos);
  bad = good;
  bad[0] = 'X';
  write_bytes(p, bad);
  CHECK(io_error([&] { load_checkpoint(p); }).find("bad magic") != std::string::npos);
  bad = good;
  bad[8] = 7;  // version 7
  write_bytes(p, bad);
  CHECK(io_error([&] { load_checkpoint(p); }).find("unknown checkpoint format version 7") != std::string::npos);
  write_bytes(p, good + "junk");
  CHECK(io_error([&] { load_checkpoint(p); }).find("trailing bytes") != std::string::npos);
  CHECK(io_error([&] { load_checkpoint(tmp.path("missing")); }).find("missing") != std::string::npos);
}

TEST_CASE("checkpoint: a valid checksum over impossible contents still fails cleanly") {
  // Hand-build a file whose CRC is right but whose tensor claims 2^62 elements: the reader
  // must compare against the bytes present, never allocate.
  std::string payload;
  auto put32 = [&](uint32_t v) { payload.append(reinterpret_cast<const char*>(&v), 4); };
  auto put64 = [&](uint64_t v) { payload.append(reinterpret_cast<const char*>(&v), 8); };
  put32(0);  // no metadata
  put32(1);  // one tensor
  put32(1);
  payload += "h";
  payload += (char)0;  // f32
  payload += (char)2;  // rank 2
  put64(1ull << 31);
  put64(1ull << 31);
  put64(16ull << 60);  // data size (wraps to the wrong value on purpose)
  std::string file("LOTGCKPT", 8);
  const uint32_t ver = 1, flags = 0;
  const uint64_t plen = payload.size();
  file.append(reinterpret_cast<const char*>(&ver), 4);
  file.append(reinterpret_cast<const char*>(&flags), 4);
  file.append(reinterpret_cast<const char*>(&plen), 8);
  file += payload;
  const uint32_t crc = crc32(file.data(), file.size());
  file.append(reinterpret_cast<const char*>(&crc), 4);
  const std::string msg = io_error([&] { checkpoint_from_bytes(file, "huge.bin"); });
  INFO(msg);
  CHECK(msg.find("huge.bin") != std::string::npos);
  CHECK(msg.find("'h'") != std::string::npos);
  // CRC-32 reference value ("123456789" -> 0xCBF43926).
  CHECK(crc32("123456789", 9) == 0xCBF43926u);
  CHECK(crc32("56789", 5, crc32("1234", 4)) == 0xCBF43926u);
}

TEST_CASE("checkpoint: atomic writes leave no temp file and keep a good file on failure") {
  TempDir tmp;
  const std::string p = tmp.path("model.ckpt");
  NamedTensors v1 = {{"w", sample(kFloat32, {2, 2})}};
  save_checkpoint(p, v1, {{"v", "1"}});
  save_checkpoint(p, {{"w", sample(kFloat64, {3})}}, {{"v", "2"}});  // overwrite
  CHECK(load_checkpoint(p).metadata.at("v") == "2");
  int files = 0;
  for (const auto& e : fs::directory_iterator(tmp.dir)) {
    ++files;
    CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
  }
  CHECK(files == 1);

  // Writing into a directory that does not exist: IOError naming the path.
  const std::string nodir = tmp.path("no/such/dir/x.ckpt");
  const std::string msg = io_error([&] { save_checkpoint(nodir, v1); });
  CHECK(msg.find(nodir) != std::string::npos);

  // The temporary file cannot be created (its name is taken by a directory): the write
  // fails and the previous good file is intact and loadable.
  const std::string before = read_file(p);
  fs::create_directory(p + ".tmp." + std::to_string(::getpid()));
  CHECK(io_error([&] { save_checkpoint(p, v1, {{"v", "3"}}); }).find(p) != std::string::npos);
  CHECK(read_file(p) == before);
  CHECK(load_checkpoint(p).metadata.at("v") == "2");
  fs::remove(p + ".tmp." + std::to_string(::getpid()));

  // The rename fails (the target is a directory): the temp file is cleaned up.
  const std::string dirtarget = tmp.path("adir");
  fs::create_directory(dirtarget);
  CHECK(io_error([&] { save_checkpoint(dirtarget, v1); }).find(dirtarget) != std::string::npos);
  CHECK_FALSE(fs::exists(dirtarget + ".tmp." + std::to_string(::getpid())));

  // save_npy is atomic too.
  save_npy(tmp.path("a.npy"), v1[0].second);
  CHECK_FALSE(fs::exists(tmp.path("a.npy") + ".tmp." + std::to_string(::getpid())));
}
