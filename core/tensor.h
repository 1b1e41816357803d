// Tensor: a cheap shared handle over reference-counted, 64-byte-aligned storage.
// A tensor is (storage, shape, strides in elements, offset, dtype). Views share storage
// and its version counter; in-place ops bump the counter so autograd can detect a saved
// tensor that was overwritten.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dtype.h"
#include "error.h"

namespace lotgrad {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "(2, 3)"
// Elements of s. Throws ShapeError naming op and s when a size is negative or the sizes,
// zeros counted as 1, multiply past INT64_MAX: such a shape has no int64 strides even when
// it holds no elements, so no tensor may have it.
int64_t shape_numel(const Shape& s, const char* op = "shape_numel");
// Row-major strides of s (a size-0 dim counts as 1); throws as shape_numel does.
Shape contiguous_strides(const Shape& s);

struct Node;

// Bytes held by tensor storage in this process: now and the high-water mark since the last
// reset. Benchmarks report peak memory from here (plus the process's peak RSS).
int64_t storage_bytes_in_use();
int64_t storage_bytes_peak();
void reset_storage_peak();
// Freed blocks of 1 MiB or more are cached (up to 2 GiB) and reused by best fit: a fresh
// large block costs a page fault per 4 KiB on first touch. This returns them to the system.
void empty_storage_cache();
// Bytes held from the system for tensor storage: in use plus cached, now and at most since
// the last reset_storage_peak() (what the storage costs the process; cf. PyTorch's
// memory_reserved / max_memory_reserved).
int64_t storage_bytes_reserved();
int64_t storage_bytes_reserved_peak();

// Owned, aligned bytes plus the version counter shared by every view.
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  size_t block = 0;  // bytes of the underlying block (a cached block may be a little larger)
  uint64_t version = 0;
  explicit Storage(size_t nbytes, bool zero = true);  // zero-initialised unless zero is false
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape, strides;
  int64_t offset = 0;
  DType dtype = DType::f32;
  // autograd
  bool requires_grad = false;           // leaf flag set by the user
  std::shared_ptr<TensorImpl> grad;     // accumulated gradient (leaves)
  std::shared_ptr<Node> grad_fn;        // producer, null for leaves
  uint32_t output_nr = 0;               // which output of grad_fn this is
  // Called once per backward when this leaf's .grad is final (Tensor::register_post_accumulate_grad_hook).
  std::shared_ptr<std::function<void(const Tensor&)>> post_accumulate_grad_hook;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories -------------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = kFloat32);  // zero-filled
  static Tensor zeros(const Shape& shape, DType dtype = kFloat32);
  static Tensor ones(const Shape& shape, DType dtype = kFloat32);
  static Tensor full(const Shape& shape, double value, DType dtype = kFloat32);
  static Tensor scalar(double value, DType dtype = kFloat32);     // 0-d
  static Tensor arange(int64_t end, DType dtype = kInt64);
  static Tensor arange(double start, double end, double step, DType dtype = kFloat32);
  // Copies data; numel must match shape.
  static Tensor from_vector(const std::vector<float>& v, const Shape& shape);
  static Tensor from_vector(const std::vector<double>& v, const Shape& shape);
  static Tensor from_vector(const std::vector<int64_t>& v, const Shape& shape);
  static Tensor from_vector(const std::vector<bool>& v, const Shape& shape);

  // ---- metadata -------------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  DType dtype() const { return impl_->dtype; }
  const Shape& shape() const { return impl_->shape; }
  const Shape& sizes() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t offset() const { return impl_->offset; }
  int64_t dim() const { return (int64_t)impl_->shape.size(); }
  int64_t size(int64_t d) const;    // negative d counts from the end
  int64_t stride(int64_t d) const;
  int64_t numel() const { return shape_numel(impl_->shape); }
  bool is_contiguous() const;
  uint64_t version() const { return impl_->storage->version; }
  void bump_version() const { ++impl_->storage->version; }
  bool shares_storage(const Tensor& o) const { return impl_->storage == o.impl_->storage; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  // Pointer to element [0,...,0] (storage + offset). Checks the dtype.
  template <class T> T* data_ptr() const;
  void* raw_data() const;
  // Value of a one-element tensor.
  double item() const;
  template <class T> T item() const { return static_cast<T>(item()); }
  // Element at a multi-index (slow; for tests and printing).
  double at(const Shape& idx) const;
  // Copies to a flat vector in row-major order (any layout).
  std::vector<double> to_vector() const;

  // ---- views (share storage; differentiable) ---------------------------------------
  Tensor view(const Shape& shape) const;     // needs compatible strides; -1 infers
  Tensor reshape(const Shape& shape) const;  // view when possible, else copy
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const;  // 2-d transpose
  Tensor permute(const Shape& dims) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;  // drops dim
  Tensor expand(const Shape& shape) const;          // -1 keeps a size
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;

  // ---- copies ---------------------------------------------------------------------
  Tensor contiguous() const;  // self if already contiguous
  Tensor clone() const;       // always a fresh contiguous copy (differentiable)
  Tensor to(DType dtype) const;  // differentiable between float types
  Tensor detach() const;      // same storage, no history

  // ---- in-place (bump the version; not recorded by autograd) -------------------------
  Tensor& fill_(double value);
  Tensor& zero_();
  Tensor& copy_(const Tensor& src);              // src broadcast to self's shape
  Tensor& add_(const Tensor& other, double alpha = 1.0);  // self += alpha * other
  Tensor& mul_(double value);

  // ---- autograd -------------------------------------------------------------------
  bool requires_grad() const;  // leaf flag or has a grad_fn
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const { return impl_->grad_fn == nullptr; }
  Tensor grad() const;
  void set_grad(const Tensor& g) const;
  void zero_grad() const;  // drops .grad
  // PyTorch's Tensor.register_post_accumulate_grad_hook, for a leaf: hook(leaf) runs once in
  // every backward that reaches the leaf, after the last gradient into it was added to .grad
  // (a leaf used twice gets it once, after both). Its use: start reducing a gradient across
  // processes while the backward pass goes on (dist/grad_reducer.h). One hook per leaf; an
  // empty function removes it.
  void register_post_accumulate_grad_hook(std::function<void(const Tensor&)> hook) const;
  const std::shared_ptr<Node>& grad_fn() const { return impl_->grad_fn; }
  // Reverse-mode sweep from this tensor. grad defaults to 1 for one-element tensors.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;

  std::string to_string(int64_t max_per_dim = 6) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// A fresh zero-filled contiguous tensor (for kernels).
Tensor make_tensor(const Shape& shape, DType dtype);
// The same without the zero fill, for kernels that write every element (saves a memory pass).
Tensor make_tensor_uninit(const Shape& shape, DType dtype);
// A view over an existing tensor's storage (no autograd history).
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);

// Normalises a possibly negative dim against rank n, naming op on error.
int64_t wrap_dim(int64_t dim, int64_t n, const char* op, const Tensor* t = nullptr);

// Broadcast two shapes NumPy-style; throws ShapeError naming op.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op, const Tensor* ta = nullptr,
                       const Tensor* tb = nullptr);

template <class T> T* Tensor::data_ptr() const {
  if (impl_->dtype != dtype_of<T>::value)
    throw_dtype("data_ptr", std::string("requested ") + dtype_name(dtype_of<T>::value), {{"self", this}});
  return static_cast<T*>(impl_->storage->data) + impl_->offset;
}

}  // namespace lotgrad
