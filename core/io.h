// Tensor files: NumPy .npy (for exchanging arrays with Python) and lotgrad checkpoints
// (named tensors + string metadata, versioned, checksummed, written atomically).
//
// Every failure to read or write throws IOError naming the file (or "<buffer>") and what
// is wrong. Readers never trust sizes in a file: shapes are checked for overflow and the
// data size against the bytes actually present before anything is allocated.
//
// .npy: format 1.0 is written (2.0 only if the header does not fit 64 KiB), 1.0/2.0/3.0
// are read. Little-endian, C order; non-contiguous tensors are written in logical
// row-major order. dtypes written: f32 '<f4', f64 '<f8', i64 '<i8', bool '|b1'.
// dtypes read: those, plus int32 '<i4' which is widened and loaded as i64 (lotgrad has no
// int32 dtype), and big-endian variants of all of them ('>f4', ...) which are byte-swapped.
// Fortran-order files are rejected with an IOError.
//
// Checkpoint layout (all integers little-endian; version 1):
//   header   "LOTGCKPT" (8 bytes) | u32 format version | u32 flags (0) | u64 payload bytes
//   payload  u32 n_meta, n_meta x { u32 key_len, key, u32 value_len, value }
//            u32 n_tensors, n_tensors x { u32 name_len, name, u8 dtype code, u8 ndim,
//                                         i64 dims[ndim], u64 data_bytes, data (C order) }
//   footer   u32 CRC-32 (IEEE) of header + payload
// dtype codes are part of the format (0 f32, 1 f64, 2 i64, 3 bool), independent of the
// DType enum. No C++ type names are stored, so files stay readable across versions.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tensor.h"

namespace lotgrad {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
using Metadata = std::map<std::string, std::string>;

// ---- .npy ------------------------------------------------------------------------------
void save_npy(const std::string& path, const Tensor& t);  // atomic, like save_checkpoint
Tensor load_npy(const std::string& path);
// The exact bytes save_npy writes, and the reader over an in-memory buffer; `name` is
// used in error messages.
std::string npy_to_bytes(const Tensor& t);
Tensor npy_from_bytes(const std::string& bytes, const std::string& name = "<buffer>");

// ---- checkpoints -------------------------------------------------------------------------
constexpr uint32_t kCheckpointVersion = 1;

struct Checkpoint {
  NamedTensors tensors;  // in file order
  Metadata metadata;
  bool contains(const std::string& name) const;
  // The tensor called name; throws IOError listing the available names if absent.
  const Tensor& at(const std::string& name) const;
};

// Names must be non-empty and unique (ShapeError otherwise, before anything is written).
// Tensors may be non-contiguous. Written to path + ".tmp.<pid>", flushed and fsync'ed,
// then renamed over path: a reader never sees a half-written file, and on failure an
// existing file at path is left untouched and the temporary file is removed.
// previous (not empty): an existing file at path is kept under this name (renamed once the
// new file is complete and synced, just before it takes path): at every instant path or
// previous holds a complete checkpoint (a run's last.ckpt -> prev.ckpt).
void save_checkpoint(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {},
                     const std::string& previous = {});
Checkpoint load_checkpoint(const std::string& path);
std::string checkpoint_to_bytes(const NamedTensors& tensors, const Metadata& metadata = {});
Checkpoint checkpoint_from_bytes(const std::string& bytes, const std::string& name = "<buffer>");

// ---- helpers ---------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, reflected, as zlib's crc32); `crc` continues a running value.
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);
// Writes bytes to path atomically (temp file, fsync, rename). Throws IOError.
void write_file_atomic(const std::string& path, const std::string& bytes);
// Reads a whole file. Throws IOError naming the file.
std::string read_file(const std::string& path);

}  // namespace lotgrad
