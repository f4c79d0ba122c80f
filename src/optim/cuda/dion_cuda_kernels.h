// The elementwise and per-column kernels of Dion's step on the GPU (dion_cuda.cu), each over a
// batch of same-shape matrices whose pointers come from a DionMatrixDesc table on the device.
// The orthonormalization is in dion_cuda_ortho.h; the products are cuBLAS SGEMMs.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "optim/optimizer.h"

namespace og::cuda {

// One matrix of a batch. m and q are the fp32 working copies (the state itself for fp32 state;
// scratch slots for bf16 state, converted on the way in and out).
struct DionMatrixDesc {
  const float* g;  // gradient, rows x cols
  void* m_state;   // momentum state (fp32 or bf16), rows x cols
  void* q_state;   // Q state (fp32 or bf16), cols_b x r
  float* m;        // working momentum
  float* q;        // working Q
  float* p;        // P, rows_b x r
  float* r;        // R, cols_b x r
};

// M <- M + G (fp32 working copy; read from bf16 state if so) and, for bf16 state, Q's working
// copy from its state. nonzero[i] is set to 1 if M_i has an entry != 0 (NaN counts); the caller
// zeroes it first. vec4: numel % 4 == 0 and g, m, m_state 16-byte aligned.
void dion_accumulate(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t numel, int64_t qn,
                     StateDtype dtype, bool vec4, int32_t* nonzero);

// After R = B^T P: an all-zero M_i gives P_i = 0 and R_i = Q_i (working Q); otherwise the
// non-finite entries of P_i and R_i become 0 (as the reference's nan_to_num).
void dion_finalize_pr(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t pn, int64_t qn,
                      const int32_t* nonzero);

// Q_i <- R_i with each column divided by (its l2 norm, summed in fp64, + 1e-8). R, Q: rows x r.
// sums: the columns' sums of squares (count x r, fp64) when R's rows are spread over ranks (a
// wide matrix's row shards: dion_column_sumsq, all-reduced); nullptr: summed here over R's rows.
void dion_normalize_columns(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t rows, int64_t r,
                            const double* sums = nullptr);

// out[i * r + j] = sum over the rows of R_i[:, j]^2 in fp64 (the same order as dion_normalize_columns).
void dion_column_sumsq(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t rows, int64_t r, double* out);

// c[i][0..n) <- 0 for the `count` device pointers c (a device array).
void dion_zero_batch(cudaStream_t s, float* const* c, int count, int64_t n);

// bf16 state: momentum and Q states <- round-to-nearest bf16 of the working copies.
void dion_store_bf16_state(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t numel, int64_t qn);

// out[i] = sum of squares of the working momentum M_i, in fp64 (diagnostics).
void dion_momentum_sumsq(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t numel, double* out);

}  // namespace og::cuda
