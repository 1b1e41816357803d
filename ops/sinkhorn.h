// Batched log-domain entropic optimal transport (Sinkhorn), differentiable by unrolling
// the truncated iteration or by implicit differentiation of the fixed point.
//
// Problem, per batch entry: cost C (n, m), log-weights log_a (n), log_b (m), eps > 0.
//   P_ij = exp((f_i + g_j - C_ij) / eps),   P 1 = a,  P^T 1 = b.
// f, g are the dual potentials in cost units (the OTT-JAX convention). The solver works on
// scaled, shifted costs (C - rowmin - colmin) / eps internally and converts back, so the
// potentials returned are those of the cost you passed in.
//
// Padding: a log-weight of -inf is a zero-mass entry. Its row (column) of the plan is
// exactly 0, its potential is -inf, and it gets zero gradient. Nothing becomes NaN.
//
// Marginal totals must agree to 1e-4 relative (else ShapeError). Within that, the side
// with fewer entries (the smaller of n, m) is rescaled to the other side's total; this
// makes the op a smooth function of unconstrained log-weights, so the gradients w.r.t.
// log_a and log_b are unique (no gauge constant) and can be checked by finite differences.
// An omitted (undefined) log-weight means uniform weights of total 1.
//
// Gradient modes (see docs/sinkhorn.md):
//   unrolled: the exact gradient of the truncated iteration that was run. The backward
//             keeps only the small side's potentials per half-step (O(steps * min(n,m)))
//             and recomputes the softmaxes.
//   implicit: the gradient of the exact fixed point, from a min(n,m) x min(n,m) Laplacian
//             solve (gauge fixed by sum(v) = 0). Memory O(n m), independent of the steps.
//             Only as accurate as the forward converged (error O(tol)).
//   none:     outputs carry no history.
// Warm-start potentials are treated as constants in implicit mode; unrolled mode
// differentiates through them.
#pragma once
#include <cstdint>

#include "../core/tensor.h"

namespace lotgrad {

enum class SinkhornGrad { unrolled, implicit, none };
enum class SinkhornSide { rows, cols };

struct SinkhornOptions {
  // Cap on half-steps (a row update or a column update each count one). The sequence
  // alternates and is aligned so that the final half-step updates `last`.
  int64_t max_half_steps = 100;
  // Side updated last: rows gives exact row sums P 1 = a (like softmax), cols exact
  // column sums. The LOTFormer reference (row first, T half-steps) is last = rows for odd
  // T and last = cols for even T.
  SinkhornSide last = SinkhornSide::rows;
  // Stop when the marginal error of the other side, sum |marginal - target| / total mass,
  // falls below tol. Measured for free inside that side's update (the update is then
  // skipped, so `last` stays exact). 0 runs all max_half_steps.
  double tol = 0.0;
  SinkhornGrad grad = SinkhornGrad::implicit;
  bool return_plan = true;
  bool return_log_plan = false;
  // Optional warm start, cost units, shapes (..., n) and (..., m) broadcastable to C's
  // batch. Undefined means zero potentials.
  Tensor f_init, g_init;
};

struct SinkhornResult {
  Tensor f;         // (..., n) row potentials, cost units; -inf on zero-mass rows
  Tensor g;         // (..., m) column potentials
  Tensor plan;      // (..., n, m) when return_plan
  Tensor log_plan;  // (..., n, m) when return_log_plan; -inf on padding
  Tensor half_steps;  // (...) i64: half-steps actually run per problem
  Tensor error;       // (...) f64: last measured marginal error (other side; -1 if never measured)
  bool converged = false;  // tol > 0 and every problem stopped below tol
};

// C (..., n, m); log_a (..., n) and log_b (..., m) broadcast over C's batch dims or are
// undefined (uniform); eps a one-element tensor (may require grad) or a double.
SinkhornResult sinkhorn(const Tensor& C, const Tensor& log_a, const Tensor& log_b, const Tensor& eps,
                        const SinkhornOptions& opts = {});
SinkhornResult sinkhorn(const Tensor& C, const Tensor& log_a, const Tensor& log_b, double eps,
                        const SinkhornOptions& opts = {});

// Fused plan products for consumers that need only P W and P^T V (LOTFormer, Sinkformer):
//   PW  = P W    with W (..., m, d1) -> (..., n, d1)
//   PtV = P^T V  with V (..., n, d2) -> (..., m, d2)
// Either W or V may be undefined. The plan is never stored, and the backward never forms
// dL/dP: it recomputes P row by row and feeds P o (dPW W^T + V dPtV^T) straight into the
// Sinkhorn backward. Gradients flow to C, log_a, log_b, eps, W and V.
struct SinkhornApplyResult {
  Tensor PW, PtV, f, g;
  Tensor half_steps, error;
  bool converged = false;
};
SinkhornApplyResult sinkhorn_apply(const Tensor& C, const Tensor& log_a, const Tensor& log_b, const Tensor& eps,
                                   const Tensor& W, const Tensor& V, const SinkhornOptions& opts = {});
SinkhornApplyResult sinkhorn_apply(const Tensor& C, const Tensor& log_a, const Tensor& log_b, double eps,
                                   const Tensor& W, const Tensor& V, const SinkhornOptions& opts = {});

}  // namespace lotgrad
