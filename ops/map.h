// Elementwise map helpers shared by op files: out[i] = f(in0[i], in1[i], ...) with NumPy
// broadcasting, over any strides. The contiguous case gets a plain loop the compiler
// vectorises; runs are split across threads above kParallelGrain elements.
#pragma once
#include <array>
#include <utility>

#include "../core/iter.h"
#include "../core/tensor.h"

namespace lotgrad {

// Broadcast shape of all inputs (throws ShapeError naming op and every operand).
template <size_t N>
Shape broadcast_all(const std::array<const Tensor*, N>& ins, const char* op) {
  Shape s = ins[0]->shape();
  for (size_t k = 1; k < N; ++k) {
    try {
      s = broadcast_shapes(s, ins[k]->shape(), op);
    } catch (const ShapeError&) {
      std::string m = std::string(op) + ": shapes do not broadcast; operands:";
      for (size_t j = 0; j < N; ++j) m += (j ? ", " : " ") + describe(*ins[j]);
      throw ShapeError(m);
    }
  }
  return s;
}

// Element types: O output, I input (all inputs share I). f(I...) -> O.
template <class O, class I, size_t N, class F>
Tensor map_n(const std::array<const Tensor*, N>& ins, const Shape& out_shape, F f) {
  Tensor out = make_tensor_uninit(out_shape, dtype_of<O>::value);  // every element is written below
  std::array<Shape, N + 1> st;
  st[0] = out.strides();
  std::array<const I*, N> p;
  for (size_t k = 0; k < N; ++k) {
    st[k + 1] = broadcast_strides(*ins[k], out_shape);
    p[k] = ins[k]->template data_ptr<I>();
  }
  O* o = out.data_ptr<O>();
  strided_loop<N + 1>(out_shape, st, kParallelGrain, [&](auto off, int64_t len, auto in) {
    O* op = o + off[0];
    bool unit = true;
    for (size_t k = 1; k <= N; ++k) unit = unit && in[k] == 1;
    if (unit) {
      [&]<size_t... K>(std::index_sequence<K...>) {
        const I* ptr[N] = {(p[K] + off[K + 1])...};
        for (int64_t i = 0; i < len; ++i) op[i] = f(ptr[K][i]...);
      }(std::make_index_sequence<N>{});
    } else {
      [&]<size_t... K>(std::index_sequence<K...>) {
        for (int64_t i = 0; i < len; ++i) op[i] = f(p[K][off[K + 1] + i * in[K + 1]]...);
      }(std::make_index_sequence<N>{});
    }
  });
  return out;
}

}  // namespace lotgrad
