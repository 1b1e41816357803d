// Gradient clipping and finite checks.
#pragma once
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/autograd.h"
#include "../core/tensor.h"

namespace lotgrad {

// Scales every .grad in place by min(1, max_norm / (total + 1e-6)) (PyTorch's rule) and
// returns the total norm over all gradients together, as if concatenated. norm_type is
// 2.0 (default), 1.0, or infinity. The norm is accumulated in double over fixed 4096-element
// blocks summed in order, so it is bitwise the same for any thread count. Parameters
// without .grad are skipped. A non-finite total throws NonFiniteError when
// error_if_nonfinite, else the (NaN-producing) scaling goes ahead as in PyTorch.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0,
                       bool error_if_nonfinite = false);
// The same total norm without scaling.
double grad_norm(const std::vector<Tensor>& params, double norm_type = 2.0);

class NonFiniteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct NonFiniteReport {
  int64_t tensor_index = -1;   // position in the list
  std::string name;            // names[tensor_index], or "#<index>" without names
  bool in_grad = false;        // found in .grad rather than the value
  Shape index;                 // first bad element, row-major order
  int64_t flat_index = -1;
  double value = 0.0;          // the NaN or Inf
  // "gradient of 'name' <tensor_desc> holds nan at index (1, 2) (flat 6)"
  std::string message(const std::string& tensor_desc = "") const;
};

enum class FiniteCheck { values, grads, both };

// The first NaN/Inf in list order (per tensor: value first, then grad), or nullopt.
std::optional<NonFiniteReport> find_nonfinite(const std::vector<Tensor>& tensors,
                                              const std::vector<std::string>& names = {},
                                              FiniteCheck what = FiniteCheck::both);
// Every tensor whose value or .grad (as `what` says; per tensor value first, then grad) holds
// NaN/Inf, in list order, with how many of its elements do: a diverged training step names
// the first and counts them all.
struct NonFiniteTensor {
  int64_t tensor_index = -1;
  std::string name;       // names[tensor_index], or "#<index>" without names
  bool in_grad = false;   // counted in .grad rather than the value
  NonFiniteCount count;   // NaN and Inf elements
  int64_t numel = 0;
};
std::vector<NonFiniteTensor> list_nonfinite(const std::vector<Tensor>& tensors, const std::vector<std::string>& names = {},
                                            FiniteCheck what = FiniteCheck::both);
// Throws NonFiniteError with find_nonfinite's message, e.g.
// "check_finite: gradient of 'fc1.weight' (3, 4) f32 holds nan at index (1, 2) (flat 6)".
void check_finite(const std::vector<Tensor>& tensors, const std::vector<std::string>& names = {},
                  FiniteCheck what = FiniteCheck::both);

}  // namespace lotgrad
