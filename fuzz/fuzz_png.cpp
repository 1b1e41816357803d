// PNG reader (data/image.h read_png_gray, stb_image underneath). Oracles: an IOError names the
// file; a decoded image has w * h pixels, w and h positive; and it survives write_png_gray ->
// read_png_gray unchanged.
#include <lotgrad/data/image.h>

#include "fuzz_common.h"

using namespace lotgrad;
using namespace lotgrad::data;

static const fuzz::Scratch scratch("png");

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = scratch.write("sample_0.png", {reinterpret_cast<const char*>(data), size});
  int w = -1, h = -1;
  std::vector<uint8_t> px;
  try {
    px = read_png_gray(path, &w, &h);
  } catch (const IOError& e) {
    fuzz::expect_names(e, path);
    return 0;
  }
  const std::string dims = std::to_string(w) + "x" + std::to_string(h);
  FUZZ_CHECK(w > 0 && h > 0 && px.size() == (size_t)w * (size_t)h, dims + " image with " + std::to_string(px.size()) + " pixels");
  if (px.size() > (1u << 20)) return 0;  // the round trip of a huge image is slow and adds nothing
  const std::string again = scratch.path("again.png");
  write_png_gray(again, w, h, px);
  int w2 = 0, h2 = 0;
  const std::vector<uint8_t> back = read_png_gray(again, &w2, &h2);
  FUZZ_CHECK(w2 == w && h2 == h && back == px, dims + " image changed in a write/read round trip");
  return 0;
}
