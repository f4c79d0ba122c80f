// Per-token losses -> a running fp64 sum on the device (see loss_sum.h).
// Launch shape: one block of 1024 threads (the loss vector is at most B·T floats, tiny).
#include "core/cuda_utils.h"
#include "model/cuda/loss_sum.h"

namespace og::gpu {
namespace {

constexpr int kThreads = 1024;

__global__ void __launch_bounds__(kThreads)
    accumulate_loss_sum_kernel(double* acc, const float* losses, int64_t n, double scale) {
  __shared__ double partial[kThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += (double)losses[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) acc[0] += scale * partial[0];
}

}  // namespace

void accumulate_loss_sum(double* acc, const float* losses, int64_t n, double scale, cudaStream_t stream) {
  OG_CHECK(n >= 0, "accumulate_loss_sum: n={}", n);
  accumulate_loss_sum_kernel<<<1, kThreads, 0, stream>>>(acc, losses, n, scale);
  CUDA_CHECK_LAUNCH();
}

}  // namespace og::gpu
