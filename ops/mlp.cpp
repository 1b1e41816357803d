#include "mlp.h"

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"
#include "gelu_math.h"
#include "matmul.h"
#include "norm.h"

namespace lotgrad {

namespace {

struct Mask {  // the dropout mask as counters (see dropout.h)
  bool on = false;
  uint64_t seed = 0, base = 0;
  double scale = 1;
  uint64_t thr = 0;  // kept iff (bits >> 11) >= thr, i.e. uniform >= p
};

// The mask's factor (scale or 0) for elements [b, b + len) into f: its own loop over the
// 64-bit counters, so that both it and the float loop that uses it vectorise.
template <class T>
void mask_factors(const Mask& m, int64_t b, int64_t len, T* f) {
  const T s = (T)m.scale;
  const uint64_t sm = Generator::seed_mix(m.seed), base = m.base + (uint64_t)b;
  for (int64_t i = 0; i < len; ++i) f[i] = (Generator::bits_mixed(sm, base + (uint64_t)i) >> 11) >= m.thr ? s : T(0);
}
constexpr int64_t kMaskChunk = 1024;

// a = gelu(u) * mask * scale over contiguous data: (rows, hidden), row-major.
template <class T>
void gelu_dropout(const T* u, T* a, int64_t n, const Mask& m) {
  parallel_for(0, n, kParallelGrain / 4, [&](int64_t b, int64_t e) {
    if (!m.on) {
      for (int64_t i = b; i < e; ++i) a[i] = gelu_erf(u[i]);
      return;
    }
    T f[kMaskChunk];
    for (int64_t c = b; c < e; c += kMaskChunk) {
      const int64_t len = std::min(kMaskChunk, e - c);
      mask_factors(m, c, len, f);
      for (int64_t i = 0; i < len; ++i) a[c + i] = gelu_erf(u[c + i]) * f[i];
    }
  });
}
// The backward's elementwise pass over elements [off, off + n) of u, sharing Φ(u) and the
// mask between its two results: a = gelu(u) * mask * scale (if a; the forward's activation,
// recomputed for the second weight's gradient) and g <- g * mask * scale * gelu'(u) in place
// (if g). Pointers address element off.
template <class T>
void gelu_dropout_backward(const T* u, T* a, T* g, int64_t off, int64_t n, const Mask& m) {
  auto one = [&](int64_t i, T f) {
    const T x = u[i], cdf = normal_cdf(x);
    if (a) a[i] = x * cdf * f;
    if (g) g[i] = g[i] * f * (cdf + x * exp_t(T(-0.5) * x * x) * T(0.3989422804014327));
  };
  parallel_for(0, n, kParallelGrain / 4, [&](int64_t b, int64_t e) {
    if (!m.on) {
      for (int64_t i = b; i < e; ++i) one(i, T(1));
      return;
    }
    T f[kMaskChunk];
    for (int64_t c = b; c < e; c += kMaskChunk) {
      const int64_t len = std::min(kMaskChunk, e - c);
      mask_factors(m, off + c, len, f);
      for (int64_t i = 0; i < len; ++i) one(c + i, f[i]);
    }
  });
}
Tensor rows2(const Tensor& t) { return t.view({t.numel() / t.size(-1), t.size(-1)}); }
// (c, r) view of a 2-d tensor, no history.
Tensor t2(const Tensor& t) { return make_view(t, {t.size(1), t.size(0)}, {t.stride(1), t.stride(0)}, t.offset()); }

struct MlpGeluBackward : Node {
  SavedTensor x, u, w1, w2, lnw, lnb, mean, rstd;
  Mask mask;
  bool normed = false;
  double eps = 1e-5;
  // The first linear's input: x, or LayerNorm(x) recomputed (rows, in).
  Tensor input(const Tensor& x2) {
    if (!normed) return x2;
    Tensor z = make_tensor_uninit(x2.shape(), x2.dtype());
    const Tensor lw = lnw.defined() ? lnw.unpack(this).contiguous() : Tensor(), lb = lnb.defined() ? lnb.unpack(this).contiguous() : Tensor();
    dispatch_float(x2.dtype(), name(), [&]<class T>() {
      detail::layer_norm_rows<T>(x2.data_ptr<T>(), lw.defined() ? lw.data_ptr<T>() : nullptr, lb.defined() ? lb.data_ptr<T>() : nullptr,
                                 z.data_ptr<T>(), nullptr, nullptr, x2.size(0), x2.size(1), eps);
    });
    return z;
  }
  const char* name() const override { return "MlpGeluBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& grads) override {
    const Tensor gy = rows2(grads[0].contiguous());             // (R, out)
    const Tensor uv = u.unpack(this);                            // (R, hidden), contiguous
    const Tensor w2v = w2.unpack(this);
    Tensor gx, gw1, gb1, gw2, gb2, glw, glb;
    const bool need_gu = needs_grad(0) || needs_grad(1) || needs_grad(2) || needs_grad(5) || needs_grad(6);
    Tensor gu = need_gu ? detail::batched_gemm(gy, w2v, {}) : Tensor();  // (R, hidden)
    // One pass over u: gu scaled by the mask and gelu'(u) in place, and the activation
    // recomputed a block of rows at a time (a block stays in cache for its share of gw2 and
    // no second (R, hidden) array is held beside gu).
    const int64_t R = uv.size(0), hid = uv.size(1);
    const int64_t blk = needs_grad(3) ? std::max<int64_t>(1, ((int64_t)1 << 20) / std::max<int64_t>(hid, 1)) : R;
    Tensor a_buf = needs_grad(3) ? make_tensor_uninit({std::min(blk, R), hid}, uv.dtype()) : Tensor();
    for (int64_t r0 = 0; r0 < R && (a_buf.defined() || gu.defined()); r0 += blk) {
      const int64_t rows = std::min(blk, R - r0);
      dispatch_float(uv.dtype(), name(), [&]<class T>() {
        gelu_dropout_backward<T>(uv.data_ptr<T>() + r0 * hid, a_buf.defined() ? a_buf.data_ptr<T>() : nullptr,
                                 gu.defined() ? gu.data_ptr<T>() + r0 * hid : nullptr, r0 * hid, rows * hid, mask);
      });
      if (needs_grad(3)) gw2 = detail::batched_gemm(t2(gy.narrow(0, r0, rows)), a_buf.narrow(0, 0, rows), {}, gw2);  // += (out, hidden)
    }
    a_buf = Tensor();
    if (needs_grad(4)) gb2 = sum_to(gy, {gy.size(1)});
    if (need_gu) {
      const Tensor x2 = x.defined() ? rows2(x.unpack(this).contiguous()) : Tensor();  // (R, in)
      if (needs_grad(1)) gw1 = detail::batched_gemm(t2(gu), input(x2), {});  // (hidden, in)
      if (needs_grad(2)) gb1 = sum_to(gu, {gu.size(1)});
      const bool need_gz = needs_grad(0) || (normed && (needs_grad(5) || needs_grad(6)));
      if (need_gz) {
        Tensor gz = detail::batched_gemm(gu, w1.unpack(this), {});  // (R, in): gradient of the first linear's input
        if (!normed) {
          gx = gz.view(next[0].shape);
        } else {
          const int64_t R = gz.size(0), in = gz.size(1);
          std::vector<double> sw(needs_grad(5) ? (size_t)in : 0, 0.0), sb(needs_grad(6) ? (size_t)in : 0, 0.0);
          if (needs_grad(0)) gx = make_tensor_uninit(x2.shape(), gz.dtype());
          const Tensor lw = lnw.defined() ? lnw.unpack(this).contiguous() : Tensor();
          const Tensor mv = mean.unpack(this), rv = rstd.unpack(this);
          dispatch_float(gz.dtype(), name(), [&]<class T>() {
            detail::layer_norm_rows_backward<T>(x2.data_ptr<T>(), gz.data_ptr<T>(), mv.data_ptr<T>(), rv.data_ptr<T>(),
                                                lw.defined() ? lw.data_ptr<T>() : nullptr, gx.defined() ? gx.data_ptr<T>() : nullptr,
                                                sw.empty() ? nullptr : sw.data(), sb.empty() ? nullptr : sb.data(), R, in);
          });
          if (gx.defined()) gx = gx.view(next[0].shape);
          if (!sw.empty()) glw = Tensor::from_vector(sw, {in}).to(gz.dtype());
          if (!sb.empty()) glb = Tensor::from_vector(sb, {in}).to(gz.dtype());
        }
      }
    }
    return {gx, gw1, gb1, gw2, gb2, glw, glb};
  }
  void release() override { x.reset(); u.reset(); w1.reset(); w2.reset(); lnw.reset(); lnb.reset(); mean.reset(); rstd.reset(); }
};

}  // namespace

Tensor mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2, const Tensor& b2, double p,
                bool training, Generator& gen, const PreNorm* norm) {
  const char* op = "mlp_gelu";
  if (!x.defined() || !w1.defined() || !w2.defined()) throw ShapeError("mlp_gelu: undefined tensor");
#define LOTGRAD_MLP_OPERANDS {{"x", &x}, {"w1", &w1}, {"b1", &b1}, {"w2", &w2}, {"b2", &b2}}
  for (const Tensor* t : {&w1, &b1, &w2, &b2})
    if (t->defined() && t->dtype() != x.dtype()) throw_dtype(op, "every operand must share x's dtype", LOTGRAD_MLP_OPERANDS);
  if (!is_floating(x.dtype())) throw_dtype(op, "expects floating tensors (f32 or f64)", LOTGRAD_MLP_OPERANDS);
  const int64_t hidden = w1.dim() == 2 ? w1.size(0) : -1;
  if (x.dim() < 1 || w1.dim() != 2 || w2.dim() != 2 || x.size(-1) != w1.size(1) || w2.size(1) != hidden ||
      (b1.defined() && b1.shape() != Shape{hidden}) || (b2.defined() && b2.shape() != Shape{w2.size(0)}))
    throw_shape(op, "expects x (..., in), w1 (hidden, in), b1 (hidden), w2 (out, hidden), b2 (out)", LOTGRAD_MLP_OPERANDS);
#undef LOTGRAD_MLP_OPERANDS
  if (!(p >= 0.0 && p < 1.0)) throw std::invalid_argument("mlp_gelu: p must be in [0, 1), got " + std::to_string(p));
  const Tensor lnw = norm ? norm->weight : Tensor(), lnb = norm ? norm->bias : Tensor();
  for (const Tensor* t : {&lnw, &lnb})
    if (t->defined() && (t->shape() != Shape{x.size(-1)} || t->dtype() != x.dtype()))
      throw_shape(op, "the norm's weight and bias must be (in) of x's dtype", {{"x", &x}, {"norm parameter", t}});
  Mask m;
  Tensor u, a, mean, rstd, xs;
  {
    NoGradGuard ng;
    Tensor in = x.detach();
    if (norm) {  // z = LayerNorm(x), kept only until u is made
      xs = x.detach().contiguous();
      const int64_t R = xs.numel() / xs.size(-1), N = xs.size(-1);
      const Tensor lw = lnw.defined() ? lnw.detach().contiguous() : Tensor(), lb = lnb.defined() ? lnb.detach().contiguous() : Tensor();
      in = make_tensor_uninit(xs.shape(), xs.dtype());
      mean = make_tensor_uninit({R}, xs.dtype());
      rstd = make_tensor_uninit({R}, xs.dtype());
      dispatch_float(xs.dtype(), op, [&]<class T>() {
        detail::layer_norm_rows<T>(xs.data_ptr<T>(), lw.defined() ? lw.data_ptr<T>() : nullptr, lb.defined() ? lb.data_ptr<T>() : nullptr,
                                   in.data_ptr<T>(), mean.data_ptr<T>(), rstd.data_ptr<T>(), R, N, norm->eps);
      });
    }
    u = linear(in, w1.detach(), b1.defined() ? b1.detach() : Tensor()).contiguous();  // (..., hidden)
    if (training && p > 0) {
      m.on = true;
      m.seed = gen.seed();
      m.base = gen.reserve((uint64_t)u.numel());
      m.scale = 1.0 / (1.0 - p);
      m.thr = Generator::uniform_threshold(p);
    }
    a = make_tensor_uninit(u.shape(), u.dtype());
    dispatch_float(u.dtype(), op, [&]<class T>() { gelu_dropout<T>(u.data_ptr<T>(), a.data_ptr<T>(), a.numel(), m); });
  }
  Tensor y;
  {
    NoGradGuard ng;
    y = linear(a, w2.detach(), b2.defined() ? b2.detach() : Tensor());
  }
  a = Tensor();  // recomputed in the backward
  if (auto n = make_node<MlpGeluBackward>({x, w1, b1, w2, b2, lnw, lnb})) {
    n->mask = m;
    n->u = save(rows2(u));
    if (norm) {
      n->normed = true;
      n->eps = norm->eps;
      n->mean = save(mean);
      n->rstd = save(rstd);
      if (lnw.defined()) n->lnw = save(lnw);
      if (lnb.defined()) n->lnb = save(lnb);
      if (n->needs_grad(0) || n->needs_grad(1) || n->needs_grad(5) || n->needs_grad(6)) n->x = save(xs);
    } else if (n->needs_grad(1)) {
      n->x = save(x);
    }
    if (n->needs_grad(0) || n->needs_grad(5) || n->needs_grad(6)) n->w1 = save(w1);
    n->w2 = save(w2);
    set_history(y, n);
  }
  return y;
}

}  // namespace lotgrad
