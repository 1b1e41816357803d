#include "shape.h"

#include <cstring>

#include "../core/autograd.h"
#include "../core/iter.h"
#include "../core/parallel.h"

namespace lotgrad {

namespace {
// "tensors[0] (2, 3) f32, tensors[1] (2, 4) f32": every operand, for error messages.
std::string list_operands(const std::vector<Tensor>& ts) {
  std::string m;
  for (size_t i = 0; i < ts.size(); ++i)
    m += (i ? ", " : "") + std::string("tensors[") + std::to_string(i) + "] " + describe(ts[i]);
  return m;
}
[[noreturn]] void throw_list(const char* op, const std::string& rule, const std::vector<Tensor>& ts,
                             bool dtype = false) {
  const std::string m = std::string(op) + ": " + rule + "; operands: " + list_operands(ts);
  if (dtype) throw DTypeError(m);
  throw ShapeError(m);
}
void check_defined(const Tensor& t, const char* op, const char* what) {
  if (!t.defined()) throw ShapeError(std::string(op) + ": " + what + " is an undefined tensor");
}
int64_t prod(const Shape& s, size_t b, size_t e) {
  int64_t p = 1;
  for (size_t i = b; i < e; ++i) p *= s[i];
  return p;
}
void check_index_tensor(const Tensor& index, const char* op, const Tensor& x) {
  check_defined(index, op, "index");
  if (index.dtype() != kInt64) throw_dtype(op, "index must be int64", {{"self", &x}, {"index", &index}});
}

// ---- cat ------------------------------------------------------------------------------
struct CatBackward : Node {
  int64_t dim = 0;
  std::vector<int64_t> sizes;
  const char* name() const override { return "CatBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    std::vector<Tensor> out(sizes.size());
    int64_t off = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (needs_grad(i)) out[i] = g[0].narrow(dim, off, sizes[i]);
      off += sizes[i];
    }
    return out;
  }
};
}  // namespace

Tensor cat(const std::vector<Tensor>& ts, int64_t dim) {
  if (ts.empty()) throw ShapeError("cat: expected a non-empty list of tensors");
  for (size_t i = 0; i < ts.size(); ++i)
    if (!ts[i].defined()) throw ShapeError("cat: tensors[" + std::to_string(i) + "] is undefined");
  const Tensor& t0 = ts[0];
  for (const auto& t : ts)
    if (t.dtype() != t0.dtype()) throw_list("cat", "all tensors must share a dtype", ts, true);
  for (const auto& t : ts) {
    if (t.dim() == 0) throw_list("cat", "zero-dimensional tensors cannot be concatenated (use stack)", ts);
    if (t.dim() != t0.dim()) throw_list("cat", "all tensors must have the same rank", ts);
  }
  const int64_t r = t0.dim();
  if (dim < -r || dim >= r)
    throw_list("cat", "dim " + std::to_string(dim) + " out of range for rank " + std::to_string(r), ts);
  if (dim < 0) dim += r;
  Shape os = t0.shape();
  os[dim] = 0;
  for (const auto& t : ts) {
    for (int64_t d = 0; d < r; ++d)
      if (d != dim && t.shape()[d] != t0.shape()[d])
        throw_list("cat", "sizes must match except in dim " + std::to_string(dim) + " (dim " + std::to_string(d) +
                              ": " + std::to_string(t0.shape()[d]) + " vs " + std::to_string(t.shape()[d]) + ")",
                   ts);
    os[dim] += t.shape()[dim];
  }
  Tensor out = make_tensor(os, t0.dtype());
  std::vector<int64_t> sizes;
  int64_t off = 0;
  for (const auto& t : ts) {
    const int64_t n = t.shape()[dim];
    if (n > 0) make_view(out, out.shape(), out.strides(), 0).narrow(dim, off, n).copy_(t);
    sizes.push_back(n);
    off += n;
  }
  if (auto node = make_node<CatBackward>(ts)) {
    node->dim = dim;
    node->sizes = std::move(sizes);
    set_history(out, node);
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& ts, int64_t dim) {
  if (ts.empty()) throw ShapeError("stack: expected a non-empty list of tensors");
  for (size_t i = 0; i < ts.size(); ++i)
    if (!ts[i].defined()) throw ShapeError("stack: tensors[" + std::to_string(i) + "] is undefined");
  for (const auto& t : ts) {
    if (t.dtype() != ts[0].dtype()) throw_list("stack", "all tensors must share a dtype", ts, true);
    if (t.shape() != ts[0].shape()) throw_list("stack", "all tensors must have the same shape", ts);
  }
  const int64_t r = ts[0].dim() + 1;
  if (dim < -r || dim >= r)
    throw_list("stack", "dim " + std::to_string(dim) + " out of range for a new rank of " + std::to_string(r), ts);
  if (dim < 0) dim += r;
  std::vector<Tensor> us;
  us.reserve(ts.size());
  // 0-d inputs: expand (the core view() cannot unsqueeze a 0-d tensor yet).
  for (const auto& t : ts) us.push_back(t.dim() == 0 ? t.expand({1}) : t.unsqueeze(dim));
  return cat(us, dim);
}

// ---- split (views) --------------------------------------------------------------------
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  check_defined(x, "split", "x");
  if (x.dim() == 0) throw_shape("split", "cannot split a 0-d tensor", {{"x", &x}});
  dim = wrap_dim(dim, x.dim(), "split", &x);
  const int64_t n = x.shape()[dim];
  if (split_size <= 0 && n > 0)
    throw_shape("split", "split_size must be positive, got " + std::to_string(split_size), {{"x", &x}});
  std::vector<Tensor> out;
  if (n == 0) {
    out.push_back(x.narrow(dim, 0, 0));
    return out;
  }
  for (int64_t s = 0; s < n; s += split_size) out.push_back(x.narrow(dim, s, std::min(split_size, n - s)));
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  check_defined(x, "split", "x");
  if (x.dim() == 0) throw_shape("split", "cannot split a 0-d tensor", {{"x", &x}});
  dim = wrap_dim(dim, x.dim(), "split", &x);
  std::string list = shape_str(sizes);
  int64_t total = 0;
  for (auto s : sizes) {
    if (s < 0) throw_shape("split", "sizes " + list + " contain a negative size", {{"x", &x}});
    total += s;
  }
  if (total != x.shape()[dim])
    throw_shape("split", "sizes " + list + " sum to " + std::to_string(total) + " but dim " + std::to_string(dim) +
                             " has size " + std::to_string(x.shape()[dim]), {{"x", &x}});
  std::vector<Tensor> out;
  int64_t off = 0;
  for (auto s : sizes) {
    out.push_back(x.narrow(dim, off, s));
    off += s;
  }
  return out;
}

// ---- index_select -----------------------------------------------------------------------
namespace {
// gx (outer, n, inner) += g (outer, m, inner) at rows idx[j]. Work is split over
// (outer, inner) positions; each position sums its rows in j order: race-free and
// independent of the thread count.
template <class T>
void index_add_kernel(T* gx, const T* g, const int64_t* idx, int64_t outer, int64_t n, int64_t m, int64_t inner) {
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(m, 1));
  parallel_for(0, outer * inner, grain, [&](int64_t b, int64_t e) {
    int64_t pos = b;
    while (pos < e) {
      const int64_t o = pos / inner, i0 = pos % inner;
      const int64_t i1 = std::min(inner, i0 + (e - pos));
      for (int64_t j = 0; j < m; ++j) {
        T* dst = gx + (o * n + idx[j]) * inner;
        const T* src = g + (o * m + j) * inner;
        for (int64_t i = i0; i < i1; ++i) dst[i] += src[i];
      }
      pos += i1 - i0;
    }
  });
}

struct IndexSelectBackward : Node {
  SavedTensor index;
  Shape x_shape;
  int64_t dim = 0;
  const char* name() const override { return "IndexSelectBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor idx = index.unpack(this).contiguous();
    Tensor gc = g[0].contiguous();
    Tensor gx = Tensor::zeros(x_shape, gc.dtype());
    const int64_t outer = prod(x_shape, 0, dim), inner = prod(x_shape, dim + 1, x_shape.size());
    dispatch_float(gc.dtype(), name(), [&]<class T>() {
      index_add_kernel<T>(gx.data_ptr<T>(), gc.data_ptr<T>(), idx.data_ptr<int64_t>(), outer, x_shape[dim],
                          idx.numel(), inner);
    });
    return {gx, Tensor()};
  }
  void release() override { index.reset(); }
};
}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  check_defined(x, "index_select", "x");
  check_index_tensor(index, "index_select", x);
  if (index.dim() > 1) throw_shape("index_select", "index must be 1-d", {{"self", &x}, {"index", &index}});
  if (x.dim() == 0) throw_shape("index_select", "self must have at least one dim", {{"self", &x}, {"index", &index}});
  const int64_t r = x.dim();
  dim = wrap_dim(dim, r, "index_select", &x);
  const Shape& xs = x.shape();
  const int64_t n = xs[dim], m = index.numel();
  Tensor idx = index.contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t j = 0; j < m; ++j)
    if (ip[j] < 0 || ip[j] >= n)
      throw_shape("index_select", "index[" + std::to_string(j) + "] = " + std::to_string(ip[j]) +
                                      " out of range for dim " + std::to_string(dim) + " of size " + std::to_string(n),
                  {{"self", &x}, {"index", &index}});
  Shape os = xs;
  os[dim] = m;
  Tensor xc = x.contiguous();
  Tensor out = make_tensor(os, x.dtype());
  const int64_t outer = prod(xs, 0, dim), inner = prod(xs, dim + 1, r);
  const size_t es = dtype_size(x.dtype()), row = (size_t)inner * es;
  const char* src = static_cast<const char*>(xc.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(inner, 1));
  parallel_for(0, outer * m, grain, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const int64_t o = q / m, j = q % m;
      std::memcpy(dst + (size_t)q * row, src + (size_t)(o * n + ip[j]) * row, row);
    }
  });
  if (auto node = make_node<IndexSelectBackward>({x, Tensor()})) {
    node->index = save(idx);
    node->x_shape = xs;
    node->dim = dim;
    set_history(out, node);
  }
  return out;
}

// ---- gather / scatter_add ---------------------------------------------------------------
namespace {
// Positions of index over every dim but `dim`, mapped to element offsets of three operands.
// Each position's elements along dim are handled by one thread in order.
struct DimWalk {
  Shape sz;                    // index's shape
  int64_t dim = 0;
  Shape st[3];                 // strides of the operands
  int64_t positions() const {
    int64_t p = 1;
    for (size_t d = 0; d < sz.size(); ++d)
      if ((int64_t)d != dim) p *= sz[d];
    return p;
  }
  void offsets(int64_t p, int64_t off[3]) const {
    off[0] = off[1] = off[2] = 0;
    for (int64_t d = (int64_t)sz.size() - 1; d >= 0; --d) {
      if (d == dim) continue;
      const int64_t c = p % sz[d];
      p /= sz[d];
      for (int k = 0; k < 3; ++k) off[k] += c * st[k][d];
    }
  }
};

void check_gather_shapes(const char* op, const Tensor& x, int64_t dim, const Tensor& index, const Tensor* src) {
  auto fail = [&](const std::string& rule) {
    if (src) throw_shape(op, rule, {{"self", &x}, {"index", &index}, {"src", src}});
    throw_shape(op, rule, {{"self", &x}, {"index", &index}});
  };
  if (index.dim() != x.dim()) fail("index must have the same rank as self");
  for (int64_t d = 0; d < x.dim(); ++d)
    if (d != dim && index.shape()[d] > x.shape()[d])
      fail("index.size(" + std::to_string(d) + ") = " + std::to_string(index.shape()[d]) + " exceeds self.size(" +
           std::to_string(d) + ") = " + std::to_string(x.shape()[d]));
  if (src && src->shape() != index.shape()) fail("src must have index's shape");
}
void check_index_values(const char* op, const Tensor& x, int64_t dim, const Tensor& index) {
  const int64_t n = x.dim() == 0 ? 1 : x.shape()[dim];
  const int64_t* ip = index.data_ptr<int64_t>();
  DimWalk w{index.shape(), dim, {index.strides(), index.strides(), index.strides()}};
  if (index.dim() == 0) {
    if (ip[0] < 0 || ip[0] >= n)
      throw_shape(op, "index value " + std::to_string(ip[0]) + " out of range [0, " + std::to_string(n) + ")",
                  {{"self", &x}, {"index", &index}});
    return;
  }
  const int64_t np = w.positions(), m = index.shape()[dim], s = index.strides()[dim];
  for (int64_t p = 0; p < np; ++p) {
    int64_t off[3];
    w.offsets(p, off);
    for (int64_t j = 0; j < m; ++j) {
      const int64_t v = ip[off[0] + j * s];
      if (v < 0 || v >= n)
        throw_shape(op, "index value " + std::to_string(v) + " out of range [0, " + std::to_string(n) + ") for dim " +
                            std::to_string(dim), {{"self", &x}, {"index", &index}});
    }
  }
}

// out (index's shape, contiguous) = x gathered along dim.
template <class T>
void gather_kernel(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  const T* xp = x.data_ptr<T>();
  const int64_t* ip = index.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  if (index.dim() == 0) {
    op[0] = xp[0];
    return;
  }
  DimWalk w{index.shape(), dim, {x.strides(), index.strides(), out.strides()}};
  const int64_t m = index.shape()[dim], xs = x.strides()[dim], is = index.strides()[dim], os = out.strides()[dim];
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(m, 1));
  parallel_for(0, w.positions(), grain, [&](int64_t b, int64_t e) {
    int64_t off[3];
    for (int64_t p = b; p < e; ++p) {
      w.offsets(p, off);
      for (int64_t j = 0; j < m; ++j) op[off[2] + j * os] = xp[off[0] + ip[off[1] + j * is] * xs];
    }
  });
}
// dst (contiguous) += src scattered along dim. Distinct positions write distinct elements
// of dst, and each position adds in j order: deterministic without atomics.
template <class T>
void scatter_add_kernel(const Tensor& dst, int64_t dim, const Tensor& index, const Tensor& src) {
  T* dp = dst.data_ptr<T>();
  const int64_t* ip = index.data_ptr<int64_t>();
  const T* sp = src.data_ptr<T>();
  if (index.dim() == 0) {
    dp[0] = static_cast<T>(dp[0] + sp[0]);
    return;
  }
  DimWalk w{index.shape(), dim, {dst.strides(), index.strides(), src.strides()}};
  const int64_t m = index.shape()[dim], ds = dst.strides()[dim], is = index.strides()[dim], ss = src.strides()[dim];
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(m, 1));
  parallel_for(0, w.positions(), grain, [&](int64_t b, int64_t e) {
    int64_t off[3];
    for (int64_t p = b; p < e; ++p) {
      w.offsets(p, off);
      for (int64_t j = 0; j < m; ++j) {
        T& d = dp[off[0] + ip[off[1] + j * is] * ds];
        d = static_cast<T>(d + sp[off[2] + j * ss]);
      }
    }
  });
}

struct GatherBackward : Node {
  SavedTensor index;
  Shape x_shape;
  int64_t dim = 0;
  const char* name() const override { return "GatherBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor idx = index.unpack(this);
    return {scatter_add(Tensor::zeros(x_shape, g[0].dtype()), dim, idx, g[0]), Tensor()};
  }
  void release() override { index.reset(); }
};
struct ScatterAddBackward : Node {
  SavedTensor index;
  int64_t dim = 0;
  const char* name() const override { return "ScatterAddBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor gsrc;
    if (needs_grad(2)) gsrc = gather(g[0], dim, index.unpack(this));
    return {needs_grad(0) ? g[0] : Tensor(), Tensor(), gsrc};
  }
  void release() override { index.reset(); }
};
}  // namespace

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  check_defined(x, "gather", "x");
  check_index_tensor(index, "gather", x);
  dim = wrap_dim(dim, x.dim(), "gather", &x);
  check_gather_shapes("gather", x, dim, index, nullptr);
  check_index_values("gather", x, dim, index);
  Tensor out = make_tensor(index.shape(), x.dtype());
  dispatch_all(x.dtype(), [&]<class T>() { gather_kernel<T>(x, dim, index, out); });
  if (auto node = make_node<GatherBackward>({x, Tensor()})) {
    node->index = save(index);
    node->x_shape = x.shape();
    node->dim = dim;
    set_history(out, node);
  }
  return out;
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  check_defined(x, "scatter_add", "x");
  check_defined(src, "scatter_add", "src");
  check_index_tensor(index, "scatter_add", x);
  if (src.dtype() != x.dtype() || x.dtype() == kBool)
    throw_dtype("scatter_add", "self and src must share a numeric (non-bool) dtype",
                {{"self", &x}, {"index", &index}, {"src", &src}});
  dim = wrap_dim(dim, x.dim(), "scatter_add", &x);
  check_gather_shapes("scatter_add", x, dim, index, &src);
  check_index_values("scatter_add", x, dim, index);
  Tensor out = make_tensor(x.shape(), x.dtype());
  out.copy_(x.detach());
  dispatch_all(x.dtype(), [&]<class T>() { scatter_add_kernel<T>(out, dim, index, src); });
  if (auto node = make_node<ScatterAddBackward>({x, Tensor(), src})) {
    node->index = save(index);
    node->dim = dim;
    set_history(out, node);
  }
  return out;
}

// ---- pad ----------------------------------------------------------------------------------
namespace {
struct PadBackward : Node {
  std::vector<int64_t> pads;  // F.pad order
  Shape x_shape;
  const char* name() const override { return "PadBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor gi = g[0];
    const int64_t r = (int64_t)x_shape.size();
    for (size_t k = 0; k < pads.size() / 2; ++k) {
      const int64_t d = r - 1 - (int64_t)k;
      gi = gi.narrow(d, pads[2 * k], x_shape[d]);
    }
    return {gi};
  }
};
}  // namespace

Tensor pad(const Tensor& x, const std::vector<int64_t>& pads, double value) {
  check_defined(x, "pad", "x");
  const int64_t r = x.dim();
  if (pads.size() % 2 != 0 || (int64_t)pads.size() > 2 * r)
    throw_shape("pad", "pad " + shape_str(pads) + " must hold (left, right) pairs for at most " + std::to_string(r) +
                           " dims (last dim first)", {{"x", &x}});
  for (auto p : pads)
    if (p < 0)
      throw_shape("pad", "negative padding " + shape_str(pads) + " (cropping) is not supported; use narrow()",
                  {{"x", &x}});
  Shape os = x.shape();
  for (size_t k = 0; k < pads.size() / 2; ++k) os[r - 1 - k] += pads[2 * k] + pads[2 * k + 1];
  Tensor out = Tensor::full(os, value, x.dtype());
  Tensor interior = make_view(out, out.shape(), out.strides(), 0);
  for (size_t k = 0; k < pads.size() / 2; ++k) {
    const int64_t d = r - 1 - (int64_t)k;
    interior = interior.narrow(d, pads[2 * k], x.shape()[d]);
  }
  if (x.numel() > 0) interior.copy_(x);
  if (auto node = make_node<PadBackward>({x})) {
    node->pads = pads;
    node->x_shape = x.shape();
    set_history(out, node);
  }
  return out;
}

}  // namespace lotgrad
