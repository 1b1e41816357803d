// A direct f32 GEMM for the skinny products of a small transformer: tall activations times
// small weights (M large, K and N <= 256) and the weight gradients that reduce over the
// tokens (M and N small, K large). OpenBLAS packs both operands, zeroes C in a separate pass
// for beta = 0 and then reads C back, so on these shapes it moves about three times the
// bytes the product needs and stops scaling past one core. This kernel reads A in place
// (any strides), packs only a B whose rows are not contiguous (a small weight), writes each
// C element once (bias and accumulation folded in), and runs on OpenMP over row tiles.
// matmul.cpp routes a product here when small_gemm_applies(); everything else goes to BLAS.
#pragma once
#include <cstdint>

namespace lotgrad::detail {

// C (M, N), row stride ldc, = A·B (+ C when accumulate) (+ bias[j] on every row when bias):
// A(i, k) = A[i*a_rs + k*a_cs], B(k, j) = B[k*b_rs + j*b_cs].
void small_sgemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B,
                 int64_t b_rs, int64_t b_cs, float* C, int64_t ldc, bool accumulate, const float* bias);

// Whether small_sgemm is the faster path for an (M, K) x (K, N) product.
bool small_gemm_applies(int64_t M, int64_t N, int64_t K);

// Routing switch for tests and benchmarks (on by default): false sends every product to BLAS.
void set_small_gemm_enabled(bool on);
bool small_gemm_enabled();

}  // namespace lotgrad::detail
