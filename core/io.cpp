#include "io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <set>

#include "autograd.h"
#include "fault.h"

namespace lotgrad {

static_assert(std::endian::native == std::endian::little, "lotgrad's file formats assume a little-endian host");

// ---------------------------------------------------------------------------------------
// CRC-32, slicing-by-8 (about 1-2 GB/s, so checksumming never dominates a save)
// ---------------------------------------------------------------------------------------
namespace {
struct CrcTables {
  uint32_t t[8][256];
  CrcTables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};
const CrcTables& crc_tables() {
  static const CrcTables tables;
  return tables;
}
}  // namespace

uint32_t crc32(const void* data, size_t n, uint32_t crc) {
  const auto& T = crc_tables().t;
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  while (n >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = T[7][lo & 0xFF] ^ T[6][(lo >> 8) & 0xFF] ^ T[5][(lo >> 16) & 0xFF] ^ T[4][lo >> 24] ^ T[3][hi & 0xFF] ^
        T[2][(hi >> 8) & 0xFF] ^ T[1][(hi >> 16) & 0xFF] ^ T[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = T[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
  return ~c;
}

// ---------------------------------------------------------------------------------------
// byte sinks and the atomic file writer
// ---------------------------------------------------------------------------------------
namespace {

[[noreturn]] void io_fail(const std::string& op, const std::string& file, const std::string& what) {
  throw IOError(op + ": " + file + ": " + what);
}
std::string errno_str() { return std::strerror(errno); }

struct Sink {
  virtual ~Sink() = default;
  virtual void write(const void* p, size_t n) = 0;
  template <class T> void put(T v) { write(&v, sizeof(T)); }
  void put_str(const std::string& s) { write(s.data(), s.size()); }
};
struct StringSink : Sink {
  std::string& out;
  explicit StringSink(std::string& o) : out(o) {}
  void write(const void* p, size_t n) override { out.append(static_cast<const char*>(p), n); }
};
struct FileSink : Sink {
  FILE* f;
  const std::string& op;
  const std::string& path;
  FileSink(FILE* f_, const std::string& op_, const std::string& path_) : f(f_), op(op_), path(path_) {}
  void write(const void* p, size_t n) override {
    if (n && std::fwrite(p, 1, n, f) != n) io_fail(op, path, "write failed: " + errno_str());
  }
};
// Forwards to another sink and keeps a running CRC of everything that passed.
struct CrcSink : Sink {
  Sink& inner;
  uint32_t crc = 0;
  explicit CrcSink(Sink& s) : inner(s) {}
  void write(const void* p, size_t n) override {
    crc = crc32(p, n, crc);
    inner.write(p, n);
  }
};

// The write of a file that fault::at(event) marks (core/fault.h): cut to half its bytes,
// then the process is killed (a kill mid-write) or the write fails as on a full disk.
void inject_fault(const char* event, FILE* f, const std::string& op, const std::string& path) {
  const fault::Action a = fault::at(event);
  if (a == fault::Action::none) return;
  const long size = std::ftell(f);
  if (size > 0 && ::ftruncate(::fileno(f), size / 2) != 0) io_fail(op, path, "fault injection: " + errno_str());
  if (a == fault::Action::kill) fault::kill_now();
  errno = ENOSPC;
  io_fail(op, path, "write failed: " + errno_str() + " (injected by LOTGRAD_FAULT_ENOSPC)");
}

// Runs body on a sink over path + ".tmp.<pid>", then fsyncs and renames over path. On any
// failure the temporary file is removed and path is untouched. keep_as (not empty): an
// existing file at path is renamed to keep_as first, after the new file is complete and
// synced, so that at every instant one of the two names holds a complete file.
// fault_event (core/fault.h): the event whose injected kill / ENOSPC hits this write.
void atomic_write(const std::string& op, const std::string& path, const std::function<void(Sink&)>& body,
                  const std::string& keep_as = {}, const char* fault_event = nullptr) {
  const std::string tmp = path + ".tmp." + std::to_string((long long)::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) io_fail(op, path, "cannot create temporary file " + tmp + ": " + errno_str());
  try {
    FileSink sink(f, op, path);
    body(sink);
    if (std::fflush(f) != 0) io_fail(op, path, "flush failed: " + errno_str());
    if (fault_event) inject_fault(fault_event, f, op, path);
    if (::fsync(::fileno(f)) != 0) io_fail(op, path, "fsync failed: " + errno_str());
    FILE* g = f;
    f = nullptr;
    if (std::fclose(g) != 0) io_fail(op, path, "close failed: " + errno_str());
    bool kept = false;
    if (!keep_as.empty()) {
      kept = std::rename(path.c_str(), keep_as.c_str()) == 0;
      if (!kept && errno != ENOENT) io_fail(op, path, "cannot rename it to " + keep_as + ": " + errno_str());
      if (fault::at("rotate") == fault::Action::kill) fault::kill_now();
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      const std::string why = errno_str();
      if (kept) (void)std::rename(keep_as.c_str(), path.c_str());  // put the previous file back
      io_fail(op, path, "cannot rename " + tmp + " over it: " + why);
    }
  } catch (...) {
    if (f) std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  // Make the renames themselves durable (best effort: some file systems refuse directory fsync).
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

// Bounds-checked little-endian reader over a byte buffer.
struct Reader {
  const char* p;
  size_t n, pos = 0;
  const std::string& op;
  const std::string& file;
  Reader(const std::string& buf, const std::string& op_, const std::string& file_)
      : p(buf.data()), n(buf.size()), op(op_), file(file_) {}
  size_t left() const { return n - pos; }
  [[noreturn]] void fail(const std::string& what) const { io_fail(op, file, what); }
  void need(size_t k, const char* what) const {
    if (k > left())
      fail(std::string("truncated: ") + what + " at byte " + std::to_string(pos) + " needs " + std::to_string(k) +
           " bytes but only " + std::to_string(left()) + " remain");
  }
  template <class T> T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string get_str(size_t len, const char* what) {
    need(len, what);
    std::string s(p + pos, len);
    pos += len;
    return s;
  }
  const char* take(size_t len, const char* what) {
    need(len, what);
    const char* q = p + pos;
    pos += len;
    return q;
  }
};

// numel of a shape read from a file, or -1 if a size is negative or the sizes, zeros counted
// as 1, times elem_size pass INT64_MAX. Zeros count as 1 so that an empty array cannot carry
// a huge size: every accepted shape has int64 strides and byte offsets (shape_numel's rule,
// in bytes).
int64_t checked_numel(const Shape& shape, size_t elem_size) {
  int64_t extent = (int64_t)std::max<size_t>(elem_size, 1), n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(extent, std::max<int64_t>(d, 1), &extent)) return -1;
    n *= d;  // n <= extent
  }
  return n;
}
std::string bad_shape_why(size_t elem_size) {
  return "a size is negative, or the sizes (zeros counted as 1) times " + std::to_string(elem_size) +
         " bytes pass 2^63 - 1";
}

// Contiguous, history-free copy (or alias) of t, for writing its bytes.
Tensor contiguous_data(const Tensor& t) {
  NoGradGuard ng;
  return t.detach().contiguous();
}

}  // namespace

std::string read_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. It
  // changes nothing for the regular files accepted below.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) io_fail("read_file", path, "cannot open: " + errno_str());
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    io_fail("read_file", path, "not a regular file");
  }
  FILE* f = ::fdopen(fd, "rb");
  if (!f) {
    ::close(fd);
    io_fail("read_file", path, "cannot open: " + errno_str());
  }
  std::string out((size_t)st.st_size, '\0');
  const size_t got = out.empty() ? 0 : std::fread(out.data(), 1, out.size(), f);
  const bool err = std::ferror(f);
  std::fclose(f);
  if (err || got != out.size()) io_fail("read_file", path, "read failed after " + std::to_string(got) + " bytes");
  return out;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  atomic_write("write_file_atomic", path, [&](Sink& s) { s.put_str(bytes); });
}

// ---------------------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------------------
namespace {

const char kNpyMagic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

const char* npy_descr(DType dt) {
  switch (dt) {
    case DType::f32: return "<f4";
    case DType::f64: return "<f8";
    case DType::i64: return "<i8";
    case DType::b8: return "|b1";
  }
  return "?";
}

// The header NumPy's np.save writes (numpy/lib/format.py conventions): the dict repr with
// sorted keys, spare spaces so shape[0] can grow in place (21 digits), a newline, and
// padding so that the data starts on a 64-byte boundary.
std::string npy_header(const Tensor& t) {
  std::string shape = "(";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) shape += ", ";
    shape += std::to_string(t.size(i));
  }
  if (t.dim() == 1) shape += ",";
  shape += ")";
  std::string dict = std::string("{'descr': '") + npy_descr(t.dtype()) + "', 'fortran_order': False, 'shape': " +
                     shape + ", }";
  if (t.dim() > 0) dict.append(21 - std::min<size_t>(21, std::to_string(t.size(0)).size()), ' ');
  // Version 1.0 has a u16 header length; fall back to 2.0 (u32) for huge headers.
  for (int version = 1; version <= 2; ++version) {
    const size_t prefix = 6 + 2 + (version == 1 ? 2 : 4);
    const size_t hlen = dict.size() + 1;
    const size_t pad = 64 - (prefix + hlen) % 64;
    const size_t total = hlen + pad;
    if (version == 1 && total > 65535) continue;
    std::string out(kNpyMagic, 6);
    out += (char)version;
    out += '\0';
    if (version == 1) {
      const uint16_t L = (uint16_t)total;
      out.append(reinterpret_cast<const char*>(&L), 2);
    } else {
      const uint32_t L = (uint32_t)total;
      out.append(reinterpret_cast<const char*>(&L), 4);
    }
    out += dict;
    out.append(pad, ' ');
    out += '\n';
    return out;
  }
  return {};  // unreachable
}

void write_npy(Sink& s, const Tensor& t) {
  s.put_str(npy_header(t));
  Tensor c = contiguous_data(t);
  const size_t nbytes = (size_t)c.numel() * dtype_size(c.dtype());
  if (nbytes) s.write(c.raw_data(), nbytes);
}

// A tiny parser for the Python dict literal in a .npy header.
struct HeaderParser {
  const std::string& h;
  size_t i = 0;
  Reader& r;  // for error reporting
  HeaderParser(const std::string& h_, Reader& r_) : h(h_), r(r_) {}
  // A header may be up to 4 GiB: messages quote only the start of it (and of a key in it).
  static std::string clip(const std::string& s, size_t n) {
    return s.size() <= n ? s : s.substr(0, n) + "... (" + std::to_string(s.size()) + " characters)";
  }
  [[noreturn]] void fail(const std::string& what) const {
    r.fail("malformed .npy header (" + clip(what, 200) + " at character " + std::to_string(i) + "): " + clip(h, 400));
  }
  void ws() {
    while (i < h.size() && (h[i] == ' ' || h[i] == '\t' || h[i] == '\n' || h[i] == '\r')) ++i;
  }
  bool eat(char c) {
    ws();
    if (i < h.size() && h[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "'");
  }
  std::string str() {
    ws();
    if (i >= h.size() || (h[i] != '\'' && h[i] != '"')) fail("expected a quoted string");
    const char q = h[i++];
    const size_t b = i;
    while (i < h.size() && h[i] != q) ++i;
    if (i >= h.size()) fail("unterminated string");
    return h.substr(b, i++ - b);
  }
  bool boolean() {
    ws();
    if (h.compare(i, 4, "True") == 0) {
      i += 4;
      return true;
    }
    if (h.compare(i, 5, "False") == 0) {
      i += 5;
      return false;
    }
    fail("expected True or False");
  }
  int64_t integer() {
    ws();
    const size_t b = i;
    int64_t v = 0;
    while (i < h.size() && h[i] >= '0' && h[i] <= '9') {
      const int d = h[i++] - '0';
      if (v > (std::numeric_limits<int64_t>::max() - d) / 10) fail("dimension too large");
      v = v * 10 + d;
    }
    if (i == b) fail("expected a non-negative integer");
    if (i < h.size() && (h[i] == 'L' || h[i] == 'l')) ++i;  // Python 2 long suffix
    return v;
  }
  Shape tuple() {
    expect('(');
    Shape s;
    if (eat(')')) return s;
    while (true) {
      s.push_back(integer());
      if (s.size() > 64) fail("more than 64 dimensions");
      if (eat(')')) break;
      expect(',');
      if (eat(')')) break;
    }
    return s;
  }
};

struct NpyDescr {
  char order;  // '<' or '>' ('|' and '=' normalise to '<' on this host)
  char kind;   // 'f', 'i', 'b'
  int size;
};

template <class T> T bswap_val(T v) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  for (size_t k = 0; k < sizeof(T) / 2; ++k) std::swap(b[k], b[sizeof(T) - 1 - k]);
  std::memcpy(&v, b, sizeof(T));
  return v;
}
template <class Src, class Dst> void convert(const char* src, Dst* dst, int64_t n, bool swap) {
  for (int64_t k = 0; k < n; ++k) {
    Src v;
    std::memcpy(&v, src + k * sizeof(Src), sizeof(Src));
    if (swap) v = bswap_val(v);
    dst[k] = static_cast<Dst>(v);
  }
}

Tensor parse_npy(const std::string& bytes, const std::string& file) {
  static const std::string op = "load_npy";
  Reader r(bytes, op, file);
  if (bytes.size() < 6 && std::memcmp(bytes.data(), kNpyMagic, bytes.size()) == 0)
    r.fail(bytes.empty() ? std::string("empty file") : "truncated: " + std::to_string(bytes.size()) + " bytes is shorter than the magic string");
  if (bytes.size() < 6 || std::memcmp(bytes.data(), kNpyMagic, 6) != 0)
    r.fail("not a .npy file (bad magic: expected \\x93NUMPY)");
  r.pos = 6;
  const uint8_t major = r.get<uint8_t>("version"), minor = r.get<uint8_t>("version");
  size_t hlen;
  if (major == 1)
    hlen = r.get<uint16_t>("header length");
  else if (major == 2 || major == 3)
    hlen = r.get<uint32_t>("header length");
  else
    r.fail("unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor));
  const std::string header = r.get_str(hlen, "header");
  HeaderParser hp(header, r);
  std::string descr;
  bool fortran = false, have_descr = false, have_fortran = false, have_shape = false;
  Shape shape;
  hp.expect('{');
  while (!hp.eat('}')) {
    const std::string key = hp.str();
    hp.expect(':');
    if (key == "descr") {
      hp.ws();
      if (hp.i < header.size() && header[hp.i] == '[') hp.fail("structured dtypes are not supported");
      descr = hp.str();
      have_descr = true;
    } else if (key == "fortran_order") {
      fortran = hp.boolean();
      have_fortran = true;
    } else if (key == "shape") {
      shape = hp.tuple();
      have_shape = true;
    } else {
      hp.fail("unexpected key '" + key + "'");
    }
    if (!hp.eat(',')) {
      hp.expect('}');
      break;
    }
  }
  if (!have_descr || !have_fortran || !have_shape) hp.fail("missing one of the keys descr, fortran_order, shape");
  if (fortran)
    r.fail("Fortran-order arrays are not supported (save with np.ascontiguousarray or order='C'), shape " +
           shape_str(shape));
  // descr: optional byte order, kind, item size.
  NpyDescr d{'<', 0, 0};
  {
    size_t k = 0;
    if (!descr.empty() && (descr[0] == '<' || descr[0] == '>' || descr[0] == '|' || descr[0] == '=')) {
      d.order = descr[0] == '>' ? '>' : '<';
      k = 1;
    }
    if (k < descr.size()) d.kind = descr[k];
    const std::string sz = descr.substr(std::min(descr.size(), k + 1));
    d.size = (sz == "1" || sz == "4" || sz == "8") ? sz[0] - '0' : 0;
  }
  DType dt;
  if (d.kind == 'f' && d.size == 4)
    dt = DType::f32;
  else if (d.kind == 'f' && d.size == 8)
    dt = DType::f64;
  else if (d.kind == 'i' && (d.size == 8 || d.size == 4))
    dt = DType::i64;  // int32 widens to i64
  else if (d.kind == 'b' && d.size == 1)
    dt = DType::b8;
  else
    r.fail("unsupported dtype '" + descr + "' (supported: f4, f8, i4 (read as i64), i8, b1)");
  // Checked at the size in memory: int32 widens to 8 bytes, and what loads must save again.
  const int64_t numel = checked_numel(shape, dtype_size(dt));
  if (numel < 0) r.fail("impossible shape " + shape_str(shape) + " of '" + descr + "' (" + bad_shape_why(dtype_size(dt)) + ")");
  const size_t data_bytes = (size_t)numel * (size_t)d.size;
  if (data_bytes > r.left())
    r.fail("truncated data: shape " + shape_str(shape) + " of '" + descr + "' needs " + std::to_string(data_bytes) +
           " bytes but only " + std::to_string(r.left()) + " follow the header");
  if (data_bytes < r.left())
    r.fail(std::to_string(r.left() - data_bytes) + " unexpected bytes after the array data (shape " +
           shape_str(shape) + ", '" + descr + "')");
  const char* src = r.take(data_bytes, "data");
  Tensor t = Tensor::empty(shape, dt);
  const bool swap = d.order == '>' && d.size > 1;
  if (numel == 0) return t;
  switch (dt) {
    case DType::f32:
      if (swap) convert<uint32_t>(src, reinterpret_cast<uint32_t*>(t.data_ptr<float>()), numel, true);
      else std::memcpy(t.raw_data(), src, data_bytes);
      break;
    case DType::f64:
      if (swap) convert<uint64_t>(src, reinterpret_cast<uint64_t*>(t.data_ptr<double>()), numel, true);
      else std::memcpy(t.raw_data(), src, data_bytes);
      break;
    case DType::i64:
      if (d.size == 4) convert<int32_t>(src, t.data_ptr<int64_t>(), numel, swap);
      else convert<int64_t>(src, t.data_ptr<int64_t>(), numel, swap);
      break;
    case DType::b8: {
      bool* o = t.data_ptr<bool>();
      for (int64_t k = 0; k < numel; ++k) o[k] = src[k] != 0;  // keep bool storage canonical
      break;
    }
  }
  return t;
}

}  // namespace

std::string npy_to_bytes(const Tensor& t) {
  std::string out;
  StringSink s(out);
  write_npy(s, t);
  return out;
}
Tensor npy_from_bytes(const std::string& bytes, const std::string& name) { return parse_npy(bytes, name); }
void save_npy(const std::string& path, const Tensor& t) {
  if (!t.defined()) throw ShapeError("save_npy: undefined tensor for " + path);
  atomic_write("save_npy", path, [&](Sink& s) { write_npy(s, t); });
}
Tensor load_npy(const std::string& path) {
  std::string bytes;
  try {
    bytes = read_file(path);
  } catch (const IOError& e) {
    throw IOError(std::string("load_npy: ") + e.what());
  }
  return parse_npy(bytes, path);
}

// ---------------------------------------------------------------------------------------
// checkpoints
// ---------------------------------------------------------------------------------------
namespace {

const char kCkptMagic[8] = {'L', 'O', 'T', 'G', 'C', 'K', 'P', 'T'};
constexpr size_t kCkptHeader = 8 + 4 + 4 + 8;
constexpr uint32_t kMaxRank = 64;

uint8_t dtype_code(DType dt) {
  switch (dt) {
    case DType::f32: return 0;
    case DType::f64: return 1;
    case DType::i64: return 2;
    case DType::b8: return 3;
  }
  return 255;
}
bool dtype_from_code(uint8_t c, DType& dt) {
  static const DType table[] = {DType::f32, DType::f64, DType::i64, DType::b8};
  if (c >= 4) return false;
  dt = table[c];
  return true;
}

void validate_entries(const NamedTensors& tensors, const Metadata& metadata, const std::string& where) {
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (name.empty()) throw ShapeError("save_checkpoint: " + where + ": empty tensor name");
    if (!seen.insert(name).second) throw ShapeError("save_checkpoint: " + where + ": duplicate tensor name '" + name + "'");
    if (!t.defined()) throw ShapeError("save_checkpoint: " + where + ": tensor '" + name + "' is undefined");
    if ((uint32_t)t.dim() > kMaxRank) throw ShapeError("save_checkpoint: " + where + ": tensor '" + name + "' has rank > 64");
    if (name.size() > 0xFFFFFFFFu) throw ShapeError("save_checkpoint: name too long");
  }
  for (const auto& [k, v] : metadata)
    if (k.size() > 0xFFFFFFFFu || v.size() > 0xFFFFFFFFu) throw ShapeError("save_checkpoint: metadata entry too long");
}

uint64_t payload_size(const NamedTensors& tensors, const Metadata& metadata) {
  uint64_t n = 4;
  for (const auto& [k, v] : metadata) n += 8 + k.size() + v.size();
  n += 4;
  for (const auto& [name, t] : tensors)
    n += 4 + name.size() + 2 + 8 * (uint64_t)t.dim() + 8 + (uint64_t)t.numel() * dtype_size(t.dtype());
  return n;
}

void write_checkpoint(Sink& out, const NamedTensors& tensors, const Metadata& metadata) {
  CrcSink s(out);
  s.write(kCkptMagic, 8);
  s.put<uint32_t>(kCheckpointVersion);
  s.put<uint32_t>(0);
  s.put<uint64_t>(payload_size(tensors, metadata));
  s.put<uint32_t>((uint32_t)metadata.size());
  for (const auto& [k, v] : metadata) {
    s.put<uint32_t>((uint32_t)k.size());
    s.put_str(k);
    s.put<uint32_t>((uint32_t)v.size());
    s.put_str(v);
  }
  s.put<uint32_t>((uint32_t)tensors.size());
  for (const auto& [name, t] : tensors) {
    s.put<uint32_t>((uint32_t)name.size());
    s.put_str(name);
    s.put<uint8_t>(dtype_code(t.dtype()));
    s.put<uint8_t>((uint8_t)t.dim());
    for (int64_t d : t.shape()) s.put<int64_t>(d);
    const uint64_t nbytes = (uint64_t)t.numel() * dtype_size(t.dtype());
    s.put<uint64_t>(nbytes);
    if (nbytes) {
      Tensor c = contiguous_data(t);
      s.write(c.raw_data(), nbytes);
    }
  }
  const uint32_t crc = s.crc;
  out.put<uint32_t>(crc);
}

Checkpoint parse_checkpoint(const std::string& bytes, const std::string& file) {
  static const std::string op = "load_checkpoint";
  Reader r(bytes, op, file);
  if (bytes.size() < 8 && std::memcmp(bytes.data(), kCkptMagic, bytes.size()) == 0)
    r.fail(bytes.empty() ? std::string("empty file") : "truncated: " + std::to_string(bytes.size()) + " bytes is shorter than the magic string");
  if (bytes.size() < 8 || std::memcmp(bytes.data(), kCkptMagic, 8) != 0)
    r.fail("not a lotgrad checkpoint (bad magic: expected \"LOTGCKPT\")");
  if (bytes.size() < kCkptHeader + 4)
    r.fail("truncated: " + std::to_string(bytes.size()) + " bytes is shorter than the header");
  r.pos = 8;
  const uint32_t version = r.get<uint32_t>("version");
  if (version == 0 || version > kCheckpointVersion)
    r.fail("unknown checkpoint format version " + std::to_string(version) + " (this build reads up to " +
           std::to_string(kCheckpointVersion) + ")");
  const uint32_t flags = r.get<uint32_t>("flags");
  if (flags != 0) r.fail("unknown flags " + std::to_string(flags));
  const uint64_t payload = r.get<uint64_t>("payload size");
  // payload is checked against the file size first so the sum below cannot overflow.
  const uint64_t expect = payload > bytes.size() ? UINT64_MAX : (uint64_t)kCkptHeader + payload + 4;
  if (expect != bytes.size())
    r.fail(std::string(expect > bytes.size() ? "truncated" : "trailing bytes") + ": the header promises " +
           std::to_string(payload) + " payload bytes (" +
           (expect == UINT64_MAX ? std::string("more than the file holds") : std::to_string(expect) + " bytes in all") +
           ") but the file has " + std::to_string(bytes.size()) + " bytes");
  uint32_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - 4, 4);
  const uint32_t actual = crc32(bytes.data(), bytes.size() - 4);
  if (stored != actual) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "checksum mismatch (stored CRC-32 %08x, computed %08x): the file is corrupt", stored,
                  actual);
    r.fail(buf);
  }
  // Parse the payload; every size is still checked, so a file with a valid CRC but
  // inconsistent contents also fails cleanly.
  r.n = bytes.size() - 4;
  Checkpoint ck;
  // Counts are checked against the bytes left (each entry takes at least min_entry bytes), so a
  // corrupt count fails here, naming it, rather than after many allocations.
  auto check_count = [&](uint32_t count, size_t min_entry, const char* what) {
    if (count > r.left() / min_entry)
      r.fail(std::string(what) + " count " + std::to_string(count) + " at byte " + std::to_string(r.pos - 4) +
             " cannot fit in the " + std::to_string(r.left()) + " bytes left (at least " + std::to_string(min_entry) +
             " bytes each)");
  };
  const uint32_t n_meta = r.get<uint32_t>("metadata count");
  check_count(n_meta, 8, "metadata");
  for (uint32_t k = 0; k < n_meta; ++k) {
    const uint32_t kl = r.get<uint32_t>("metadata key length");
    std::string key = r.get_str(kl, "metadata key");
    const uint32_t vl = r.get<uint32_t>("metadata value length");
    std::string val = r.get_str(vl, "metadata value");
    if (ck.metadata.count(key)) r.fail("duplicate metadata key '" + key + "'");
    ck.metadata.emplace(std::move(key), std::move(val));
  }
  const uint32_t n_t = r.get<uint32_t>("tensor count");
  check_count(n_t, 4 + 1 + 1 + 8, "tensor");
  std::set<std::string> seen;
  for (uint32_t k = 0; k < n_t; ++k) {
    const uint32_t nl = r.get<uint32_t>("tensor name length");
    std::string name = r.get_str(nl, "tensor name");
    if (name.empty() || !seen.insert(name).second) r.fail("empty or duplicate tensor name '" + name + "'");
    const uint8_t code = r.get<uint8_t>("dtype");
    DType dt;
    if (!dtype_from_code(code, dt)) r.fail("tensor '" + name + "': unknown dtype code " + std::to_string(code));
    const uint8_t ndim = r.get<uint8_t>("rank");
    if (ndim > kMaxRank) r.fail("tensor '" + name + "': impossible rank " + std::to_string(ndim));
    Shape shape(ndim);
    for (auto& d : shape) d = r.get<int64_t>("dimension");
    const int64_t numel = checked_numel(shape, dtype_size(dt));
    if (numel < 0)
      r.fail("tensor '" + name + "': impossible shape " + shape_str(shape) + " " + dtype_name(dt) + " (" +
             bad_shape_why(dtype_size(dt)) + ")");
    const uint64_t nbytes = r.get<uint64_t>("data size");
    const uint64_t want = (uint64_t)numel * dtype_size(dt);
    if (nbytes != want)
      r.fail("tensor '" + name + "': data size " + std::to_string(nbytes) + " does not match shape " + shape_str(shape) +
             " " + dtype_name(dt) + " (" + std::to_string(want) + " bytes)");
    if (nbytes > r.left())
      r.fail("truncated: tensor '" + name + "' needs " + std::to_string(nbytes) + " bytes but only " +
             std::to_string(r.left()) + " remain");
    const char* src = r.take((size_t)nbytes, "tensor data");
    Tensor t = Tensor::empty(shape, dt);
    if (nbytes) std::memcpy(t.raw_data(), src, (size_t)nbytes);
    if (dt == DType::b8) {
      bool* b = t.data_ptr<bool>();
      const unsigned char* raw = reinterpret_cast<const unsigned char*>(src);
      for (int64_t e = 0; e < numel; ++e) b[e] = raw[e] != 0;
    }
    ck.tensors.emplace_back(std::move(name), std::move(t));
  }
  if (r.left() != 0) r.fail(std::to_string(r.left()) + " unexpected bytes after the last tensor");
  return ck;
}

}  // namespace

bool Checkpoint::contains(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return true;
  return false;
}
const Tensor& Checkpoint::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  std::string names;
  for (size_t k = 0; k < tensors.size() && k < 20; ++k) names += (k ? ", " : "") + tensors[k].first;
  if (tensors.size() > 20) names += ", ...";
  throw IOError("checkpoint: no tensor named '" + name + "' (have: " + names + ")");
}

std::string checkpoint_to_bytes(const NamedTensors& tensors, const Metadata& metadata) {
  validate_entries(tensors, metadata, "<buffer>");
  std::string out;
  out.reserve(kCkptHeader + payload_size(tensors, metadata) + 4);
  StringSink s(out);
  write_checkpoint(s, tensors, metadata);
  return out;
}
Checkpoint checkpoint_from_bytes(const std::string& bytes, const std::string& name) {
  return parse_checkpoint(bytes, name);
}
void save_checkpoint(const std::string& path, const NamedTensors& tensors, const Metadata& metadata,
                     const std::string& previous) {
  validate_entries(tensors, metadata, path);
  atomic_write("save_checkpoint", path, [&](Sink& s) { write_checkpoint(s, tensors, metadata); }, previous,
               "checkpoint");
}
Checkpoint load_checkpoint(const std::string& path) {
  std::string bytes;
  try {
    bytes = read_file(path);
  } catch (const IOError& e) {
    throw IOError(std::string("load_checkpoint: ") + e.what());
  }
  return parse_checkpoint(bytes, path);
}

}  // namespace lotgrad
