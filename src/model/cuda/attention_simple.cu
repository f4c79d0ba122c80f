// Simple causal attention kernels (fp32 math, no tensor cores) for any even head_dim <= 512:
// the fallback of attention_forward/backward for head dims without a tensor-core kernel (or
// unaligned pointers), and an independent second implementation for the tests. Also the
// delta = rowsum(dout ∘ out) kernel used by both backward paths.
// Launch shape (all kernels): one warp per row, 8 warps per 256-thread block; a lane holds the
// head-dim elements d = lane + 32·i. Forward: online softmax over keys 0..t (streaming, no T×T
// memory). Backward: one kernel per query row for dQ (keys 0..t), one per key row for dK/dV
// (queries t..T−1), both recomputing P from the saved logsumexp; no atomics.
#include "core/cuda_reduce.cuh"
#include "core/cuda_utils.h"
#include "model/cuda/attention_internal.h"
#include "model/cuda/kernels.h"

namespace og::gpu {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kMaxPerLane = 16;  // hd <= 32·16 = 512

struct RowIndex {
  int bh, b, h, t;
  int64_t bh_offset;  // element offset of (b, 0, h, 0) in [B, T, H, hd]
};

// Warp w of the grid handles row t = w % T of head (b, h) = w / T; false when past the end.
__device__ __forceinline__ bool row_of_warp(RowIndex& r, int64_t num_rows, int T, int H, int hd) {
  const int64_t w = (int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (w >= num_rows) return false;
  r.bh = (int)(w / T);
  r.t = (int)(w % T);
  r.b = r.bh / H;
  r.h = r.bh % H;
  r.bh_offset = ((int64_t)r.b * T * H + r.h) * hd;
  return true;
}

// Load row `t` of a [B, T, H, hd] head into per-lane registers (zeros past hd).
__device__ __forceinline__ void load_row(float x[kMaxPerLane], const bf16* bh, int t, int stride, int hd) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    x[i] = d < hd ? __bfloat162float(bh[(int64_t)t * stride + d]) : 0.0f;
  }
}

__device__ __forceinline__ float dot_row(const float x[kMaxPerLane], const bf16* bh, int t, int stride, int hd) {
  const int lane = threadIdx.x & 31;
  float acc = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) acc += x[i] * __bfloat162float(bh[(int64_t)t * stride + d]);
  }
  return warp_sum(acc);
}

__device__ __forceinline__ void axpy_row(float y[kMaxPerLane], float a, const bf16* bh, int t, int stride, int hd) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) y[i] += a * __bfloat162float(bh[(int64_t)t * stride + d]);
  }
}

__device__ __forceinline__ void store_row(bf16* bh, const float x[kMaxPerLane], float scale, int t, int stride,
                                          int hd) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) bh[(int64_t)t * stride + d] = __float2bfloat16_rn(x[i] * scale);
  }
}

__global__ void simple_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int64_t rows,
                                      int T, int H, int hd, float scale) {
  RowIndex r;
  if (!row_of_warp(r, rows, T, H, hd)) return;
  const int stride = H * hd;
  float qr[kMaxPerLane], o[kMaxPerLane];
  load_row(qr, q + r.bh_offset, r.t, stride, hd);
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) o[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int j = 0; j <= r.t; ++j) {
    const float s = dot_row(qr, k + r.bh_offset, j, stride, hd) * scale;
    const float m_new = fmaxf(m, s);
    const float alpha = expf(m - m_new), p = expf(s - m_new);
    l = l * alpha + p;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) o[i] *= alpha;
    axpy_row(o, p, v + r.bh_offset, j, stride, hd);
    m = m_new;
  }
  store_row(out + r.bh_offset, o, 1.0f / l, r.t, stride, hd);
  if ((threadIdx.x & 31) == 0) lse[(int64_t)r.bh * T + r.t] = m + logf(l);
}

__global__ void delta_kernel(float* delta, const bf16* dout, const bf16* out, int64_t rows, int T, int H, int hd) {
  RowIndex r;
  if (!row_of_warp(r, rows, T, H, hd)) return;
  const int stride = H * hd;
  float d_row[kMaxPerLane];
  load_row(d_row, dout + r.bh_offset, r.t, stride, hd);
  const float s = dot_row(d_row, out + r.bh_offset, r.t, stride, hd);
  if ((threadIdx.x & 31) == 0) delta[(int64_t)r.bh * T + r.t] = s;
}

// dq[t] = scale · Σ_{j<=t} P[t, j]·(dO[t]·v[j] − delta[t])·k[j]
__global__ void simple_dq_kernel(bf16* dq, const bf16* dout, const float* lse, const float* delta, const bf16* q,
                                 const bf16* k, const bf16* v, int64_t rows, int T, int H, int hd, float scale) {
  RowIndex r;
  if (!row_of_warp(r, rows, T, H, hd)) return;
  const int stride = H * hd;
  float qr[kMaxPerLane], dor[kMaxPerLane], acc[kMaxPerLane];
  load_row(qr, q + r.bh_offset, r.t, stride, hd);
  load_row(dor, dout + r.bh_offset, r.t, stride, hd);
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) acc[i] = 0.0f;
  const float row_lse = lse[(int64_t)r.bh * T + r.t], row_delta = delta[(int64_t)r.bh * T + r.t];
  for (int j = 0; j <= r.t; ++j) {
    const float p = expf(dot_row(qr, k + r.bh_offset, j, stride, hd) * scale - row_lse);
    const float dp = dot_row(dor, v + r.bh_offset, j, stride, hd);
    axpy_row(acc, p * (dp - row_delta), k + r.bh_offset, j, stride, hd);
  }
  store_row(dq + r.bh_offset, acc, scale, r.t, stride, hd);
}

// For key row j: dv[j] = Σ_{t>=j} P[t, j]·dO[t];  dk[j] = scale · Σ_{t>=j} P[t, j]·(dO[t]·v[j] − delta[t])·q[t]
__global__ void simple_dkdv_kernel(bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* delta,
                                   const bf16* q, const bf16* k, const bf16* v, int64_t rows, int T, int H, int hd,
                                   float scale) {
  RowIndex r;
  if (!row_of_warp(r, rows, T, H, hd)) return;
  const int stride = H * hd;
  float kr[kMaxPerLane], vr[kMaxPerLane], dk_acc[kMaxPerLane], dv_acc[kMaxPerLane];
  load_row(kr, k + r.bh_offset, r.t, stride, hd);
  load_row(vr, v + r.bh_offset, r.t, stride, hd);
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) dk_acc[i] = dv_acc[i] = 0.0f;
  const float* lse_bh = lse + (int64_t)r.bh * T;
  const float* delta_bh = delta + (int64_t)r.bh * T;
  for (int t = r.t; t < T; ++t) {
    const float p = expf(dot_row(kr, q + r.bh_offset, t, stride, hd) * scale - lse_bh[t]);
    const float dp = dot_row(vr, dout + r.bh_offset, t, stride, hd);
    axpy_row(dv_acc, p, dout + r.bh_offset, t, stride, hd);
    axpy_row(dk_acc, p * (dp - delta_bh[t]), q + r.bh_offset, t, stride, hd);
  }
  store_row(dk + r.bh_offset, dk_acc, scale, r.t, stride, hd);
  store_row(dv + r.bh_offset, dv_acc, 1.0f, r.t, stride, hd);
}

int64_t num_rows(int B, int T, int H) { return (int64_t)B * H * T; }
unsigned blocks_for(int64_t rows) { return (unsigned)((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

void check_simple(const char* what, int B, int T, int H, int hd) {
  attn::check_attention_sizes(what, B, T, H, hd);
  OG_CHECK(hd <= 32 * kMaxPerLane, "{}: head_dim {} > {} is not supported", what, hd, 32 * kMaxPerLane);
  OG_CHECK(blocks_for(num_rows(B, T, H)) < (1u << 31), "{}: too many rows", what);
}

}  // namespace

namespace attn {
void launch_delta(float* delta, const bf16* dout, const bf16* out, int B, int T, int H, int hd, cudaStream_t stream) {
  check_simple("attention delta", B, T, H, hd);
  const int64_t rows = num_rows(B, T, H);
  delta_kernel<<<blocks_for(rows), 32 * kWarpsPerBlock, 0, stream>>>(delta, dout, out, rows, T, H, hd);
  CUDA_CHECK_LAUNCH();
}
}  // namespace attn

void attention_forward_simple(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                              int hd, cudaStream_t stream) {
  check_simple("attention_forward_simple", B, T, H, hd);
  const int64_t rows = num_rows(B, T, H);
  simple_forward_kernel<<<blocks_for(rows), 32 * kWarpsPerBlock, 0, stream>>>(out, lse, q, k, v, rows, T, H, hd,
                                                                              1.0f / sqrtf((float)hd));
  CUDA_CHECK_LAUNCH();
}

void attention_backward_simple(bf16* dq, bf16* dk, bf16* dv, float* delta, const bf16* dout, const bf16* out,
                               const float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                               int hd, cudaStream_t stream) {
  check_simple("attention_backward_simple", B, T, H, hd);
  const int64_t rows = num_rows(B, T, H);
  const float scale = 1.0f / sqrtf((float)hd);
  attn::launch_delta(delta, dout, out, B, T, H, hd, stream);
  simple_dq_kernel<<<blocks_for(rows), 32 * kWarpsPerBlock, 0, stream>>>(dq, dout, lse, delta, q, k, v, rows, T, H, hd,
                                                                         scale);
  CUDA_CHECK_LAUNCH();
  simple_dkdv_kernel<<<blocks_for(rows), 32 * kWarpsPerBlock, 0, stream>>>(dk, dv, dout, lse, delta, q, k, v, rows, T,
                                                                           H, hd, scale);
  CUDA_CHECK_LAUNCH();
}

}  // namespace og::gpu
