// Element types of the CUDA path and their conversions (device side).
// Activations and matmul inputs are bf16; accumulations, statistics and master weights fp32.
// Kernels templated on a storage type T (float or bf16) read with load_f32 and write with
// store_as<T>, so every arithmetic step happens in fp32 and rounding happens once, on store.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace og::gpu {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float load_f32(float x) { return x; }
__device__ __forceinline__ float load_f32(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T store_as(float x);
template <> __device__ __forceinline__ float store_as<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 store_as<bf16>(float x) { return __float2bfloat16_rn(x); }

// Eight bf16 moved as one 16-byte word (the width of one vectorized global access).
struct alignas(16) Bf16x8 {
  bf16 v[8];
};

}  // namespace og::gpu
