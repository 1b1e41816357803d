#include "image.h"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#include <zlib.h>

#include <unistd.h>

#include <cctype>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <tuple>

#include "detail.h"

namespace lotgrad::data {

namespace fs = std::filesystem;

void write_png_gray(const std::string& path, int width, int height, const std::vector<uint8_t>& pixels) {
  if (width <= 0 || height <= 0 || (int64_t)pixels.size() != (int64_t)width * height)
    throw std::invalid_argument("write_png_gray: " + std::to_string(pixels.size()) + " pixels for " +
                                std::to_string(width) + "x" + std::to_string(height));
  const auto parent = fs::path(path).parent_path();
  if (!parent.empty()) detail::make_dirs(parent.string());
  if (!stbi_write_png(path.c_str(), width, height, 1, pixels.data(), width))
    detail::fail(path, "cannot write PNG");
}

namespace {

uint32_t be32(const unsigned char* p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

// A chunk type for messages: four letters, or hex if they are not letters.
std::string chunk_name(const unsigned char* p) {
  std::string s = "'";
  for (int i = 0; i < 4; ++i) {
    if (!std::isalpha(p[i])) {
      char b[16];
      std::snprintf(b, sizeof b, "0x%08x", be32(p));
      return b;
    }
    s += (char)p[i];
  }
  return s + "'";
}

// Bits per pixel for a PNG colour type and bit depth (PNG spec, table 11.1), 0 if invalid.
int png_bits_per_pixel(int ctype, int depth) {
  const bool low = depth == 1 || depth == 2 || depth == 4, byte = depth == 8, wide = depth == 16;
  switch (ctype) {
    case 0: return low || byte || wide ? depth : 0;  // grey
    case 3: return low || byte ? depth : 0;          // palette index
    case 2: return byte || wide ? 3 * depth : 0;     // RGB
    case 4: return byte || wide ? 2 * depth : 0;     // grey + alpha
    case 6: return byte || wide ? 4 * depth : 0;     // RGBA
  }
  return 0;
}

// Bytes the image data of a w x h PNG inflates to: per row, a filter byte and the packed
// pixels; interlaced images store Adam7's seven reduced images this way, empty ones omitted.
uint64_t png_raw_bytes(uint64_t w, uint64_t h, int bpp, bool interlaced) {
  static const int pass[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                 {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};  // x0, y0, dx, dy
  uint64_t total = 0;
  for (int p = 0; p < (interlaced ? 7 : 1); ++p) {
    const uint64_t x0 = interlaced ? pass[p][0] : 0, y0 = interlaced ? pass[p][1] : 0;
    const uint64_t dx = interlaced ? pass[p][2] : 1, dy = interlaced ? pass[p][3] : 1;
    if (w <= x0 || h <= y0) continue;
    const uint64_t cols = (w - x0 + dx - 1) / dx, rows = (h - y0 + dy - 1) / dy;
    total += rows * (1 + (cols * (uint64_t)bpp + 7) / 8);
  }
  return total;
}

// What stb does not check before it allocates: the PNG signature (stb decodes any format it
// knows), chunk lengths against the file, the IHDR values, a pixel cap, and the exact size
// the image data inflates to, counted in a small buffer and stopped one buffer past what the
// header needs (stb allocates the header's size up front and keeps inflating past it).
void check_png(const std::string& path, const std::string& bytes) {
  static const unsigned char kSig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  if (n < 8 || std::memcmp(u, kSig, 8) != 0)
    detail::fail(path, n == 0 ? "empty file, expected a PNG"
                              : "not a PNG: the file (" + std::to_string(n) +
                                    " bytes) does not start with the PNG signature 89 50 4E 47 0D 0A 1A 0A");
  uint32_t w = 0, h = 0;
  int depth = 0, ctype = 0, interlace = 0;
  uint64_t need = 0, inflated = 0;
  bool have_ihdr = false, have_iend = false, stream_end = false;
  z_stream z{};
  if (inflateInit(&z) != Z_OK) detail::fail(path, "zlib inflateInit failed");
  struct End {
    z_stream& z;
    ~End() { inflateEnd(&z); }
  } end{z};
  auto what = [&] {
    return std::to_string(w) + "x" + std::to_string(h) + " image (colour type " + std::to_string(ctype) +
           ", bit depth " + std::to_string(depth) + (interlace ? ", interlaced)" : ", not interlaced)");
  };
  unsigned char out[1 << 15];
  for (size_t pos = 8; pos < n && !have_iend;) {
    if (n - pos < 12)
      detail::fail(path, "truncated chunk at byte " + std::to_string(pos) + ": " + std::to_string(n - pos) +
                             " bytes left, a chunk takes at least 12");
    const uint32_t len = be32(u + pos);
    const unsigned char* type = u + pos + 4;
    const unsigned char* data = u + pos + 8;
    const std::string name = chunk_name(type);
    if (len > 0x7FFFFFFFu || len > n - pos - 12)
      detail::fail(path, "chunk " + name + " at byte " + std::to_string(pos) + " claims " + std::to_string(len) +
                             " bytes but only " + std::to_string(n - pos - 12) + " follow");
    if (std::memcmp(type, "CgBI", 4) == 0) detail::fail(path, "Apple's CgBI PNG variant is not supported");
    if (!have_ihdr) {
      if (std::memcmp(type, "IHDR", 4) != 0 || len != 13)
        detail::fail(path, "the first chunk is " + name + " of " + std::to_string(len) +
                               " bytes, expected IHDR of 13 bytes");
      w = be32(data);
      h = be32(data + 4);
      depth = data[8];
      ctype = data[9];
      interlace = data[12];
      if (w == 0 || h == 0 || w > 0x7FFFFFFFu || h > 0x7FFFFFFFu)
        detail::fail(path, "image size " + std::to_string(w) + "x" + std::to_string(h) +
                               " (width and height must be 1 .. 2^31 - 1)");
      const int bpp = png_bits_per_pixel(ctype, depth);
      if (bpp == 0)
        detail::fail(path, "bit depth " + std::to_string(depth) + " is not valid for colour type " + std::to_string(ctype));
      if (data[10] != 0 || data[11] != 0 || interlace > 1)
        detail::fail(path, "unknown compression " + std::to_string(data[10]) + ", filter " + std::to_string(data[11]) +
                               " or interlace " + std::to_string(interlace) + " method (only 0, 0, 0 or 1 exist)");
      if ((uint64_t)w * h > (uint64_t)kMaxPngPixels)
        detail::fail(path, std::to_string(w) + "x" + std::to_string(h) + " pixels is more than the " +
                               std::to_string(kMaxPngPixels) + " this reader accepts");
      need = png_raw_bytes(w, h, bpp, interlace == 1);
      have_ihdr = true;
    } else if (std::memcmp(type, "IDAT", 4) == 0 && !stream_end) {
      z.next_in = const_cast<unsigned char*>(data);
      z.avail_in = len;
      do {
        z.next_out = out;
        z.avail_out = sizeof out;
        const int rc = inflate(&z, Z_NO_FLUSH);
        inflated += sizeof out - z.avail_out;
        if (inflated > need)
          detail::fail(path, "IDAT data inflates to more than the " + std::to_string(need) + " bytes a " + what() +
                                 " needs");
        if (rc == Z_STREAM_END) stream_end = true;
        else if (rc != Z_OK && rc != Z_BUF_ERROR)
          detail::fail(path, "corrupt IDAT data at byte " + std::to_string(pos) + " (zlib: " + (z.msg ? z.msg : "error " + std::to_string(rc)) + ")");
      } while (!stream_end && (z.avail_in > 0 || z.avail_out == 0));
    } else if (std::memcmp(type, "IEND", 4) == 0) {
      have_iend = true;
    }
    pos += 12 + (size_t)len;
  }
  if (!have_ihdr) detail::fail(path, "no chunks after the PNG signature");
  if (!have_iend) detail::fail(path, "no IEND chunk (truncated file?)");
  if (inflated != need)
    detail::fail(path, "IDAT data inflates to " + std::to_string(inflated) + " bytes, but a " + what() + " needs " +
                           std::to_string(need));
}

// The file without its empty IDAT chunks (the PNG spec allows them; they carry no data). stb
// copies an empty first IDAT into a buffer it has not allocated yet: memcpy(NULL, src, 0),
// undefined behaviour the fuzzer's UBSan build flags. check_png has checked the chunk lengths
// up to IEND; what follows IEND is copied as it is (stb stops at IEND).
std::string without_empty_idat(const std::string& bytes) {
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  std::string out = bytes.substr(0, 8);
  size_t pos = 8;
  while (pos + 12 <= bytes.size() && std::memcmp(u + pos + 4, "IEND", 4) != 0) {
    const size_t chunk = 12 + (size_t)be32(u + pos);
    if (chunk > 12 || std::memcmp(u + pos + 4, "IDAT", 4) != 0) out.append(bytes, pos, chunk);
    pos += chunk;
  }
  return out.append(bytes, pos);
}

}  // namespace

std::vector<uint8_t> read_png_gray(const std::string& path, int* width, int* height) {
  const std::string file = detail::read_file(path, INT_MAX);  // stb takes an int length
  check_png(path, file);
  const std::string bytes = without_empty_idat(file);
  int w = 0, h = 0, c = 0;
  if (!stbi_info_from_memory(reinterpret_cast<const unsigned char*>(bytes.data()), (int)bytes.size(), &w, &h, &c)) {
    const char* why = stbi_failure_reason();
    detail::fail(path, std::string("cannot read the PNG header: ") + (why ? why : "unknown error"));
  }
  unsigned char* p = stbi_load_from_memory(reinterpret_cast<const unsigned char*>(bytes.data()), (int)bytes.size(),
                                           &w, &h, &c, 1);
  if (!p) {
    const char* why = stbi_failure_reason();
    detail::fail(path, std::string("cannot decode image: ") + (why ? why : "unknown error"));
  }
  std::vector<uint8_t> out(p, p + (size_t)w * (size_t)h);
  stbi_image_free(p);
  if (width) *width = w;
  if (height) *height = h;
  return out;
}

// ---- CIFAR-10 ------------------------------------------------------------------------------

uint8_t cifar_gray(uint8_t r, uint8_t g, uint8_t b) {
  // LRA: tf.image.rgb_to_grayscale, then cast to int. TF converts uint8 to float in [0, 1],
  // takes the weighted sum in float32, and converts back by truncating x * 255.5.
  const float s = 1.0f / 255.0f;
  const float gray = (float)r * s * 0.2989f + (float)g * s * 0.5870f + (float)b * s * 0.1140f;
  const float v = gray * 255.5f;
  return (uint8_t)(v >= 255.0f ? 255 : (int)v);
}

Dataset read_cifar10_bin(const std::string& path, const ImageOptions& opt) {
  const std::string bytes = detail::read_file(path);
  constexpr size_t kRec = 1 + 3072;
  if (bytes.empty()) detail::fail(path, "empty file, expected CIFAR-10 records of 3073 bytes");
  if (bytes.size() % kRec != 0)
    detail::fail(path, "record " + std::to_string(bytes.size() / kRec) + " is truncated (" +
                           std::to_string(bytes.size() % kRec) + " of 3073 bytes; file size " +
                           std::to_string(bytes.size()) + " is not a multiple of 3073)");
  Dataset d;
  d.name = path;
  d.vocab_size = image_vocab(opt);
  d.num_classes = 10;
  const size_t n = bytes.size() / kRec;
  d.examples.resize(n);
  const auto* u = reinterpret_cast<const uint8_t*>(bytes.data());
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* rec = u + i * kRec;
    if (rec[0] > 9) detail::fail(path, "record " + std::to_string(i) + ": label " + std::to_string(rec[0]) + " > 9");
    Example& e = d.examples[i];
    e.label = rec[0];
    e.tokens.resize(1024);
    for (int j = 0; j < 1024; ++j)
      e.tokens[(size_t)j] = cifar_gray(rec[1 + j], rec[1 + 1024 + j], rec[1 + 2048 + j]) + opt.pixel_shift;
  }
  return d;
}

ImageSplits read_cifar10(const std::string& dir, const ImageOptions& opt, double val_frac) {
  fs::path base(dir);
  if (!fs::exists(base / "data_batch_1.bin") && fs::exists(base / "cifar-10-batches-bin" / "data_batch_1.bin"))
    base /= "cifar-10-batches-bin";
  Dataset train;
  train.name = "cifar10/train";
  for (int b = 1; b <= 5; ++b) {
    Dataset part = read_cifar10_bin((base / ("data_batch_" + std::to_string(b) + ".bin")).string(), opt);
    train.vocab_size = part.vocab_size;
    train.num_classes = part.num_classes;
    for (Example& e : part.examples) train.examples.push_back(std::move(e));
  }
  ImageSplits s;
  std::tie(s.train, s.val) = split_tail(std::move(train), val_frac, "val");
  s.val.name = "cifar10/val";
  s.test = read_cifar10_bin((base / "test_batch.bin").string(), opt);
  s.test.name = "cifar10/test";
  return s;
}

// ---- IDX -----------------------------------------------------------------------------------

namespace {
// Appends up to n more bytes of f's decompressed stream to out, 1 MiB at a time, so that memory
// follows the bytes actually present rather than n. Stops early at the end of the stream.
// Through a fixed buffer: out grows by what was read, never by what the header promised (a
// short file promising 1 MiB or more cost a zero-filled 1 MiB per read, 21 inputs/s fuzzed).
void gz_append(gzFile f, const std::string& path, std::vector<uint8_t>& out, uint64_t n) {
  uint8_t buf[1 << 16];
  while (n > 0) {
    const size_t step = (size_t)std::min<uint64_t>(n, sizeof buf);
    const int k = gzread(f, buf, (unsigned)step);
    if (k < 0) {
      int errnum = 0;
      detail::fail(path, std::string("gzip read error: ") + gzerror(f, &errnum));
    }
    out.insert(out.end(), buf, buf + k);
    if ((size_t)k < step) return;
    n -= step;
  }
}
}  // namespace

IdxArray read_idx(const std::string& path) {
  uint64_t file_size = 0;
  const int fd = detail::open_regular(path, &file_size);
  gzFile f = gzdopen(fd, "rb");  // reads plain files transparently too
  if (!f) {
    ::close(fd);
    detail::fail(path, "cannot open");
  }
  struct Close {
    gzFile f;
    ~Close() { gzclose(f); }
  } close_f{f};
  // The header first; then at most the bytes it describes plus one (to detect trailing data),
  // so a small file that inflates to gigabytes costs no more than its header allows.
  std::vector<uint8_t> head;
  gz_append(f, path, head, 4);
  if (head.size() < 4) detail::fail(path, "too short for an IDX header (" + std::to_string(head.size()) + " bytes)");
  const uint32_t magic = be32(head.data());
  const int ndim = head[3];
  if (head[0] != 0 || head[1] != 0 || head[2] != 0x08 || ndim < 1 || ndim > 8) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%08x", magic);
    detail::fail(path, std::string("bad IDX magic ") + hex + ", expected 0x000008NN (unsigned bytes, NN = dimensions)");
  }
  gz_append(f, path, head, 4 * (uint64_t)ndim);
  if (head.size() < 4 + 4 * (size_t)ndim)
    detail::fail(path, "truncated IDX header: " + std::to_string(ndim) + " dimensions need " +
                           std::to_string(4 + 4 * ndim) + " bytes, the file has " + std::to_string(head.size()));
  IdxArray a;
  std::string dims = "(";
  for (int i = 0; i < ndim; ++i) {
    a.dims.push_back((int64_t)be32(head.data() + 4 + 4 * i));
    dims += (i ? ", " : "") + std::to_string(a.dims.back());
  }
  dims += ")";
  // As for tensors, sizes multiply without overflow with zeros counted as 1.
  int64_t extent = 1, total = 1;
  for (int64_t d : a.dims) {
    if (__builtin_mul_overflow(extent, std::max<int64_t>(d, 1), &extent))
      detail::fail(path, "IDX dimensions " + dims + " are too large: their product (zeros counted as 1) passes 2^63 - 1");
    total *= d;  // total <= extent
  }
  const uint64_t want = (uint64_t)total;
  // A plain file's size is known before reading; a gzip file is read up to want + 1 bytes.
  if (gzdirect(f) && file_size - head.size() != want)
    detail::fail(path, "IDX data has " + std::to_string(file_size - head.size()) + " bytes, header says " +
                           std::to_string(want) + " (dimensions " + dims + ")");
  gz_append(f, path, a.data, want + 1);
  if (a.data.size() > want)
    detail::fail(path, "IDX data continues past the " + std::to_string(want) + " bytes the header describes (dimensions " +
                           dims + "): trailing bytes, or a wrong header");
  if (a.data.size() < want)
    detail::fail(path, "IDX data has " + std::to_string(a.data.size()) + " bytes, header says " + std::to_string(want) +
                           " (dimensions " + dims + ")");
  return a;
}

Dataset read_idx_dataset(const std::string& images_path, const std::string& labels_path, int pad_to,
                         const ImageOptions& opt) {
  const IdxArray im = read_idx(images_path), lb = read_idx(labels_path);
  if (im.dims.size() != 3) detail::fail(images_path, "expected 3 dimensions (N, h, w), got " + std::to_string(im.dims.size()));
  if (lb.dims.size() != 1) detail::fail(labels_path, "expected 1 dimension (N), got " + std::to_string(lb.dims.size()));
  const int64_t n = im.dims[0], h = im.dims[1], w = im.dims[2];
  if (lb.dims[0] != n)
    detail::fail(labels_path, std::to_string(lb.dims[0]) + " labels for " + std::to_string(n) + " images in " + images_path);
  const int64_t H = pad_to > 0 ? pad_to : h, W = pad_to > 0 ? pad_to : w;
  if (H < h || W < w)
    detail::fail(images_path, std::to_string(h) + "x" + std::to_string(w) + " images do not fit pad_to " + std::to_string(pad_to));
  const int64_t top = (H - h) / 2, left = (W - w) / 2;
  Dataset d;
  d.name = images_path;
  d.vocab_size = image_vocab(opt);
  d.num_classes = 10;
  d.examples.resize((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    Example& e = d.examples[(size_t)i];
    e.label = lb.data[(size_t)i];
    if (e.label > 9) detail::fail(labels_path, "label " + std::to_string(i) + " is " + std::to_string(e.label) + " > 9");
    e.tokens.assign((size_t)(H * W), opt.pixel_shift);  // padding pixels are black
    const uint8_t* src = im.data.data() + i * h * w;
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) e.tokens[(size_t)((y + top) * W + x + left)] = src[y * w + x] + opt.pixel_shift;
  }
  return d;
}

ImageSplits read_fashion_mnist(const std::string& dir, const ImageOptions& opt, double val_frac, int pad_to) {
  const fs::path base(dir);
  if (!fs::exists(base / "train-images-idx3-ubyte.gz") && !fs::exists(base / "train-images-idx3-ubyte"))
    detail::fail((base / "train-images-idx3-ubyte.gz").string(),
                 "not found (install the Debian package dataset-fashion-mnist, or point at a folder of IDX files)");
  auto pick = [&](const std::string& stem) {
    const fs::path gz = base / (stem + ".gz");
    return (fs::exists(gz) ? gz : base / stem).string();
  };
  ImageSplits s;
  Dataset train = read_idx_dataset(pick("train-images-idx3-ubyte"), pick("train-labels-idx1-ubyte"), pad_to, opt);
  train.name = "fashion-mnist/train";
  std::tie(s.train, s.val) = split_tail(std::move(train), val_frac, "val");
  s.test = read_idx_dataset(pick("t10k-images-idx3-ubyte"), pick("t10k-labels-idx1-ubyte"), pad_to, opt);
  s.test.name = "fashion-mnist/test";
  return s;
}

}  // namespace lotgrad::data
