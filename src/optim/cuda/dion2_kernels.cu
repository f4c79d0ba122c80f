// The kernels of Dion2 / NorDion2 (see dion2_kernels.h).
#include "core/rng.h"
#include "optim/cuda/chunk_table.h"
#include "optim/cuda/device_math.cuh"
#include "optim/cuda/dion2_kernels.h"

namespace og::cuda {
namespace {

// ---- pass 1 ------------------------------------------------------------------------------------

// Row slices. grid = row blocks, block 256: warp w owns row row0 + w and walks it VEC elements
// per lane: M ← M + G, W ← W·decay, then the row's ℓ1 and squared ℓ2 norm of the new M.
template <int VEC, typename S, bool DECAY_W>
__global__ void pass1_rows_kernel(const Pass1Block* __restrict__ blocks, const Dion2Mat* __restrict__ mats,
                                  const Dion2Scalars* __restrict__ sc) {
  const Pass1Block b = blocks[blockIdx.x];
  const float decay = DECAY_W ? sc->decay : 1.0f;
  const Dion2Mat& d = mats[b.mat];
  const int64_t row = b.row0 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= d.rows) return;
  const int64_t cols = d.cols, base = row * cols;
  float* w = d.w + base;
  const float* g = d.g + base;
  S* m = static_cast<S*>(d.m) + base;
  float l1 = 0.0f, l2 = 0.0f;
  for (int64_t c = (int64_t)lane * VEC; c < cols; c += 32 * VEC) {
    if (c + VEC <= cols) {
      float ww[VEC], gg[VEC], mm[VEC];
      if constexpr (DECAY_W) load_vec<VEC>(w + c, ww);
      load_vec<VEC>(g + c, gg);
      load_vec<VEC>(m + c, mm);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        mm[e] += gg[e];
        if constexpr (DECAY_W) ww[e] *= decay;
        // norms of the momentum as stored (bf16 state: after rounding)
        if constexpr (sizeof(S) == 2) mm[e] = __bfloat162float(__float2bfloat16_rn(mm[e]));
        l1 += fabsf(mm[e]);
        l2 += mm[e] * mm[e];
      }
      store_vec<VEC>(m + c, mm);
      if constexpr (DECAY_W) store_vec<VEC>(w + c, ww);
    } else {
      for (int64_t j = c; j < cols; ++j) {
        m[j] = from_f32<S>(to_f32(m[j]) + g[j]);
        if constexpr (DECAY_W) w[j] *= decay;
        const float v = to_f32(m[j]);
        l1 += fabsf(v), l2 += v * v;
      }
    }
  }
  l1 = warp_sum(l1);
  l2 = warp_sum(l2);
  if (lane == 0) d.part_l1[row] = l1, d.part_l2[row] = l2;
}

// Column slices. grid = column blocks, block 256: thread t owns columns col0 + t·VEC .. + VEC and
// walks rows [row0, row0 + kColChunkRows); partial norms go to row row0 / kColChunkRows.
template <int VEC, typename S, bool DECAY_W>
__global__ void pass1_cols_kernel(const Pass1Block* __restrict__ blocks, const Dion2Mat* __restrict__ mats,
                                  const Dion2Scalars* __restrict__ sc) {
  const Pass1Block b = blocks[blockIdx.x];
  const float decay = DECAY_W ? sc->decay : 1.0f;
  const Dion2Mat& d = mats[b.mat];
  const int64_t c = b.col0 + (int64_t)threadIdx.x * VEC;
  const int64_t cols = d.cols;
  if (c >= cols) return;
  const int64_t rend = min(b.row0 + (int64_t)kColChunkRows, d.rows);
  S* m = static_cast<S*>(d.m);
  float l1[VEC], l2[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) l1[e] = 0.0f, l2[e] = 0.0f;
  const int nv = (int)min((int64_t)VEC, cols - c);
  if (nv == VEC) {
#pragma unroll 4
    for (int64_t r = b.row0; r < rend; ++r) {
      const int64_t i = r * cols + c;
      float ww[VEC], gg[VEC], mm[VEC];
      if constexpr (DECAY_W) load_vec<VEC>(d.w + i, ww);
      load_vec<VEC>(d.g + i, gg);
      load_vec<VEC>(m + i, mm);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        mm[e] += gg[e];
        if constexpr (DECAY_W) ww[e] *= decay;
        if constexpr (sizeof(S) == 2) mm[e] = __bfloat162float(__float2bfloat16_rn(mm[e]));
        l1[e] += fabsf(mm[e]);
        l2[e] += mm[e] * mm[e];
      }
      store_vec<VEC>(m + i, mm);
      if constexpr (DECAY_W) store_vec<VEC>(d.w + i, ww);
    }
  } else {
    for (int64_t r = b.row0; r < rend; ++r)
      for (int e = 0; e < nv; ++e) {
        const int64_t i = r * cols + c + e;
        m[i] = from_f32<S>(to_f32(m[i]) + d.g[i]);
        if constexpr (DECAY_W) d.w[i] *= decay;
        const float v = to_f32(m[i]);
        l1[e] += fabsf(v), l2[e] += v * v;
      }
  }
  const int64_t part = (b.row0 / kColChunkRows) * (int64_t)d.n + c;
  for (int e = 0; e < nv; ++e) d.part_l1[part + e] = l1[e], d.part_l2[part + e] = l2[e];
}

// grid (ceil(max_n/256), n_col_mats), block 256: slice i of matrix col_mats[y] gets the sum of
// its nparts partials (in order) in row 0.
__global__ void reduce_partials_kernel(const Dion2Mat* __restrict__ mats, const int32_t* __restrict__ col_mats) {
  const Dion2Mat& d = mats[col_mats[blockIdx.y]];
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= d.n) return;
  float l1 = d.part_l1[i], l2 = d.part_l2[i];
  for (int64_t c = 1; c < d.nparts; ++c) l1 += d.part_l1[c * d.n + i], l2 += d.part_l2[c * d.n + i];
  d.part_l1[i] = l1;
  d.part_l2[i] = l2;
}

// ---- selection ---------------------------------------------------------------------------------

// Monotone map of a float to uint32 (ascending order preserved).
__device__ __forceinline__ uint32_t orderable_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Sort the first N (a power of two) (key, val) pairs ascending by (key, val); all threads.
__device__ void bitonic_sort(uint64_t* keys, uint32_t* vals, int N) {
  for (int size = 2; size <= N; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < N; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool ascending = (i & size) == 0;
          const uint64_t ki = keys[i], kj = keys[j];
          const uint32_t vi = vals[i], vj = vals[j];
          const bool greater = ki > kj || (ki == kj && vi > vj);
          if (greater == ascending) {
            keys[i] = kj, keys[j] = ki;
            vals[i] = vj, vals[j] = vi;
          }
        }
      }
      __syncthreads();
    }
  }
}

// One block (kSelectThreads) per matrix; dynamic smem: npow2 keys (u64) + npow2 vals (u32).
// Keys: ℓ1 → (~orderable(norm) << 32 | i), i.e. norm descending then index ascending;
// random → hash_u64(seed, step, p, i) with the index as tie-break. Sort, keep the first k, sort
// those by index, write them, the scale of the selected submatrix and the ℓ1 mass share.
__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(const Dion2Mat* __restrict__ mats, bool random, uint64_t seed, const Dion2Scalars* __restrict__ sc,
                  float mult, float eps) {
  const int64_t step = sc->step;
  extern __shared__ uint64_t smem_keys[];
  __shared__ float scratch[32];
  const Dion2Mat& d = mats[blockIdx.x];
  const int n = d.n, k = d.k;
  int N = 1;
  while (N < n) N <<= 1;
  uint64_t* keys = smem_keys;
  uint32_t* vals = reinterpret_cast<uint32_t*>(smem_keys + N);
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    if (i < n) {
      keys[i] = random ? hash_u64(seed, (uint64_t)step, (uint64_t)d.p, (uint64_t)i)
                       : ((uint64_t)(~orderable_bits(d.part_l1[i])) << 32) | (uint64_t)i;
      vals[i] = (uint32_t)i;
    } else {
      keys[i] = ~0ull;
      vals[i] = ~0u;
    }
  }
  __syncthreads();
  bitonic_sort(keys, vals, N);
  // The first k, re-sorted by index (ascending indices walk memory in order).
  int K = 1;
  while (K < k) K <<= 1;
  for (int j = threadIdx.x; j < K; j += blockDim.x) {
    if (j < k)
      keys[j] = vals[j];
    else
      keys[j] = ~0ull;
    vals[j] = 0;
  }
  __syncthreads();
  bitonic_sort(keys, vals, K);
  float l2_sel = 0.0f, l1_sel = 0.0f, l1_all = 0.0f;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const int32_t s = (int32_t)keys[j];
    d.sel[j] = s;
    l2_sel += d.part_l2[s];
    l1_sel += d.part_l1[s];
  }
  for (int i = threadIdx.x; i < n; i += blockDim.x) l1_all += d.part_l1[i];
  l2_sel = block_sum(l2_sel, scratch);
  l1_sel = block_sum(l1_sel, scratch);
  l1_all = block_sum(l1_all, scratch);
  if (threadIdx.x == 0) {
    *d.scale = 1.0f / (mult * sqrtf(l2_sel) + eps);
    *d.mass = l1_all > 0.0f ? l1_sel / l1_all : 0.0f;
  }
}

// ---- gather / update ---------------------------------------------------------------------------

// grid (ceil(L/32), ceil(k/32), count), block (32, 8): one 32×32 tile of S (rows j = slices,
// columns l = positions along the slice).
template <typename S>
__global__ void gather_kernel(const Dion2Mat* __restrict__ mats, const int32_t* __restrict__ members,
                              bool decay_selected, float ef_decay) {
  __shared__ float tile[32][33];
  const Dion2Mat& d = mats[members[blockIdx.z]];
  S* M = static_cast<S*>(d.m);
  const int64_t L = d.by_cols ? d.rows : d.cols, k = d.k, cols = d.cols;
  const int64_t l0 = (int64_t)blockIdx.x * 32, j0 = (int64_t)blockIdx.y * 32;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const float scale = *d.scale;
  if (!d.by_cols) {  // S[j][l] = M[sel[j]][l]
    for (int jj = ty; jj < 32; jj += 8) {
      const int64_t j = j0 + jj, l = l0 + tx;
      if (j < k && l < L) {
        const int64_t i = (int64_t)d.sel[j] * cols + l;
        const float v = to_f32(M[i]);
        if (decay_selected) M[i] = from_f32<S>(v * ef_decay);
        d.s[j * L + l] = __float2bfloat16_rn(v * scale);
      }
    }
  } else {  // S[j][l] = M[l][sel[j]]: read along rows of M, write along rows of S
    for (int rr = ty; rr < 32; rr += 8) {
      const int64_t l = l0 + rr, j = j0 + tx;
      float v = 0.0f;
      if (j < k && l < L) {
        const int64_t i = l * cols + d.sel[j];
        v = to_f32(M[i]);
        if (decay_selected) M[i] = from_f32<S>(v * ef_decay);
      }
      tile[rr][tx] = v;  // tile[l - l0][j - j0]
    }
    __syncthreads();
    for (int jj = ty; jj < 32; jj += 8) {
      const int64_t j = j0 + jj, l = l0 + tx;
      if (j < k && l < L) d.s[j * L + l] = __float2bfloat16_rn(tile[tx][jj] * scale);
    }
  }
}

// Same grid.  W[sel[j]][l] −= lr_eff·f_j·O[j][l]  (rows)  or  W[l][sel[j]] −= lr_eff·O[j][l]  (columns).
__global__ void update_kernel(const Dion2Mat* __restrict__ mats, const int32_t* __restrict__ members,
                              const Dion2Scalars* __restrict__ sc) {
  const float lr = sc->lr;
  __shared__ float tile[32][33];
  const Dion2Mat& d = mats[members[blockIdx.z]];
  const int64_t L = d.by_cols ? d.rows : d.cols, k = d.k, cols = d.cols;
  const int64_t l0 = (int64_t)blockIdx.x * 32, j0 = (int64_t)blockIdx.y * 32;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const float lr_eff = lr * d.lr_factor;
  if (!d.by_cols) {
    for (int jj = ty; jj < 32; jj += 8) {
      const int64_t j = j0 + jj, l = l0 + tx;
      if (j < k && l < L) {
        const float step = d.row_factor ? lr_eff * d.row_factor[j] : lr_eff;
        d.w[(int64_t)d.sel[j] * cols + l] -= step * __bfloat162float(d.o[j * L + l]);
      }
    }
  } else {
    for (int jj = ty; jj < 32; jj += 8) {
      const int64_t j = j0 + jj, l = l0 + tx;
      tile[jj][tx] = (j < k && l < L) ? __bfloat162float(d.o[j * L + l]) : 0.0f;  // tile[j - j0][l - l0]
    }
    __syncthreads();
    for (int rr = ty; rr < 32; rr += 8) {
      const int64_t l = l0 + rr, j = j0 + tx;
      if (j < k && l < L) d.w[l * cols + d.sel[j]] -= lr_eff * tile[tx][rr];
    }
  }
}

// Grid-stride x ← f·x.
template <typename S> __global__ void scale_kernel(S* __restrict__ x, int64_t total, float f) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = from_f32<S>(to_f32(x[i]) * f);
}

// One block per chunk (kChunkThreads threads): W ← W·decay over the chunk's elements. With VEC = 4
// every tensor is 16-byte aligned.
template <int VEC>
__global__ void decay_weights_kernel(const ChunkRef* __restrict__ chunks, const WeightSpan* __restrict__ spans,
                                     const Dion2Scalars* __restrict__ sc) {
  const float decay = sc->decay;
  const ChunkRef c = chunks[blockIdx.x];
  const WeightSpan d = spans[c.tensor];
  const int64_t end = min(c.start + kChunkElems, d.numel);
  for (int64_t i = c.start + (int64_t)threadIdx.x * VEC; i < end; i += (int64_t)blockDim.x * VEC) {
    if (i + VEC <= end) {
      float w[VEC];
      load_vec<VEC>(d.w + i, w);
#pragma unroll
      for (int e = 0; e < VEC; ++e) w[e] *= decay;
      store_vec<VEC>(d.w + i, w);
    } else {
      for (int64_t j = i; j < end; ++j) d.w[j] *= decay;
    }
  }
}

// One thread: *dst = v.
__global__ void set_scalars_kernel(Dion2Scalars* dst, Dion2Scalars v) { *dst = v; }

}  // namespace

void dion2_set_scalars(cudaStream_t s, Dion2Scalars* dst, Dion2Scalars v) {
  set_scalars_kernel<<<1, 1, 0, s>>>(dst, v);
  CUDA_CHECK_LAUNCH();
}

void decay_weights(cudaStream_t s, const ChunkRef* chunks, int64_t n_chunks, const WeightSpan* spans, bool vec4,
                   const Dion2Scalars* sc) {
  if (n_chunks == 0) return;
  if (vec4)
    decay_weights_kernel<4><<<(unsigned)n_chunks, kChunkThreads, 0, s>>>(chunks, spans, sc);
  else
    decay_weights_kernel<1><<<(unsigned)n_chunks, kChunkThreads, 0, s>>>(chunks, spans, sc);
  CUDA_CHECK_LAUNCH();
}

size_t dion2_select_smem(int npow2) { return (size_t)npow2 * (sizeof(uint64_t) + sizeof(uint32_t)); }

void dion2_select_prepare(int npow2) {
  const size_t bytes = dion2_select_smem(npow2);
  if (bytes > 32 * 1024)  // beyond the default 48 KiB with the static scratch: opt in
    CUDA_CHECK(cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

namespace {
template <bool DECAY_W>
void pass1_launch(cudaStream_t s, const Dion2Mat* mats, const Pass1Block* row_blocks, int64_t n_row_blocks,
                  const Pass1Block* col_blocks, int64_t n_col_blocks, bool vec4, bool bf, const Dion2Scalars* decay) {
  if (n_row_blocks > 0) {
    const unsigned g = (unsigned)n_row_blocks;
    if (vec4)
      bf ? pass1_rows_kernel<4, bf16, DECAY_W><<<g, 32 * kRowsPerBlock, 0, s>>>(row_blocks, mats, decay)
         : pass1_rows_kernel<4, float, DECAY_W><<<g, 32 * kRowsPerBlock, 0, s>>>(row_blocks, mats, decay);
    else
      bf ? pass1_rows_kernel<1, bf16, DECAY_W><<<g, 32 * kRowsPerBlock, 0, s>>>(row_blocks, mats, decay)
         : pass1_rows_kernel<1, float, DECAY_W><<<g, 32 * kRowsPerBlock, 0, s>>>(row_blocks, mats, decay);
    CUDA_CHECK_LAUNCH();
  }
  if (n_col_blocks > 0) {
    const unsigned g = (unsigned)n_col_blocks;
    if (vec4)
      bf ? pass1_cols_kernel<4, bf16, DECAY_W><<<g, 256, 0, s>>>(col_blocks, mats, decay)
         : pass1_cols_kernel<4, float, DECAY_W><<<g, 256, 0, s>>>(col_blocks, mats, decay);
    else
      bf ? pass1_cols_kernel<1, bf16, DECAY_W><<<g, 256, 0, s>>>(col_blocks, mats, decay)
         : pass1_cols_kernel<1, float, DECAY_W><<<g, 256, 0, s>>>(col_blocks, mats, decay);
    CUDA_CHECK_LAUNCH();
  }
}
}  // namespace

void dion2_pass1(cudaStream_t s, const Dion2Mat* mats, const Pass1Block* row_blocks, int64_t n_row_blocks,
                 const Pass1Block* col_blocks, int64_t n_col_blocks, bool vec4, StateDtype dtype, bool decay_w,
                 const Dion2Scalars* decay) {
  const bool bf = dtype == StateDtype::BF16;
  if (decay_w)
    pass1_launch<true>(s, mats, row_blocks, n_row_blocks, col_blocks, n_col_blocks, vec4, bf, decay);
  else
    pass1_launch<false>(s, mats, row_blocks, n_row_blocks, col_blocks, n_col_blocks, vec4, bf, decay);
}

void dion2_reduce_partials(cudaStream_t s, const Dion2Mat* mats, const int32_t* col_mats, int n_col_mats,
                           int64_t max_n) {
  if (n_col_mats == 0) return;
  dim3 grid((unsigned)((max_n + 255) / 256), (unsigned)n_col_mats);
  reduce_partials_kernel<<<grid, 256, 0, s>>>(mats, col_mats);
  CUDA_CHECK_LAUNCH();
}

void dion2_select(cudaStream_t s, const Dion2Mat* mats, int n_mats, int npow2, bool random, uint64_t seed,
                  const Dion2Scalars* sc, float mult, float eps) {
  select_kernel<<<n_mats, kSelectThreads, dion2_select_smem(npow2), s>>>(mats, random, seed, sc, mult, eps);
  CUDA_CHECK_LAUNCH();
}

void dion2_gather(cudaStream_t s, const Dion2Mat* mats, const int32_t* members, int count, int64_t k, int64_t L,
                  StateDtype dtype, bool decay_selected, float ef_decay) {
  dim3 grid((unsigned)((L + 31) / 32), (unsigned)((k + 31) / 32), (unsigned)count), block(32, 8);
  if (dtype == StateDtype::BF16)
    gather_kernel<bf16><<<grid, block, 0, s>>>(mats, members, decay_selected, ef_decay);
  else
    gather_kernel<float><<<grid, block, 0, s>>>(mats, members, decay_selected, ef_decay);
  CUDA_CHECK_LAUNCH();
}

void dion2_update(cudaStream_t s, const Dion2Mat* mats, const int32_t* members, int count, int64_t k, int64_t L,
                  const Dion2Scalars* sc) {
  dim3 grid((unsigned)((L + 31) / 32), (unsigned)((k + 31) / 32), (unsigned)count), block(32, 8);
  update_kernel<<<grid, block, 0, s>>>(mats, members, sc);
  CUDA_CHECK_LAUNCH();
}

void scale_state(cudaStream_t s, void* x, int64_t total, StateDtype dtype, float f) {
  if (total == 0) return;
  const unsigned grid = (unsigned)std::min<int64_t>((total + 255) / 256, 4096);
  if (dtype == StateDtype::BF16)
    scale_kernel<bf16><<<grid, 256, 0, s>>>(static_cast<bf16*>(x), total, f);
  else
    scale_kernel<float><<<grid, 256, 0, s>>>(static_cast<float*>(x), total, f);
  CUDA_CHECK_LAUNCH();
}

}  // namespace og::cuda
