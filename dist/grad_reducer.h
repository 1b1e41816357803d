// Data-parallel gradient reduction (PyTorch's DistributedDataParallel reducer, in small): the
// parameters' gradients are summed across ranks in buckets while the backward pass runs.
//
// Parameters are grouped into buckets of about bucket_bytes, in reverse registration order
// (the order backward finishes them: the last layer's first). Each parameter has a
// post-accumulate-grad hook (core/tensor.h); when every parameter of a bucket has its final
// gradient, the bucket is packed into one flat buffer and its sum started with a non-blocking
// all-reduce. Buckets start strictly in bucket order, so every rank issues the same sequence
// of collective calls whatever order its backward pass took. finish() starts what is left (a
// parameter this rank's backward never reached), waits, and writes the sums back into .grad.
//
// The sum of the ranks' gradients is the global gradient when each rank's loss was scaled
// by its share of the global batch (trainer.cpp). A parameter that got no gradient on any
// rank keeps an undefined .grad, as in one process (each bucket carries one "defined" flag
// per parameter).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../core/tensor.h"
#include "comm.h"

namespace lotgrad::dist {

struct ReducerStats {
  int64_t buckets = 0;
  int64_t bytes = 0;           // bytes each rank contributes to the sums per step (gradients and flags)
  int64_t started_early = 0;   // buckets of the last step started before backward returned
  double wait_s = 0;           // the last step: seconds finish() waited for reductions
  double total_wait_s = 0;     // over every step
  int64_t steps = 0;
};

class GradReducer {
 public:
  // params: (name, leaf) in registration order (nn::Module::named_parameters()).
  GradReducer(Comm& comm, std::vector<std::pair<std::string, Tensor>> params, int64_t bucket_bytes = 256 << 10);
  ~GradReducer();  // removes the hooks
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Before each backward pass.
  void begin();
  // After it: every bucket summed, .grad holds the sum over ranks.
  void finish();
  // This rank's own gradients held a NaN or Inf before the sum (this step).
  bool local_nonfinite() const { return local_nonfinite_; }
  // Test hook (LOTGRAD_FAULT_NAN_GRAD under mpirun): this step, element 0 of the named
  // parameter's local gradient becomes NaN before it is summed ("" = the first parameter).
  void inject_nan(const std::string& name);
  const ReducerStats& stats() const { return stats_; }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    std::vector<int64_t> offset; // each parameter's first element in the buffer
    Tensor buffer;               // (numel + params.size(),) of the parameters' dtype: gradients, then flags
    int64_t ready = 0;
    bool started = false;
    Request req;
  };
  void on_ready(size_t param);
  void pack(Bucket& b);
  void start_ready_buckets();
  void unpack(const Bucket& b);

  Comm& comm_;
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<size_t> bucket_of_;  // per parameter
  std::vector<Bucket> buckets_;
  size_t next_start_ = 0;          // buckets start in order: the first not yet started
  bool in_backward_ = false;
  bool local_nonfinite_ = false;
  int64_t poison_ = -1;            // inject_nan's parameter index for this step
  ReducerStats stats_;
};

}  // namespace lotgrad::dist
