// Matrix products on OpenBLAS (cblas_sgemm / cblas_dgemm), f32 and f64.
//
// Layout: a 2-d operand with unit column stride goes to BLAS as-is (NoTrans, ld = row
// stride); one with unit row stride (a transposed view) goes as Trans (ld = column stride);
// anything else (stride 0, two non-unit strides) is copied to contiguous first.
//
// Batches: BLAS is called once per batch matrix from a plain serial loop, and OpenBLAS
// threads each call internally. We do not parallelise the batch loop: BLAS must never run
// inside an OpenMP parallel region (the OpenMP OpenBLAS would silently go single-threaded,
// nested pools oversubscribe), and one owner of the threads keeps results bit-identical
// for a fixed thread count. Where a batch can be folded into one big GEMM it is:
//   (B.., n, k) x (k, m)         -> one (B..n, k) x (k, m) GEMM (rows merged; m >= 16),
//   sum over batch of X_b . Y_b  -> one (n, B..k) x (B..k, m) GEMM (inner dim merged),
// the second being the weight gradient of a broadcast (e.g. linear) operand.
#pragma once
#include "../core/tensor.h"

namespace lotgrad {

// PyTorch torch.matmul: 1-d x 1-d is a dot product (0-d result); a 1-d first operand is
// treated as (1, k) and a 1-d second operand as (k, 1), the added dim removed afterwards;
// otherwise a (..., n, k) x (..., k, m) -> (..., n, m) with the batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);

// Strict batched product: a (B, n, k), b (B, k, m) -> (B, n, m). No broadcasting.
Tensor bmm(const Tensor& a, const Tensor& b);

// 2-d product: a (n, k), b (k, m) -> (n, m).
Tensor mm(const Tensor& a, const Tensor& b);

// PyTorch F.linear: x (..., in), weight (out, in), bias (out) or undefined -> (..., out).
// One GEMM for any number of leading dims when x's rows are evenly strided; the bias is
// written into the output first and accumulated by the GEMM (beta = 1), so no extra pass.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

namespace detail {
// The batched-GEMM engine behind matmul and its gradients (no autograd):
//   x (Sx.., n, k), y (Sy.., k, m) -> out (Ob.., n, m) where the batch shapes Sx and Sy
//   broadcast to S, and out_batch is S itself or a shape S reduces to (as in sum_to): the
//   products of the reduced batch entries are summed in a fixed order (deterministic).
// If init is defined it is broadcast into out first and the products are added to it.
Tensor batched_gemm(const Tensor& x, const Tensor& y, const Shape& out_batch, const Tensor& init = Tensor());
// Number of BLAS GEMM calls made by this thread so far (tests check the folding).
int64_t gemm_call_count();
}  // namespace detail

}  // namespace lotgrad
