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

// x rounded to T's precision and widened back (what a later load of a stored T gives).
template <typename T> __device__ __forceinline__ float round_to(float x) { return load_f32(store_as<T>(x)); }

// Eight consecutive elements at p widened to fp32 / rounded from fp32: one 16-byte access for
// bf16, two for float. p must be 16-byte aligned.
__device__ __forceinline__ void load8_f32(float (&v)[8], const float* p) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void load8_f32(float (&v)[8], const bf16* p) {
  const Bf16x8 w = *reinterpret_cast<const Bf16x8*>(p);
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = __bfloat162float(w.v[j]);
}
__device__ __forceinline__ void store8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(bf16* p, const float (&v)[8]) {
  Bf16x8 w;
#pragma unroll
  for (int j = 0; j < 8; ++j) w.v[j] = __float2bfloat16_rn(v[j]);
  *reinterpret_cast<Bf16x8*>(p) = w;
}

}  // namespace og::gpu
