// The checks both checkpoint targets run on one file's bytes.
#pragma once
#include <lotgrad/core/io.h>

#include "fuzz_common.h"

namespace lotgrad::fuzz {

// Parses bytes as a checkpoint. An IOError must name the file; a checkpoint that loads must
// come back unchanged from checkpoint_to_bytes -> checkpoint_from_bytes (same metadata, same
// tensors in the same order).
inline void check_checkpoint(const std::string& bytes) {
  const std::string name = "fuzz-input.ckpt";
  Checkpoint ck;
  try {
    ck = checkpoint_from_bytes(bytes, name);
  } catch (const IOError& e) {
    expect_names(e, name);
    return;
  }
  const Checkpoint back = checkpoint_from_bytes(checkpoint_to_bytes(ck.tensors, ck.metadata), "round trip");
  FUZZ_CHECK(back.metadata == ck.metadata, "metadata changed in a save/load round trip");
  FUZZ_CHECK(back.tensors.size() == ck.tensors.size(), "tensor count changed in a save/load round trip");
  for (size_t i = 0; i < ck.tensors.size(); ++i) {
    FUZZ_CHECK(back.tensors[i].first == ck.tensors[i].first, "tensor name changed: " + ck.tensors[i].first);
    FUZZ_CHECK(same_tensor(back.tensors[i].second, ck.tensors[i].second),
               "tensor '" + ck.tensors[i].first + "' changed in a save/load round trip");
  }
}

}  // namespace lotgrad::fuzz
