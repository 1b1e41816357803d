// Checkpoint payload parser behind a valid checksum: the fuzz bytes are the payload, wrapped
// in a correct header ("LOTGCKPT", version 1, flags 0, payload size) and CRC-32 footer, so
// every input reaches the metadata and tensor records.
#include <cstring>

#include "checkpoint_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string file("LOTGCKPT", 8);
  const uint32_t version = lotgrad::kCheckpointVersion, flags = 0;
  const uint64_t payload = size;
  file.append(reinterpret_cast<const char*>(&version), 4);
  file.append(reinterpret_cast<const char*>(&flags), 4);
  file.append(reinterpret_cast<const char*>(&payload), 8);
  file.append(reinterpret_cast<const char*>(data), size);
  const uint32_t crc = lotgrad::crc32(file.data(), file.size());
  file.append(reinterpret_cast<const char*>(&crc), 4);
  lotgrad::fuzz::check_checkpoint(file);
  return 0;
}
