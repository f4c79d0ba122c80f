// Fused softmax cross-entropy over bf16 logits (the lm_head output of a chunk of rows), fp32
// math: pass 1 reads a row once for its max and sum of exponentials (online, per thread, then
// a block reduction) and the loss; pass 2 reads the row again (from L2) and overwrites it in
// place with dloss·(softmax − onehot(target)) in bf16. No fp32 logits are ever stored.
// Launch shape: one 512-thread block per row (grid = N); each thread handles 8 consecutive
// logits per step (one 16-byte access when V % 8 == 0 and the buffer is 16-byte aligned).
#include <cstdint>

#include "core/cuda_reduce.cuh"
#include "core/cuda_utils.h"
#include "model/cuda/dtype.cuh"
#include "model/cuda/kernels.h"

namespace og::gpu {
namespace {

constexpr int kThreads = 512;

// Online max/sum: fold a value v into (m, s) where s = Σ exp(x − m).
__device__ __forceinline__ void online_add(float& m, float& s, float v) {
  if (v > m) {
    s = s * __expf(m - v) + 1.0f;  // m = −inf initially: s = 0·0 + 1
    m = v;
  } else {
    s += __expf(v - m);
  }
}

template <bool kVec, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    crossentropy_kernel(float* __restrict__ losses, bf16* logits, const int32_t* __restrict__ targets, int64_t V,
                        float dloss) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  bf16* x = logits + row * V;
  const int32_t target = targets[row];
  const bool ignore = target < 0;
  const bool bad = target >= V;

  // Read the target logit before any thread can overwrite it (pass 2 comes after block syncs).
  float target_logit = 0.0f;
  if (threadIdx.x == 0 && !ignore && !bad) target_logit = __bfloat162float(x[target]);

  float m = -INFINITY, s = 0.0f;
  const int64_t groups = (V + 7) / 8;
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) {
    const int64_t i0 = g * 8;
    if (kVec) {
      const Bf16x8 v = *reinterpret_cast<const Bf16x8*>(x + i0);
#pragma unroll
      for (int j = 0; j < 8; ++j) online_add(m, s, __bfloat162float(v.v[j]));
    } else {
      for (int64_t i = i0; i < V && i < i0 + 8; ++i) online_add(m, s, __bfloat162float(x[i]));
    }
  }
  const float row_max = block_max(m, scratch);
  const float scaled = s == 0.0f ? 0.0f : s * __expf(m - row_max);
  const float row_sum = block_sum(scaled, scratch);
  const float lse = row_max + logf(row_sum);
  if (threadIdx.x == 0) losses[row] = ignore ? 0.0f : bad ? __int_as_float(0x7fc00000) : lse - target_logit;
  if (!kBackward) return;

  const float d = ignore ? 0.0f : bad ? __int_as_float(0x7fc00000) : dloss;
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) {
    const int64_t i0 = g * 8;
    if (kVec) {
      Bf16x8 v = *reinterpret_cast<const Bf16x8*>(x + i0);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float p = __expf(__bfloat162float(v.v[j]) - lse);
        v.v[j] = __float2bfloat16_rn(d * (p - (i0 + j == target ? 1.0f : 0.0f)));
      }
      *reinterpret_cast<Bf16x8*>(x + i0) = v;
    } else {
      for (int64_t i = i0; i < V && i < i0 + 8; ++i) {
        const float p = __expf(__bfloat162float(x[i]) - lse);
        x[i] = __float2bfloat16_rn(d * (p - (i == target ? 1.0f : 0.0f)));
      }
    }
  }
}

template <bool kBackward>
void launch(float* losses, bf16* logits, const int32_t* targets, int64_t N, int64_t V, float dloss,
            cudaStream_t stream) {
  OG_CHECK(N >= 0 && N < (int64_t(1) << 31) && V > 0 && V < (int64_t(1) << 31), "crossentropy: bad sizes N={} V={}", N,
           V);
  if (N == 0) return;
  const bool vec = V % 8 == 0 && (reinterpret_cast<uintptr_t>(logits) & 15) == 0;
  if (vec)
    crossentropy_kernel<true, kBackward><<<(unsigned)N, kThreads, 0, stream>>>(losses, logits, targets, V, dloss);
  else
    crossentropy_kernel<false, kBackward><<<(unsigned)N, kThreads, 0, stream>>>(losses, logits, targets, V, dloss);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void crossentropy_forward_backward(float* losses, bf16* logits, const int32_t* targets, int64_t N, int64_t V,
                                   float dloss, cudaStream_t stream) {
  launch<true>(losses, logits, targets, N, V, dloss, stream);
}

void crossentropy_forward(float* losses, const bf16* logits, const int32_t* targets, int64_t N, int64_t V,
                          cudaStream_t stream) {
  // The forward-only instantiation never writes through the pointer.
  launch<false>(losses, const_cast<bf16*>(logits), targets, N, V, 0.0f, stream);
}

}  // namespace og::gpu
