// .npy reader (core/io.h npy_from_bytes; load_npy is read_file + the same parser).
// Oracle beyond "no crash": an IOError names the file, and every array that loads survives
// npy_to_bytes -> npy_from_bytes unchanged (int32 comes back as the i64 it was widened to).
#include <lotgrad/core/io.h>

#include "fuzz_common.h"

using namespace lotgrad;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string name = "fuzz-input.npy";
  Tensor t;
  try {
    t = npy_from_bytes(fuzz::as_string(data, size), name);
  } catch (const IOError& e) {
    fuzz::expect_names(e, name);
    return 0;
  }
  const Tensor back = npy_from_bytes(npy_to_bytes(t), "round trip");
  FUZZ_CHECK(fuzz::same_tensor(t, back), "save/load round trip changed " + describe(t) + " into " + describe(back));
  return 0;
}
