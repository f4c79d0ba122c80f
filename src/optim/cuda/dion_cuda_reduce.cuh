// fp64 sums over a warp or a block in a fixed order (bit-reproducible run to run), for Dion's
// norms and Householder reflections on the GPU (the fp32 versions are in device_math.cuh).
#pragma once
#include <cuda_runtime.h>

namespace og::cuda {

// Sum over the 32 lanes of a warp (butterfly: every lane gets the same result).
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `scratch` is 32 doubles of shared memory. Contains __syncthreads: call from all threads.
__device__ __forceinline__ double block_sum_d(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum_d(v);
  __syncthreads();  // scratch may still be read by the previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum_d(lane < nwarps ? scratch[lane] : 0.0);
}

}  // namespace og::cuda
