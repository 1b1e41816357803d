#include "tensor.h"

#include "parallel.h"

#include <atomic>
#include <map>
#include <mutex>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iomanip>
#include <numeric>
#include <ostream>
#include <sstream>

#include "autograd.h"
#include "iter.h"
#include "parallel.h"

namespace lotgrad {

// ---------------------------------------------------------------------------------------
// shapes, errors
// ---------------------------------------------------------------------------------------
std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + ")";
}
[[noreturn]] static void throw_bad_shape(const Shape& s, const char* op) {
  for (auto v : s)
    if (v < 0) throw ShapeError(std::string(op) + ": negative size " + std::to_string(v) + " in shape " + shape_str(s));
  throw ShapeError(std::string(op) + ": shape " + shape_str(s) +
                   " is too large: its sizes (zeros counted as 1) multiply past 2^63 - 1, so its strides overflow int64");
}
int64_t shape_numel(const Shape& s, const char* op) {
  // extent (zeros counted as 1) bounds both n and every contiguous stride, so checking it
  // alone keeps all of them in range; a zero dimension must not hide a huge one.
  int64_t n = 1, extent = 1;
  for (auto v : s) {
    if (v < 0 || __builtin_mul_overflow(extent, std::max<int64_t>(v, 1), &extent)) throw_bad_shape(s, op);
    n *= v;  // n <= extent before the multiply, so this cannot overflow
  }
  return n;
}
Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = (int64_t)s.size() - 1; i >= 0; --i) {
    st[i] = acc;
    if (s[i] < 0 || __builtin_mul_overflow(acc, std::max<int64_t>(s[i], 1), &acc)) throw_bad_shape(s, "contiguous_strides");
  }
  return st;
}

std::string describe(const Tensor& t) {
  if (!t.defined()) return "undefined";
  std::string r = shape_str(t.shape()) + " " + dtype_name(t.dtype());
  if (!t.is_contiguous()) r += " non-contiguous";
  return r;
}
std::string op_message(const std::string& op, const std::string& rule,
                       std::initializer_list<std::pair<const char*, const Tensor*>> operands) {
  std::string m = op + ": " + rule;
  if (operands.size()) {
    m += "; operands:";
    bool first = true;
    for (auto& [name, t] : operands) {
      m += (first ? " " : ", ") + std::string(name) + " " + (t ? describe(*t) : "none");
      first = false;
    }
  }
  return m;
}
void throw_shape(const std::string& op, const std::string& rule,
                 std::initializer_list<std::pair<const char*, const Tensor*>> operands) {
  throw ShapeError(op_message(op, rule, operands));
}
void throw_dtype(const std::string& op, const std::string& rule,
                 std::initializer_list<std::pair<const char*, const Tensor*>> operands) {
  throw DTypeError(op_message(op, rule, operands));
}

int64_t wrap_dim(int64_t dim, int64_t n, const char* op, const Tensor* t) {
  const int64_t lim = std::max<int64_t>(n, 1);
  if (dim < -lim || dim >= lim)
    throw_shape(op, "dim " + std::to_string(dim) + " out of range for a tensor of rank " + std::to_string(n),
                {{"self", t}});
  return dim < 0 ? dim + lim : dim;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op, const Tensor* ta, const Tensor* tb) {
  const size_t n = std::max(a.size(), b.size());
  Shape r(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t x = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t y = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (x != y && x != 1 && y != 1)
      throw_shape(op,
                  "shapes " + shape_str(a) + " and " + shape_str(b) + " do not broadcast (dim " +
                      std::to_string(i) + ": " + std::to_string(x) + " vs " + std::to_string(y) + ")",
                  {{"a", ta}, {"b", tb}});
    r[i] = x == 1 ? y : x;
  }
  return r;
}

Shape broadcast_strides(const Tensor& t, const Shape& shape) {
  Shape r(shape.size(), 0);
  const size_t off = shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i)
    r[off + i] = (t.shape()[i] == 1 && shape[off + i] != 1) ? 0 : t.strides()[i];
  return r;
}

// ---------------------------------------------------------------------------------------
// storage and construction
// ---------------------------------------------------------------------------------------
namespace {
std::atomic<int64_t> g_bytes_in_use{0}, g_bytes_peak{0}, g_bytes_reserved{0}, g_bytes_reserved_peak{0};
void raise_peak(std::atomic<int64_t>& peak, int64_t now) {
  int64_t p = peak.load();
  while (now > p && !peak.compare_exchange_weak(p, now)) {
  }
}
}  // namespace
int64_t storage_bytes_in_use() { return g_bytes_in_use.load(); }
int64_t storage_bytes_peak() { return g_bytes_peak.load(); }
int64_t storage_bytes_reserved() { return g_bytes_reserved.load(); }
int64_t storage_bytes_reserved_peak() { return g_bytes_reserved_peak.load(); }
void reset_storage_peak() {
  g_bytes_peak.store(g_bytes_in_use.load());
  g_bytes_reserved_peak.store(g_bytes_reserved.load());
}

namespace {
// Freed blocks of at least 1 MiB are kept for reuse (best fit, below): a fresh block
// from mmap costs a page fault per 4 KiB on first touch (tens of ms for tens of MB in
// this VM), while reusing one costs a memset. Training steps repeat the same sizes.
struct BlockCache {
  std::mutex mu;
  std::multimap<size_t, void*> blocks;
  size_t held = 0;
  static constexpr size_t kMin = size_t(1) << 20, kCap = size_t(2) << 30;
};
BlockCache& block_cache() {
  static BlockCache* c = new BlockCache;  // never destroyed: tensors may outlive statics
  return *c;
}
// Best fit: the smallest cached block of at least n bytes and at most 2n. Exact-size reuse
// alone left blocks of the backward's sizes idle through the forward, and with batches of
// varying length (bucketing) it missed every time: fresh, page-faulting blocks each step.
void* take_block(size_t n, size_t& got) {
  if (n < BlockCache::kMin) return nullptr;
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lk(c.mu);
  auto it = c.blocks.lower_bound(n);
  if (it == c.blocks.end() || it->first > 2 * n) return nullptr;
  void* p = it->second;
  got = it->first;
  c.held -= got;
  c.blocks.erase(it);
  return p;
}
void give_block(void* p, size_t n) {
  if (n >= BlockCache::kMin) {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lk(c.mu);
    while (c.held + n > BlockCache::kCap && !c.blocks.empty()) {  // drop the largest first
      auto last = std::prev(c.blocks.end());
      c.held -= last->first;
      g_bytes_reserved.fetch_sub((int64_t)last->first);
      std::free(last->second);
      c.blocks.erase(last);
    }
    if (c.held + n <= BlockCache::kCap) {
      c.blocks.emplace(n, p);
      c.held += n;
      return;
    }
  }
  g_bytes_reserved.fetch_sub((int64_t)n);
  std::free(p);
}
}  // namespace

void empty_storage_cache() {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lk(c.mu);
  for (auto& [n, p] : c.blocks) {
    g_bytes_reserved.fetch_sub((int64_t)n);
    std::free(p);
  }
  c.blocks.clear();
  c.held = 0;
}

namespace {
// LOTGRAD_POISON_UNINIT=1: make_tensor_uninit's memory is filled with 0xFF bytes (NaN in f32
// and f64), so a kernel that reads an element it never wrote shows NaN in its test instead of
// stale values that happen to be right. The sanitizer job sets it (scripts/sanitize.sh).
bool poison_uninit() {
  static const bool on = [] {
    const char* v = std::getenv("LOTGRAD_POISON_UNINIT");
    return v && std::string(v) != "0" && std::string(v) != "";
  }();
  return on;
}
}  // namespace

Storage::Storage(size_t n, bool zero) : nbytes(n) {
  size_t alloc = std::max<size_t>(64, (n + 63) / 64 * 64);
  data = take_block(alloc, alloc);
  if (!data) {
    data = std::aligned_alloc(64, alloc);
    if (!data) throw std::bad_alloc();
    raise_peak(g_bytes_reserved_peak, g_bytes_reserved.fetch_add((int64_t)alloc) + (int64_t)alloc);
  }
  block = alloc;
  if (zero || poison_uninit()) {  // large blocks by all threads (a serial memset left the others idle)
    char* c = static_cast<char*>(data);
    const int fill = zero ? 0 : 0xFF;
    parallel_for(0, (int64_t)alloc, 1 << 17, [&](int64_t b, int64_t e) { std::memset(c + b, fill, (size_t)(e - b)); });
  }
  raise_peak(g_bytes_peak, g_bytes_in_use.fetch_add((int64_t)alloc) + (int64_t)alloc);
}
Storage::~Storage() {
  give_block(data, block);
  g_bytes_in_use.fetch_sub((int64_t)block);
}

static Tensor new_tensor(const Shape& shape, DType dtype, bool zero, const char* op) {
  const int64_t numel = shape_numel(shape, op);
  // Byte offsets are int64 too (raw_data, kernels): the bytes must fit, not just the elements.
  if (numel > INT64_MAX / (int64_t)dtype_size(dtype))
    throw ShapeError(std::string(op) + ": shape " + shape_str(shape) + " " + dtype_name(dtype) + " needs " +
                     std::to_string(numel) + " x " + std::to_string(dtype_size(dtype)) + " bytes, more than 2^63 - 1");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>((size_t)numel * dtype_size(dtype), zero);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}
Tensor make_tensor(const Shape& shape, DType dtype) { return new_tensor(shape, dtype, true, "make_tensor"); }
Tensor make_tensor_uninit(const Shape& shape, DType dtype) { return new_tensor(shape, dtype, false, "make_tensor"); }
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  (void)shape_numel(shape, "make_view");  // no view may have a shape whose numel overflows
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl()->storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(impl);
}

Tensor Tensor::empty(const Shape& shape, DType dtype) { return new_tensor(shape, dtype, true, "empty"); }
Tensor Tensor::zeros(const Shape& shape, DType dtype) { return new_tensor(shape, dtype, true, "zeros"); }
Tensor Tensor::ones(const Shape& shape, DType dtype) { return full(shape, 1.0, dtype); }
Tensor Tensor::full(const Shape& shape, double value, DType dtype) {
  Tensor t = new_tensor(shape, dtype, true, "full");
  if (value != 0.0) t.fill_(value);
  return t;
}
Tensor Tensor::scalar(double value, DType dtype) { return full({}, value, dtype); }
Tensor Tensor::arange(int64_t end, DType dtype) { return arange(0.0, (double)end, 1.0, dtype); }
Tensor Tensor::arange(double start, double end, double step, DType dtype) {
  if (step == 0) throw ShapeError("arange: step must be non-zero");
  // The count as a double first: converting NaN, ±inf or a value past int64 is undefined.
  const double count = std::ceil((end - start) / step);
  if (!std::isfinite(start) || !std::isfinite(end) || !std::isfinite(count) || count > 9.0e18) {
    std::ostringstream os;
    os << "arange: start " << start << ", end " << end << ", step " << step << " give no finite element count (got "
       << count << ")";
    throw ShapeError(os.str());
  }
  const int64_t n = std::max<int64_t>(0, (int64_t)count);
  Tensor t = make_tensor({n}, dtype);
  dispatch_all(dtype, [&]<class T>() {
    T* p = t.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(start + (double)i * step);
  });
  return t;
}
template <class T, class V>
static Tensor from_vec(const V& v, const Shape& shape) {
  if ((int64_t)v.size() != shape_numel(shape, "from_vector"))
    throw ShapeError("from_vector: " + std::to_string(v.size()) + " values do not fill shape " + shape_str(shape));
  Tensor t = make_tensor(shape, dtype_of<T>::value);
  T* p = t.data_ptr<T>();
  for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<T>(v[i]);
  return t;
}
Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& s) { return from_vec<float>(v, s); }
Tensor Tensor::from_vector(const std::vector<double>& v, const Shape& s) { return from_vec<double>(v, s); }
Tensor Tensor::from_vector(const std::vector<int64_t>& v, const Shape& s) { return from_vec<int64_t>(v, s); }
Tensor Tensor::from_vector(const std::vector<bool>& v, const Shape& s) { return from_vec<bool>(v, s); }

// ---------------------------------------------------------------------------------------
// metadata
// ---------------------------------------------------------------------------------------
int64_t Tensor::size(int64_t d) const { return impl_->shape[wrap_dim(d, dim(), "size", this)]; }
int64_t Tensor::stride(int64_t d) const { return impl_->strides[wrap_dim(d, dim(), "stride", this)]; }
bool Tensor::is_contiguous() const {
  int64_t expect = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (impl_->shape[i] == 1) continue;
    if (impl_->strides[i] != expect) return false;
    expect *= impl_->shape[i];
  }
  return true;
}
void* Tensor::raw_data() const {
  return static_cast<char*>(impl_->storage->data) + impl_->offset * (int64_t)dtype_size(impl_->dtype);
}
double Tensor::at(const Shape& idx) const {
  if ((int64_t)idx.size() != dim()) throw_shape("at", "index rank " + std::to_string(idx.size()) + " vs tensor rank", {{"self", this}});
  int64_t off = 0;
  for (int64_t i = 0; i < dim(); ++i) {
    if (idx[i] < 0 || idx[i] >= impl_->shape[i]) throw_shape("at", "index " + shape_str(idx) + " out of range", {{"self", this}});
    off += idx[i] * impl_->strides[i];
  }
  return dispatch_all(dtype(), [&]<class T>() { return (double)data_ptr<T>()[off]; });
}
double Tensor::item() const {
  if (numel() != 1) throw_shape("item", "needs a one-element tensor", {{"self", this}});
  return dispatch_all(dtype(), [&]<class T>() { return (double)data_ptr<T>()[0]; });
}
std::vector<double> Tensor::to_vector() const {
  std::vector<double> out((size_t)numel());
  if (out.empty()) return out;
  Shape cs = contiguous_strides(shape());
  dispatch_all(dtype(), [&]<class T>() {
    const T* src = data_ptr<T>();
    strided_loop<2>(shape(), {strides(), cs}, INT64_MAX, [&](auto off, int64_t len, auto in) {
      for (int64_t i = 0; i < len; ++i) out[off[1] + i * in[1]] = (double)src[off[0] + i * in[0]];
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------
// view backward nodes
// ---------------------------------------------------------------------------------------
namespace {
struct ReshapeBackward : Node {
  Shape in_shape;
  const char* name() const override { return "ReshapeBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override { return {g[0].reshape(in_shape)}; }
};
struct PermuteBackward : Node {
  Shape inverse;
  const char* name() const override { return "PermuteBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override { return {g[0].permute(inverse)}; }
};
struct SliceBackward : Node {
  Shape in_shape;
  int64_t dim = 0, start = 0, end = 0, step = 1;
  bool drop_dim = false;  // select()
  const char* name() const override { return drop_dim ? "SelectBackward" : "SliceBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override {
    Tensor z = Tensor::zeros(in_shape, g[0].dtype());
    Tensor src = drop_dim ? g[0].unsqueeze(dim) : g[0];
    z.slice(dim, start, end, step).copy_(src);
    return {z};
  }
};
struct ExpandBackward : Node {  // the engine's sum_to does the reduction
  const char* name() const override { return "ExpandBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override { return {g[0]}; }
};
struct CloneBackward : Node {
  const char* name() const override { return "CloneBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override { return {g[0]}; }
};
struct ToBackward : Node {
  DType from = DType::f32;
  const char* name() const override { return "ToBackward"; }
  std::vector<Tensor> apply(std::vector<Tensor>& g) override { return {g[0].to(from)}; }
};

Tensor record_reshape(const Tensor& self, Tensor out) {
  if (auto n = make_node<ReshapeBackward>({self})) {
    n->in_shape = self.shape();
    set_history(out, n);
  }
  return out;
}

// Resolves one -1 in a requested shape.
Shape infer_shape(const Shape& req, int64_t numel, const char* op, const Tensor* t) {
  Shape s = req;
  int64_t known = 1, neg = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (neg >= 0) throw_shape(op, "only one dimension can be -1 in " + shape_str(req), {{"self", t}});
      neg = (int64_t)i;
    } else if (s[i] < 0) {
      throw_shape(op, "negative size in " + shape_str(req), {{"self", t}});
    } else if (__builtin_mul_overflow(known, s[i], &known)) {
      throw_shape(op, "shape " + shape_str(req) + " is too large: its sizes multiply past 2^63 - 1", {{"self", t}});
    }
  }
  if (neg >= 0) {
    if (known == 0 || numel % known) throw_shape(op, "cannot infer -1 in " + shape_str(req), {{"self", t}});
    s[neg] = numel / known;
  }
  const int64_t n = shape_numel(s, op);
  if (n != numel)
    throw_shape(op, "shape " + shape_str(req) + " has " + std::to_string(n) + " elements, input has " +
                        std::to_string(numel), {{"self", t}});
  return s;
}

// Strides for viewing (shape, strides) as new_shape without copying, or empty if impossible.
bool view_strides(const Shape& shape, const Shape& strides, const Shape& new_shape, Shape& out) {
  out.assign(new_shape.size(), 0);
  if (shape_numel(shape) == 0 || shape.empty()) {  // empty or 0-d: any layout works
    out = contiguous_strides(new_shape);
    return true;
  }
  // Group old dims into contiguous chunks and map new dims onto them (as PyTorch does).
  int64_t view_d = (int64_t)new_shape.size() - 1;
  int64_t chunk_base_stride = strides.empty() ? 1 : strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = (int64_t)shape.size() - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}
}  // namespace

// ---------------------------------------------------------------------------------------
// views
// ---------------------------------------------------------------------------------------
Tensor Tensor::view(const Shape& req) const {
  Shape s = infer_shape(req, numel(), "view", this);
  Shape st;
  if (!view_strides(shape(), strides(), s, st))
    throw_shape("view", "strides do not allow viewing as " + shape_str(s) + " without a copy; use reshape()",
                {{"self", this}});
  return record_reshape(*this, make_view(*this, s, st, offset()));
}
Tensor Tensor::reshape(const Shape& req) const {
  Shape s = infer_shape(req, numel(), "reshape", this);
  Shape st;
  if (view_strides(shape(), strides(), s, st)) return record_reshape(*this, make_view(*this, s, st, offset()));
  return clone().view(s);
}
Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  int64_t a = wrap_dim(start_dim, dim(), "flatten", this), b = wrap_dim(end_dim, dim(), "flatten", this);
  if (a > b) throw_shape("flatten", "start_dim after end_dim", {{"self", this}});
  Shape s(shape().begin(), shape().begin() + a);
  int64_t m = 1;
  for (int64_t i = a; i <= b; ++i) m *= shape()[i];
  s.push_back(m);
  s.insert(s.end(), shape().begin() + b + 1, shape().end());
  return reshape(s);
}
Tensor Tensor::permute(const Shape& dims) const {
  if ((int64_t)dims.size() != dim())
    throw_shape("permute", "got " + std::to_string(dims.size()) + " dims " + shape_str(dims) + " for a tensor of rank " +
                               std::to_string(dim()), {{"self", this}});
  Shape s(dim()), st(dim()), inv(dim());
  std::vector<bool> seen(dim(), false);
  for (int64_t i = 0; i < dim(); ++i) {
    int64_t d = wrap_dim(dims[i], dim(), "permute", this);
    if (seen[d]) throw_shape("permute", "repeated dim in " + shape_str(dims), {{"self", this}});
    seen[d] = true;
    s[i] = shape()[d];
    st[i] = strides()[d];
    inv[d] = i;
  }
  Tensor out = make_view(*this, s, st, offset());
  if (auto n = make_node<PermuteBackward>({*this})) {
    n->inverse = inv;
    set_history(out, n);
  }
  return out;
}
Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  Shape p(dim());
  std::iota(p.begin(), p.end(), 0);
  if (dim() == 0) return permute(p);
  std::swap(p[wrap_dim(d0, dim(), "transpose", this)], p[wrap_dim(d1, dim(), "transpose", this)]);
  return permute(p);
}
Tensor Tensor::t() const {
  if (dim() != 2) throw_shape("t", "expects a 2-d tensor", {{"self", this}});
  return transpose(0, 1);
}
Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim(d, dim(), "slice", this);
  if (step <= 0) throw_shape("slice", "step must be positive", {{"self", this}});
  const int64_t n = shape()[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape s = shape(), st = strides();
  s[d] = (end - start + step - 1) / step;
  st[d] *= step;
  Tensor out = make_view(*this, s, st, offset() + start * strides()[d]);
  if (auto nd = make_node<SliceBackward>({*this})) {
    nd->in_shape = shape();
    nd->dim = d;
    nd->start = start;
    nd->end = end;
    nd->step = step;
    set_history(out, nd);
  }
  return out;
}
Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim(d, dim(), "narrow", this);
  if (start < 0) start += shape()[d];
  if (start < 0 || length < 0 || start + length > shape()[d])
    throw_shape("narrow", "range [" + std::to_string(start) + ", " + std::to_string(start + length) +
                              ") outside dim " + std::to_string(d) + " of size " + std::to_string(shape()[d]),
                {{"self", this}});
  return slice(d, start, start + length);
}
Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select", this);
  const int64_t n = shape()[d];
  if (index < -n || index >= n)
    throw_shape("select", "index " + std::to_string(index) + " out of range for dim " + std::to_string(d) +
                              " of size " + std::to_string(n), {{"self", this}});
  if (index < 0) index += n;
  Shape s = shape(), st = strides();
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  Tensor out = make_view(*this, s, st, offset() + index * strides()[d]);
  if (auto nd = make_node<SliceBackward>({*this})) {
    nd->in_shape = shape();
    nd->dim = d;
    nd->start = index;
    nd->end = index + 1;
    nd->drop_dim = true;
    set_history(out, nd);
  }
  return out;
}
Tensor Tensor::expand(const Shape& req) const {
  if ((int64_t)req.size() < dim())
    throw_shape("expand", "target " + shape_str(req) + " has fewer dims than the input", {{"self", this}});
  const size_t lead = req.size() - dim();
  Shape s(req.size()), st(req.size(), 0);
  for (size_t i = 0; i < req.size(); ++i) {
    if (i < lead) {
      if (req[i] < 0) throw_shape("expand", "-1 not allowed in a new leading dim of " + shape_str(req), {{"self", this}});
      s[i] = req[i];
      continue;
    }
    const int64_t have = shape()[i - lead];
    const int64_t want = req[i] == -1 ? have : req[i];
    if (have != want && have != 1)
      throw_shape("expand", "cannot expand size " + std::to_string(have) + " to " + std::to_string(want) +
                                " at dim " + std::to_string(i) + " (target " + shape_str(req) + ")", {{"self", this}});
    s[i] = want;
    st[i] = (have == want) ? strides()[i - lead] : 0;
  }
  (void)shape_numel(s, "expand");
  Tensor out = make_view(*this, s, st, offset());
  if (auto n = make_node<ExpandBackward>({*this})) set_history(out, n);
  return out;
}
Tensor Tensor::squeeze() const {
  Shape s;
  for (auto v : shape())
    if (v != 1) s.push_back(v);
  return view(s);
}
Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze", this);
  if (dim() == 0 || shape()[d] != 1) return view(shape());
  Shape s = shape();
  s.erase(s.begin() + d);
  return view(s);
}
Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze", this);
  Shape s = shape();
  s.insert(s.begin() + d, 1);
  return view(s);
}

// ---------------------------------------------------------------------------------------
// copies and in-place
// ---------------------------------------------------------------------------------------
namespace {
void copy_kernel(const Tensor& dst, const Tensor& src) {
  const Shape& shape = dst.shape();
  std::array<Shape, 2> st{dst.strides(), broadcast_strides(src, shape)};
  dispatch_all(dst.dtype(), [&]<class D>() {
    dispatch_all(src.dtype(), [&]<class S>() {
      D* d = dst.data_ptr<D>();
      const S* s = src.data_ptr<S>();
      strided_loop<2>(shape, st, kParallelGrain, [&](auto off, int64_t len, auto in) {
        D* dp = d + off[0];
        const S* sp = s + off[1];
        if (in[0] == 1 && in[1] == 1) {
          for (int64_t i = 0; i < len; ++i) dp[i] = static_cast<D>(sp[i]);
        } else {
          for (int64_t i = 0; i < len; ++i) dp[i * in[0]] = static_cast<D>(sp[i * in[1]]);
        }
      });
    });
  });
}
}  // namespace

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }
Tensor Tensor::clone() const {
  Tensor out = make_tensor_uninit(shape(), dtype());  // the copy writes every element
  copy_kernel(out, *this);
  if (auto n = make_node<CloneBackward>({*this})) set_history(out, n);
  return out;
}
Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = make_tensor_uninit(shape(), dt);
  copy_kernel(out, *this);
  if (is_floating(dt) && is_floating(dtype())) {
    if (auto n = make_node<ToBackward>({*this})) {
      n->from = dtype();
      set_history(out, n);
    }
  }
  return out;
}
Tensor Tensor::detach() const { return make_view(*this, shape(), strides(), offset()); }

static void check_inplace(const Tensor& self, const char* op) {
  if (GradMode::is_enabled() && self.requires_grad())
    throw AutogradError(std::string(op) +
                        ": in-place change of a tensor that requires grad while grad mode is on (use NoGradGuard "
                        "or detach()); tensor " + describe(self));
}
Tensor& Tensor::fill_(double value) {
  check_inplace(*this, "fill_");
  dispatch_all(dtype(), [&]<class T>() {
    T* d = data_ptr<T>();
    const T v = static_cast<T>(value);
    strided_loop<1>(shape(), {strides()}, kParallelGrain, [&](auto off, int64_t len, auto in) {
      for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] = v;
    });
  });
  bump_version();
  return *this;
}
Tensor& Tensor::zero_() { return fill_(0.0); }
Tensor& Tensor::copy_(const Tensor& src) {
  check_inplace(*this, "copy_");
  broadcast_shapes(src.shape(), shape(), "copy_", &src, this);
  if ((int64_t)src.shape().size() > dim() || broadcast_shapes(src.shape(), shape(), "copy_") != shape())
    throw_shape("copy_", "source does not broadcast to the destination's shape", {{"dst", this}, {"src", &src}});
  copy_kernel(*this, src);
  bump_version();
  return *this;
}
Tensor& Tensor::add_(const Tensor& other, double alpha) {
  check_inplace(*this, "add_");
  if (other.dtype() != dtype()) throw_dtype("add_", "dtypes must match", {{"self", this}, {"other", &other}});
  if (broadcast_shapes(other.shape(), shape(), "add_", &other, this) != shape())
    throw_shape("add_", "other does not broadcast to self's shape", {{"self", this}, {"other", &other}});
  std::array<Shape, 2> st{strides(), broadcast_strides(other, shape())};
  dispatch_float(dtype(), "add_", [&]<class T>() {
    T* d = data_ptr<T>();
    const T* s = other.data_ptr<T>();
    const T a = static_cast<T>(alpha);
    strided_loop<2>(shape(), st, kParallelGrain, [&](auto off, int64_t len, auto in) {
      if (in[0] == 1 && in[1] == 1) {
        T* dp = d + off[0];
        const T* sp = s + off[1];
        for (int64_t i = 0; i < len; ++i) dp[i] += a * sp[i];
      } else {
        for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] += a * s[off[1] + i * in[1]];
      }
    });
  });
  bump_version();
  return *this;
}
Tensor& Tensor::mul_(double value) {
  check_inplace(*this, "mul_");
  dispatch_float(dtype(), "mul_", [&]<class T>() {
    T* d = data_ptr<T>();
    const T v = static_cast<T>(value);
    strided_loop<1>(shape(), {strides()}, kParallelGrain, [&](auto off, int64_t len, auto in) {
      for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] *= v;
    });
  });
  bump_version();
  return *this;
}

// ---------------------------------------------------------------------------------------
// autograd accessors
// ---------------------------------------------------------------------------------------
bool Tensor::requires_grad() const { return impl_ && (impl_->requires_grad || impl_->grad_fn != nullptr); }
Tensor& Tensor::requires_grad_(bool on) {
  if (!is_leaf())
    throw AutogradError("requires_grad_: only leaf tensors can change requires_grad (tensor produced by " +
                        std::string(impl_->grad_fn->name()) + "); use detach() first");
  if (on && !is_floating(dtype()))
    throw_dtype("requires_grad_", "only floating tensors can require gradients", {{"self", this}});
  impl_->requires_grad = on;
  return *this;
}
Tensor Tensor::grad() const { return impl_->grad ? Tensor(impl_->grad) : Tensor(); }
void Tensor::set_grad(const Tensor& g) const { impl_->grad = g.defined() ? g.impl_ptr() : nullptr; }
void Tensor::zero_grad() const { impl_->grad = nullptr; }

void Tensor::register_post_accumulate_grad_hook(std::function<void(const Tensor&)> hook) const {
  if (!is_leaf() || !requires_grad())
    throw AutogradError("register_post_accumulate_grad_hook: only a leaf that requires grad has one (tensor " +
                        shape_str(shape()) + (is_leaf() ? ", requires_grad false" : ", not a leaf") + ")");
  impl_->post_accumulate_grad_hook =
      hook ? std::make_shared<std::function<void(const Tensor&)>>(std::move(hook)) : nullptr;
}
void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  Tensor g = grad;
  if (!g.defined()) {
    if (numel() != 1)
      throw_shape("backward", "a gradient must be given for a tensor with more than one element", {{"self", this}});
    g = Tensor::ones(shape(), dtype());
  }
  run_backward({*this}, {g}, retain_graph);
}

// ---------------------------------------------------------------------------------------
// printing
// ---------------------------------------------------------------------------------------
std::string Tensor::to_string(int64_t max_per_dim) const {
  if (!defined()) return "tensor(undefined)";
  std::ostringstream os;
  os << "tensor(shape=" << shape_str(shape()) << ", dtype=" << dtype_name(dtype());
  if (requires_grad()) os << (is_leaf() ? ", requires_grad" : std::string(", grad_fn=") + grad_fn()->name());
  os << ")\n";
  os << std::setprecision(dtype() == DType::f64 ? 8 : 5);
  Shape idx(dim(), 0);
  // Recursive over dims is fine: depth is the rank.
  std::function<void(int64_t, int)> rec = [&](int64_t d, int indent) {
    if (d == dim()) {
      os << at(idx);
      return;
    }
    os << "[";
    const int64_t n = shape()[d];
    for (int64_t i = 0; i < n; ++i) {
      if (n > max_per_dim && i == max_per_dim / 2) {
        os << "...";
        i = n - max_per_dim / 2;
        os << (d + 1 == dim() ? ", " : ",\n" + std::string(indent + 1, ' '));
      }
      idx[d] = i;
      rec(d + 1, indent + 1);
      if (i + 1 < n) os << (d + 1 == dim() ? ", " : ",\n" + std::string(indent + 1, ' '));
    }
    os << "]";
  };
  rec(0, 0);
  return os.str();
}
std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.to_string(); }

}  // namespace lotgrad
