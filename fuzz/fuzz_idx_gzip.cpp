// IDX reader behind gzip: the target compresses the fuzz bytes, read_idx inflates them; see idx_check.h.
#include "idx_check.h"

static const lotgrad::fuzz::Scratch scratch("idx_gzip");

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lotgrad::fuzz::check_idx(scratch, data, size, true);
  return 0;
}
