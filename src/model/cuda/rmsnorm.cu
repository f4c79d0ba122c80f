// RMSNorm without weight (the GPT's pre-norms and final norm), with a fused residual-add
// variant, and its backward. Every kernel: one warp per row, 8 rows per 256-thread block
// (grid = ceil(N / 8)); statistics in fp32.
// Two paths per kernel:
//  - vector (C % 8 == 0, C <= 8·32·kMaxChunks, 16-byte aligned pointers; the model's shapes):
//    lane l holds the 8-element chunks l, l+32, l+64, ... of its row in registers, loaded and
//    stored as 16-byte words, so every input is read from memory exactly once;
//  - scalar (any C): lanes stride over the columns and the second pass re-reads the row.
#include "core/cuda_reduce.cuh"
#include "core/cuda_utils.h"
#include "model/cuda/dtype.cuh"
#include "model/cuda/kernels.h"

namespace og::gpu {
namespace {

constexpr int kRowsPerBlock = 8;
constexpr int kMaxChunks = 8;  // vector path: up to 8 chunks of 8 per lane (C <= 2048)

__device__ __forceinline__ int64_t warp_row() { return (int64_t)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5); }

// ---- scalar path ----------------------------------------------------------------------------------

// out = inp·rstd (bf16), rstd = 1/sqrt(mean(inp²) + eps).
template <typename Tin>
__global__ void rmsnorm_forward_kernel(bf16* __restrict__ out, float* __restrict__ rstd, const Tin* __restrict__ inp,
                                       int64_t N, int C, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = warp_row();
  if (row >= N) return;
  const Tin* x = inp + row * C;
  float ss = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float v = load_f32(x[c]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / (float)C + eps);
  bf16* o = out + row * C;
  for (int c = lane; c < C; c += 32) o[c] = __float2bfloat16_rn(load_f32(x[c]) * r);
  if (lane == 0) rstd[row] = r;
}

// res_out = res_in + y (rounded to Tres); out = rmsnorm(res_out). No __restrict__ on the
// residual pointers: res_out may alias res_in (each lane reads then writes the same elements,
// and re-reads in pass 2 only what it wrote itself).
template <typename Tres>
__global__ void rmsnorm_residual_forward_kernel(Tres* res_out, bf16* __restrict__ out, float* __restrict__ rstd,
                                                const Tres* res_in, const bf16* __restrict__ y, int64_t N, int C,
                                                float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = warp_row();
  if (row >= N) return;
  const Tres* xi = res_in + row * C;
  const bf16* yi = y + row * C;
  Tres* xo = res_out + row * C;
  float ss = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const Tres s = store_as<Tres>(load_f32(xi[c]) + load_f32(yi[c]));
    xo[c] = s;
    const float v = load_f32(s);  // the stored (rounded) value is what backward will see
    ss += v * v;
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / (float)C + eps);
  bf16* o = out + row * C;
  for (int c = lane; c < C; c += 32) o[c] = __float2bfloat16_rn(load_f32(xo[c]) * r);
  if (lane == 0) rstd[row] = r;
}

// dinp += r·dout − r³·inp·(Σ dout·inp)/C   (the gradient of inp·r(inp)); dinp_bf16, when not
// null, also receives the updated dinp rounded to bf16.
template <typename Tin>
__global__ void rmsnorm_backward_kernel(Tin* __restrict__ dinp, bf16* __restrict__ dinp_bf16,
                                        const bf16* __restrict__ dout, const Tin* __restrict__ inp,
                                        const float* __restrict__ rstd, int64_t N, int C) {
  const int lane = threadIdx.x & 31;
  const int64_t row = warp_row();
  if (row >= N) return;
  const Tin* x = inp + row * C;
  const bf16* dy = dout + row * C;
  float dot = 0.0f;
  for (int c = lane; c < C; c += 32) dot += load_f32(dy[c]) * load_f32(x[c]);
  dot = warp_sum(dot);
  const float r = rstd[row];
  const float coef = r * r * r * dot / (float)C;
  Tin* dx = dinp + row * C;
  for (int c = lane; c < C; c += 32) {
    const Tin v = store_as<Tin>(load_f32(dx[c]) + r * load_f32(dy[c]) - coef * load_f32(x[c]));
    dx[c] = v;
    if (dinp_bf16) dinp_bf16[row * C + c] = __float2bfloat16_rn(load_f32(v));
  }
}

// ---- vector path (NC = chunks of 8 per lane, a compile-time bound; chunks past C/8 are skipped) --

// The second half of both vector forwards: the warp's squared-sum partials `ss` → rstd, then
// out_row = v · rstd (lane holds chunks lane + 32·j of the row) and *rstd_slot = rstd.
template <int NC>
__device__ __forceinline__ void normalize_store_row(bf16* out_row, float* rstd_slot, float (&v)[NC][8], float ss, int C,
                                                    float eps) {
  const int lane = threadIdx.x & 31, chunks = C / 8;
  const float r = rsqrtf(warp_sum(ss) / (float)C + eps);
#pragma unroll
  for (int j = 0; j < NC; ++j) {
    const int c = lane + 32 * j;
    if (c >= chunks) continue;
#pragma unroll
    for (int e = 0; e < 8; ++e) v[j][e] *= r;
    store8(out_row + c * 8, v[j]);
  }
  if (lane == 0) *rstd_slot = r;
}

template <typename Tin, int NC>
__global__ void rmsnorm_forward_vec_kernel(bf16* __restrict__ out, float* __restrict__ rstd,
                                           const Tin* __restrict__ inp, int64_t N, int C, float eps) {
  const int lane = threadIdx.x & 31, chunks = C / 8;
  const int64_t row = warp_row();
  if (row >= N) return;
  float v[NC][8];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < NC; ++j) {
    const int c = lane + 32 * j;
    if (c >= chunks) continue;
    load8_f32(v[j], inp + row * C + c * 8);
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[j][e] * v[j][e];
  }
  normalize_store_row<NC>(out + row * C, rstd + row, v, ss, C, eps);
}

template <typename Tres, int NC>
__global__ void rmsnorm_residual_forward_vec_kernel(Tres* res_out, bf16* __restrict__ out, float* __restrict__ rstd,
                                                    const Tres* res_in, const bf16* __restrict__ y, int64_t N, int C,
                                                    float eps) {
  const int lane = threadIdx.x & 31, chunks = C / 8;
  const int64_t row = warp_row();
  if (row >= N) return;
  float v[NC][8];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < NC; ++j) {
    const int c = lane + 32 * j;
    if (c >= chunks) continue;
    const int64_t at = row * C + c * 8;
    float yv[8];
    load8_f32(v[j], res_in + at);
    load8_f32(yv, y + at);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      v[j][e] = round_to<Tres>(v[j][e] + yv[e]);  // the stored value is what backward will see
      ss += v[j][e] * v[j][e];
    }
    store8(res_out + at, v[j]);
  }
  normalize_store_row<NC>(out + row * C, rstd + row, v, ss, C, eps);
}

template <typename Tin, int NC>
__global__ void rmsnorm_backward_vec_kernel(Tin* __restrict__ dinp, bf16* __restrict__ dinp_bf16,
                                            const bf16* __restrict__ dout, const Tin* __restrict__ inp,
                                            const float* __restrict__ rstd, int64_t N, int C) {
  const int lane = threadIdx.x & 31, chunks = C / 8;
  const int64_t row = warp_row();
  if (row >= N) return;
  float dy[NC][8], x[NC][8];
  float dot = 0.0f;
#pragma unroll
  for (int j = 0; j < NC; ++j) {
    const int c = lane + 32 * j;
    if (c >= chunks) continue;
    load8_f32(dy[j], dout + row * C + c * 8);
    load8_f32(x[j], inp + row * C + c * 8);
#pragma unroll
    for (int e = 0; e < 8; ++e) dot += dy[j][e] * x[j][e];
  }
  dot = warp_sum(dot);
  const float r = rstd[row];
  const float coef = r * r * r * dot / (float)C;
#pragma unroll
  for (int j = 0; j < NC; ++j) {
    const int c = lane + 32 * j;
    if (c >= chunks) continue;
    const int64_t at = row * C + c * 8;
    float dx[8];
    load8_f32(dx, dinp + at);
#pragma unroll
    for (int e = 0; e < 8; ++e) dx[e] = round_to<Tin>(dx[e] + r * dy[j][e] - coef * x[j][e]);
    store8(dinp + at, dx);
    if (dinp_bf16) store8(dinp_bf16 + at, dx);
  }
}

// ---- dispatch ---------------------------------------------------------------------------------------

unsigned row_blocks(int64_t N) { return (unsigned)((N + kRowsPerBlock - 1) / kRowsPerBlock); }

void check_sizes(const char* what, int64_t N, int C) {
  OG_CHECK(N >= 0 && C > 0 && (N + kRowsPerBlock - 1) / kRowsPerBlock < (int64_t(1) << 31), "{}: bad sizes N={} C={}",
           what, N, C);
}

// Chunks per lane of the vector path for rows of C (0: take the scalar path). Rounded up to one
// of the instantiated bounds 1, 2, 3, 4, 8 (with_chunks).
int vector_chunks(int C, std::initializer_list<const void*> ptrs) {
  if (C % 8 != 0 || C > 8 * 32 * kMaxChunks || !all_aligned_to(ptrs, 16)) return 0;
  const int nc = (C / 8 + 31) / 32;
  return nc <= 4 ? nc : kMaxChunks;
}

template <typename Launch> void with_chunks(int nc, Launch&& launch) {
  with_constant<1, 2, 3, 4, kMaxChunks>(nc, launch);
}

}  // namespace

template <typename Tin>
void rmsnorm_forward(bf16* out, float* rstd, const Tin* inp, int64_t N, int C, float eps, cudaStream_t stream) {
  check_sizes("rmsnorm_forward", N, C);
  if (N == 0) return;
  const dim3 grid(row_blocks(N)), block(32 * kRowsPerBlock);
  if (const int nc = vector_chunks(C, {out, inp})) {
    with_chunks(nc, [&](auto k) {
      rmsnorm_forward_vec_kernel<Tin, decltype(k)::value><<<grid, block, 0, stream>>>(out, rstd, inp, N, C, eps);
    });
  } else {
    rmsnorm_forward_kernel<<<grid, block, 0, stream>>>(out, rstd, inp, N, C, eps);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename Tres>
void rmsnorm_residual_forward(Tres* res_out, bf16* out, float* rstd, const Tres* res_in, const bf16* y, int64_t N,
                              int C, float eps, cudaStream_t stream) {
  check_sizes("rmsnorm_residual_forward", N, C);
  if (N == 0) return;
  const dim3 grid(row_blocks(N)), block(32 * kRowsPerBlock);
  if (const int nc = vector_chunks(C, {res_out, out, res_in, y})) {
    with_chunks(nc, [&](auto k) {
      rmsnorm_residual_forward_vec_kernel<Tres, decltype(k)::value>
          <<<grid, block, 0, stream>>>(res_out, out, rstd, res_in, y, N, C, eps);
    });
  } else {
    rmsnorm_residual_forward_kernel<<<grid, block, 0, stream>>>(res_out, out, rstd, res_in, y, N, C, eps);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename Tin>
void rmsnorm_backward(Tin* dinp, const bf16* dout, const Tin* inp, const float* rstd, int64_t N, int C,
                      cudaStream_t stream, bf16* dinp_bf16) {
  check_sizes("rmsnorm_backward", N, C);
  if (N == 0) return;
  const dim3 grid(row_blocks(N)), block(32 * kRowsPerBlock);
  if (const int nc = vector_chunks(C, {dinp, dout, inp, dinp_bf16})) {
    with_chunks(nc, [&](auto k) {
      rmsnorm_backward_vec_kernel<Tin, decltype(k)::value>
          <<<grid, block, 0, stream>>>(dinp, dinp_bf16, dout, inp, rstd, N, C);
    });
  } else {
    rmsnorm_backward_kernel<<<grid, block, 0, stream>>>(dinp, dinp_bf16, dout, inp, rstd, N, C);
  }
  CUDA_CHECK_LAUNCH();
}

template void rmsnorm_forward<float>(bf16*, float*, const float*, int64_t, int, float, cudaStream_t);
template void rmsnorm_forward<bf16>(bf16*, float*, const bf16*, int64_t, int, float, cudaStream_t);
template void rmsnorm_residual_forward<float>(float*, bf16*, float*, const float*, const bf16*, int64_t, int, float,
                                              cudaStream_t);
template void rmsnorm_residual_forward<bf16>(bf16*, bf16*, float*, const bf16*, const bf16*, int64_t, int, float,
                                             cudaStream_t);
template void rmsnorm_backward<float>(float*, const bf16*, const float*, const float*, int64_t, int, cudaStream_t,
                                      bf16*);
template void rmsnorm_backward<bf16>(bf16*, const bf16*, const bf16*, const float*, int64_t, int, cudaStream_t, bf16*);

}  // namespace og::gpu
