// Bitwise tensor equality for tests: same dtype, shape and bytes (views compared by value).
#pragma once
#include <lotgrad/lotgrad.h>

#include <cstring>

namespace lotgrad::testing {

inline bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), (size_t)a.numel() * dtype_size(a.dtype())) == 0;
}

}  // namespace lotgrad::testing
