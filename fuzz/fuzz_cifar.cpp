// CIFAR-10 binary batch reader (data/image.h read_cifar10_bin). Oracles: an IOError names the
// file; one example per 3073-byte record, label = its first byte, 1024 tokens each equal to
// cifar_gray of the record's R, G, B planes plus pixel_shift.
#include <lotgrad/data/image.h>

#include "fuzz_common.h"

using namespace lotgrad;
using namespace lotgrad::data;

static const fuzz::Scratch scratch("cifar");

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = scratch.write("data_batch_1.bin", {reinterpret_cast<const char*>(data), size});
  const int shift = (int)(size & 1);  // both settings over the corpus; the record count decides parity
  Dataset d;
  try {
    d = read_cifar10_bin(path, ImageOptions{.pixel_shift = shift});
  } catch (const IOError& e) {
    fuzz::expect_names(e, path);
    return 0;
  }
  FUZZ_CHECK(d.size() * 3073 == size, std::to_string(d.size()) + " examples from " + std::to_string(size) + " bytes");
  FUZZ_CHECK(d.vocab_size == 256 + shift && d.num_classes == 10, "vocab or classes");
  for (size_t i = 0; i < d.size(); ++i) {
    const uint8_t* rec = data + i * 3073;
    FUZZ_CHECK(d[i].label == rec[0] && d[i].label <= 9, "record " + std::to_string(i) + " label");
    FUZZ_CHECK(d[i].tokens.size() == 1024, "record " + std::to_string(i) + " token count");
    for (size_t j = 0; j < 1024; ++j)
      FUZZ_CHECK(d[i].tokens[j] == cifar_gray(rec[1 + j], rec[1025 + j], rec[2049 + j]) + shift,
                 "record " + std::to_string(i) + " pixel " + std::to_string(j));
  }
  return 0;
}
