#include "matmul.h"

#include <cblas.h>

#include <climits>
#include <optional>
#include <type_traits>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "matmul_kernel.h"

namespace lotgrad {

namespace {

thread_local int64_t g_gemm_calls = 0;

// How a strided (rows, cols) matrix is handed to row-major BLAS, if it can be.
struct Layout {
  bool ok = false;
  bool trans = false;
  int64_t ld = 0;
};
Layout blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  // Strides of size-1 dims are arbitrary: pick the ones that make the layout legal.
  {
    const int64_t c = cols == 1 ? 1 : cs, r = rows == 1 ? std::max<int64_t>(cols, 1) : rs;
    if (c == 1 && r >= std::max<int64_t>(cols, 1)) return {true, false, r};
  }
  {
    const int64_t r = rows == 1 ? 1 : rs, c = cols == 1 ? std::max<int64_t>(rows, 1) : cs;
    if (r == 1 && c >= std::max<int64_t>(rows, 1)) return {true, true, c};
  }
  return {};
}

// Stride of dims (sizes, strides) merged into one, or nullopt if they are not evenly
// strided. Size-1 dims are skipped.
std::optional<int64_t> merge_dims(const Shape& sizes, const Shape& strides) {
  std::optional<int64_t> inner;
  int64_t span = 1;  // elements covered by the dims merged so far
  for (int64_t d = (int64_t)sizes.size() - 1; d >= 0; --d) {
    if (sizes[d] == 1) continue;
    if (!inner) {
      inner = strides[d];
    } else if (strides[d] != *inner * span) {
      return std::nullopt;
    }
    span *= sizes[d];
  }
  return inner ? inner : std::optional<int64_t>(1);
}

void check_blas_int(int64_t v) {
  if (v > INT_MAX) throw ShapeError("matmul: dimension " + std::to_string(v) + " exceeds the BLAS integer range");
}

template <class T>
void gemm(const Layout& la, const Layout& lb, int64_t M, int64_t N, int64_t K, const T* A, const T* B, T beta, T* C,
          int64_t ldc) {
  for (int64_t v : {M, N, K, la.ld, lb.ld, ldc}) check_blas_int(v);
  ++g_gemm_calls;
  if constexpr (std::is_same_v<T, float>) {
    // Skinny products (tall activations x small weights, or weight gradients) go to the
    // direct kernel; see matmul_kernel.h for why it beats BLAS there.
    if (detail::small_gemm_applies(M, N, K) && (!lb.trans || K * N <= (int64_t)1 << 16)) {
      detail::small_sgemm(M, N, K, A, la.trans ? 1 : la.ld, la.trans ? la.ld : 1, B, lb.trans ? 1 : lb.ld, lb.trans ? lb.ld : 1, C,
                  ldc, beta != 0.0f, nullptr);
      return;
    }
  }
  const auto ta = la.trans ? CblasTrans : CblasNoTrans, tb = lb.trans ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, 1.0f, A, (int)la.ld, B, (int)lb.ld, beta, C, (int)ldc);
  else
    cblas_dgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, 1.0, A, (int)la.ld, B, (int)lb.ld, beta, C, (int)ldc);
}

// Shape without its last two dims.
Shape batch_of(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 2); }

// Strides of t's batch dims seen from the full batch shape S (0 where broadcast).
Shape batch_strides(const Shape& tb, const Shape& tstrides, const Shape& S) {
  Shape st(S.size(), 0);
  const size_t lead = S.size() - tb.size();
  for (size_t i = 0; i < tb.size(); ++i)
    if (tb[i] != 1) st[lead + i] = tstrides[i];
  return st;
}

// (…, r, c) -> (…, c, r) view without history.
Tensor mT(const Tensor& t) {
  Shape s = t.shape(), st = t.strides();
  std::swap(s[s.size() - 1], s[s.size() - 2]);
  std::swap(st[st.size() - 1], st[st.size() - 2]);
  return make_view(t, s, st, t.offset());
}

template <class T>
void batched_gemm_kernel(const Tensor& x, const Tensor& y, Tensor& out, const Shape& S_full, bool accumulate) {
  const int64_t n = x.size(-2), k = x.size(-1), m = y.size(-1);
  const Layout lx = blas_layout(n, k, x.stride(-2), x.stride(-1));
  const Layout ly = blas_layout(k, m, y.stride(-2), y.stride(-1));
  const Shape ob = batch_of(out);
  Shape sx = batch_strides(batch_of(x), x.strides(), S_full);
  Shape sy = batch_strides(batch_of(y), y.strides(), S_full);
  Shape so(S_full.size(), 0);
  {
    const Shape ost = out.strides();
    const size_t lead = S_full.size() - ob.size();
    for (size_t i = 0; i < ob.size(); ++i)
      if (ob[i] != 1) so[lead + i] = ost[i];
  }
  // Drop batch dims of size 1.
  Shape S, bx, by, bo;
  for (size_t d = 0; d < S_full.size(); ++d) {
    if (S_full[d] == 1) continue;
    S.push_back(S_full[d]);
    bx.push_back(sx[d]);
    by.push_back(sy[d]);
    bo.push_back(so[d]);
  }
  const int64_t nbatch = shape_numel(S);
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const T beta0 = accumulate ? T(1) : T(0);
  auto all_zero = [](const Shape& s) {
    for (auto v : s)
      if (v != 0) return false;
    return true;
  };
  auto with = [](Shape s, int64_t v) {
    s.push_back(v);
    return s;
  };

  // Fold 1: y shared by every batch entry, x's and out's (batch.., n) rows evenly strided.
  // Not for very narrow outputs: OpenBLAS 0.3.21 threads a tall (rows, k) x (k, m < 16)
  // GEMM poorly (2 threads: (131072, 32) x (32, 4) took 7-20 ms folded against 1.5 ms as 64
  // calls of 2048 rows, which it runs single-threaded).
  constexpr int64_t kMinFoldCols = 16;
  if (nbatch > 1 && all_zero(by) && m >= kMinFoldCols) {
    auto mx = merge_dims(with(S, n), with(bx, x.stride(-2)));
    auto mo = merge_dims(with(S, n), with(bo, m));
    if (mx && mo) {
      const Layout fx = blas_layout(nbatch * n, k, *mx, x.stride(-1));
      if (fx.ok && !fx.trans) {
        gemm<T>(fx, ly, nbatch * n, m, k, xp, yp, beta0, op, *mo);
        return;
      }
    }
  }
  // Fold 2: out reduced over every batch dim: sum_b x_b . y_b is one GEMM over the
  // inner dim (batch.., k) when both operands stride evenly along it.
  if (nbatch > 1 && all_zero(bo)) {
    auto mx = merge_dims(with(S, k), with(bx, x.stride(-1)));
    auto my = merge_dims(with(S, k), with(by, y.stride(-2)));
    if (mx && my) {
      const Layout fx = blas_layout(n, nbatch * k, x.stride(-2), *mx);
      const Layout fy = blas_layout(nbatch * k, m, *my, y.stride(-1));
      if (fx.ok && fy.ok) {
        gemm<T>(fx, fy, n, m, nbatch * k, xp, yp, beta0, op, m);
        return;
      }
    }
  }
  // General: one GEMM per batch entry, serial (BLAS threads each call). Reduced output
  // blocks are overwritten on their first visit and accumulated after, in a fixed order.
  const bool reduced = shape_numel(ob) < nbatch;
  std::vector<char> visited(reduced ? (size_t)shape_numel(ob) : 0, 0);
  const int64_t nd = (int64_t)S.size();
  Shape idx(nd, 0);
  int64_t ox = 0, oy = 0, oo = 0;
  for (int64_t b = 0; b < nbatch; ++b) {
    T beta = beta0;
    if (reduced) {
      char& v = visited[(size_t)(oo / (n * m))];
      if (v) beta = T(1);
      v = 1;
    }
    gemm<T>(lx, ly, n, m, k, xp + ox, yp + oy, beta, op + oo, m);
    for (int64_t d = nd - 1; d >= 0; --d) {
      ox += bx[d];
      oy += by[d];
      oo += bo[d];
      if (++idx[d] < S[d]) break;
      ox -= bx[d] * S[d];
      oy -= by[d] * S[d];
      oo -= bo[d] * S[d];
      idx[d] = 0;
    }
  }
}

void check_float_pair(const char* op, const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) throw ShapeError(std::string(op) + ": undefined tensor");
  if (!is_floating(a.dtype()) || !is_floating(b.dtype()))
    throw_dtype(op, "expects floating tensors (f32 or f64)", {{"a", &a}, {"b", &b}});
  if (a.dtype() != b.dtype()) throw_dtype(op, "operands must share a dtype (no implicit promotion)", {{"a", &a}, {"b", &b}});
}

// ---- autograd -----------------------------------------------------------------------
// Inserts a size-1 dim at pos (a view without history; also works on 0-d tensors).
Tensor with_unit_dim(const Tensor& t, int64_t pos) {
  Shape s = t.shape(), st = t.strides();
  s.insert(s.begin() + pos, 1);
  st.insert(st.begin() + pos, 1);
  return make_view(t, s, st, t.offset());
}
// Removes the size-1 dim at pos (a view without history).
Tensor without_unit_dim(const Tensor& t, int64_t pos) {
  Shape s = t.shape(), st = t.strides();
  s.erase(s.begin() + pos);
  st.erase(st.begin() + pos);
  return make_view(t, s, st, t.offset());
}
// torch.matmul's promotion of 1-d operands: a (k) -> (1, k), b (k) -> (k, 1).
Tensor promote_a(const Tensor& a) { return a.dim() == 1 ? with_unit_dim(a, 0) : a; }
Tensor promote_b(const Tensor& b) { return b.dim() == 1 ? with_unit_dim(b, 1) : b; }

// C = A . B with A (Sa.., n, k), B (Sb.., k, m): dA = dC . Bᵀ, dB = Aᵀ . dC, each
// computed straight into its input's batch shape (broadcast batch dims summed by the GEMM
// engine, so no broadcast-shaped temporary). 1-d operands are promoted here rather than
// through recorded views, so the whole product is one node.
// Whether t's last two dims are stored column-major (a transposed view, such as kᵀ in q·kᵀ).
bool col_major(const Tensor& t) {
  return t.dim() >= 2 && t.size(-1) > 1 && t.size(-2) > 1 && t.stride(-2) == 1 && t.stride(-1) >= t.size(-2);
}

struct MatmulBackward : Node {
  SavedTensor a, b;
  bool a1 = false, b1 = false;  // operand was 1-d
  // A column-major operand gets its gradient in its own layout ((gᵀ·a)ᵀ rather than aᵀ·g), so
  // the transpose that made it hands a contiguous gradient on (no strided copy downstream).
  bool a_cm = false, b_cm = false;
  const char* name() const override { return "MatmulBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor go = g[0];  // the output's shape: restore the (.., n, m) form
    if (b1) go = with_unit_dim(go, go.dim());
    if (a1) go = with_unit_dim(go, go.dim() - 1);
    Tensor ga, gb;
    if (needs_grad(0)) {
      const Tensor bv = promote_b(b.unpack(this));
      const Shape& as = next[0].shape;
      const Shape batch = a1 ? Shape{} : Shape(as.begin(), as.end() - 2);
      ga = a_cm ? mT(detail::batched_gemm(bv, mT(go), batch)) : detail::batched_gemm(go, mT(bv), batch);
      if (a1) ga = without_unit_dim(ga, 0);
    }
    if (needs_grad(1)) {
      const Tensor av = promote_a(a.unpack(this));
      const Shape& bs = next[1].shape;
      const Shape batch = b1 ? Shape{} : Shape(bs.begin(), bs.end() - 2);
      gb = b_cm ? mT(detail::batched_gemm(mT(go), av, batch)) : detail::batched_gemm(mT(av), go, batch);
      if (b1) gb = without_unit_dim(gb, 1);
    }
    return {ga, gb};
  }
  void release() override { a.reset(); b.reset(); }
};

// a, b validated (at least 1-d, inner dims match, batch dims broadcast to S).
Tensor matmul_impl(const Tensor& a, const Tensor& b, const Shape& S) {
  const bool a1 = a.dim() == 1, b1 = b.dim() == 1;
  Tensor out = detail::batched_gemm(promote_a(a.detach()), promote_b(b.detach()), S);
  if (b1) out = without_unit_dim(out, out.dim() - 1);
  if (a1) out = without_unit_dim(out, out.dim() - 1 - (b1 ? 0 : 1));
  if (auto n = make_node<MatmulBackward>({a, b})) {
    n->a1 = a1;
    n->b1 = b1;
    n->a_cm = !a1 && col_major(a);
    n->b_cm = !b1 && col_major(b);
    if (n->needs_grad(1)) n->a = save(a);
    if (n->needs_grad(0)) n->b = save(b);
    set_history(out, n);
  }
  return out;
}

// y = x . Wᵀ + bias with x (.., n, in), W (out, in).
struct LinearBackward : Node {
  SavedTensor x, w;
  bool x_is_1d = false;
  const char* name() const override { return "LinearBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor go = x_is_1d ? with_unit_dim(g[0], 0) : g[0];  // (.., n, out)
    Tensor gx, gw, gb;
    if (needs_grad(0)) {
      Tensor wv = w.unpack(this);
      gx = detail::batched_gemm(go, wv, batch_of(go));  // (.., n, out) . (out, in)
      if (x_is_1d) gx = without_unit_dim(gx, 0);
    }
    if (needs_grad(1)) {
      Tensor xv = x.unpack(this);
      if (x_is_1d) xv = with_unit_dim(xv, 0);
      gw = detail::batched_gemm(mT(go), xv, Shape{});  // sum over rows of goᵀ . x -> (out, in)
    }
    if (needs_grad(2)) gb = g[0];  // the engine sums it to (out)
    return {gx, gw, gb};
  }
  void release() override { x.reset(); w.reset(); }
};

// linear as one direct-kernel call (f32, skinny): x's rows folded into (rows, in) and the
// bias added as C is written, so the output is written once and never read back.
// Undefined when the shape or layout is not one the kernel takes.
Tensor linear_direct(const Tensor& x, const Tensor& w, const Tensor& bias) {
  if (x.dtype() != DType::f32 || x.dim() < 1) return {};
  const int64_t in = x.size(-1), out_f = w.size(0);
  const Shape xs = x.shape(), xst = x.strides();
  const Shape lead(xs.begin(), xs.end() - 1), lead_st(xst.begin(), xst.end() - 1);
  const int64_t rows = shape_numel(lead);
  if (!detail::small_gemm_applies(rows, out_f, in) || in * out_f > (int64_t)1 << 16) return {};
  const auto rs = merge_dims(lead, lead_st);
  if (!rs) return {};
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  Shape os = xs;
  os.back() = out_f;
  Tensor out = make_tensor_uninit(os, DType::f32);
  ++g_gemm_calls;
  detail::small_sgemm(rows, out_f, in, x.data_ptr<float>(), *rs, x.stride(-1), w.data_ptr<float>(), w.stride(1), w.stride(0),
              out.data_ptr<float>(), out_f, false, bc.defined() ? bc.data_ptr<float>() : nullptr);
  return out;
}

}  // namespace

namespace detail {
int64_t gemm_call_count() { return g_gemm_calls; }

Tensor batched_gemm(const Tensor& x_in, const Tensor& y_in, const Shape& out_batch, const Tensor& init) {
  Tensor x = x_in.detach(), y = y_in.detach();
  const int64_t n = x.size(-2), k = x.size(-1), m = y.size(-1);
  const Shape S = broadcast_shapes(batch_of(x), batch_of(y), "matmul", &x_in, &y_in);
  if (out_batch.size() > S.size())
    throw ShapeError("batched_gemm: output batch " + shape_str(out_batch) + " has more dims than " + shape_str(S));
  for (size_t i = 0; i < out_batch.size(); ++i) {
    const int64_t s = S[S.size() - out_batch.size() + i];
    if (out_batch[i] != s && out_batch[i] != 1)
      throw ShapeError("batched_gemm: output batch " + shape_str(out_batch) + " is not a reduction of " + shape_str(S));
  }
  Shape oshape = out_batch;
  oshape.push_back(n);
  oshape.push_back(m);
  // Every output block gets at least one GEMM with beta 0 when k > 0: no zero fill needed.
  Tensor out = (k > 0 && shape_numel(S) > 0 && !init.defined()) ? make_tensor_uninit(oshape, x.dtype())
                                                                 : make_tensor(oshape, x.dtype());
  if (init.defined()) out.copy_(init.detach());
  if (out.numel() == 0 || k == 0 || shape_numel(S) == 0) return out;
  // Operands BLAS cannot read as they are (stride 0, no unit stride) are copied once.
  if (!blas_layout(n, k, x.stride(-2), x.stride(-1)).ok) x = x.contiguous();
  if (!blas_layout(k, m, y.stride(-2), y.stride(-1)).ok) y = y.contiguous();
  dispatch_float(x.dtype(), "matmul", [&]<class T>() { batched_gemm_kernel<T>(x, y, out, S, init.defined()); });
  return out;
}
}  // namespace detail

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_float_pair("matmul", a, b);
  if (a.dim() == 0 || b.dim() == 0) throw_shape("matmul", "both operands must be at least 1-d", {{"a", &a}, {"b", &b}});
  const int64_t ka = a.size(-1), kb = b.dim() == 1 ? b.size(0) : b.size(-2);
  if (ka != kb)
    throw_shape("matmul", "inner dimensions must match (" + std::to_string(ka) + " vs " + std::to_string(kb) + ")",
                {{"a", &a}, {"b", &b}});
  const Shape ab = a.dim() == 1 ? Shape{} : batch_of(a), bb = b.dim() == 1 ? Shape{} : batch_of(b);
  Shape S;
  try {
    S = broadcast_shapes(ab, bb, "matmul");
  } catch (const ShapeError&) {
    throw_shape("matmul", "batch dimensions " + shape_str(ab) + " and " + shape_str(bb) + " do not broadcast",
                {{"a", &a}, {"b", &b}});
  }
  return matmul_impl(a, b, S);
}

Tensor mm(const Tensor& a, const Tensor& b) {
  check_float_pair("mm", a, b);
  if (a.dim() != 2 || b.dim() != 2) throw_shape("mm", "expects 2-d operands", {{"a", &a}, {"b", &b}});
  if (a.size(1) != b.size(0))
    throw_shape("mm", "inner dimensions must match (" + std::to_string(a.size(1)) + " vs " + std::to_string(b.size(0)) + ")",
                {{"a", &a}, {"b", &b}});
  return matmul_impl(a, b, {});
}

Tensor bmm(const Tensor& a, const Tensor& b) {
  check_float_pair("bmm", a, b);
  if (a.dim() != 3 || b.dim() != 3) throw_shape("bmm", "expects 3-d operands (B, n, k) and (B, k, m)", {{"a", &a}, {"b", &b}});
  if (a.size(0) != b.size(0))
    throw_shape("bmm", "batch sizes must match (" + std::to_string(a.size(0)) + " vs " + std::to_string(b.size(0)) + ")",
                {{"a", &a}, {"b", &b}});
  if (a.size(2) != b.size(1))
    throw_shape("bmm", "inner dimensions must match (" + std::to_string(a.size(2)) + " vs " + std::to_string(b.size(1)) + ")",
                {{"a", &a}, {"b", &b}});
  return matmul_impl(a, b, {a.size(0)});
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_float_pair("linear", x, weight);
  if (weight.dim() != 2) throw_shape("linear", "weight must be 2-d (out_features, in_features)", {{"x", &x}, {"weight", &weight}});
  if (x.dim() == 0) throw_shape("linear", "input must be at least 1-d", {{"x", &x}, {"weight", &weight}});
  if (x.size(-1) != weight.size(1))
    throw_shape("linear",
                "input features must match weight's in_features (" + std::to_string(x.size(-1)) + " vs " +
                    std::to_string(weight.size(1)) + ")",
                {{"x", &x}, {"weight", &weight}});
  if (bias.defined()) {
    if (bias.dtype() != x.dtype()) throw_dtype("linear", "bias must share the input's dtype", {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
    if (bias.dim() != 1 || bias.size(0) != weight.size(0))
      throw_shape("linear", "bias must be 1-d of size out_features (" + std::to_string(weight.size(0)) + ")",
                  {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
  }
  const bool x1 = x.dim() == 1;
  Tensor xv = x1 ? with_unit_dim(x.detach(), 0) : x.detach();
  Tensor out = linear_direct(xv, weight.detach(), bias.defined() ? bias.detach() : Tensor());
  if (!out.defined()) out = detail::batched_gemm(xv, mT(weight.detach()), batch_of(xv), bias);
  if (x1) out = without_unit_dim(out, 0);
  if (auto n = make_node<LinearBackward>({x, weight, bias})) {
    n->x_is_1d = x1;
    if (n->needs_grad(1)) n->x = save(x);
    if (n->needs_grad(0)) n->w = save(weight);
    set_history(out, n);
  }
  return out;
}

}  // namespace lotgrad
