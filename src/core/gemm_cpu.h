// CPU general matrix multiply, row-major, the one dense-matmul routine of the CPU path
// (model ops, Newton-Schulz, Dion's power iteration all call it):
//   C[M, N] = alpha * op(A)[M, K] * op(B)[K, N] + beta * C
// op(X) = X^T when the trans flag is set; lda/ldb/ldc are row strides of the stored matrices.
// Parallel over rows of C with OpenMP. Instantiated for float and double.
#pragma once
#include <cstdint>

namespace og::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace og::cpu
