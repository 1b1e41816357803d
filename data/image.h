// Image tasks as pixel-token sequences: CIFAR-10 binary batches (LRA "Image", grayscale),
// Fashion-MNIST IDX files (an offline stand-in, Debian package `dataset-fashion-mnist`), and
// 8-bit PNG helpers used by Pathfinder (pathfinder.h).
//
// Tokens are the row-major pixels, one per pixel, id = pixel value (0..255) + pixel_shift.
//
// The token-0 padding quirk (docs/lra.md §5): the LRA code bases build their mask as
// `token != 0`, so with pixel_shift = 0 every black pixel has the PAD id. lotgrad's batches
// carry an explicit mask (only real padding is masked), but a model or script that derives the
// mask from the ids, or an embedding that treats id 0 specially, sees black pixels as padding;
// in Pathfinder most pixels are black. pixel_shift = 0 reproduces the published setting
// (vocab 256); pixel_shift = 1 gives every pixel a non-PAD id (vocab 257), a different task.
// Choose deliberately and say which you used.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dataset.h"

namespace lotgrad::data {

struct ImageOptions {
  int pixel_shift = 0;  // 0: LRA ids (black = 0 = PAD id); 1: ids = pixel + 1
};
inline int64_t image_vocab(const ImageOptions& o) { return 256 + o.pixel_shift; }

struct ImageSplits {
  Dataset train, val, test;
};

// ---- PNG (stb) ---------------------------------------------------------------------------
// Writes an 8-bit grayscale PNG (creates parent folders).
void write_png_gray(const std::string& path, int width, int height, const std::vector<uint8_t>& pixels);
// Reads a PNG (any colour type, bit depth, interlacing) as 8-bit grayscale (colour is converted
// by stb); throws IOError naming the file. PNG only: other formats stb knows are refused. The
// file is checked before stb allocates anything: chunk lengths within the file, at most
// kMaxPngPixels pixels, and image data that inflates to exactly the size the header implies
// (so memory stays proportional to the image the file truly holds).
// The cap bounds stb's buffers (at most 8 bytes per pixel for 16-bit RGBA) for a small file
// holding a valid but very compressible image.
constexpr int64_t kMaxPngPixels = int64_t(1) << 24;  // 4096 x 4096
std::vector<uint8_t> read_png_gray(const std::string& path, int* width, int* height);

// ---- CIFAR-10 binary ---------------------------------------------------------------------
// One batch file: records of 1 label byte + 3072 bytes (1024 R, 1024 G, 1024 B, row-major).
// Grayscale as LRA: int(0.2989 R + 0.5870 G + 0.1140 B), truncated. A file whose size is not
// a multiple of 3073 is an error naming the file and the truncated record.
Dataset read_cifar10_bin(const std::string& path, const ImageOptions& opt = {});
// Grayscale value of one RGB pixel as LRA computes it.
uint8_t cifar_gray(uint8_t r, uint8_t g, uint8_t b);
// `dir` holds data_batch_1.bin .. data_batch_5.bin and test_batch.bin (or a
// cifar-10-batches-bin/ subfolder does). train = the first (1 - val_frac) of the training
// records, val = the rest (LRA: train[:90%] / train[90%:]), test = test_batch.bin.
ImageSplits read_cifar10(const std::string& dir, const ImageOptions& opt = {}, double val_frac = 0.1);

// ---- IDX (MNIST / Fashion-MNIST) ---------------------------------------------------------
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};
// Reads an unsigned-byte IDX file, gzip-compressed or not (zlib). Checks the magic
// (0x00 0x00 0x08 ndim), that the dimensions multiply without overflow (zeros counted as 1),
// and that the data is exactly their product: a gzip file is inflated only up to one byte past
// what the header describes, so a small file cannot make the reader allocate more than that.
IdxArray read_idx(const std::string& path);
// Images (N, h, w) + labels (N), each image zero-padded (centred) to pad_to x pad_to pixels
// (0 = no padding): Fashion-MNIST's 28 x 28 becomes 32 x 32 = 1024 tokens.
Dataset read_idx_dataset(const std::string& images_path, const std::string& labels_path, int pad_to = 32,
                         const ImageOptions& opt = {});
constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
// {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz in `dir`; val = the last val_frac of train.
ImageSplits read_fashion_mnist(const std::string& dir = kFashionMnistDir, const ImageOptions& opt = {},
                               double val_frac = 0.1, int pad_to = 32);

}  // namespace lotgrad::data
