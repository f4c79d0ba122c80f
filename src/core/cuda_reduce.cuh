// Warp- and block-level reductions in a fixed order (bit-reproducible run to run), shared by the
// model kernels (normalization, loss, attention) and the optimizer kernels (fp32 norms; Dion's
// fp64 norms and Householder reflections). The warp versions are butterflies: every lane gets the
// same result. Block versions require blockDim.x to be a multiple of 32 (<= 1024) and every
// thread of the block to call them; the result is returned to all threads. `scratch` is 32
// elements of __shared__ memory; the functions sync before writing it and after, so they may be
// called several times in a row with the same scratch.
#pragma once
#include <cuda_runtime.h>

#include <cmath>

namespace og::gpu {

// kLanes < 32: the sum over each aligned group of kLanes lanes (a power of two), in every lane of it.
template <typename T, int kLanes = 32> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename T> __device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum(lane < nwarps ? scratch[lane] : T(0));
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_max(lane < nwarps ? scratch[lane] : -INFINITY);
}

}  // namespace og::gpu
