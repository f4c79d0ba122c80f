// The kernels of Dion2 / NorDion2 (see dion2_kernels.h).
#include "core/rng.h"
#include "optim/cuda/chunk_table.h"
#include "optim/cuda/device_math.cuh"
#include "optim/cuda/dion2_kernels.h"

namespace og::cuda {
namespace {

// ---- pass 1 ------------------------------------------------------------------------------------

// A momentum value after the lazy selective decay: the value the eager decay would have stored,
// from_f32<S>(m·f), with no FMA contraction into the following add.
template <typename S> __device__ __forceinline__ float owe(float m, float f) {
  return to_f32(from_f32<S>(__fmul_rn(m, f)));
}

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
  const float owed = d.slot[row] >= 0 ? sc->pending_decay : 1.0f;  // uniform over the warp
  float l1 = 0.0f, l2 = 0.0f;
  for (int64_t c = (int64_t)lane * VEC; c < cols; c += 32 * VEC) {
    if (c + VEC <= cols) {
      float ww[VEC], gg[VEC], mm[VEC];
      if constexpr (DECAY_W) load_vec<VEC>(w + c, ww);
      load_vec<VEC>(g + c, gg);
      load_vec<VEC>(m + c, mm);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        if (owed != 1.0f) mm[e] = owe<S>(mm[e], owed);
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
        m[j] = from_f32<S>((owed != 1.0f ? owe<S>(to_f32(m[j]), owed) : to_f32(m[j])) + g[j]);
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
  float l1[VEC], l2[VEC], owed[VEC];
  const int nv = (int)min((int64_t)VEC, cols - c);
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    l1[e] = 0.0f, l2[e] = 0.0f;
    owed[e] = e < nv && d.slot[c + e] >= 0 ? sc->pending_decay : 1.0f;
  }
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
        if (owed[e] != 1.0f) mm[e] = owe<S>(mm[e], owed[e]);
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
        m[i] = from_f32<S>((owed[e] != 1.0f ? owe<S>(to_f32(m[i]), owed[e]) : to_f32(m[i])) + d.g[i]);
        if constexpr (DECAY_W) d.w[i] *= decay;
        const float v = to_f32(m[i]);
        l1[e] += fabsf(v), l2[e] += v * v;
      }
  }
  const int64_t part = (b.row0 / kColChunkRows) * (int64_t)d.n + c;
  for (int e = 0; e < nv; ++e) d.part_l1[part + e] = l1[e], d.part_l2[part + e] = l2[e];
}

// grid (ceil(max_n/32), n_col_mats), block (32, 8): slice i = 32·blockIdx.x + x of matrix
// col_mats[y] gets the sum of its nparts partials in row 0: thread (x, y) sums parts y, y + 8, …
// in order, then y = 0 adds the eight sums in order (a fixed order; 8× the parallelism of one
// thread per slice, which left this ~40 µs pass latency-bound at 96 parts).
__global__ void reduce_partials_kernel(const Dion2Mat* __restrict__ mats, const int32_t* __restrict__ col_mats) {
  __shared__ float s1[8][32], s2[8][32];
  const Dion2Mat& d = mats[col_mats[blockIdx.y]];
  const int64_t i = (int64_t)blockIdx.x * 32 + threadIdx.x;
  const int y = threadIdx.y;
  float l1 = 0.0f, l2 = 0.0f;
  if (i < d.n)
    for (int64_t c = y; c < d.nparts; c += 8) l1 += d.part_l1[c * d.n + i], l2 += d.part_l2[c * d.n + i];
  s1[y][threadIdx.x] = l1;
  s2[y][threadIdx.x] = l2;
  __syncthreads();
  if (y == 0 && i < d.n) {
    for (int k = 1; k < 8; ++k) l1 += s1[k][threadIdx.x], l2 += s2[k][threadIdx.x];
    d.part_l1[i] = l1;
    d.part_l2[i] = l2;
  }
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

// The same sort for N <= blockDim.x, one element per thread: the compare-exchange stages with a
// partner in the same warp (stride < 32: 40 of the 55 stages at N = 1024) go through shuffles,
// only the wider ones through shared memory and a barrier. Keys are distinct except padding.
__device__ void bitonic_sort_in_registers(uint64_t* keys, uint32_t* vals, int N) {
  const int i = threadIdx.x;
  uint64_t k = i < N ? keys[i] : ~0ull;
  uint32_t v = i < N ? vals[i] : ~0u;
  __syncthreads();  // every read above before the first exchange through keys / vals
  for (int size = 2; size <= N; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      uint64_t pk;
      uint32_t pv;
      if (stride >= 32) {
        if (i < N) keys[i] = k, vals[i] = v;
        __syncthreads();
        pk = i < N ? keys[i ^ stride] : ~0ull;
        pv = i < N ? vals[i ^ stride] : ~0u;
        __syncthreads();
      } else {
        pk = __shfl_xor_sync(0xffffffffu, k, stride);
        pv = __shfl_xor_sync(0xffffffffu, v, stride);
      }
      const bool ascending = (i & size) == 0, lower = (i & stride) == 0;
      const bool greater = k > pk || (k == pk && v > pv), less = k < pk || (k == pk && v < pv);
      if (lower == ascending ? greater : less) k = pk, v = pv;  // lower keeps the min when ascending
    }
  }
  if (i < N) keys[i] = k, vals[i] = v;
  __syncthreads();
}

// One block (kSelectThreads) per matrix; dynamic smem: npow2 keys (u64) + npow2 vals (u32).
// Keys: ℓ1 → (~orderable(norm) << 32 | i), i.e. norm descending then index ascending;
// random → hash_u64(seed, step, p, key0 + i) with the index as tie-break. Sort, keep the first k, sort
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
      keys[i] = random ? hash_u64(seed, (uint64_t)step, (uint64_t)d.p, (uint64_t)(d.key0 + i))
                       : ((uint64_t)(~orderable_bits(d.part_l1[i])) << 32) | (uint64_t)i;
      vals[i] = (uint32_t)i;
    } else {
      keys[i] = ~0ull;
      vals[i] = ~0u;
    }
  }
  __syncthreads();
  if (N <= (int)blockDim.x)
    bitonic_sort_in_registers(keys, vals, N);
  else
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
  if (K <= (int)blockDim.x)
    bitonic_sort_in_registers(keys, vals, K);
  else
    bitonic_sort(keys, vals, K);
  float l2_sel = 0.0f, l1_sel = 0.0f, l1_all = 0.0f;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const int32_t s = (int32_t)keys[j];
    d.sel[j] = s;
    l2_sel += d.part_l2[s];
    l1_sel += d.part_l1[s];
  }
  for (int i = threadIdx.x; i < n; i += blockDim.x) l1_all += d.part_l1[i];
  // slot[i], i = 0..n: j if slice i is sel[j], else −1 − (the number of selected slices below i),
  // so that the tile kernels find both "which j" and "which range of j" without a search.
  for (int i = threadIdx.x; i <= n; i += blockDim.x) {
    int lo = 0, hi = k;  // first j with sel[j] >= i (keys[0..k) hold sel ascending)
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if ((int64_t)keys[mid] < i)
        lo = mid + 1;
      else
        hi = mid;
    }
    d.slot[i] = (i < n && lo < k && (int64_t)keys[lo] == i) ? lo : -1 - lo;
  }
  l2_sel = block_sum(l2_sel, scratch);
  l1_sel = block_sum(l1_sel, scratch);
  l1_all = block_sum(l1_all, scratch);
  if (threadIdx.x == 0) {
    *d.scale = 1.0f / (mult * sqrtf(l2_sel) + eps);
    *d.mass = l1_all > 0.0f ? l1_sel / l1_all : 0.0f;
  }
}

// ---- gather / update ---------------------------------------------------------------------------

// update_kernel: grid (ceil(L/32), ceil(k/32), count), block (32, 8), one 32×32 tile of O each.
// W[sel[j]][l] −= lr_eff·f_j·O[j][l]  (rows)  or  W[l][sel[j]] −= lr_eff·O[j][l]  (columns).
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
        float* w = d.w + (int64_t)d.sel[j] * cols + l;
        *w = __fmaf_rn(-step, __bfloat162float(d.o[j * L + l]), *w);
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
      if (j < k && l < L) {
        float* w = d.w + l * cols + d.sel[j];
        *w = __fmaf_rn(-lr_eff, tile[tx][rr], *w);
      }
    }
  }
}

// ---- whole-matrix tiles (column-slice gather, decay + update) -------------------------------------

// A block of the tile kernels covers kTileRows × kTileCols of one matrix (blockIdx.y or .z: member,
// blockIdx.x: tile, row-major over the matrix's tiles; blocks past the matrix's last tile exit).
constexpr int kTileRows = 32, kTileCols = 256, kTileThreads = 256;

// The number of selected slices below slice i, from the select kernel's slot map.
__device__ __forceinline__ int selected_below(const Dion2Mat& d, int64_t i) {
  const int v = d.slot[i];
  return v >= 0 ? v : -1 - v;
}

// VEC elements at p, or at the edge of a tile or matrix only the first n < VEC (zero-padded).
template <int VEC, typename T> __device__ __forceinline__ void load_edge(const T* p, int n, float (&out)[VEC]) {
  if (n >= VEC) {
    load_vec<VEC>(p, out);
  } else {
    for (int e = 0; e < VEC; ++e) out[e] = e < n ? to_f32(p[e]) : 0.0f;
  }
}
template <int VEC, typename T> __device__ __forceinline__ void store_edge(T* p, int n, const float (&in)[VEC]) {
  if (n >= VEC) {
    store_vec<VEC>(p, in);
  } else {
    for (int e = 0; e < VEC && e < n; ++e) p[e] = from_f32<T>(in[e]);
  }
}

struct SliceTile {
  int64_t r0, c0;  // the tile's first row and column
  int nr, nc;      // its rows and columns inside the matrix
  int jlo, jhi;    // the selected slices sel[jlo..jhi) that cross it
};

// The tile of this block in d; false (uniformly over the block) past the matrix's tiles.
__device__ __forceinline__ bool slice_tile(const Dion2Mat& d, SliceTile& t) {
  const int64_t tiles_c = (d.cols + kTileCols - 1) / kTileCols;
  if ((int64_t)blockIdx.x >= (d.rows + kTileRows - 1) / kTileRows * tiles_c) return false;
  t.r0 = (int64_t)blockIdx.x / tiles_c * kTileRows;
  t.c0 = (int64_t)blockIdx.x % tiles_c * kTileCols;
  t.nr = (int)min((int64_t)kTileRows, d.rows - t.r0);
  t.nc = (int)min((int64_t)kTileCols, d.cols - t.c0);
  const int64_t s0 = d.by_cols ? t.c0 : t.r0;
  t.jlo = selected_below(d, s0);
  t.jhi = selected_below(d, s0 + (d.by_cols ? t.nc : t.nr));
  return true;
}

// Row slices only (other members return at once). grid (ceil(L / kTileCols), ceil(k / kGatherRows),
// count), kTileThreads threads: selected rows j0 .. j0 + kGatherRows of S, columns c0 .. c0 + 256:
// S[j][c] = bf16(scale·M[sel[j]][c]) and, with the selective decay, M[sel[j]][c] ← ef_decay·M.
// Each thread issues all its loads before its stores.
constexpr int kGatherRows = 16;

// What one thread of the kernels over runs of selected rows owns (grid (ceil(L / kTileCols),
// ceil(k / kGatherRows), members), kTileThreads threads): columns c .. c + n (n ≤ VEC) of the
// selected rows j(q) = j0 + q·kPass, q < kRows (those below d.k). Row slices only: empty() for a
// column-slice member, past the row length or past the last selected row.
template <int VEC> struct RowRunThread {
  static constexpr int kLanes = kTileCols / VEC, kPass = kTileThreads / kLanes, kRows = kGatherRows / kPass;
  const Dion2Mat& d;
  int64_t c;
  int j0, n;
  __device__ __forceinline__ explicit RowRunThread(const Dion2Mat& m)
      : d(m),
        c((int64_t)blockIdx.x * kTileCols + (threadIdx.x % kLanes) * VEC),
        j0(blockIdx.y * kGatherRows + threadIdx.x / kLanes),
        n((int)max((int64_t)0, min((int64_t)VEC, m.cols - c))) {}  // VEC except at the last columns
  __device__ __forceinline__ bool empty() const { return d.by_cols || c >= d.cols || j0 >= d.k; }
  __device__ __forceinline__ int j(int q) const { return j0 + q * kPass; }
  // Element offsets of this thread's columns: in row sel[j(q)] of the matrix, in row j(q) of S / O.
  __device__ __forceinline__ int64_t in_matrix(int q) const { return (int64_t)d.sel[j(q)] * d.cols + c; }
  __device__ __forceinline__ int64_t in_slices(int q) const { return (int64_t)j(q) * d.cols + c; }
};

template <int VEC, typename S>
__global__ void __launch_bounds__(kTileThreads)
    gather_rows_kernel(const Dion2Mat* __restrict__ mats, const int32_t* __restrict__ members, bool decay_selected,
                       float ef_decay) {
  const RowRunThread<VEC> t(mats[members[blockIdx.z]]);
  if (t.empty()) return;
  S* M = static_cast<S*>(t.d.m);
  const float scale = *t.d.scale;
  float v[t.kRows][VEC];
#pragma unroll
  for (int q = 0; q < t.kRows; ++q)
    if (t.j(q) < t.d.k) load_edge<VEC>(M + t.in_matrix(q), t.n, v[q]);
#pragma unroll
  for (int q = 0; q < t.kRows; ++q) {
    if (t.j(q) >= t.d.k) continue;
    float sv[VEC], mv[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) sv[e] = v[q][e] * scale, mv[e] = v[q][e] * ef_decay;
    store_edge<VEC>(t.d.s + t.in_slices(q), t.n, sv);
    if (decay_selected) store_edge<VEC>(M + t.in_matrix(q), t.n, mv);
  }
}

// Column slices only (other members return at once). grid (max tiles, count), kTileThreads threads:
// reads the tile's rows of M along rows in VEC-wide vectors (only vectors holding a selected
// column), applies the selective decay to the selected elements, stages scale·M[:, sel[j]] in
// shared memory and writes S[j][r0 .. r0 + nr) as contiguous bf16 runs.
template <int VEC, typename S>
__global__ void __launch_bounds__(kTileThreads)
    gather_cols_kernel(const Dion2Mat* __restrict__ mats, const int32_t* __restrict__ members, bool decay_selected,
                       float ef_decay) {
  __shared__ float staged[kTileCols][kTileRows + 1];  // [j − jlo][row − r0]
  const Dion2Mat& d = mats[members[blockIdx.y]];
  if (!d.by_cols) return;
  SliceTile t;
  if (!slice_tile(d, t) || t.jlo == t.jhi) return;
  S* M = static_cast<S*>(d.m);
  const float scale = *d.scale;
  constexpr int kLanes = kTileCols / VEC;  // threads per tile row
  const int c = (threadIdx.x % kLanes) * VEC;
  // This thread's columns are fixed for the whole tile: skip it unless one of them is selected.
  int js[VEC];
  bool any = false;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    js[e] = c + e < t.nc ? d.slot[t.c0 + c + e] : -1;
    any = any || js[e] >= 0;
  }
  for (int rr = threadIdx.x / kLanes; any && rr < t.nr; rr += kTileThreads / kLanes) {
    S* m = M + (t.r0 + rr) * d.cols + t.c0 + c;
    float v[VEC];
    load_edge<VEC>(m, t.nc - c, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e)
      if (js[e] >= 0) {
        staged[js[e] - t.jlo][rr] = v[e] * scale;
        if (decay_selected) m[e] = from_f32<S>(v[e] * ef_decay);
      }
  }
  __syncthreads();
  const int64_t L = d.rows;
  for (int i = threadIdx.x; i < (t.jhi - t.jlo) * kTileRows; i += kTileThreads) {
    const int jj = i / kTileRows, l = i % kTileRows;
    if (l < t.nr) d.s[(int64_t)(t.jlo + jj) * L + t.r0 + l] = __float2bfloat16_rn(staged[jj][l]);
  }
}

// Every element of W once: W ← W·decay, then for the selected slices W −= lr_eff·f_j·O (rows) or
// lr_eff·O (columns), the same two roundings as decay_weights followed by update_kernel. Row
// slices read their O row directly (contiguous); column slices stage O[jlo..jhi)[r0 .. r0 + nr)
// in shared memory first. Replaces the separate decay pass (8 bytes per element) and the scatter
// (8 bytes per selected element plus O) by one 8-byte pass plus O. grid (max tiles, count); one
// launch for the row-slice members, one for the column-slice members (BY_COLS, with
// kStagedBytes of dynamic shared memory; the row launch needs none and keeps full occupancy).
// skip_selected (row members only): decay the unselected rows and leave the selected ones to
// decay_update_selected_rows_kernel (RowSlices::Unselected).
constexpr size_t kStagedBytes = sizeof(float) * kTileCols * (kTileRows + 1);
template <int VEC, bool BY_COLS>
__global__ void __launch_bounds__(kTileThreads)
    decay_update_kernel(const Dion2Mat* __restrict__ mats, const int32_t* __restrict__ members,
                        const Dion2Scalars* __restrict__ sc, bool skip_selected) {
  extern __shared__ float staged_raw[];
  auto staged = reinterpret_cast<float(*)[kTileRows + 1]>(staged_raw);  // O[j][r0 + l] at [j − jlo][l]
  const Dion2Mat& d = mats[members[blockIdx.y]];
  if ((bool)d.by_cols != BY_COLS) return;
  SliceTile t;
  if (!slice_tile(d, t)) return;
  const float decay = sc->decay, lr_eff = sc->lr * d.lr_factor;
  const int64_t L = d.by_cols ? d.rows : d.cols;
  if (BY_COLS && t.jhi > t.jlo) {  // uniform over the block
    for (int i = threadIdx.x; i < (t.jhi - t.jlo) * kTileRows; i += kTileThreads) {
      const int jj = i / kTileRows, l = i % kTileRows;
      if (l < t.nr) staged[jj][l] = __bfloat162float(d.o[(int64_t)(t.jlo + jj) * L + t.r0 + l]);
    }
    __syncthreads();
  }
  constexpr int kLanes = kTileCols / VEC;
  const int c = (threadIdx.x % kLanes) * VEC;
  if (c >= t.nc) return;
  int js[VEC];  // column slices: the j of each of this thread's columns (−1: not selected)
#pragma unroll
  for (int e = 0; e < VEC; ++e) js[e] = BY_COLS && c + e < t.nc ? d.slot[t.c0 + c + e] : -1;
  for (int rr = threadIdx.x / kLanes; rr < t.nr; rr += kTileThreads / kLanes) {
    const int j = BY_COLS ? -1 : d.slot[t.r0 + rr];  // row slices: this row's j (−1: not selected)
    if (!BY_COLS && skip_selected && j >= 0) continue;
    float* w = d.w + (t.r0 + rr) * d.cols + t.c0 + c;
    float v[VEC];
    load_edge<VEC>(w, t.nc - c, v);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = __fmul_rn(v[e], decay);
    if constexpr (!BY_COLS) {
      if (j >= 0) {
        const float step = d.row_factor ? lr_eff * d.row_factor[j] : lr_eff;
        float ov[VEC];
        load_edge<VEC>(d.o + (int64_t)j * L + t.c0 + c, t.nc - c, ov);
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[e] = __fmaf_rn(-step, ov[e], v[e]);
      }
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e)
        if (js[e] >= 0) v[e] = __fmaf_rn(-lr_eff, staged[js[e] - t.jlo][rr], v[e]);
    }
    store_edge<VEC>(w, t.nc - c, v);
  }
}

// Row slices only (column-slice members return at once): the selected rows of the decay + update
// pass, W[sel[j]] ← W[sel[j]]·decay − lr_eff·f_j·O[j] with decay_update_kernel's two roundings, by
// runs of selected rows as gather_rows_kernel: grid (ceil(L / kTileCols), ceil(k / kGatherRows),
// count), kTileThreads threads; each thread issues all its loads before its stores.
template <int VEC>
__global__ void __launch_bounds__(kTileThreads)
    decay_update_selected_rows_kernel(const Dion2Mat* __restrict__ mats, const int32_t* __restrict__ members,
                                      const Dion2Scalars* __restrict__ sc) {
  const RowRunThread<VEC> t(mats[members[blockIdx.z]]);
  if (t.empty()) return;
  const float decay = sc->decay, lr_eff = sc->lr * t.d.lr_factor;
  float wv[t.kRows][VEC], ov[t.kRows][VEC];
#pragma unroll
  for (int q = 0; q < t.kRows; ++q) {
    if (t.j(q) >= t.d.k) continue;
    load_edge<VEC>(t.d.w + t.in_matrix(q), t.n, wv[q]);
    load_edge<VEC>(t.d.o + t.in_slices(q), t.n, ov[q]);
  }
#pragma unroll
  for (int q = 0; q < t.kRows; ++q) {
    if (t.j(q) >= t.d.k) continue;
    const float step = t.d.row_factor ? lr_eff * t.d.row_factor[t.j(q)] : lr_eff;
#pragma unroll
    for (int e = 0; e < VEC; ++e) wv[q][e] = __fmaf_rn(-step, ov[q][e], __fmul_rn(wv[q][e], decay));
    store_edge<VEC>(t.d.w + t.in_matrix(q), t.n, wv[q]);
  }
}

// grid (ceil(max_len / 256), max_k, n_mats), block 256: M[K] ← f·M[K] along slice sel[j] of
// matrix z (positions 256·x + t), rounded as the eager decay in the gather.
template <typename S> __global__ void apply_pending_decay_kernel(const Dion2Mat* __restrict__ mats, float f) {
  const Dion2Mat& d = mats[blockIdx.z];
  const int64_t j = blockIdx.y, l = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t L = d.by_cols ? d.rows : d.cols;
  if (j >= d.k || l >= L) return;
  S* m = static_cast<S*>(d.m) + (d.by_cols ? l * d.cols + d.sel[j] : (int64_t)d.sel[j] * d.cols + l);
  *m = from_f32<S>(__fmul_rn(to_f32(*m), f));
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
      for (int e = 0; e < VEC; ++e) w[e] = __fmul_rn(w[e], decay);
      store_vec<VEC>(d.w + i, w);
    } else {
      for (int64_t j = i; j < end; ++j) d.w[j] = __fmul_rn(d.w[j], decay);
    }
  }
}

// grid (ceil(max_len / 256), max_k, n_mats), block 256: element l of selected slice j of matrix z
// between M and its fp32 buffer slot (PACK: M → buf; else buf → M, rounded as stored).
template <typename S, bool PACK, typename Buf = std::conditional_t<PACK, float*, const float*>>
__global__ void move_selected_kernel(const Dion2Mat* __restrict__ mats, const int64_t* __restrict__ offsets,
                                     Buf __restrict__ buf) {
  const Dion2Mat& d = mats[blockIdx.z];
  const int64_t j = blockIdx.y, l = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t L = d.by_cols ? d.rows : d.cols;
  if (j >= d.k || l >= L) return;
  S* m = static_cast<S*>(d.m) + (d.by_cols ? l * d.cols + d.sel[j] : (int64_t)d.sel[j] * d.cols + l);
  Buf b = buf + offsets[blockIdx.z] + j * L + l;
  if constexpr (PACK)
    *b = to_f32(*m);
  else
    *m = from_f32<S>(*b);
}

// One block (256 threads) per matrix: *scale = 1/(mult·‖M[K]‖_F + eps) over its buffer slot, each
// value rounded as M stores it (fixed-order sum).
template <typename S>
__global__ void selected_scale_kernel(const Dion2Mat* __restrict__ mats, const int64_t* __restrict__ offsets,
                                      const float* __restrict__ buf, float mult, float eps) {
  __shared__ float scratch[32];
  const Dion2Mat& d = mats[blockIdx.x];
  const int64_t n = (int64_t)d.k * (d.by_cols ? d.rows : d.cols);
  const float* b = buf + offsets[blockIdx.x];
  float sq = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = to_f32(from_f32<S>(b[i]));
    sq += v * v;
  }
  sq = block_sum(sq, scratch);
  if (threadIdx.x == 0) *d.scale = 1.0f / (mult * sqrtf(sq) + eps);
}

// Grid-stride: f32[i] = state[i] (TO_F32) or state[i] = rounded f32[i].
template <typename S, bool TO_F32> __global__ void convert_state_kernel(S* __restrict__ state, float* f32, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    if constexpr (TO_F32)
      f32[i] = to_f32(state[i]);
    else
      state[i] = from_f32<S>(f32[i]);
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
  dim3 grid((unsigned)((max_n + 31) / 32), (unsigned)n_col_mats), block(32, 8);
  reduce_partials_kernel<<<grid, block, 0, s>>>(mats, col_mats);
  CUDA_CHECK_LAUNCH();
}

void dion2_select(cudaStream_t s, const Dion2Mat* mats, int n_mats, int npow2, bool random, uint64_t seed,
                  const Dion2Scalars* sc, float mult, float eps) {
  select_kernel<<<n_mats, kSelectThreads, dion2_select_smem(npow2), s>>>(mats, random, seed, sc, mult, eps);
  CUDA_CHECK_LAUNCH();
}

void dion2_update(cudaStream_t s, const Dion2Mat* mats, const int32_t* members, int count, int64_t k, int64_t L,
                  const Dion2Scalars* sc) {
  dim3 grid((unsigned)((L + 31) / 32), (unsigned)((k + 31) / 32), (unsigned)count), block(32, 8);
  update_kernel<<<grid, block, 0, s>>>(mats, members, sc);
  CUDA_CHECK_LAUNCH();
}

namespace {
template <int VEC, typename S>
void gather_launch(cudaStream_t s, const Dion2Mat* mats, const int32_t* members, int count, int64_t k, int64_t L,
                   int64_t max_tiles, bool has_rows, bool has_cols, bool decay_selected, float ef_decay) {
  if (has_rows) {
    dim3 grid((unsigned)((L + kTileCols - 1) / kTileCols), (unsigned)((k + kGatherRows - 1) / kGatherRows),
              (unsigned)count);
    gather_rows_kernel<VEC, S><<<grid, kTileThreads, 0, s>>>(mats, members, decay_selected, ef_decay);
    CUDA_CHECK_LAUNCH();
  }
  if (has_cols) {
    dim3 grid((unsigned)max_tiles, (unsigned)count);
    gather_cols_kernel<VEC, S><<<grid, kTileThreads, 0, s>>>(mats, members, decay_selected, ef_decay);
    CUDA_CHECK_LAUNCH();
  }
}
}  // namespace

void dion2_gather(cudaStream_t s, const Dion2Mat* mats, const int32_t* members, int count, int64_t k, int64_t L,
                  int64_t max_tiles, bool has_rows, bool has_cols, bool vec4, StateDtype dtype, bool decay_selected,
                  float ef_decay) {
  if (count == 0) return;
  const bool bf = dtype == StateDtype::BF16;
  if (vec4)
    bf ? gather_launch<4, bf16>(s, mats, members, count, k, L, max_tiles, has_rows, has_cols, decay_selected, ef_decay)
       : gather_launch<4, float>(s, mats, members, count, k, L, max_tiles, has_rows, has_cols, decay_selected,
                                 ef_decay);
  else
    bf ? gather_launch<1, bf16>(s, mats, members, count, k, L, max_tiles, has_rows, has_cols, decay_selected, ef_decay)
       : gather_launch<1, float>(s, mats, members, count, k, L, max_tiles, has_rows, has_cols, decay_selected,
                                 ef_decay);
}

void dion2_decay_update(cudaStream_t s, const Dion2Mat* mats, const int32_t* members, int count, int64_t max_tiles,
                        bool has_rows, bool has_cols, bool vec4, const Dion2Scalars* sc, RowSlices rows, int64_t max_k,
                        int64_t max_cols) {
  if (count == 0 || max_tiles == 0) return;
  dim3 grid((unsigned)max_tiles, (unsigned)count);
  if (has_rows && rows == RowSlices::Selected) {
    if (max_k > 0) {
      const dim3 sgrid((unsigned)((max_cols + kTileCols - 1) / kTileCols),
                       (unsigned)((max_k + kGatherRows - 1) / kGatherRows), (unsigned)count);
      vec4 ? decay_update_selected_rows_kernel<4><<<sgrid, kTileThreads, 0, s>>>(mats, members, sc)
           : decay_update_selected_rows_kernel<1><<<sgrid, kTileThreads, 0, s>>>(mats, members, sc);
      CUDA_CHECK_LAUNCH();
    }
  } else if (has_rows) {
    const bool skip = rows == RowSlices::Unselected;
    vec4 ? decay_update_kernel<4, false><<<grid, kTileThreads, 0, s>>>(mats, members, sc, skip)
         : decay_update_kernel<1, false><<<grid, kTileThreads, 0, s>>>(mats, members, sc, skip);
    CUDA_CHECK_LAUNCH();
  }
  if (has_cols && rows != RowSlices::Unselected) {
    vec4 ? decay_update_kernel<4, true><<<grid, kTileThreads, kStagedBytes, s>>>(mats, members, sc, false)
         : decay_update_kernel<1, true><<<grid, kTileThreads, kStagedBytes, s>>>(mats, members, sc, false);
    CUDA_CHECK_LAUNCH();
  }
}

int64_t dion2_tiles(int64_t rows, int64_t cols) {
  return (rows + kTileRows - 1) / kTileRows * ((cols + kTileCols - 1) / kTileCols);
}

void dion2_apply_pending_decay(cudaStream_t s, const Dion2Mat* mats, int n_mats, int64_t max_k, int64_t max_len,
                               StateDtype dtype, float f) {
  if (n_mats == 0) return;
  dim3 grid((unsigned)((max_len + 255) / 256), (unsigned)max_k, (unsigned)n_mats);
  if (dtype == StateDtype::BF16)
    apply_pending_decay_kernel<bf16><<<grid, 256, 0, s>>>(mats, f);
  else
    apply_pending_decay_kernel<float><<<grid, 256, 0, s>>>(mats, f);
  CUDA_CHECK_LAUNCH();
}

void dion2_pack_selected(cudaStream_t s, const Dion2Mat* mats, int n_mats, const int64_t* offsets, float* buf,
                         int64_t max_k, int64_t max_len, StateDtype dtype) {
  if (n_mats == 0 || max_k == 0) return;
  const dim3 grid((unsigned)((max_len + 255) / 256), (unsigned)max_k, (unsigned)n_mats);
  if (dtype == StateDtype::BF16)
    move_selected_kernel<bf16, true><<<grid, 256, 0, s>>>(mats, offsets, buf);
  else
    move_selected_kernel<float, true><<<grid, 256, 0, s>>>(mats, offsets, buf);
  CUDA_CHECK_LAUNCH();
}

void dion2_unpack_selected(cudaStream_t s, const Dion2Mat* mats, int n_mats, const int64_t* offsets, const float* buf,
                           int64_t max_k, int64_t max_len, StateDtype dtype, float mult, float eps) {
  if (n_mats == 0 || max_k == 0) return;
  const dim3 grid((unsigned)((max_len + 255) / 256), (unsigned)max_k, (unsigned)n_mats);
  if (dtype == StateDtype::BF16) {
    move_selected_kernel<bf16, false><<<grid, 256, 0, s>>>(mats, offsets, buf);
    CUDA_CHECK_LAUNCH();
    selected_scale_kernel<bf16><<<n_mats, 256, 0, s>>>(mats, offsets, buf, mult, eps);
  } else {
    move_selected_kernel<float, false><<<grid, 256, 0, s>>>(mats, offsets, buf);
    CUDA_CHECK_LAUNCH();
    selected_scale_kernel<float><<<n_mats, 256, 0, s>>>(mats, offsets, buf, mult, eps);
  }
  CUDA_CHECK_LAUNCH();
}

void convert_state(cudaStream_t s, void* state, float* f32, int64_t n, StateDtype dtype, bool to_f32) {
  if (n == 0) return;
  const unsigned grid = (unsigned)std::min<int64_t>((n + 255) / 256, 4096);
  if (dtype == StateDtype::BF16)
    to_f32 ? convert_state_kernel<bf16, true><<<grid, 256, 0, s>>>(static_cast<bf16*>(state), f32, n)
           : convert_state_kernel<bf16, false><<<grid, 256, 0, s>>>(static_cast<bf16*>(state), f32, n);
  else
    to_f32 ? convert_state_kernel<float, true><<<grid, 256, 0, s>>>(static_cast<float*>(state), f32, n)
           : convert_state_kernel<float, false><<<grid, 256, 0, s>>>(static_cast<float*>(state), f32, n);
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
