// Shared pieces of the tensor-core attention kernels (attention_forward.cu,
// attention_backward.cu): moving [rows, HD] tiles of a [B, T, H, HD] tensor between global
// memory, shared memory and MMA A-fragments (layouts in mma_bf16.cuh).
// Rows past the sequence end (t >= T) are filled with zeros, never read.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "core/cuda_utils.h"

#include "model/cuda/dtype.cuh"
#include "model/cuda/mma_bf16.cuh"

namespace og::gpu::attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory tiles are [rows][HD + 8] bf16: the 16-byte pad keeps every row 16-byte aligned
// (for ldmatrix and uint4 stores) and shifts consecutive rows by 4 banks, so the 8 row reads
// of one ldmatrix phase hit 32 distinct banks.
template <int HD> constexpr int smem_ld() { return HD + 8; }

// Issue asynchronous copies smem[r][:] = x[b, row0 + r, h, :] for r < ROWS (zero-filled where
// row0 + r >= T); the caller commits, waits and syncs. `bh` points at (b, t = 0, h, 0);
// consecutive t are `stride` = H·HD elements apart. All threads of the block take part
// (blockDim.x threads, 16 bytes each per step).
template <int ROWS, int HD>
__device__ __forceinline__ void load_tile_async(bf16* smem, const bf16* bh, int row0, int T, int stride) {
  constexpr int kChunks = HD / 8;  // 16-byte chunks per row
  for (int idx = threadIdx.x; idx < ROWS * kChunks; idx += blockDim.x) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = row0 + r < T;
    const bf16* src = valid ? bh + (int64_t)(row0 + r) * stride + c * 8 : bh;
    cp_async_16(smem + r * smem_ld<HD>() + c * 8, src, valid);
  }
}

// vec[r] = src[row0 + r] for r < ROWS (0 where row0 + r >= T); src is one [T] row of a [B, H, T] array.
template <int ROWS> __device__ __forceinline__ void load_row_stats(float* smem, const float* src, int row0, int T) {
  for (int r = threadIdx.x; r < ROWS; r += blockDim.x) smem[r] = row0 + r < T ? src[row0 + r] : 0.0f;
}

__device__ __forceinline__ uint32_t load_pair_or_zero(const bf16* bh, int row, int col, int T, int stride) {
  return row < T ? *reinterpret_cast<const uint32_t*>(bh + (int64_t)row * stride + col) : 0u;
}

// A fragments of the 16 x HD block of rows r0..r0+15 (one per k-step of 16 columns), straight
// from global memory (done once per block, so no staging through shared memory).
template <int HD>
__device__ __forceinline__ void load_a_fragments(uint32_t a[HD / 16][4], const bf16* bh, int r0, int T, int stride) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int ks = 0; ks < HD / 16; ++ks) {
    a[ks][0] = load_pair_or_zero(bh, r0 + g, ks * 16 + 2 * t, T, stride);
    a[ks][1] = load_pair_or_zero(bh, r0 + g + 8, ks * 16 + 2 * t, T, stride);
    a[ks][2] = load_pair_or_zero(bh, r0 + g, ks * 16 + 8 + 2 * t, T, stride);
    a[ks][3] = load_pair_or_zero(bh, r0 + g + 8, ks * 16 + 8 + 2 * t, T, stride);
  }
}

// Store a 16 x HD fp32 accumulator block (C-fragment layout, HD/8 n-tiles) as bf16 rows
// r0..r0+15 of a [B, T, H, HD] tensor, rows r0+g scaled by scale_lo and r0+g+8 by scale_hi;
// rows >= T are skipped.
template <int HD>
__device__ __forceinline__ void store_c_fragments(bf16* bh, const float acc[HD / 8][4], float scale_lo, float scale_hi,
                                                  int r0, int T, int stride) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int row_lo = r0 + g, row_hi = r0 + g + 8;
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    if (row_lo < T)
      *reinterpret_cast<uint32_t*>(bh + (int64_t)row_lo * stride + dt * 8 + 2 * t) =
          pack_bf16x2(acc[dt][0] * scale_lo, acc[dt][1] * scale_lo);
    if (row_hi < T)
      *reinterpret_cast<uint32_t*>(bh + (int64_t)row_hi * stride + dt * 8 + 2 * t) =
          pack_bf16x2(acc[dt][2] * scale_hi, acc[dt][3] * scale_hi);
  }
}

// Order of the blocks of a 1-D grid of nbh·nblk blocks ((b, h) pairs x row blocks of one pair)
// for L2 reuse: consecutive blocks cover a group of kBlockGroupBH pairs and all their row blocks,
// by rank within the group (rank 0 first), so the tiles that every row block of a pair streams
// (K and V, or Q and dO) come from DRAM about once per group and then hit in L2 (a group's
// tiles: 16 x 512 KiB at T = 1024, hd = 128). The caller maps rank to a row block, heaviest
// first. (Ordered by pair first, the blocks in flight at once would span ~130 pairs and their
// streams would not fit in L2.)
constexpr int kBlockGroupBH = 16;
// Row blocks of one (b, h) pair for a kernel of W warps (16 rows each), and the 1-D grid size.
__host__ __device__ constexpr int row_blocks(int T, int W) { return (T + 16 * W - 1) / (16 * W); }
inline unsigned flash_grid(int B, int H, int T, int W) { return (unsigned)((int64_t)B * H * row_blocks(T, W)); }
struct BlockCoords {
  int bh, rank;
};
__device__ __forceinline__ BlockCoords block_coords(int nblk) {
  const int per_group = kBlockGroupBH * nblk, nbh = gridDim.x / nblk;
  const int group = blockIdx.x / per_group, r = blockIdx.x % per_group;
  const int gsize = min(kBlockGroupBH, nbh - group * kBlockGroupBH);  // the last group may be smaller
  return {group * kBlockGroupBH + r % gsize, r / gsize};
}

// Opt a kernel into more than the default 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel> inline void allow_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

}  // namespace og::gpu::attn
