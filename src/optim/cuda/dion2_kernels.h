// The kernels of Dion2 / NorDion2 (OPTIMIZERS.md "Dion2"), launched by dion2_optimizer.cu:
//   pass 1      M ← M + G (and W ← W·(1 − lr·wd), unless that runs as its own overlapped pass,
//               decay_weights) over every matrix, with the ℓ1 and squared-ℓ2 norm of every slice
//               (row or column) as a by-product
//   select      per matrix on the device: the k slices with the largest ℓ1 norm (ties: smaller
//               index) or with the smallest hash_u64(seed, step, p, i), as ascending indices,
//               and the normalization scale 1/(mult·‖M[K]‖_F + eps) of the selected submatrix
//   gather      S = bf16(scale·M[K]) as a k×L row-major matrix (L = slice length) into the NS
//               batch buffer, with the selective decay M[K] ← ef_decay·M[K]
//   update      W[K] ← W[K] − lr_eff·f_j·O (scatter of the NS output; f_j: NorDion2's factors),
//               or, fused with the weight decay, one pass over all of W (decay_update)
// Slices are rows (S = M[K, :]) or columns (S = M[:, K]ᵀ); column slices go through 32×32
// shared-memory tiles so that both the matrix and S are accessed along rows.
#pragma once
#include <cstdint>

#include "optim/cuda/blas.h"
#include "optim/cuda/chunk_table.h"
#include "optim/hparams.h"

namespace og::cuda {

// One matrix as the Dion2 kernels see it (device array, built once).
struct Dion2Mat {
  float* w;
  const float* g;
  void* m;  // momentum, fp32 or bf16
  int64_t rows, cols;
  int32_t by_cols;          // slices are columns (length rows) rather than rows (length cols)
  int32_t n, k;             // slices available, slices selected
  int32_t nparts;           // rows of partial norms (column slices: one per kColChunkRows rows)
  int32_t p;                // index of the parameter in the group (random selection key)
  int32_t key0;             // random selection: slice i draws the key of slice key0 + i (FSDP: the shard's first row)
  float lr_factor;          // lr_eff / lr from the whole shape
  float* part_l1;           // nparts × n partial ℓ1 norms; row 0 holds the totals after reduce
  float* part_l2;           // nparts × n partial squared ℓ2 norms
  int32_t* sel;             // k selected slice indices, ascending
  int32_t* slot;            // n + 1 entries: j where slice i = sel[j], else −1 − #{j : sel[j] < i}
  float* scale;             // 1 float: 1/(mult·‖M[K]‖_F + eps)
  float* mass;              // 1 float: the selected share of the ℓ1 mass (diagnostics)
  bf16* s;                  // its k×L slot in the NS input buffer
  const bf16* o;            // its k×L slot in the NS output buffer
  const float* row_factor;  // NorDion2: k factors; else nullptr
};

// The scalars that change from step to step, read by the kernels from device memory (so that a
// captured CUDA graph of the step stays valid); written by dion2_set_scalars before each step.
struct Dion2Scalars {
  float lr;             // learning rate of this step
  float decay;          // 1 − lr·wd
  int64_t step;         // random selection key
  float pending_decay;  // lazy selective decay: the factor the previous step's selected slices of M
                        // still owe (ef_decay), applied by pass 1 through the slot map; else 1
};

// One weight matrix of the separate weight-decay pass.
struct WeightSpan {
  float* w;
  int64_t numel;
};

// A block of pass 1: rows [row0, row0 + kRowsPerBlock) for row slices; rows
// [row0, row0 + kColChunkRows) × columns [col0, col0 + 256·VEC) for column slices.
struct Pass1Block {
  int32_t mat;
  int32_t pad;
  int64_t row0, col0;
};

constexpr int kRowsPerBlock = 8;
constexpr int kColChunkRows = 32;
constexpr int kSelectThreads = 1024;
constexpr int kMaxSelectSlices = 16384;  // shared memory of the bitonic sort: 12 bytes per slot

// Dynamic shared memory of the select kernel for slices up to npow2 (a power of two).
size_t dion2_select_smem(int npow2);
// Allow the select kernel that much shared memory (construction time).
void dion2_select_prepare(int npow2);

// *dst = v (one thread), ordered on s before the step's kernels.
void dion2_set_scalars(cudaStream_t s, Dion2Scalars* dst, Dion2Scalars v);
// decay_w: also W ← W·decay (else W is not touched: decay_weights does it separately). Before
// M ← M + G, the slices selected in the previous step (slot map) are scaled by sc->pending_decay.
void dion2_pass1(cudaStream_t s, const Dion2Mat* mats, const Pass1Block* row_blocks, int64_t n_row_blocks,
                 const Pass1Block* col_blocks, int64_t n_col_blocks, bool vec4, StateDtype dtype, bool decay_w,
                 const Dion2Scalars* sc);
// W ← W·decay over every span, one block per chunk of a ChunkTable built over the spans' numel.
void decay_weights(cudaStream_t s, const ChunkRef* chunks, int64_t n_chunks, const WeightSpan* spans, bool vec4,
                   const Dion2Scalars* sc);
// Column-slice matrices: sum the partial norms into row 0 (fixed order).
void dion2_reduce_partials(cudaStream_t s, const Dion2Mat* mats, const int32_t* col_mats, int n_col_mats,
                           int64_t max_n);
void dion2_select(cudaStream_t s, const Dion2Mat* mats, int n_mats, int npow2, bool random, uint64_t seed,
                  const Dion2Scalars* sc, float mult, float eps);
// Tiles of a rows×cols matrix in the whole-matrix tile kernels (the x extent of their grid).
int64_t dion2_tiles(int64_t rows, int64_t cols);
// The k×L NS batch of `count` matrices mats[members[z]]: row-slice members by runs of selected
// rows (has_rows), column-slice members by whole-row tiles of M (has_cols; max_tiles: the most
// dion2_tiles of any member). vec4: every member's cols % 4 == 0 and 16-byte aligned buffers.
void dion2_gather(cudaStream_t s, const Dion2Mat* mats, const int32_t* members, int count, int64_t k, int64_t L,
                  int64_t max_tiles, bool has_rows, bool has_cols, bool vec4, StateDtype dtype, bool decay_selected,
                  float ef_decay);
void dion2_update(cudaStream_t s, const Dion2Mat* mats, const int32_t* members, int count, int64_t k, int64_t L,
                  const Dion2Scalars* sc);
// Which rows of the row-slice members a decay + update launch covers: all of them; only the
// unselected ones (W ← W·decay, which does not need the Newton–Schulz output, so it can run while
// the NS runs); or only the selected ones (by runs of selected rows, as the gather). Unselected
// then Selected is bit-identical to All. Column-slice members are covered whole by All and
// Selected, not at all by Unselected.
enum class RowSlices { All, Unselected, Selected };
// W ← W·decay − lr_eff·f_j·O[j] on the selected slices, W ← W·decay elsewhere: the weight decay
// and the scatter in one pass over every member's W. RowSlices::Selected needs max_k (the most
// rows any row-slice member selects) and max_cols (the widest row-slice member).
void dion2_decay_update(cudaStream_t s, const Dion2Mat* mats, const int32_t* members, int count, int64_t max_tiles,
                        bool has_rows, bool has_cols, bool vec4, const Dion2Scalars* sc,
                        RowSlices rows = RowSlices::All, int64_t max_k = 0, int64_t max_cols = 0);
// M[K] ← f·M[K] for the selected slices K of every matrix (slot map / sel of the last select):
// settles a pending lazy selective decay before the state is read from outside.
void dion2_apply_pending_decay(cudaStream_t s, const Dion2Mat* mats, int n_mats, int64_t max_k, int64_t max_len,
                               StateDtype dtype, float f);
// x ← f·x over `total` state elements.
void scale_state(cudaStream_t s, void* x, int64_t total, StateDtype dtype, float f);

// Compressed sync (dist.compressed_sync): the selected slices M[K] of every matrix to and from one
// fp32 buffer (matrix i's k×L, slices as rows, at offsets[i]), so that one all-reduce averages
// them. grid (ceil(max_len / 256), max_k, n_mats), block 256, one element each.
void dion2_pack_selected(cudaStream_t s, const Dion2Mat* mats, int n_mats, const int64_t* offsets, float* buf,
                         int64_t max_k, int64_t max_len, StateDtype dtype);
// M[K] ← buf (rounded to the state dtype), then each matrix's scale 1/(mult·‖M[K]‖_F + eps) from
// the stored values (one block per matrix): the select kernel's scale was of the local M[K].
void dion2_unpack_selected(cudaStream_t s, const Dion2Mat* mats, int n_mats, const int64_t* offsets, const float* buf,
                           int64_t max_k, int64_t max_len, StateDtype dtype, float mult, float eps);
// dst[i] = src[i] as fp32 (to_f32) or src[i] = dst[i] rounded to the state dtype (!to_f32), n elements.
void convert_state(cudaStream_t s, void* state, float* f32, int64_t n, StateDtype dtype, bool to_f32);

}  // namespace og::cuda
