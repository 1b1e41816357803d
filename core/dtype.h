// Element types. Floating kernels are written once as templates over float and double;
// int64 holds indices, bool holds masks.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace lotgrad {

enum class DType : uint8_t { f32 = 0, f64 = 1, i64 = 2, b8 = 3 };
constexpr DType kFloat32 = DType::f32;
constexpr DType kFloat64 = DType::f64;
constexpr DType kInt64 = DType::i64;
constexpr DType kBool = DType::b8;

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i64: return 8;
    case DType::b8: return 1;
  }
  return 0;
}
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::i64: return "i64";
    case DType::b8: return "bool";
  }
  return "?";
}
inline bool is_floating(DType t) { return t == DType::f32 || t == DType::f64; }

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::b8; };

}  // namespace lotgrad
