#include "core/gemm_cpu.h"

#include <algorithm>
#include <vector>

namespace og::cpu {

// Strategy: make the innermost loop run over contiguous memory so the compiler vectorizes it.
//  - op(B) = B (not transposed): C[i, :] += A(i, k) * B[k, :]   (axpy over rows of B)
//  - op(B) = B^T: C[i, j] = dot(A(i, :), B[j, :])              (dot over rows of B)
// op(A) = A^T is handled by reading A(i, k) = A[k * lda + i] (a scalar per k).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  auto a_at = [&](int64_t i, int64_t k) { return trans_a ? A[k * lda + i] : A[i * lda + k]; };
  if (!trans_b) {
#pragma omp parallel
    {
      std::vector<T> acc(N);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < M; ++i) {
        std::fill(acc.begin(), acc.end(), T(0));
        T* a = acc.data();
        for (int64_t k = 0; k < K; ++k) {
          const T aik = a_at(i, k);
          const T* b = B + k * ldb;
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) a[j] += aik * b[j];
        }
        T* c = C + i * ldc;
        if (beta == T(0)) {
          for (int64_t j = 0; j < N; ++j) c[j] = alpha * a[j];
        } else {
          for (int64_t j = 0; j < N; ++j) c[j] = alpha * a[j] + beta * c[j];
        }
      }
    }
  } else {
#pragma omp parallel
    {
      std::vector<T> arow(K);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < M; ++i) {
        for (int64_t k = 0; k < K; ++k) arow[k] = a_at(i, k);
        const T* a = arow.data();
        T* c = C + i * ldc;
        for (int64_t j = 0; j < N; ++j) {
          const T* b = B + j * ldb;
          T s = T(0);
#pragma omp simd reduction(+ : s)
          for (int64_t k = 0; k < K; ++k) s += a[k] * b[k];
          c[j] = beta == T(0) ? alpha * s : alpha * s + beta * c[j];
        }
      }
    }
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

}  // namespace og::cpu
