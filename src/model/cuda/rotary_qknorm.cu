// Rotary position embedding fused with the per-head RMSNorm of q and k (QK-norm), forward and
// backward, on x[B, T, H, hd] viewed as N = B·T·H head vectors of hd elements.
// Rotation (halves, i < hd/2, t = position): theta = t·base^(−2i/hd),
//   z[i] = x[i]·cos + x[i+hd/2]·sin,   z[i+hd/2] = −x[i]·sin + x[i+hd/2]·cos,
// then out = z·rstd, rstd = 1/sqrt(mean(z²) + eps). One kernel reads x once for the statistics
// and once to write (no rotated intermediate in memory). Angles are computed in fp32 with the
// accurate sincosf (|theta| <= T, well inside its fast-reduction range).
// Launch shape (both kernels): one warp per head vector, 8 per 256-thread block.
#include "core/cuda_utils.h"
#include "model/cuda/dtype.cuh"
#include "model/cuda/kernels.h"
#include "model/cuda/reduce.cuh"

namespace og::gpu {
namespace {

constexpr int kRowsPerBlock = 8;

__device__ __forceinline__ void rotary_angle(int t, int i, int hd, float log2_base, float* s, float* c) {
  const float inv_freq = exp2f(-(float)(2 * i) / (float)hd * log2_base);  // base^(−2i/hd)
  sincosf((float)t * inv_freq, s, c);
}

// No __restrict__ on out/inp: out may alias inp (pass 2 of a lane rewrites only its own elements).
__global__ void rotary_qknorm_forward_kernel(bf16* out, float* __restrict__ rstd, const bf16* inp, int64_t N, int T,
                                             int H, int hd, float log2_base, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= N) return;
  const int t = (int)((row / H) % T);
  const int half = hd / 2;
  const bf16* x = inp + row * hd;
  float ss = 0.0f;
  for (int i = lane; i < half; i += 32) {
    float s, c;
    rotary_angle(t, i, hd, log2_base, &s, &c);
    const float x1 = __bfloat162float(x[i]), x2 = __bfloat162float(x[i + half]);
    const float z1 = x1 * c + x2 * s, z2 = -x1 * s + x2 * c;
    ss += z1 * z1 + z2 * z2;
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / (float)hd + eps);
  bf16* o = out + row * hd;
  for (int i = lane; i < half; i += 32) {
    float s, c;
    rotary_angle(t, i, hd, log2_base, &s, &c);
    const float x1 = __bfloat162float(x[i]), x2 = __bfloat162float(x[i + half]);
    o[i] = __float2bfloat16_rn((x1 * c + x2 * s) * r);
    o[i + half] = __float2bfloat16_rn((-x1 * s + x2 * c) * r);
  }
  if (lane == 0) rstd[row] = r;
}

// With y = out (= z·r): dz = r·(dy − y·mean(dy·y)), then dx = Rᵀ·dz:
//   dx[i] = dz[i]·cos − dz[i+hd/2]·sin,   dx[i+hd/2] = dz[i]·sin + dz[i+hd/2]·cos.
// dinp may alias dout.
__global__ void rotary_qknorm_backward_kernel(bf16* dinp, const bf16* dout, const bf16* __restrict__ out,
                                              const float* __restrict__ rstd, int64_t N, int T, int H, int hd,
                                              float log2_base) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= N) return;
  const int t = (int)((row / H) % T);
  const int half = hd / 2;
  const bf16* dy = dout + row * hd;
  const bf16* y = out + row * hd;
  float dot = 0.0f;
  for (int i = lane; i < hd; i += 32) dot += __bfloat162float(dy[i]) * __bfloat162float(y[i]);
  const float mean_dot = warp_sum(dot) / (float)hd;
  const float r = rstd[row];
  bf16* dx = dinp + row * hd;
  for (int i = lane; i < half; i += 32) {
    float s, c;
    rotary_angle(t, i, hd, log2_base, &s, &c);
    const float dz1 = r * (__bfloat162float(dy[i]) - __bfloat162float(y[i]) * mean_dot);
    const float dz2 = r * (__bfloat162float(dy[i + half]) - __bfloat162float(y[i + half]) * mean_dot);
    dx[i] = __float2bfloat16_rn(dz1 * c - dz2 * s);
    dx[i + half] = __float2bfloat16_rn(dz1 * s + dz2 * c);
  }
}

int64_t check_sizes(const char* what, int B, int T, int H, int hd) {
  OG_CHECK(B >= 0 && T > 0 && H > 0 && hd > 0 && hd % 2 == 0, "{}: bad sizes B={} T={} H={} hd={} (hd must be even)",
           what, B, T, H, hd);
  return (int64_t)B * T * H;
}

}  // namespace

void rotary_qknorm_forward(bf16* out, float* rstd, const bf16* inp, int B, int T, int H, int hd, float base, float eps,
                           cudaStream_t stream) {
  const int64_t N = check_sizes("rotary_qknorm_forward", B, T, H, hd);
  OG_CHECK(base > 1.0f, "rotary_qknorm_forward: base {} must be > 1", base);
  if (N == 0) return;
  const unsigned blocks = (unsigned)((N + kRowsPerBlock - 1) / kRowsPerBlock);
  rotary_qknorm_forward_kernel<<<blocks, 32 * kRowsPerBlock, 0, stream>>>(out, rstd, inp, N, T, H, hd, log2f(base),
                                                                          eps);
  CUDA_CHECK_LAUNCH();
}

void rotary_qknorm_backward(bf16* dinp, const bf16* dout, const bf16* out, const float* rstd, int B, int T, int H,
                            int hd, float base, cudaStream_t stream) {
  const int64_t N = check_sizes("rotary_qknorm_backward", B, T, H, hd);
  OG_CHECK(base > 1.0f, "rotary_qknorm_backward: base {} must be > 1", base);
  if (N == 0) return;
  const unsigned blocks = (unsigned)((N + kRowsPerBlock - 1) / kRowsPerBlock);
  rotary_qknorm_backward_kernel<<<blocks, 32 * kRowsPerBlock, 0, stream>>>(dinp, dout, out, rstd, N, T, H, hd,
                                                                           log2f(base));
  CUDA_CHECK_LAUNCH();
}

}  // namespace og::gpu
