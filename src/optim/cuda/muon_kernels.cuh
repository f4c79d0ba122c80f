// Muon's multi-tensor kernels (one block per chunk of a ChunkTable, kChunkThreads threads), shared
// by the single-GPU / DDP optimizer (muon_optimizer.cu) and the FSDP row-shard optimizer
// (sharded_matrix_cuda.cu): momentum with the bf16 NS input and its per-chunk sums of squares,
// the Frobenius normalization of the NS input, and the update W ← W·decay − lr_eff·f_row·O.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "optim/cuda/blas.h"
#include "optim/cuda/chunk_table.h"
#include "optim/cuda/device_math.cuh"

namespace og::cuda {

struct MuonDesc {
  float* w;
  const float* g;
  void* m;                  // momentum, fp32 or bf16
  bf16* x;                  // this matrix's slot in the NS input buffer
  const bf16* o;            // its slot in the NS output buffer
  const float* row_factor;  // NorMuon: one factor per row; Muon: nullptr
  // x is nullptr for a matrix another rank orthonormalizes (DDP owner split): momentum only
  int64_t numel, cols;
  int64_t first_chunk, end_chunk;  // its chunks in the group's table
};

// One block per chunk (kChunkThreads threads).  M ← mu·M + G;  X₀ ← bf16(nesterov ? mu·M + G : M);
// partial[chunk] = Σ X₀² over the chunk (unless partial is nullptr).
template <int VEC, typename S>
__global__ void muon_momentum_kernel(const ChunkRef* __restrict__ chunks, const MuonDesc* __restrict__ descs, float mu,
                                     bool nesterov, float* __restrict__ partial) {
  __shared__ float scratch[32];
  const ChunkRef c = chunks[blockIdx.x];
  const MuonDesc d = descs[c.tensor];
  S* m = static_cast<S*>(d.m);
  const int64_t end = min(c.start + kChunkElems, d.numel);
  float sq = 0.0f;
  auto one = [&](float g, float& mm) {
    mm = to_f32(from_f32<S>(mu * mm + g));  // as stored (bf16 state: rounded), like the CPU reference
    const float u = nesterov ? mu * mm + g : mm;
    const float x = __bfloat162float(__float2bfloat16_rn(u));
    sq += x * x;
    return x;
  };
  const bool owned = d.x != nullptr;
  for (int64_t i = c.start + (int64_t)threadIdx.x * VEC; i < end; i += (int64_t)blockDim.x * VEC) {
    if (i + VEC <= end) {
      float g[VEC], mm[VEC], x[VEC];
      load_vec<VEC>(d.g + i, g);
      load_vec<VEC>(m + i, mm);
#pragma unroll
      for (int e = 0; e < VEC; ++e) x[e] = one(g[e], mm[e]);
      store_vec<VEC>(m + i, mm);
      if (owned) store_vec<VEC>(d.x + i, x);
    } else {
      for (int64_t j = i; j < end; ++j) {
        float mm = to_f32(m[j]);
        const float x = one(d.g[j], mm);
        m[j] = from_f32<S>(mm);
        if (owned) d.x[j] = __float2bfloat16_rn(x);
      }
    }
  }
  if (partial) {  // uniform over the block; nullptr: the norm is taken elsewhere (FSDP: by the owner)
    sq = block_sum(sq, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = sq;
  }
}

// Same launch shape.  X₀ ← X₀ / (mult·sqrt(Σ partials of the matrix) + eps)
template <int VEC>
__global__ void muon_normalize_kernel(const ChunkRef* __restrict__ chunks, const MuonDesc* __restrict__ descs,
                                      const float* __restrict__ partial, float mult, float eps) {
  __shared__ float scratch[32];
  const ChunkRef c = chunks[blockIdx.x];
  const MuonDesc d = descs[c.tensor];
  float s = 0.0f;
  for (int64_t b = d.first_chunk + threadIdx.x; b < d.end_chunk; b += blockDim.x) s += partial[b];
  s = block_sum(s, scratch);
  const float scale = 1.0f / (mult * sqrtf(s) + eps);
  const int64_t end = min(c.start + kChunkElems, d.numel);
  for (int64_t i = c.start + (int64_t)threadIdx.x * VEC; i < end; i += (int64_t)blockDim.x * VEC) {
    if (i + VEC <= end) {
      float x[VEC];
      load_vec<VEC>(d.x + i, x);
#pragma unroll
      for (int e = 0; e < VEC; ++e) x[e] *= scale;
      store_vec<VEC>(d.x + i, x);
    } else {
      for (int64_t j = i; j < end; ++j) d.x[j] = __float2bfloat16_rn(__bfloat162float(d.x[j]) * scale);
    }
  }
}

// Same launch shape.  W ← W·decay − lr_eff·f_row·O  (f_row = 1 without row factors). With VEC = 4
// the caller guarantees cols % 4 == 0, so the 4 elements share a row.
// decay = scalars[0], lr_eff = scalars[1 + group] (device memory: see StepGraph).
template <int VEC>
__global__ void muon_update_kernel(const ChunkRef* __restrict__ chunks, const MuonDesc* __restrict__ descs,
                                   const float* __restrict__ scalars, int group) {
  const float decay = scalars[0], lr_eff = scalars[1 + group];
  const ChunkRef c = chunks[blockIdx.x];
  const MuonDesc d = descs[c.tensor];
  const int64_t end = min(c.start + kChunkElems, d.numel);
  for (int64_t i = c.start + (int64_t)threadIdx.x * VEC; i < end; i += (int64_t)blockDim.x * VEC) {
    if (i + VEC <= end) {
      const float step = d.row_factor ? lr_eff * d.row_factor[i / d.cols] : lr_eff;
      float w[VEC], o[VEC];
      load_vec<VEC>(d.w + i, w);
      load_vec<VEC>(d.o + i, o);
#pragma unroll
      for (int e = 0; e < VEC; ++e) w[e] = w[e] * decay - step * o[e];
      store_vec<VEC>(d.w + i, w);
    } else {
      for (int64_t j = i; j < end; ++j) {
        const float step = d.row_factor ? lr_eff * d.row_factor[j / d.cols] : lr_eff;
        d.w[j] = d.w[j] * decay - step * __bfloat162float(d.o[j]);
      }
    }
  }
}

// The step scalars (decay, then lr_eff per group) into device memory, kScalarsPerLaunch per
// one-thread launch (passed by value: no host buffer has to outlive the call).
constexpr int kScalarsPerLaunch = 32;
template <int N> struct ScalarBatch { float v[N]; };
template <int N> __global__ void set_scalars_kernel(float* dst, ScalarBatch<N> b, int n) {
  for (int i = 0; i < n; ++i) dst[i] = b.v[i];
}
inline void set_step_scalars(cudaStream_t s, float* dst, const std::vector<float>& sc) {
  for (size_t i = 0; i < sc.size(); i += kScalarsPerLaunch) {
    ScalarBatch<kScalarsPerLaunch> batch{};
    const int n = (int)std::min<size_t>(kScalarsPerLaunch, sc.size() - i);
    for (int j = 0; j < n; ++j) batch.v[j] = sc[i + j];
    set_scalars_kernel<<<1, 1, 0, s>>>(dst + i, batch, n);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace og::cuda
