// Rotary position embedding fused with the per-head RMSNorm of q and k (QK-norm), forward and
// backward, on x[B, T, H, hd] viewed as N = B·T·H head vectors of hd elements.
// Rotation (halves, i < hd/2, t = position): theta = t·base^(−2i/hd),
//   z[i] = x[i]·cos + x[i+hd/2]·sin,   z[i+hd/2] = −x[i]·sin + x[i+hd/2]·cos,
// then out = z·rstd, rstd = 1/sqrt(mean(z²) + eps). One kernel reads x once for the statistics
// and once to write (no rotated intermediate in memory). Angles are computed in fp32 with the
// accurate sincosf (|theta| <= T, well inside its fast-reduction range).
// Two paths per direction:
//  - vector (hd in {16, 32, 64, 128, 256}, 16-byte aligned pointers; the model's shapes): a group
//    of G = hd/8 lanes owns one token position (b, t) and walks its H heads; lane j of the group
//    holds elements 8j..8j+7 of a head as one 16-byte word, and gets its rotation partner
//    (the same offset in the other half, lane j ± G/2) by shuffle. The angles of the position are
//    computed once per lane and reused for all H heads. 256-thread blocks, 256/G positions each;
//  - scalar (any even hd): one warp per head vector, 8 per 256-thread block, angles recomputed in
//    both passes.
#include "core/cuda_reduce.cuh"
#include "core/cuda_utils.h"
#include "model/cuda/dtype.cuh"
#include "model/cuda/kernels.h"

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

// ---- vector path ------------------------------------------------------------------------------------

constexpr int kVecThreads = 256;

// The partner lane's eight values (lane j <-> j ± G/2 within the group).
template <int G> __device__ __forceinline__ void swap_halves(float (&other)[8], const float (&mine)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) other[e] = __shfl_xor_sync(0xffffffffu, mine[e], G / 2);
}

// Position of this lane's group and its angles. Positions past the end are clamped to the last
// one (their lanes still take part in the shuffles) and report valid = false.
template <int G> struct VecLane {
  int64_t pos;  // b·T + t
  int j;        // lane within the group
  bool first;   // holds elements of the first half
  bool valid;
  float c[8], s[8];
  __device__ __forceinline__ VecLane(int64_t positions, int T, float log2_base) {
    const int lane = threadIdx.x & 31;
    j = lane % G;
    first = j < G / 2;
    const int64_t p = (int64_t)blockIdx.x * (kVecThreads / G) + threadIdx.x / G;
    valid = p < positions;
    pos = valid ? p : positions - 1;
    const int t = (int)(pos % T);
    const int i0 = 8 * (j % (G / 2));  // index of this lane's first element within its half
#pragma unroll
    for (int e = 0; e < 8; ++e) rotary_angle(t, i0 + e, 8 * G, log2_base, &s[e], &c[e]);
  }
};

template <int G>
__global__ void __launch_bounds__(kVecThreads)
    rotary_qknorm_forward_vec_kernel(bf16* out, float* __restrict__ rstd, const bf16* inp, int64_t positions, int T,
                                     int H, float log2_base, float eps) {
  constexpr int HD = 8 * G;
  const VecLane<G> L(positions, T, log2_base);
  for (int h = 0; h < H; ++h) {
    const int64_t row = L.pos * H + h;
    float x[8], xp[8], z[8];
    load8_f32(x, inp + row * HD + 8 * L.j);
    swap_halves<G>(xp, x);
    float ss = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      // first half: z1 = x1·c + x2·s (x2 = partner); second half: z2 = −x1·s + x2·c (x1 = partner)
      z[e] = L.first ? x[e] * L.c[e] + xp[e] * L.s[e] : -xp[e] * L.s[e] + x[e] * L.c[e];
      ss += z[e] * z[e];
    }
    const float r = rsqrtf(warp_sum<float, G>(ss) / (float)HD + eps);
#pragma unroll
    for (int e = 0; e < 8; ++e) z[e] *= r;
    if (L.valid) {
      store8(out + row * HD + 8 * L.j, z);
      if (L.j == 0) rstd[row] = r;
    }
  }
}

template <int G>
__global__ void __launch_bounds__(kVecThreads)
    rotary_qknorm_backward_vec_kernel(bf16* dinp, const bf16* dout, const bf16* __restrict__ out,
                                      const float* __restrict__ rstd, int64_t positions, int T, int H,
                                      float log2_base) {
  constexpr int HD = 8 * G;
  const VecLane<G> L(positions, T, log2_base);
  for (int h = 0; h < H; ++h) {
    const int64_t row = L.pos * H + h;
    float dy[8], y[8], dz[8], dzp[8];
    load8_f32(dy, dout + row * HD + 8 * L.j);
    load8_f32(y, out + row * HD + 8 * L.j);
    float dot = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) dot += dy[e] * y[e];
    const float mean_dot = warp_sum<float, G>(dot) / (float)HD;
    const float r = rstd[row];
#pragma unroll
    for (int e = 0; e < 8; ++e) dz[e] = r * (dy[e] - y[e] * mean_dot);
    swap_halves<G>(dzp, dz);
#pragma unroll
    for (int e = 0; e < 8; ++e)  // first half: dz1·c − dz2·s; second half: dz1·s + dz2·c (dz1 = partner)
      dy[e] = L.first ? dz[e] * L.c[e] - dzp[e] * L.s[e] : dzp[e] * L.s[e] + dz[e] * L.c[e];
    if (L.valid) store8(dinp + row * HD + 8 * L.j, dy);
  }
}

// Lanes per head of the vector path for these arguments (0: take the scalar path).
int vector_group(int hd, std::initializer_list<const void*> ptrs) {
  if (hd != 16 && hd != 32 && hd != 64 && hd != 128 && hd != 256) return 0;
  return all_aligned_to(ptrs, 16) ? hd / 8 : 0;
}

template <typename Launch> void with_group(int g, Launch&& launch) { with_constant<2, 4, 8, 16, 32>(g, launch); }

template <int G> unsigned vec_blocks(int64_t positions) {
  return (unsigned)((positions + kVecThreads / G - 1) / (kVecThreads / G));
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
  if (const int g = vector_group(hd, {out, inp})) {
    const int64_t positions = (int64_t)B * T;
    with_group(g, [&](auto G) {
      rotary_qknorm_forward_vec_kernel<G.value><<<vec_blocks<G.value>(positions), kVecThreads, 0, stream>>>(
          out, rstd, inp, positions, T, H, log2f(base), eps);
    });
    CUDA_CHECK_LAUNCH();
    return;
  }
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
  if (const int g = vector_group(hd, {dinp, dout, out})) {
    const int64_t positions = (int64_t)B * T;
    with_group(g, [&](auto G) {
      rotary_qknorm_backward_vec_kernel<G.value><<<vec_blocks<G.value>(positions), kVecThreads, 0, stream>>>(
          dinp, dout, out, rstd, positions, T, H, log2f(base));
    });
    CUDA_CHECK_LAUNCH();
    return;
  }
  const unsigned blocks = (unsigned)((N + kRowsPerBlock - 1) / kRowsPerBlock);
  rotary_qknorm_backward_kernel<<<blocks, 32 * kRowsPerBlock, 0, stream>>>(dinp, dout, out, rstd, N, T, H, hd,
                                                                           log2f(base));
  CUDA_CHECK_LAUNCH();
}

}  // namespace og::gpu
