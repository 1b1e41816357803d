#include "grad_reducer.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "../core/iter.h"

namespace lotgrad::dist {

namespace {
template <class T>
bool copy_counting_nonfinite(const T* src, T* dst, int64_t n) {
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    dst[i] = src[i];
    bad |= !std::isfinite(src[i]);
  }
  return bad;
}
}  // namespace

GradReducer::GradReducer(Comm& comm, std::vector<std::pair<std::string, Tensor>> params, int64_t bucket_bytes)
    : comm_(comm), params_(std::move(params)), bucket_of_(params_.size()) {
  if (bucket_bytes <= 0) throw std::invalid_argument("GradReducer: bucket_bytes must be positive, got " + std::to_string(bucket_bytes));
  // Reverse registration order; a new bucket when the size would pass bucket_bytes or the dtype changes.
  int64_t bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const Tensor& p = params_[k].second;
    if (!is_floating(p.dtype()))
      throw std::invalid_argument("GradReducer: parameter '" + params_[k].first + "' is " + dtype_name(p.dtype()) + ", not floating");
    const int64_t b = p.numel() * (int64_t)dtype_size(p.dtype());
    const bool fresh = buckets_.empty() || bytes + b > bucket_bytes ||
                       params_[buckets_.back().params[0]].second.dtype() != p.dtype();
    if (fresh) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().params.push_back(k);
    bytes += b;
    bucket_of_[k] = buckets_.size() - 1;
  }
  for (Bucket& bk : buckets_) {
    int64_t n = 0;
    for (size_t k : bk.params) {
      bk.offset.push_back(n);
      n += params_[k].second.numel();
    }
    const DType dt = params_[bk.params[0]].second.dtype();
    bk.buffer = Tensor::zeros({n + (int64_t)bk.params.size()}, dt);
    stats_.bytes += bk.buffer.numel() * (int64_t)dtype_size(dt);
  }
  stats_.buckets = (int64_t)buckets_.size();
  for (size_t k = 0; k < params_.size(); ++k)
    params_[k].second.register_post_accumulate_grad_hook([this, k](const Tensor&) { on_ready(k); });
}

GradReducer::~GradReducer() {
  for (auto& [name, p] : params_) p.register_post_accumulate_grad_hook(nullptr);
  for (Bucket& b : buckets_) comm_.wait(b.req);  // never free a buffer MPI still writes
}

void GradReducer::begin() {
  for (Bucket& b : buckets_) {
    comm_.wait(b.req);
    b.ready = 0;
    b.started = false;
  }
  next_start_ = 0;
  local_nonfinite_ = false;
  in_backward_ = true;
}

void GradReducer::inject_nan(const std::string& name) {
  for (size_t k = 0; k < params_.size(); ++k)
    if (name.empty() || params_[k].first == name) {
      poison_ = (int64_t)k;
      return;
    }
  throw std::invalid_argument("LOTGRAD_FAULT_NAN_GRAD: no parameter '" + name + "'");
}

void GradReducer::on_ready(size_t k) {
  if (!in_backward_) return;  // a backward outside a training step (not ours to reduce)
  Bucket& b = buckets_[bucket_of_[k]];
  if (++b.ready == (int64_t)b.params.size()) start_ready_buckets();
  for (size_t i = 0; i < next_start_; ++i) comm_.test(buckets_[i].req);  // lets MPI move the started ones on
}

// Gradients (zeros where undefined), then one flag per parameter: 1 where it has a gradient.
void GradReducer::pack(Bucket& b) {
  dispatch_float(b.buffer.dtype(), "GradReducer", [&]<class T>() {
    T* buf = b.buffer.data_ptr<T>();
    const int64_t flags = b.buffer.numel() - (int64_t)b.params.size();
    for (size_t i = 0; i < b.params.size(); ++i) {
      const size_t k = b.params[i];
      const Tensor& p = params_[k].second;
      const int64_t n = p.numel();
      T* dst = buf + b.offset[i];
      Tensor g = p.grad();
      if (g.defined()) {
        g = g.contiguous();
        local_nonfinite_ |= copy_counting_nonfinite(g.data_ptr<T>(), dst, n);
      } else {
        std::memset(dst, 0, (size_t)n * sizeof(T));
      }
      if ((int64_t)k == poison_ && n > 0) {
        dst[0] = (T)NAN;
        local_nonfinite_ = true;
      }
      buf[flags + (int64_t)i] = g.defined() ? T(1) : T(0);
    }
  });
}

void GradReducer::start_ready_buckets() {
  while (next_start_ < buckets_.size()) {
    Bucket& b = buckets_[next_start_];
    if (b.ready < (int64_t)b.params.size() && in_backward_) return;
    pack(b);
    b.req = b.buffer.dtype() == kFloat64 ? comm_.iallreduce_sum(b.buffer.data_ptr<double>(), b.buffer.numel())
                                         : comm_.iallreduce_sum(b.buffer.data_ptr<float>(), b.buffer.numel());
    b.started = true;
    ++next_start_;
  }
}

void GradReducer::unpack(const Bucket& b) {
  dispatch_float(b.buffer.dtype(), "GradReducer", [&]<class T>() {
    const T* buf = b.buffer.data_ptr<T>();
    const int64_t flags = b.buffer.numel() - (int64_t)b.params.size();
    for (size_t i = 0; i < b.params.size(); ++i) {
      const Tensor& p = params_[b.params[i]].second;
      if (buf[flags + (int64_t)i] == T(0)) {  // no rank had a gradient: none, as in one process
        p.zero_grad();
        continue;
      }
      Tensor g = p.grad();
      if (!g.defined() || !g.is_contiguous()) {
        g = Tensor::zeros(p.shape(), p.dtype());
        p.impl()->grad = g.impl_ptr();
      }
      std::memcpy(g.data_ptr<T>(), buf + b.offset[i], (size_t)p.numel() * sizeof(T));
      g.bump_version();
    }
  });
}

void GradReducer::finish() {
  stats_.started_early = 0;
  for (const Bucket& b : buckets_) stats_.started_early += b.started ? 1 : 0;
  in_backward_ = false;
  start_ready_buckets();  // what backward did not reach on this rank, in bucket order
  const auto t0 = std::chrono::steady_clock::now();
  for (Bucket& b : buckets_) comm_.wait(b.req);
  stats_.wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stats_.total_wait_s += stats_.wait_s;
  ++stats_.steps;
  for (const Bucket& b : buckets_) unpack(b);
  poison_ = -1;
}

}  // namespace lotgrad::dist
