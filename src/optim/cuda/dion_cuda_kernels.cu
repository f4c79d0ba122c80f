// Dion's elementwise and per-column kernels on the GPU (see dion_cuda_kernels.h). Every kernel
// takes a grid (x: blocks of a grid-stride loop over one matrix, y: the matrix in the batch),
// except the column norms (x: tiles of 32 columns) and the sums of squares (one block each).
#include <algorithm>
#include <cmath>

#include "core/cuda_reduce.cuh"
#include "core/cuda_utils.h"
#include "optim/cuda/device_math.cuh"
#include "optim/cuda/dion_cuda_kernels.h"

namespace og::cuda {
namespace {

constexpr int kThreads = 256;
constexpr float kColumnNormEps = 1e-8f;  // Q <- R / (||R_j|| + eps), as the CPU reference

// Blocks per matrix for n elements per thread-block pass of `per_thread` elements per thread.
unsigned blocks_for(int64_t n, int per_thread = 1) {
  const int64_t per_block = (int64_t)kThreads * per_thread;
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((n + per_block - 1) / per_block, 1024));
}

// M <- M + G into the working copy (read from the state, fp32 or bf16); bf16 state: Q's working
// copy too. Block-level "any entry nonzero" sets nonzero[i].
template <int VEC, typename S>
__global__ void accumulate_kernel(const DionMatrixDesc* __restrict__ descs, int64_t numel, int64_t qn,
                                  int32_t* __restrict__ nonzero) {
  const DionMatrixDesc d = descs[blockIdx.y];
  const S* ms = static_cast<const S*>(d.m_state);
  const int64_t stride = (int64_t)gridDim.x * blockDim.x * VEC;
  int any = 0;
  for (int64_t i = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) * VEC; i < numel; i += stride) {
    if (VEC > 1 && i + VEC <= numel) {
      float m[VEC], g[VEC];
      load_vec<VEC>(ms + i, m);
      load_vec<VEC>(d.g + i, g);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        m[e] += g[e];
        any |= m[e] != 0.0f;
      }
      store_vec<VEC>(d.m + i, m);
    } else {
      for (int64_t j = i; j < std::min<int64_t>(i + VEC, numel); ++j) {
        const float m = to_f32(ms[j]) + d.g[j];
        d.m[j] = m;
        any |= m != 0.0f;
      }
    }
  }
  if constexpr (sizeof(S) == 2) {
    const bf16* qs = static_cast<const bf16*>(d.q_state);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < qn; i += (int64_t)gridDim.x * blockDim.x)
      d.q[i] = to_f32(qs[i]);
  }
  any = __syncthreads_or(any);
  if (threadIdx.x == 0 && any) nonzero[blockIdx.y] = 1;
}

__global__ void finalize_pr_kernel(const DionMatrixDesc* __restrict__ descs, int64_t pn, int64_t qn,
                                   const int32_t* __restrict__ nonzero) {
  const DionMatrixDesc d = descs[blockIdx.y];
  const bool zero = nonzero[blockIdx.y] == 0;
  const int64_t start = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = start; i < pn; i += stride) {
    const float v = d.p[i];
    d.p[i] = zero || !isfinite(v) ? 0.0f : v;
  }
  for (int64_t i = start; i < qn; i += stride) {
    const float v = zero ? d.q[i] : d.r[i];
    d.r[i] = isfinite(v) ? v : 0.0f;
  }
}

// Block (32, 8): column j = 32 * blockIdx.x + threadIdx.x of R_{blockIdx.y}; the 8 rows of threads
// stride the rows and their fp64 partial sums are added in a fixed order. Returns the column's sum
// of squares to the threads of row 0 (the others get 0).
__device__ double column_sumsq(const DionMatrixDesc& d, int64_t rows, int64_t r, double (&part)[8][32]) {
  const int64_t j = blockIdx.x * 32 + threadIdx.x;
  double ss = 0.0;
  if (j < r)
    for (int64_t i = threadIdx.y; i < rows; i += 8) {
      const double x = d.r[i * r + j];
      ss += x * x;
    }
  part[threadIdx.y][threadIdx.x] = ss;
  __syncthreads();
  double t = 0.0;
  if (threadIdx.y == 0)
    for (int y = 0; y < 8; ++y) t += part[y][threadIdx.x];
  return t;
}

// Q <- R / (||R_j|| + eps) per column, the norms from R itself (sums == nullptr) or from
// sums[matrix * r + j] (a row-sharded R: the sums of every rank's rows). Launch as column_sumsq.
__global__ void normalize_columns_kernel(const DionMatrixDesc* __restrict__ descs, int64_t rows, int64_t r,
                                         const double* __restrict__ sums) {
  __shared__ double part[8][32];
  __shared__ float denom[32];
  const DionMatrixDesc d = descs[blockIdx.y];
  const int64_t j = blockIdx.x * 32 + threadIdx.x;
  if (sums == nullptr) {
    const double t = column_sumsq(d, rows, r, part);
    if (threadIdx.y == 0) denom[threadIdx.x] = (float)sqrt(t) + kColumnNormEps;
  } else if (threadIdx.y == 0) {
    denom[threadIdx.x] = j < r ? (float)sqrt(sums[blockIdx.y * r + j]) + kColumnNormEps : 1.0f;
  }
  __syncthreads();
  if (j < r)
    for (int64_t i = threadIdx.y; i < rows; i += 8) d.q[i * r + j] = d.r[i * r + j] / denom[threadIdx.x];
}

__global__ void column_sumsq_kernel(const DionMatrixDesc* __restrict__ descs, int64_t rows, int64_t r,
                                    double* __restrict__ out) {
  __shared__ double part[8][32];
  const int64_t j = blockIdx.x * 32 + threadIdx.x;
  const double t = column_sumsq(descs[blockIdx.y], rows, r, part);
  if (threadIdx.y == 0 && j < r) out[blockIdx.y * r + j] = t;
}

// c[blockIdx.y][0..n) <- 0 (grid-stride over x).
__global__ void zero_batch_kernel(float* const* __restrict__ c, int64_t n) {
  float* x = c[blockIdx.y];
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = 0.0f;
}

__global__ void store_bf16_kernel(const DionMatrixDesc* __restrict__ descs, int64_t numel, int64_t qn) {
  const DionMatrixDesc d = descs[blockIdx.y];
  bf16* ms = static_cast<bf16*>(d.m_state);
  bf16* qs = static_cast<bf16*>(d.q_state);
  const int64_t start = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = start; i < numel; i += stride) ms[i] = __float2bfloat16_rn(d.m[i]);
  for (int64_t i = start; i < qn; i += stride) qs[i] = __float2bfloat16_rn(d.q[i]);
}

// One block (1024 threads) per matrix.
__global__ void __launch_bounds__(1024)
    sumsq_kernel(const DionMatrixDesc* __restrict__ descs, int64_t numel, double* __restrict__ out) {
  __shared__ double scratch[32];
  const float* m = descs[blockIdx.x].m;
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < numel; i += blockDim.x) s += (double)m[i] * m[i];
  s = gpu::block_sum(s, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

}  // namespace

void dion_accumulate(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t numel, int64_t qn,
                     StateDtype dtype, bool vec4, int32_t* nonzero) {
  const dim3 grid(blocks_for(std::max(numel, qn), vec4 ? 4 : 1), (unsigned)count);
  if (dtype == StateDtype::BF16) {
    if (vec4)
      accumulate_kernel<4, bf16><<<grid, kThreads, 0, s>>>(descs, numel, qn, nonzero);
    else
      accumulate_kernel<1, bf16><<<grid, kThreads, 0, s>>>(descs, numel, qn, nonzero);
  } else {
    if (vec4)
      accumulate_kernel<4, float><<<grid, kThreads, 0, s>>>(descs, numel, qn, nonzero);
    else
      accumulate_kernel<1, float><<<grid, kThreads, 0, s>>>(descs, numel, qn, nonzero);
  }
  CUDA_CHECK_LAUNCH();
}

void dion_finalize_pr(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t pn, int64_t qn,
                      const int32_t* nonzero) {
  finalize_pr_kernel<<<dim3(blocks_for(std::max(pn, qn)), (unsigned)count), kThreads, 0, s>>>(descs, pn, qn, nonzero);
  CUDA_CHECK_LAUNCH();
}

void dion_normalize_columns(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t rows, int64_t r,
                            const double* sums) {
  normalize_columns_kernel<<<dim3((unsigned)((r + 31) / 32), (unsigned)count), dim3(32, 8), 0, s>>>(descs, rows, r,
                                                                                                    sums);
  CUDA_CHECK_LAUNCH();
}

void dion_column_sumsq(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t rows, int64_t r, double* out) {
  column_sumsq_kernel<<<dim3((unsigned)((r + 31) / 32), (unsigned)count), dim3(32, 8), 0, s>>>(descs, rows, r, out);
  CUDA_CHECK_LAUNCH();
}

void dion_zero_batch(cudaStream_t s, float* const* c, int count, int64_t n) {
  if (count == 0 || n == 0) return;
  zero_batch_kernel<<<dim3(blocks_for(n), (unsigned)count), kThreads, 0, s>>>(c, n);
  CUDA_CHECK_LAUNCH();
}

void dion_store_bf16_state(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t numel, int64_t qn) {
  store_bf16_kernel<<<dim3(blocks_for(std::max(numel, qn)), (unsigned)count), kThreads, 0, s>>>(descs, numel, qn);
  CUDA_CHECK_LAUNCH();
}

void dion_momentum_sumsq(cudaStream_t s, const DionMatrixDesc* descs, int count, int64_t numel, double* out) {
  sumsq_kernel<<<(unsigned)count, 1024, 0, s>>>(descs, numel, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace og::cuda
