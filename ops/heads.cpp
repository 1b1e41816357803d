#include "heads.h"

#include "../core/autograd.h"
#include "../core/iter.h"
#include "matmul.h"

namespace lotgrad {

namespace {
// dst[b, h, i, :] = src[b, i, off + h*dh : off + (h+1)*dh] for b, h, i; src (B, n, W) contiguous.
template <class T>
void gather_heads(const T* src, T* dst, int64_t B, int64_t n, int64_t W, int64_t H, int64_t dh, int64_t off) {
  parallel_for(0, B * H, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, n * dh)), [&](int64_t s, int64_t e) {
    for (int64_t bh = s; bh < e; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      for (int64_t i = 0; i < n; ++i) {
        const T* sp = src + (b * n + i) * W + off + h * dh;
        T* dp = dst + (bh * n + i) * dh;
        for (int64_t c = 0; c < dh; ++c) dp[c] = sp[c];
      }
    }
  });
}
// The inverse scatter: dst[b, i, off + h*dh + c] = src[b, h, i, c]; dst (B, n, W) contiguous,
// src read through its strides (a gradient may arrive as a transposed view: no copy first).
template <class T>
void scatter_heads(const T* src, const Shape& ss, T* dst, int64_t B, int64_t n, int64_t W, int64_t H, int64_t dh,
                   int64_t off) {
  parallel_for(0, B * n, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, H * dh)), [&](int64_t s, int64_t e) {
    for (int64_t bi = s; bi < e; ++bi) {
      const int64_t b = bi / n, i = bi % n;
      for (int64_t h = 0; h < H; ++h) {
        const T* sp = src + b * ss[0] + h * ss[1] + i * ss[2];
        T* dp = dst + bi * W + off + h * dh;
        if (ss[3] == 1)
          for (int64_t c = 0; c < dh; ++c) dp[c] = sp[c];
        else
          for (int64_t c = 0; c < dh; ++c) dp[c] = sp[c * ss[3]];
      }
    }
  });
}

struct SplitQKVBackward : Node {
  int64_t B = 0, n = 0, H = 0, dh = 0;
  const char* name() const override { return "SplitQKVHeadsBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    const int64_t W = 3 * H * dh;
    DType dt = DType::f32;
    for (auto& t : g)
      if (t.defined()) dt = t.dtype();
    // Zero fill only where a head tensor got no gradient.
    bool all = g.size() >= 3 && g[0].defined() && g[1].defined() && g[2].defined();
    Tensor out = all ? make_tensor_uninit({B, n, W}, dt) : make_tensor({B, n, W}, dt);
    dispatch_float(dt, name(), [&]<class T>() {
      for (int p = 0; p < 3 && p < (int)g.size(); ++p) {
        if (!g[p].defined()) continue;
        scatter_heads<T>(g[p].data_ptr<T>(), g[p].strides(), out.data_ptr<T>(), B, n, W, H, dh, p * H * dh);
      }
    });
    return {out};
  }
};
struct MergeHeadsBackward : Node {
  int64_t B = 0, H = 0, n = 0, dh = 0;
  const char* name() const override { return "MergeHeadsBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor gc = g[0].contiguous();  // (B, n, H·dh)
    Tensor out = make_tensor_uninit({B, H, n, dh}, gc.dtype());
    dispatch_float(gc.dtype(), name(), [&]<class T>() {
      gather_heads<T>(gc.data_ptr<T>(), out.data_ptr<T>(), B, n, H * dh, H, dh, 0);
    });
    return {out};
  }
};
// x (B, n, D) -> (q, k, v): sequence b's projection (n, 3HD) is made, split into heads
// and dropped before the next; the backward reassembles one (n, 3HD) gradient block at a
// time for dx, dW and db (db and dW summed over sequences in order: deterministic).
struct LinearQKVHeadsBackward : Node {
  SavedTensor x, w;
  int64_t B = 0, n = 0, H = 0, dh = 0, D = 0;
  bool has_bias = false;
  const char* name() const override { return "LinearQKVHeadsBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    const int64_t W = 3 * H * dh;
    DType dt = DType::f32;
    for (auto& t : g)
      if (t.defined()) dt = t.dtype();
    const Tensor wv = w.defined() ? w.unpack(this) : Tensor(), xv = x.defined() ? x.unpack(this) : Tensor();
    Tensor dx = needs_grad(0) ? make_tensor_uninit({B, n, D}, dt) : Tensor();
    Tensor dw;
    std::vector<double> db(has_bias && needs_grad(2) ? (size_t)W : 0, 0.0);
    Tensor blk = (g.size() >= 3 && g[0].defined() && g[1].defined() && g[2].defined()) ? make_tensor_uninit({n, W}, dt)
                                                                                       : make_tensor({n, W}, dt);
    dispatch_float(dt, name(), [&]<class T>() {
      for (int64_t b = 0; b < B; ++b) {
        for (int p = 0; p < 3 && p < (int)g.size(); ++p) {
          if (!g[p].defined()) continue;
          const Tensor gb = g[p].select(0, b).unsqueeze(0);  // (1, H, n, dh) view
          scatter_heads<T>(gb.data_ptr<T>(), gb.strides(), blk.data_ptr<T>(), 1, n, W, H, dh, p * H * dh);
        }
        if (dx.defined()) dx.select(0, b).copy_(detail::batched_gemm(blk, wv, {}));  // (n, W) . (W, D)
        if (needs_grad(1)) dw = detail::batched_gemm(blk.t(), xv.select(0, b), {}, dw);  // += blkᵀ . x_b
        if (!db.empty()) {
          const Tensor s = sum_to(blk, {W});
          const T* sp = s.data_ptr<T>();
          for (int64_t j = 0; j < W; ++j) db[(size_t)j] += (double)sp[j];
        }
      }
    });
    Tensor dbias = db.empty() ? Tensor() : Tensor::from_vector(db, {W}).to(dt);
    return {dx, dw, dbias};
  }
  void release() override { x.reset(); w.reset(); }
};
}  // namespace

std::array<Tensor, 3> linear_qkv_heads(const Tensor& x_in, const Tensor& weight, const Tensor& bias, int64_t H) {
  const char* op = "linear_qkv_heads";
  if (!x_in.defined() || !weight.defined()) throw ShapeError("linear_qkv_heads: undefined tensor");
  if (x_in.dim() != 3 || weight.dim() != 2 || weight.size(1) != x_in.size(2) || H <= 0 || weight.size(0) % (3 * H) ||
      (bias.defined() && bias.shape() != Shape{weight.size(0)}))
    throw_shape(op, "expects x (B, n, D), weight (3*heads*dh, D), bias (3*heads*dh) with heads = " + std::to_string(H),
                {{"x", &x_in}, {"weight", &weight}, {"bias", &bias}});
  if (!is_floating(x_in.dtype()) || weight.dtype() != x_in.dtype() || (bias.defined() && bias.dtype() != x_in.dtype()))
    throw_dtype(op, "expects floating tensors of one dtype", {{"x", &x_in}, {"weight", &weight}, {"bias", &bias}});
  const Tensor x = x_in.detach().contiguous(), wd = weight.detach(), bd = bias.defined() ? bias.detach() : Tensor();
  const int64_t B = x.size(0), n = x.size(1), W = weight.size(0), dh = W / (3 * H);
  std::array<Tensor, 3> out;
  for (int p = 0; p < 3; ++p) out[p] = make_tensor_uninit({B, H, n, dh}, x.dtype());
  {
    NoGradGuard ng;
    dispatch_float(x.dtype(), op, [&]<class T>() {
      for (int64_t b = 0; b < B; ++b) {
        const Tensor blk = linear(x.select(0, b), wd, bd);  // (n, W), contiguous
        for (int p = 0; p < 3; ++p)
          gather_heads<T>(blk.data_ptr<T>(), out[p].data_ptr<T>() + b * H * n * dh, 1, n, W, H, dh, p * H * dh);
      }
    });
  }
  if (auto node = make_node<LinearQKVHeadsBackward>({x_in, weight, bias})) {
    node->B = B;
    node->n = n;
    node->H = H;
    node->dh = dh;
    node->D = x.size(2);
    node->has_bias = bias.defined();
    if (node->needs_grad(1)) node->x = save(x);
    if (node->needs_grad(0)) node->w = save(weight);
    for (uint32_t p = 0; p < 3; ++p) set_history(out[p], node, p);
  }
  return out;
}

std::array<Tensor, 3> split_qkv_heads(const Tensor& qkv_in, int64_t H) {
  if (qkv_in.dim() != 3 || H <= 0 || qkv_in.size(2) % (3 * H))
    throw_shape("split_qkv_heads", "expects (B, n, 3*heads*dh) with heads = " + std::to_string(H), {{"qkv", &qkv_in}});
  if (!is_floating(qkv_in.dtype())) throw_dtype("split_qkv_heads", "expects a floating tensor", {{"qkv", &qkv_in}});
  Tensor qkv = qkv_in.contiguous();
  const int64_t B = qkv.size(0), n = qkv.size(1), W = qkv.size(2), dh = W / (3 * H);
  std::array<Tensor, 3> out;
  dispatch_float(qkv.dtype(), "split_qkv_heads", [&]<class T>() {
    for (int p = 0; p < 3; ++p) {
      out[p] = make_tensor_uninit({B, H, n, dh}, qkv.dtype());
      gather_heads<T>(qkv.data_ptr<T>(), out[p].data_ptr<T>(), B, n, W, H, dh, p * H * dh);
    }
  });
  if (auto node = make_node<SplitQKVBackward>({qkv_in})) {
    node->B = B;
    node->n = n;
    node->H = H;
    node->dh = dh;
    for (uint32_t p = 0; p < 3; ++p) set_history(out[p], node, p);
  }
  return out;
}

Tensor merge_heads(const Tensor& o_in) {
  if (o_in.dim() != 4) throw_shape("merge_heads", "expects (B, H, n, dh)", {{"o", &o_in}});
  if (!is_floating(o_in.dtype())) throw_dtype("merge_heads", "expects a floating tensor", {{"o", &o_in}});
  const Tensor o = o_in.detach();  // any strides: the scatter reads through them
  const int64_t B = o.size(0), H = o.size(1), n = o.size(2), dh = o.size(3);
  Tensor out = make_tensor_uninit({B, n, H * dh}, o.dtype());
  dispatch_float(o.dtype(), "merge_heads", [&]<class T>() {
    scatter_heads<T>(o.data_ptr<T>(), o.strides(), out.data_ptr<T>(), B, n, H * dh, H, dh, 0);
  });
  if (auto node = make_node<MergeHeadsBackward>({o_in})) {
    node->B = B;
    node->H = H;
    node->n = n;
    node->dh = dh;
    set_history(out, node);
  }
  return out;
}

}  // namespace lotgrad
