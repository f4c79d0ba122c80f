// NorMuon's neuron-wise normalization factors (see neuron_norm.h).
#include "optim/cuda/chunk_table.h"
#include "optim/cuda/device_math.cuh"
#include "optim/cuda/neuron_norm.h"

namespace og::cuda {
namespace {

// Sum of squares of each of `nrows` rows of length L (bf16, contiguous rows).
// grid ceil(nrows/8), block 256: one warp per row, lanes stride the row by VEC elements.
template <int VEC>
__global__ void row_sumsq_kernel(const bf16* __restrict__ o, int64_t nrows, int64_t L, float* __restrict__ out) {
  const int64_t row = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= nrows) return;
  const bf16* p = o + row * L;
  float s = 0.0f;
  for (int64_t c = (int64_t)lane * VEC; c < L; c += 32 * VEC) {
    if (c + VEC <= L) {
      float v[VEC];
      load_vec<VEC>(p + c, v);
#pragma unroll
      for (int e = 0; e < VEC; ++e) s += v[e] * v[e];
    } else {
      for (int64_t e = c; e < L; ++e) {
        const float v = to_f32(p[e]);
        s += v * v;
      }
    }
  }
  s = warp_sum(s);
  if (lane == 0) out[row] = s;
}

// One block (256 threads) per matrix q: V update of its k rows, then the factors.
template <typename V>
__global__ void neuron_factors_kernel(const float* __restrict__ rowsq, const NeuronNormDesc* __restrict__ descs,
                                      int64_t k, int64_t L, float beta2, float* __restrict__ factors) {
  __shared__ float scratch[32];
  const int q = blockIdx.x;
  const NeuronNormDesc d = descs[q];
  V* v = static_cast<V*>(d.v);
  const float* rs = rowsq + (int64_t)q * k;
  float* f = factors + (int64_t)q * k;
  float sum_o = 0.0f, sum_n = 0.0f;  // ‖O‖², ‖O/(sqrt V + 1e-8)‖²
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    const int64_t r = d.sel ? (int64_t)d.sel[j] : j;
    const float sq = rs[j];
    float vv = to_f32(v[r]);
    vv = vv + (1.0f - beta2) * (sq / (float)L - vv);
    v[r] = from_f32<V>(vv);  // the factor uses the unrounded value, like the CPU reference
    const float inv = 1.0f / (sqrtf(vv) + 1e-8f);
    f[j] = inv;
    sum_o += sq;
    sum_n += inv * inv * sq;
  }
  sum_o = block_sum(sum_o, scratch);
  sum_n = block_sum(sum_n, scratch);
  const float scale = sqrtf(sum_o) / fmaxf(sqrtf(sum_n), 1e-8f);
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) f[j] *= scale;  // same thread wrote f[j]
}

}  // namespace

void neuron_norm_factors(cudaStream_t stream, const bf16* o, int count, int64_t k, int64_t L,
                         const NeuronNormDesc* descs, StateDtype v_dtype, float beta2, float* rowsq, float* factors) {
  const int64_t nrows = (int64_t)count * k;
  const unsigned grid = (unsigned)((nrows + 7) / 8);
  if (L % 4 == 0 && aligned_to(o, 8))
    row_sumsq_kernel<4><<<grid, 256, 0, stream>>>(o, nrows, L, rowsq);
  else
    row_sumsq_kernel<1><<<grid, 256, 0, stream>>>(o, nrows, L, rowsq);
  CUDA_CHECK_LAUNCH();
  if (v_dtype == StateDtype::F32)
    neuron_factors_kernel<float><<<count, 256, 0, stream>>>(rowsq, descs, k, L, beta2, factors);
  else
    neuron_factors_kernel<bf16><<<count, 256, 0, stream>>>(rowsq, descs, k, L, beta2, factors);
  CUDA_CHECK_LAUNCH();
}

}  // namespace og::cuda
