#include "embedding.h"

#include <cstring>
#include <string>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {

struct EmbeddingBackward : Node {
  SavedTensor idx;  // contiguous int64
  int64_t V = 0, d = 0, pad = -1;
  const char* name() const override { return "EmbeddingBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor iv = idx.unpack(this);
    const Tensor g = grads[0].contiguous();  // (n, d)
    Tensor dw = make_tensor({V, d}, g.dtype());
    const int64_t n = iv.numel(), D = d, P = pad;
    const int64_t* ip = iv.data_ptr<int64_t>();
    dispatch_float(g.dtype(), name(), [&]<class T>() {
      const T* gp = g.data_ptr<T>();
      T* wp = dw.data_ptr<T>();
      // Column blocks in parallel; within a block, rows are added in index order.
      parallel_for(0, D, std::max<int64_t>(8, kParallelGrain / std::max<int64_t>(n, 1)), [&](int64_t j0, int64_t j1) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t r = ip[i];
          if (r == P) continue;
          const T* gr = gp + i * D;
          T* wr = wp + r * D;
          for (int64_t j = j0; j < j1; ++j) wr[j] += gr[j];
        }
      });
    });
    return {dw, Tensor()};
  }
  void release() override { idx.reset(); }
};

}  // namespace

Tensor embedding(const Tensor& weight_in, const Tensor& indices_in, std::optional<int64_t> padding_idx) {
  const char* op = "embedding";
  if (!weight_in.defined() || !indices_in.defined()) throw ShapeError("embedding: undefined tensor");
  // Accept PyTorch's (input, weight) order too: the int64 operand holds the indices.
  const bool swapped = weight_in.dtype() == kInt64 && is_floating(indices_in.dtype());
  const Tensor& weight = swapped ? indices_in : weight_in;
  const Tensor& indices = swapped ? weight_in : indices_in;
  if (!is_floating(weight.dtype()))
    throw_dtype(op, "weight must be floating (f32 or f64)", {{"weight", &weight}, {"indices", &indices}});
  if (indices.dtype() != kInt64) throw_dtype(op, "indices must be int64", {{"weight", &weight}, {"indices", &indices}});
  if (weight.dim() != 2) throw_shape(op, "weight must be 2-d (num_embeddings, embedding_dim)", {{"weight", &weight}, {"indices", &indices}});
  const int64_t V = weight.size(0), d = weight.size(1);
  int64_t pad = -1;
  if (padding_idx) {
    pad = *padding_idx < 0 ? *padding_idx + V : *padding_idx;
    if (pad < 0 || pad >= V)
      throw_shape(op, "padding_idx " + std::to_string(*padding_idx) + " is out of range for " + std::to_string(V) + " embeddings",
                  {{"weight", &weight}, {"indices", &indices}});
  }
  const Tensor ic = indices.detach().contiguous();
  const int64_t n = ic.numel();
  const int64_t* ip = ic.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    if (ip[i] < 0 || ip[i] >= V)
      throw_shape(op,
                  "index " + std::to_string(ip[i]) + " (at flat position " + std::to_string(i) + ") is out of range for " +
                      std::to_string(V) + " embeddings (valid: 0.." + std::to_string(V - 1) + ")",
                  {{"weight", &weight}, {"indices", &indices}});
  Shape os = indices.shape();
  os.push_back(d);
  Tensor out = make_tensor(os, weight.dtype());
  const Tensor wd = weight.detach();
  dispatch_float(weight.dtype(), op, [&]<class T>() {
    const T* wp = wd.data_ptr<T>();
    T* o = out.data_ptr<T>();
    const int64_t s0 = wd.stride(0), s1 = wd.stride(1);
    parallel_for(0, n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(d, 1)), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T* src = wp + ip[i] * s0;
        T* dst = o + i * d;
        if (s1 == 1)
          std::memcpy(dst, src, sizeof(T) * (size_t)d);
        else
          for (int64_t j = 0; j < d; ++j) dst[j] = src[j * s1];
      }
    });
  });
  if (auto node = make_node<EmbeddingBackward>({weight, Tensor()})) {
    node->idx = save(ic);
    node->V = V;
    node->d = d;
    node->pad = pad;
    set_history(out, node);
  }
  return out;
}

}  // namespace lotgrad
