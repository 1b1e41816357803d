#include "image.h"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#include <zlib.h>

#include <cstdio>
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

std::vector<uint8_t> read_png_gray(const std::string& path, int* width, int* height) {
  const std::string bytes = detail::read_file(path);
  if (bytes.empty()) detail::fail(path, "empty file, expected a PNG");
  int w = 0, h = 0, c = 0;
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

static std::string read_gz(const std::string& path) {
  if (!fs::exists(path)) detail::fail(path, "no such file");
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files transparently too
  if (!f) detail::fail(path, "cannot open");
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const int n = gzread(f, buf, sizeof buf);
    if (n < 0) {
      int errnum = 0;
      std::string why = gzerror(f, &errnum);
      gzclose(f);
      detail::fail(path, "gzip read error: " + why);
    }
    if (n == 0) break;
    out.append(buf, (size_t)n);
  }
  gzclose(f);
  return out;
}

IdxArray read_idx(const std::string& path) {
  const std::string bytes = read_gz(path);
  const auto* u = reinterpret_cast<const uint8_t*>(bytes.data());
  auto hex = [](uint32_t v) {
    char b[16];
    std::snprintf(b, sizeof b, "0x%08x", v);
    return std::string(b);
  };
  if (bytes.size() < 4) detail::fail(path, "too short for an IDX header (" + std::to_string(bytes.size()) + " bytes)");
  const uint32_t magic = (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
  const int ndim = u[3];
  if (u[0] != 0 || u[1] != 0 || u[2] != 0x08 || ndim < 1 || ndim > 8)
    detail::fail(path, "bad IDX magic " + hex(magic) + ", expected 0x000008NN (unsigned bytes, NN = dimensions)");
  if (bytes.size() < 4 + 4 * (size_t)ndim) detail::fail(path, "truncated IDX header");
  IdxArray a;
  uint64_t total = 1;
  for (int i = 0; i < ndim; ++i) {
    const uint8_t* p = u + 4 + 4 * i;
    const int64_t dsz = (int64_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
    a.dims.push_back(dsz);
    total *= (uint64_t)dsz;
    if (total > (uint64_t)1 << 40) detail::fail(path, "IDX dimensions too large");
  }
  const size_t off = 4 + 4 * (size_t)ndim;
  if (bytes.size() - off != total)
    detail::fail(path, "IDX data has " + std::to_string(bytes.size() - off) + " bytes, header says " +
                           std::to_string(total));
  a.data.assign(u + off, u + bytes.size());
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
