// Pathfinder metadata reader (data/pathfinder.h read_pathfinder): the fuzz bytes are
// metadata/0.npy of a difficulty folder that also holds a few images (four 32 x 32 PNGs, a
// 16 x 16 one, an empty file and a file that is not an image), so lines naming them reach the
// PNG reading and size checks. Oracles: an IOError names a file under the folder; examples
// have a 0/1 label and size x size tokens.
#include <lotgrad/data/pathfinder.h>

#include "fuzz_common.h"

using namespace lotgrad;
using namespace lotgrad::data;

namespace {
// imgs/0/sample_0..3.png: 32 x 32 (the names write_pathfinder gives 4 images); imgs/1/: a
// 16 x 16 PNG, an empty file and a text file.
const fuzz::Scratch& folder() {
  static const fuzz::Scratch f("pathfinder");
  static const bool ready = [] {
    for (int i = 0; i < 4; ++i) {
      std::vector<uint8_t> px(32 * 32);
      for (size_t k = 0; k < px.size(); ++k) px[k] = (uint8_t)((k * 37 + (size_t)i * 91) % 251);
      write_png_gray(f.path("imgs/0/sample_" + std::to_string(i) + ".png"), 32, 32, px);
    }
    write_png_gray(f.path("imgs/1/small.png"), 16, 16, std::vector<uint8_t>(16 * 16, 200));
    f.write("imgs/1/empty.png", "");
    f.write("imgs/1/text.png", "not an image\n");
    return true;
  }();
  (void)ready;
  return f;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fuzz::Scratch& f = folder();
  f.write("metadata/0.npy", {reinterpret_cast<const char*>(data), size});
  for (const int image_size : {32, 0}) {
    Dataset d;
    try {
      d = read_pathfinder(f.dir(), PathfinderReadOptions{.image_size = image_size});
    } catch (const IOError& e) {
      fuzz::expect_names(e, f.dir());
      continue;
    }
    const size_t want = d.empty() ? 0 : d[0].tokens.size();
    for (const Example& e : d.examples) {
      FUZZ_CHECK(e.label == 0 || e.label == 1, "label " + std::to_string(e.label));
      FUZZ_CHECK(e.tokens.size() == want && (image_size == 0 || want == 32 * 32), std::to_string(e.tokens.size()) + " tokens");
    }
  }
  return 0;
}
