// Strided N-operand loops: the shared engine behind copies, elementwise ops and
// broadcasting. Dims of size 1 are dropped and adjacent dims that are contiguous for every
// operand are merged, so the innermost run is as long as possible (and stride 1 where
// the data allow it, which lets the compiler vectorise the body).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "tensor.h"

namespace lotgrad {

// Strides of t when broadcast to `shape` (0 along broadcast dims). t must be broadcastable.
Shape broadcast_strides(const Tensor& t, const Shape& shape);

// Calls body(off, len, inner) for each innermost run, where off[k] is operand k's element
// offset at the start of the run, len the run length and inner[k] operand k's stride along
// it. Runs are split into chunks of at least `grain` elements across threads; pass a huge
// grain to stay serial.
template <size_t N, class Body>
void strided_loop(const Shape& shape, const std::array<Shape, N>& strides, int64_t grain, Body&& body) {
  // Collapse: drop size-1 dims, merge mergeable neighbours.
  std::vector<int64_t> sz;
  std::vector<std::array<int64_t, N>> st;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 0) return;
    if (shape[d] == 1) continue;
    std::array<int64_t, N> s;
    for (size_t k = 0; k < N; ++k) s[k] = strides[k][d];
    if (!sz.empty()) {
      bool merge = true;
      for (size_t k = 0; k < N; ++k) merge = merge && (st.back()[k] == s[k] * shape[d]);
      if (merge) {
        sz.back() *= shape[d];
        st.back() = s;
        continue;
      }
    }
    sz.push_back(shape[d]);
    st.push_back(s);
  }
  if (sz.empty()) {
    std::array<int64_t, N> off{}, inner{};
    body(off, (int64_t)1, inner);
    return;
  }
  const int64_t nd = (int64_t)sz.size();
  int64_t total = 1;
  for (auto v : sz) total *= v;
  const int64_t inner_n = sz[nd - 1];
  const std::array<int64_t, N> inner = st[nd - 1];
  parallel_for(0, total, grain, [&](int64_t b, int64_t e) {
    // Multi-index of b.
    std::vector<int64_t> idx(nd);
    int64_t rem = b;
    for (int64_t d = nd - 1; d >= 0; --d) {
      idx[d] = rem % sz[d];
      rem /= sz[d];
    }
    std::array<int64_t, N> off{};
    for (int64_t d = 0; d < nd; ++d)
      for (size_t k = 0; k < N; ++k) off[k] += idx[d] * st[d][k];
    int64_t pos = b;
    while (pos < e) {
      const int64_t len = std::min(inner_n - idx[nd - 1], e - pos);
      body(off, len, inner);
      pos += len;
      // Advance the multi-index by len (the inner dim either finished or we are done).
      idx[nd - 1] += len;
      for (size_t k = 0; k < N; ++k) off[k] += len * inner[k];
      for (int64_t d = nd - 1; d > 0 && idx[d] == sz[d]; --d) {
        for (size_t k = 0; k < N; ++k) off[k] -= sz[d] * st[d][k] - st[d - 1][k];
        idx[d] = 0;
        ++idx[d - 1];
      }
    }
  });
}

// Calls f.template operator()<T>() with T = float or double according to dtype;
// throws DTypeError naming op for other dtypes.
template <class F>
decltype(auto) dispatch_float(DType dt, const char* op, F&& f) {
  if (dt == DType::f32) return f.template operator()<float>();
  if (dt == DType::f64) return f.template operator()<double>();
  throw DTypeError(std::string(op) + ": expected a floating dtype (f32 or f64), got " + dtype_name(dt));
}
// Same over all four dtypes.
template <class F>
decltype(auto) dispatch_all(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    case DType::i64: return f.template operator()<int64_t>();
    case DType::b8: break;
  }
  return f.template operator()<bool>();
}

}  // namespace lotgrad
