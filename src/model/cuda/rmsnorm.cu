// RMSNorm without weight (the GPT's pre-norms and final norm), with a fused residual-add
// variant, and its backward. All three kernels: one warp per row, 8 rows per 256-thread block
// (grid = ceil(N / 8)); lanes stride over the C columns (coalesced); statistics in fp32.
#include "core/cuda_utils.h"
#include "model/cuda/dtype.cuh"
#include "model/cuda/kernels.h"
#include "model/cuda/reduce.cuh"

namespace og::gpu {
namespace {

constexpr int kRowsPerBlock = 8;

// out = inp·rstd (bf16), rstd = 1/sqrt(mean(inp²) + eps).
template <typename Tin>
__global__ void rmsnorm_forward_kernel(bf16* __restrict__ out, float* __restrict__ rstd, const Tin* __restrict__ inp,
                                       int64_t N, int C, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
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
  const int64_t row = (int64_t)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
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

// dinp += r·dout − r³·inp·(Σ dout·inp)/C   (the gradient of inp·r(inp)).
template <typename Tin>
__global__ void rmsnorm_backward_kernel(Tin* __restrict__ dinp, const bf16* __restrict__ dout,
                                        const Tin* __restrict__ inp, const float* __restrict__ rstd, int64_t N, int C) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= N) return;
  const Tin* x = inp + row * C;
  const bf16* dy = dout + row * C;
  float dot = 0.0f;
  for (int c = lane; c < C; c += 32) dot += load_f32(dy[c]) * load_f32(x[c]);
  dot = warp_sum(dot);
  const float r = rstd[row];
  const float coef = r * r * r * dot / (float)C;
  Tin* dx = dinp + row * C;
  for (int c = lane; c < C; c += 32)
    dx[c] = store_as<Tin>(load_f32(dx[c]) + r * load_f32(dy[c]) - coef * load_f32(x[c]));
}

unsigned row_blocks(int64_t N) { return (unsigned)((N + kRowsPerBlock - 1) / kRowsPerBlock); }

void check_sizes(const char* what, int64_t N, int C) {
  OG_CHECK(N >= 0 && C > 0 && (N + kRowsPerBlock - 1) / kRowsPerBlock < (int64_t(1) << 31), "{}: bad sizes N={} C={}",
           what, N, C);
}

}  // namespace

template <typename Tin>
void rmsnorm_forward(bf16* out, float* rstd, const Tin* inp, int64_t N, int C, float eps, cudaStream_t stream) {
  check_sizes("rmsnorm_forward", N, C);
  if (N == 0) return;
  rmsnorm_forward_kernel<<<row_blocks(N), 32 * kRowsPerBlock, 0, stream>>>(out, rstd, inp, N, C, eps);
  CUDA_CHECK_LAUNCH();
}

template <typename Tres>
void rmsnorm_residual_forward(Tres* res_out, bf16* out, float* rstd, const Tres* res_in, const bf16* y, int64_t N,
                              int C, float eps, cudaStream_t stream) {
  check_sizes("rmsnorm_residual_forward", N, C);
  if (N == 0) return;
  rmsnorm_residual_forward_kernel<<<row_blocks(N), 32 * kRowsPerBlock, 0, stream>>>(res_out, out, rstd, res_in, y, N, C,
                                                                                    eps);
  CUDA_CHECK_LAUNCH();
}

template <typename Tin>
void rmsnorm_backward(Tin* dinp, const bf16* dout, const Tin* inp, const float* rstd, int64_t N, int C,
                      cudaStream_t stream) {
  check_sizes("rmsnorm_backward", N, C);
  if (N == 0) return;
  rmsnorm_backward_kernel<<<row_blocks(N), 32 * kRowsPerBlock, 0, stream>>>(dinp, dout, inp, rstd, N, C);
  CUDA_CHECK_LAUNCH();
}

template void rmsnorm_forward<float>(bf16*, float*, const float*, int64_t, int, float, cudaStream_t);
template void rmsnorm_forward<bf16>(bf16*, float*, const bf16*, int64_t, int, float, cudaStream_t);
template void rmsnorm_residual_forward<float>(float*, bf16*, float*, const float*, const bf16*, int64_t, int, float,
                                              cudaStream_t);
template void rmsnorm_residual_forward<bf16>(bf16*, bf16*, float*, const bf16*, const bf16*, int64_t, int, float,
                                             cudaStream_t);
template void rmsnorm_backward<float>(float*, const bf16*, const float*, const float*, int64_t, int, cudaStream_t);
template void rmsnorm_backward<bf16>(bf16*, const bf16*, const bf16*, const float*, int64_t, int, cudaStream_t);

}  // namespace og::gpu
