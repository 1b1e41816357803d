#include "heads.h"

#include "../core/autograd.h"
#include "../core/iter.h"
#include "matmul.h"
#include "norm.h"

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
// Whole sequences per block of linear_qkv_heads: about 8192 rows (a (8192, 3D) block stays
// in the last-level cache for D = 64, and few blocks keep the parallel regions few).
int64_t chunk_seqs(int64_t n) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(n, 1)); }
// First column of each part in a projection laid out [part 0 | part 1 | part 2], H heads each.
std::array<int64_t, 3> part_offsets(int64_t H, const std::array<int64_t, 3>& w) { return {0, H * w[0], H * (w[0] + w[1])}; }

// x (B, n, D) -> three per-head parts (q, k, v for linear_qkv_heads): a block of sequences'
// projection (rows, W) is made, split into heads and dropped before the next; the backward
// reassembles one (rows, W) gradient block at a time for dx, dW and db (db and dW summed over
// sequences in order: deterministic). With a pre-norm, z_b = LayerNorm(x_b) is made per block
// too, in the forward and again in the backward.
struct LinearHeadsBackward : Node {
  SavedTensor x, w, lnw, lnb, mean, rstd;
  int64_t B = 0, n = 0, H = 0, D = 0;
  std::array<int64_t, 3> wd{};  // per part: head width
  bool has_bias = false, normed = false;
  double eps = 1e-5;
  const char* name() const override { return "LinearHeadsBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    const int64_t W = H * (wd[0] + wd[1] + wd[2]);
    const std::array<int64_t, 3> off = part_offsets(H, wd);
    DType dt = DType::f32;
    for (auto& t : g)
      if (t.defined()) dt = t.dtype();
    const Tensor wv = w.defined() ? w.unpack(this) : Tensor(), xv = x.defined() ? x.unpack(this) : Tensor();
    const Tensor lw = lnw.defined() ? lnw.unpack(this).contiguous() : Tensor();
    const Tensor lb = lnb.defined() ? lnb.unpack(this).contiguous() : Tensor();
    const Tensor mv = mean.defined() ? mean.unpack(this) : Tensor(), rv = rstd.defined() ? rstd.unpack(this) : Tensor();
    const bool need_dz = needs_grad(0) || (normed && (needs_grad(3) || needs_grad(4)));
    Tensor dx = needs_grad(0) ? make_tensor_uninit({B, n, D}, dt) : Tensor();
    Tensor dw;
    std::vector<double> db(has_bias && needs_grad(2) ? (size_t)W : 0, 0.0);
    std::vector<double> dlw(normed && needs_grad(3) ? (size_t)D : 0, 0.0), dlb(normed && needs_grad(4) ? (size_t)D : 0, 0.0);
    const int64_t cb = chunk_seqs(n);  // sequences per block
    const bool all = g.size() >= 3 && g[0].defined() && g[1].defined() && g[2].defined();
    Tensor blk_buf = all ? make_tensor_uninit({cb * n, W}, dt) : make_tensor({cb * n, W}, dt);
    Tensor z_buf = normed && needs_grad(1) ? make_tensor_uninit({cb * n, D}, dt) : Tensor();  // the recomputed rows
    dispatch_float(dt, name(), [&]<class T>() {
      for (int64_t b0 = 0; b0 < B; b0 += cb) {
        const int64_t nb = std::min(cb, B - b0), rows = nb * n;
        const Tensor blk = blk_buf.narrow(0, 0, rows);  // (rows, W)
        for (int p = 0; p < 3 && p < (int)g.size(); ++p) {
          if (!g[p].defined()) continue;
          const Tensor gb = g[p].narrow(0, b0, nb);  // (nb, H, n, wd[p]) view
          scatter_heads<T>(gb.data_ptr<T>(), gb.strides(), blk.data_ptr<T>(), nb, n, W, H, wd[p], off[p]);
        }
        const T* xb = xv.defined() ? xv.data_ptr<T>() + b0 * n * D : nullptr;
        if (needs_grad(1)) {
          Tensor in = xv.narrow(0, b0, nb).view({rows, D});
          if (normed) {
            in = z_buf.narrow(0, 0, rows);
            detail::layer_norm_rows<T>(xb, lw.defined() ? lw.data_ptr<T>() : nullptr, lb.defined() ? lb.data_ptr<T>() : nullptr,
                                       in.data_ptr<T>(), nullptr, nullptr, rows, D, eps);
          }
          dw = detail::batched_gemm(blk.t(), in, {}, dw);  // += blkᵀ . z
        }
        if (!db.empty()) {
          const Tensor s = sum_to(blk, {W});
          const T* sp = s.data_ptr<T>();
          for (int64_t j = 0; j < W; ++j) db[(size_t)j] += (double)sp[j];
        }
        if (!need_dz) continue;
        const Tensor g_in = detail::batched_gemm(blk, wv, {});  // (rows, D): gradient of the linear's input
        if (!normed) {
          dx.narrow(0, b0, nb).copy_(g_in.view({nb, n, D}));
          continue;
        }
        detail::layer_norm_rows_backward<T>(xb, g_in.data_ptr<T>(), mv.data_ptr<T>() + b0 * n, rv.data_ptr<T>() + b0 * n,
                                            lw.defined() ? lw.data_ptr<T>() : nullptr,
                                            dx.defined() ? dx.data_ptr<T>() + b0 * n * D : nullptr,
                                            dlw.empty() ? nullptr : dlw.data(), dlb.empty() ? nullptr : dlb.data(), rows, D);
      }
    });
    Tensor dbias = db.empty() ? Tensor() : Tensor::from_vector(db, {W}).to(dt);
    Tensor dln_w = dlw.empty() ? Tensor() : Tensor::from_vector(dlw, {D}).to(dt);
    Tensor dln_b = dlb.empty() ? Tensor() : Tensor::from_vector(dlb, {D}).to(dt);
    return {dx, dw, dbias, dln_w, dln_b};
  }
  void release() override { x.reset(); w.reset(); lnw.reset(); lnb.reset(); mean.reset(); rstd.reset(); }
};
}  // namespace

std::array<Tensor, 3> linear_heads(const Tensor& x_in, const Tensor& weight, const Tensor& bias, int64_t H,
                                   const std::array<int64_t, 3>& widths, const PreNorm* norm) {
  const char* op = "linear_heads";
  if (!x_in.defined() || !weight.defined()) throw ShapeError("linear_heads: undefined tensor");
  const int64_t Wsum = widths[0] + widths[1] + widths[2];
  if (x_in.dim() != 3 || weight.dim() != 2 || weight.size(1) != x_in.size(2) || H <= 0 || widths[0] <= 0 ||
      widths[1] <= 0 || widths[2] <= 0 || weight.size(0) != H * Wsum || (bias.defined() && bias.shape() != Shape{weight.size(0)}))
    throw_shape(op,
                "expects x (B, n, D), weight (heads*(w0+w1+w2), D), bias (heads*(w0+w1+w2)) with heads = " +
                    std::to_string(H) + ", widths (" + std::to_string(widths[0]) + ", " + std::to_string(widths[1]) +
                    ", " + std::to_string(widths[2]) + ")",
                {{"x", &x_in}, {"weight", &weight}, {"bias", &bias}});
  if (!is_floating(x_in.dtype()) || weight.dtype() != x_in.dtype() || (bias.defined() && bias.dtype() != x_in.dtype()))
    throw_dtype(op, "expects floating tensors of one dtype", {{"x", &x_in}, {"weight", &weight}, {"bias", &bias}});
  const Tensor lnw = norm ? norm->weight : Tensor(), lnb = norm ? norm->bias : Tensor();
  for (auto [t, nm] : {std::pair{&lnw, "norm weight"}, std::pair{&lnb, "norm bias"}})
    if (t->defined() && (t->shape() != Shape{x_in.size(2)} || t->dtype() != x_in.dtype()))
      throw_shape(op, std::string(nm) + " must be (D) of x's dtype", {{"x", &x_in}, {nm, t}});
  const Tensor x = x_in.detach().contiguous(), wd = weight.detach(), bd = bias.defined() ? bias.detach() : Tensor();
  const Tensor lw = lnw.defined() ? lnw.detach().contiguous() : Tensor(), lb = lnb.defined() ? lnb.detach().contiguous() : Tensor();
  const int64_t B = x.size(0), n = x.size(1), D = x.size(2), W = weight.size(0);
  const std::array<int64_t, 3> off = part_offsets(H, widths);
  std::array<Tensor, 3> out;
  for (int p = 0; p < 3; ++p) out[p] = make_tensor_uninit({B, H, n, widths[p]}, x.dtype());
  const int64_t cb = chunk_seqs(n);
  Tensor mean, rstd, z;
  if (norm) {
    mean = make_tensor_uninit({B, n}, x.dtype());
    rstd = make_tensor_uninit({B, n}, x.dtype());
    z = make_tensor_uninit({cb * n, D}, x.dtype());
  }
  {
    NoGradGuard ng;
    dispatch_float(x.dtype(), op, [&]<class T>() {
      for (int64_t b0 = 0; b0 < B; b0 += cb) {
        const int64_t nb = std::min(cb, B - b0), rows = nb * n;
        Tensor in = x.narrow(0, b0, nb).view({rows, D});
        if (norm) {
          in = z.narrow(0, 0, rows);
          detail::layer_norm_rows<T>(x.data_ptr<T>() + b0 * n * D, lw.defined() ? lw.data_ptr<T>() : nullptr,
                                     lb.defined() ? lb.data_ptr<T>() : nullptr, in.data_ptr<T>(), mean.data_ptr<T>() + b0 * n,
                                     rstd.data_ptr<T>() + b0 * n, rows, D, norm->eps);
        }
        const Tensor blk = linear(in, wd, bd);  // (rows, W), contiguous
        for (int p = 0; p < 3; ++p)
          gather_heads<T>(blk.data_ptr<T>(), out[p].data_ptr<T>() + b0 * H * n * widths[p], nb, n, W, H, widths[p], off[p]);
      }
    });
  }
  if (auto node = make_node<LinearHeadsBackward>({x_in, weight, bias, lnw, lnb})) {
    node->B = B;
    node->n = n;
    node->H = H;
    node->wd = widths;
    node->D = D;
    node->has_bias = bias.defined();
    node->normed = norm != nullptr;
    node->eps = norm ? norm->eps : 1e-5;
    const bool need_x = node->needs_grad(0) || node->needs_grad(1) || (norm && (node->needs_grad(3) || node->needs_grad(4)));
    if (need_x) node->x = save(x);
    if (node->needs_grad(0) || node->needs_grad(3) || node->needs_grad(4)) node->w = save(weight);
    if (norm) {
      node->mean = save(mean);
      node->rstd = save(rstd);
      if (lnw.defined()) node->lnw = save(lnw);
      if (lnb.defined()) node->lnb = save(lnb);
    }
    for (uint32_t p = 0; p < 3; ++p) set_history(out[p], node, p);
  }
  return out;
}

std::array<Tensor, 3> linear_qkv_heads(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t H,
                                       const PreNorm* norm) {
  if (!x.defined() || !weight.defined()) throw ShapeError("linear_qkv_heads: undefined tensor");
  if (weight.dim() != 2 || H <= 0 || weight.size(0) % (3 * H) || weight.size(0) == 0)
    throw_shape("linear_qkv_heads", "expects weight (3*heads*dh, D) with heads = " + std::to_string(H),
                {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
  const int64_t dh = weight.size(0) / (3 * H);
  return linear_heads(x, weight, bias, H, {dh, dh, dh}, norm);
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
