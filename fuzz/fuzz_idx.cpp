// IDX reader (data/image.h read_idx, read_idx_dataset) on the bytes as they are; see idx_check.h.
#include "idx_check.h"

static const lotgrad::fuzz::Scratch scratch("idx");

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lotgrad::fuzz::check_idx(scratch, data, size, false);
  return 0;
}
