// Warp- and block-level sum / max reductions in a fixed order (butterfly shuffles, then one warp
// over the per-warp partials), so every reduction is bit-reproducible run to run. One copy for
// the model's kernels (fp32), the optimizers' (fp32) and Dion's orthogonalization (fp64).
// Block reductions need blockDim.x a multiple of 32 (at most 1024) and every thread of the block
// to call them; the result is returned to all threads. `scratch` is 32 elements of shared memory.
#pragma once
#include <cuda_runtime.h>

#include <cmath>

namespace og {

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T> __device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

namespace detail {
// Reduce within each warp, park one partial per warp in scratch, reduce the partials in warp 0's
// lanes (every warp does it, so every thread gets the result).
template <typename T, typename WarpOp>
__device__ __forceinline__ T block_reduce(T v, T* scratch, T identity, WarpOp warp_op) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_op(v);
  __syncthreads();  // scratch may still be read by a previous call: safe to call in a row
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_op(lane < nwarps ? scratch[lane] : identity);
}
}  // namespace detail

template <typename T> __device__ __forceinline__ T block_sum(T v, T* scratch) {
  return detail::block_reduce(v, scratch, T(0), [](T x) { return warp_sum(x); });
}

template <typename T> __device__ __forceinline__ T block_max(T v, T* scratch) {
  return detail::block_reduce(v, scratch, T(-INFINITY), [](T x) { return warp_max(x); });
}

}  // namespace og
