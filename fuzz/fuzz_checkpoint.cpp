// Checkpoint reader on raw bytes (core/io.h checkpoint_from_bytes; load_checkpoint is
// read_file + the same parser). Almost every mutation breaks the CRC-32, so this target mostly
// covers the header and checksum checks; fuzz_checkpoint_crc reaches the payload parser.
#include "checkpoint_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lotgrad::fuzz::check_checkpoint(lotgrad::fuzz::as_string(data, size));
  return 0;
}
