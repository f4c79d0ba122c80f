// ReLU² activation of the MLP (out = max(x, 0)²) and its backward (dx = dy·2·max(x, 0)), bf16
// in and out, fp32 math. Launch shape: grid-stride, 256 threads, each thread handles 8
// consecutive elements per step (one 16-byte access when the pointers are 16-byte aligned,
// else 8 scalar accesses; the ragged tail is always scalar).
#include <algorithm>
#include <cstdint>

#include "core/cuda_utils.h"
#include "model/cuda/dtype.cuh"
#include "model/cuda/kernels.h"

namespace og::gpu {
namespace {

__device__ __forceinline__ float relu2(float x) {
  const float r = fmaxf(x, 0.0f);
  return r * r;
}
__device__ __forceinline__ float relu2_grad(float dy, float x) { return dy * 2.0f * fmaxf(x, 0.0f); }

template <bool kVec> __global__ void relu2_forward_kernel(bf16* out, const bf16* inp, int64_t n) {
  const int64_t groups = (n + 7) / 8;
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i0 = g * 8;
    if (kVec && i0 + 8 <= n) {
      Bf16x8 v = *reinterpret_cast<const Bf16x8*>(inp + i0);
#pragma unroll
      for (int j = 0; j < 8; ++j) v.v[j] = __float2bfloat16_rn(relu2(__bfloat162float(v.v[j])));
      *reinterpret_cast<Bf16x8*>(out + i0) = v;
    } else {
      for (int64_t i = i0; i < n && i < i0 + 8; ++i) out[i] = __float2bfloat16_rn(relu2(__bfloat162float(inp[i])));
    }
  }
}

template <bool kVec> __global__ void relu2_backward_kernel(bf16* dinp, const bf16* dout, const bf16* inp, int64_t n) {
  const int64_t groups = (n + 7) / 8;
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i0 = g * 8;
    if (kVec && i0 + 8 <= n) {
      Bf16x8 d = *reinterpret_cast<const Bf16x8*>(dout + i0);
      const Bf16x8 x = *reinterpret_cast<const Bf16x8*>(inp + i0);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        d.v[j] = __float2bfloat16_rn(relu2_grad(__bfloat162float(d.v[j]), __bfloat162float(x.v[j])));
      *reinterpret_cast<Bf16x8*>(dinp + i0) = d;
    } else {
      for (int64_t i = i0; i < n && i < i0 + 8; ++i)
        dinp[i] = __float2bfloat16_rn(relu2_grad(__bfloat162float(dout[i]), __bfloat162float(inp[i])));
    }
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
unsigned grid_for(int64_t n) { return (unsigned)std::clamp<int64_t>((n + 8 * 256 - 1) / (8 * 256), 1, 65536); }

}  // namespace

void relu2_forward(bf16* out, const bf16* inp, int64_t n, cudaStream_t stream) {
  OG_CHECK(n >= 0, "relu2_forward: n={}", n);
  if (n == 0) return;
  if (aligned16(out) && aligned16(inp))
    relu2_forward_kernel<true><<<grid_for(n), 256, 0, stream>>>(out, inp, n);
  else
    relu2_forward_kernel<false><<<grid_for(n), 256, 0, stream>>>(out, inp, n);
  CUDA_CHECK_LAUNCH();
}

void relu2_backward(bf16* dinp, const bf16* dout, const bf16* inp, int64_t n, cudaStream_t stream) {
  OG_CHECK(n >= 0, "relu2_backward: n={}", n);
  if (n == 0) return;
  if (aligned16(dinp) && aligned16(dout) && aligned16(inp))
    relu2_backward_kernel<true><<<grid_for(n), 256, 0, stream>>>(dinp, dout, inp, n);
  else
    relu2_backward_kernel<false><<<grid_for(n), 256, 0, stream>>>(dinp, dout, inp, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace og::gpu
