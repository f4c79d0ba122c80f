// Whole-buffer reductions and precision conversions:
//  - sum_squares: squared L2 norm of an fp32 buffer (gradient norm), fp64 accumulation,
//    deterministic two-pass (fixed grid of kSumSquaresPartials blocks x 256 threads, each block
//    writes one partial; then one 1024-thread block adds the partials in a fixed tree order).
//  - fp32 <-> bf16 conversion (round to nearest even), grid-stride, 256 threads, coalesced
//    scalar accesses (one element per thread per step).
#include <algorithm>

#include "core/cuda_utils.h"
#include "model/cuda/dtype.cuh"
#include "model/cuda/kernels.h"

namespace og::gpu {
namespace {

// Sum over the block in fp64 (blockDim.x a power of two <= 1024); result valid in thread 0.
__device__ double block_sum_f64(double v, double* smem) {
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  return smem[0];
}

// Pass 1: block b sums x[i]² for i = b·256 + tid + k·(grid·256): a fixed assignment of elements
// to threads for a given n, so the result does not depend on scheduling.
__global__ void sum_squares_partial_kernel(double* partials, const float* x, int64_t n) {
  __shared__ double smem[256];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const double v = x[i];
    acc += v * v;
  }
  const double s = block_sum_f64(acc, smem);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Pass 2: one block of kSumSquaresPartials threads.
__global__ void sum_squares_final_kernel(double* result, const double* partials) {
  __shared__ double smem[kSumSquaresPartials];
  const double s = block_sum_f64(partials[threadIdx.x], smem);
  if (threadIdx.x == 0) result[0] = s;
}

__global__ void f32_to_bf16_kernel(bf16* out, const float* in, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void bf16_to_f32_kernel(float* out, const bf16* in, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = __bfloat162float(in[i]);
}

__global__ void add_f32_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] += x[i];
}

unsigned grid_for(int64_t n) { return (unsigned)std::clamp<int64_t>((n + 1023) / 1024, 1, 65536); }

}  // namespace

void sum_squares(double* result, double* partials, const float* x, int64_t n, cudaStream_t stream) {
  static_assert(kSumSquaresPartials == 1024, "the final pass is one block of kSumSquaresPartials threads");
  OG_CHECK(n >= 0, "sum_squares: n={}", n);
  sum_squares_partial_kernel<<<kSumSquaresPartials, 256, 0, stream>>>(partials, x, n);
  CUDA_CHECK_LAUNCH();
  sum_squares_final_kernel<<<1, kSumSquaresPartials, 0, stream>>>(result, partials);
  CUDA_CHECK_LAUNCH();
}

void convert_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t stream) {
  OG_CHECK(n >= 0, "convert_f32_to_bf16: n={}", n);
  if (n == 0) return;
  f32_to_bf16_kernel<<<grid_for(n), 256, 0, stream>>>(out, in, n);
  CUDA_CHECK_LAUNCH();
}

void add_f32(float* y, const float* x, int64_t n, cudaStream_t stream) {
  OG_CHECK(n >= 0, "add_f32: n={}", n);
  if (n == 0) return;
  add_f32_kernel<<<grid_for(n), 256, 0, stream>>>(y, x, n);
  CUDA_CHECK_LAUNCH();
}

void convert_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t stream) {
  OG_CHECK(n >= 0, "convert_bf16_to_f32: n={}", n);
  if (n == 0) return;
  bf16_to_f32_kernel<<<grid_for(n), 256, 0, stream>>>(out, in, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace og::gpu
