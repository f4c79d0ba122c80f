// Muon / NorMuon / Dion2 / NorDion2 on row shards (FSDP), GPU path (see sharded_matrix_cuda.h).
// Rank r holds rows [row0_r, row0_r + n_r) of every matrix and the momentum (and V) of those rows.
// One step, all on the device, in the order of sharded_matrix_cpu.cpp:
//   1. local, per shard
//        Muon:  M ← mu·M + G;  U = nesterov ? mu·M + G : M, written as bf16 straight into the
//               send buffer at the matrix's slot for its owner (muon_kernels.cuh);
//        Dion2: M ← M + G with the rows' ℓ1 norms (dion2_pass1), the k_local rows of the shard
//               (dion2_select: ℓ1 top rows, or the smallest hash of the GLOBAL row index), and
//               bf16(M[K]) gathered into the send slot with the selective decay (dion2_gather);
//   2. all-to-all #1 (bf16): every owner receives every rank's rows of its matrices;
//   3. the owner copies the parts into whole matrices in row order (copy_parts_kernel, with the
//      per-chunk sums of squares), normalizes them by their Frobenius norm (muon_normalize_kernel)
//      and orthonormalizes them, one Newton–Schulz batch per shape (newton_schulz.h), the batches
//      concurrently on their own streams (CudaOptimOptions::concurrent_groups);
//   4. the owner copies every rank's rows of the result into the send buffer; all-to-all #2;
//   5. local: NorMuon / NorDion2 normalization of the returned rows with the local V, whose two
//      Frobenius sums are all-reduced (shard_norm_*_kernel), then the update on the shard — Muon:
//      W ← W·(1 − lr·wd) − lr_eff·f_row·O; Dion2: dion2_decay_update (decay everywhere, the
//      selected rows' update riding along; with dion2_decay SplitRows the unselected rows are
//      decayed on a low-priority side stream as soon as the selection is known, under the
//      exchanges and the NS, and only the selected rows wait for O), and without ef the decay of
//      all of M.
// lr_eff comes from the WHOLE shape. Bytes per step and rank: two all-to-alls of the largest
// rank block (bf16) — Muon ≈ 2·(W−1)/W² of the group's elements; Dion2 ∝ α — plus, for NorMuon
// and NorDion2, an all-reduce of 2 floats per matrix.
// Differences from one process, as on the CPU path: the owner normalizes bf16(U) (one more
// bf16 rounding than the single-process NS input), and Dion2's local scope selects per shard.
// Dion2's global scope (select_scope: global) instead selects exactly as one process: after
// pass 1 every rank all-gathers the rows' ℓ1 and squared ℓ2 norms of every matrix (8 bytes per
// row), runs dion2_select over the whole matrix (the single-process top-k or random draw, and
// its scale 1/(mult·‖M[K]‖ + eps)), keeps the selected rows of its own shard
// (localize_selection_kernel) and sends bf16(scale·M[K] ∩ shard), the single-process NS input
// rows, to the owner, which places each row by its position in the selection
// (move_selected_rows_kernel) instead of assembling and normalizing. How the k rows split over
// the ranks changes every step and is known only on the device, so every rank's slot holds
// min(k, its rows): the all-to-alls carry that padding (at W ranks up to min(kW, rows)/k times
// the local scope's bytes).
#include "optim/cuda/sharded_matrix_cuda.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "dist/counting_communicator.h"
#include "optim/cpu_optimizers.h"
#include "optim/cuda/chunk_table.h"
#include "optim/cuda/comm_order.h"
#include "optim/cuda/device_math.cuh"
#include "optim/cuda/dion2_kernels.h"
#include "optim/cuda/muon_kernels.cuh"
#include "optim/cuda/newton_schulz.h"
#include "optim/cuda/state_arena.h"
#include "optim/distributed_plan.h"
#include "optim/slice_select.h"

namespace og::cuda {
namespace {

constexpr size_t kAlignElems = 128;  // 256 bytes of bf16: every slot of the exchange buffers
size_t align_elems(size_t n) { return (n + kAlignElems - 1) / kAlignElems * kAlignElems; }

// A contiguous run of bf16 elements moved between the exchange buffers and the NS batch (one
// rank's rows of one matrix).
struct CopyPart {
  const bf16* src;
  bf16* dst;
  int64_t numel;
};

// One block per chunk of a ChunkTable over the parts (kChunkThreads threads): dst ← src; with
// `partial`, partial[chunk] = Σ src² over the chunk (the Frobenius norm of the assembled matrix,
// summed per matrix by muon_normalize_kernel over its parts' chunks).
template <int VEC>
__global__ void copy_parts_kernel(const ChunkRef* __restrict__ chunks, const CopyPart* __restrict__ parts,
                                  float* __restrict__ partial) {
  __shared__ float scratch[32];
  const ChunkRef c = chunks[blockIdx.x];
  const CopyPart d = parts[c.tensor];
  const int64_t end = min(c.start + kChunkElems, d.numel);
  float sq = 0.0f;
  for (int64_t i = c.start + (int64_t)threadIdx.x * VEC; i < end; i += (int64_t)blockDim.x * VEC) {
    if (i + VEC <= end) {
      float v[VEC];
      load_vec<VEC>(d.src + i, v);
#pragma unroll
      for (int e = 0; e < VEC; ++e) sq += v[e] * v[e];
      store_vec<VEC>(d.dst + i, v);  // exact: the values are bf16 already
    } else {
      for (int64_t j = i; j < end; ++j) {
        const float v = __bfloat162float(d.src[j]);
        sq += v * v;
        d.dst[j] = d.src[j];
      }
    }
  }
  if (partial) {  // uniform over the block
    sq = block_sum(sq, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = sq;
  }
}

// NorMuon / NorDion2 on the rows of one matrix returned to this rank (k×L, row-major).
struct ShardNormDesc {
  const bf16* o;
  void* v;             // V of the shard's rows, fp32 or bf16
  const int32_t* sel;  // NorDion2: the shard rows of O's rows; NorMuon: nullptr (row j is shard row j)
  float* factors;      // k: 1/(sqrt V + 1e-8), then times the restore scale
  int64_t k, L;
  const int32_t* kdev;  // global scope: k is this step's count, read here (Dion2Mat::k); else nullptr
};
__device__ __forceinline__ int64_t rows_of(const ShardNormDesc& d) { return d.kdev ? (int64_t)*d.kdev : d.k; }

constexpr int kNormRowsPerBlock = 8;  // one warp per row

// grid (ceil(max k / 8), matrices), 256 threads, one warp per row j:
//   n_j = mean_l O_jl²;  V ← V + (1 − β2)·(n_j − V);  factor_j = 1/(sqrt V + 1e-8)
// and the block's shares of ‖O‖² and ‖O/(sqrt V + 1e-8)‖² into partial[2·(y·gridDim.x + x) + {0, 1}].
template <int VEC, typename V>
__global__ void shard_norm_rows_kernel(const ShardNormDesc* __restrict__ descs, float beta2,
                                       float* __restrict__ partial) {
  __shared__ float part[2][kNormRowsPerBlock];
  const ShardNormDesc d = descs[blockIdx.y];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t j = (int64_t)blockIdx.x * kNormRowsPerBlock + warp;
  float so = 0.0f, sn = 0.0f;
  if (j < rows_of(d)) {
    const bf16* row = d.o + j * d.L;
    float s = 0.0f;
    for (int64_t c = (int64_t)lane * VEC; c < d.L; c += 32 * VEC) {
      if (c + VEC <= d.L) {
        float x[VEC];
        load_vec<VEC>(row + c, x);
#pragma unroll
        for (int e = 0; e < VEC; ++e) s += x[e] * x[e];
      } else {
        for (int64_t e = c; e < d.L; ++e) {
          const float x = __bfloat162float(row[e]);
          s += x * x;
        }
      }
    }
    s = warp_sum(s);
    if (lane == 0) {
      V* v = static_cast<V*>(d.v);
      const int64_t r = d.sel ? (int64_t)d.sel[j] : j;
      float vv = to_f32(v[r]);
      vv = vv + (1.0f - beta2) * (s / (float)d.L - vv);
      v[r] = from_f32<V>(vv);  // the factor uses the unrounded value, like the CPU reference
      const float inv = 1.0f / (sqrtf(vv) + 1e-8f);
      d.factors[j] = inv;
      so = s;
      sn = inv * inv * s;
    }
  }
  if (lane == 0) part[0][warp] = so, part[1][warp] = sn;
  __syncthreads();
  if (threadIdx.x == 0) {
    float a = 0.0f, b = 0.0f;
    for (int w = 0; w < kNormRowsPerBlock; ++w) a += part[0][w], b += part[1][w];
    const int64_t at = 2 * ((int64_t)blockIdx.y * gridDim.x + blockIdx.x);
    partial[at] = a;
    partial[at + 1] = b;
  }
}

// grid (matrices), 256 threads: sums[2q + {0, 1}] = the fixed-order sum of matrix q's nblocks partials.
__global__ void shard_norm_sums_kernel(const float* __restrict__ partial, int nblocks, float* __restrict__ sums) {
  __shared__ float scratch[32];
  const float* p = partial + 2 * (int64_t)blockIdx.x * nblocks;
  float a = 0.0f, b = 0.0f;
  for (int i = threadIdx.x; i < nblocks; i += blockDim.x) a += p[2 * i], b += p[2 * i + 1];
  a = block_sum(a, scratch);
  b = block_sum(b, scratch);
  if (threadIdx.x == 0) sums[2 * blockIdx.x] = a, sums[2 * blockIdx.x + 1] = b;
}

// grid (ceil(max k / 256), matrices), 256 threads: factor_j ← factor_j · ‖O‖ / max(‖O/(sqrt V + ε)‖, 1e-8)
// with the sums over ALL ranks' rows (all-reduced).
__global__ void shard_norm_restore_kernel(const ShardNormDesc* __restrict__ descs, const float* __restrict__ sums) {
  const ShardNormDesc d = descs[blockIdx.y];
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= rows_of(d)) return;
  const float restore = sqrtf(sums[2 * blockIdx.y]) / fmaxf(sqrtf(sums[2 * blockIdx.y + 1]), 1e-8f);
  d.factors[j] *= restore;
}

// ---- Dion2's global selection scope -------------------------------------------------------------

// A run of floats to copy: one rank's gathered row norms of one matrix into whole-matrix order.
struct FloatRun {
  const float* src;
  float* dst;
  int64_t n;
};

// grid (runs), 256 threads.
__global__ void copy_float_runs_kernel(const FloatRun* __restrict__ runs) {
  const FloatRun r = runs[blockIdx.x];
  for (int64_t i = threadIdx.x; i < r.n; i += blockDim.x) r.dst[i] = r.src[i];
}

// One matrix's global selection and this rank's shard of it.
struct LocalizeDesc {
  const int32_t* gsel;       // k selected rows of the whole matrix, ascending
  const int32_t* gslot;      // rows + 1 entries: the whole matrix's slot map (dion2_kernels.h)
  const int32_t* rank_row0;  // W + 1 entries: every rank's first row, in row order, then rows
  int32_t* lo;               // W + 1 entries out: every rank's first position in gsel, then k
  int32_t row0, n, k, W;     // this rank's rows [row0, row0 + n)
};

__device__ __forceinline__ int lower_bound_i32(const int32_t* a, int n, int32_t x) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// grid (matrices), 256 threads: from the global selection, this shard's count (written into
// mats[p].k, which the gather, the update and the NorDion2 factors read), its selected rows
// (shard-local, ascending), its slot map (n + 1 entries: the global one shifted by the rows
// selected below the shard), and every rank's first position in the selection (lo).
__global__ void localize_selection_kernel(const LocalizeDesc* __restrict__ descs, Dion2Mat* __restrict__ mats) {
  __shared__ int lo_me, hi_me;
  const LocalizeDesc d = descs[blockIdx.x];
  Dion2Mat& m = mats[blockIdx.x];
  for (int i = threadIdx.x; i <= d.W; i += blockDim.x) d.lo[i] = lower_bound_i32(d.gsel, d.k, d.rank_row0[i]);
  if (threadIdx.x == 0) {
    lo_me = lower_bound_i32(d.gsel, d.k, d.row0);
    hi_me = lower_bound_i32(d.gsel, d.k, d.row0 + d.n);
    m.k = hi_me - lo_me;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < hi_me - lo_me; j += blockDim.x) m.sel[j] = d.gsel[lo_me + j] - d.row0;
  for (int i = threadIdx.x; i <= d.n; i += blockDim.x) {
    const int v = d.gslot[d.row0 + i];
    m.slot[i] = v >= 0 ? v - lo_me : -1 - ((-1 - v) - lo_me);
  }
}

// One owned matrix's selected rows between the exchange buffers and its NS slot.
struct SelectedRowsDesc {
  bf16* whole;           // k × cols: the NS input (TO_WHOLE) or its output
  bf16* base;            // the matrix's slot in rank 0's block of recv_ (TO_WHOLE) or of send_
  const int32_t* lo;     // W + 1: every part's first row in the selection, in row order, then k
  const int32_t* order;  // W: the rank of every part, in row order
  int64_t block, cols;
  int32_t k, W;
};

// grid (max k, owned matrices), 128 threads: row j of the NS slot ↔ row j − lo[i] of the slot of
// rank order[i], where lo[i] ≤ j < lo[i + 1]. VEC 8: 16-byte copies (cols % 8 == 0).
template <bool TO_WHOLE, int VEC>
__global__ void move_selected_rows_kernel(const SelectedRowsDesc* __restrict__ descs) {
  const SelectedRowsDesc d = descs[blockIdx.y];
  const int j = blockIdx.x;
  if (j >= d.k) return;
  int i = 0;
  while (i + 1 < d.W && d.lo[i + 1] <= j) ++i;
  bf16* slot = d.base + (int64_t)d.order[i] * d.block + (int64_t)(j - d.lo[i]) * d.cols;
  bf16* row = d.whole + (int64_t)j * d.cols;
  const bf16* src = TO_WHOLE ? slot : row;
  bf16* dst = TO_WHOLE ? row : slot;
  if constexpr (VEC == 8) {
    for (int64_t c = (int64_t)threadIdx.x * 8; c < d.cols; c += (int64_t)blockDim.x * 8)
      *reinterpret_cast<uint4*>(dst + c) = *reinterpret_cast<const uint4*>(src + c);
  } else {
    for (int64_t c = threadIdx.x; c < d.cols; c += blockDim.x) dst[c] = src[c];
  }
}

// The SelectedRowsDescs of one direction, ready to launch.
struct SelectedRowsTable {
  DeviceBuffer<SelectedRowsDesc> descs;
  int count = 0;
  int64_t max_k = 0;
  bool vec8 = true;
  void build(const std::vector<SelectedRowsDesc>& host) {
    count = (int)host.size();
    for (const SelectedRowsDesc& d : host) {
      max_k = std::max<int64_t>(max_k, d.k);
      vec8 = vec8 && d.cols % 8 == 0 && aligned_to(d.whole, 16) && aligned_to(d.base, 16) && d.block % 8 == 0;
    }
    upload(descs, host);
  }
  template <bool TO_WHOLE> void launch(cudaStream_t s) const {
    if (count == 0 || max_k == 0) return;
    const dim3 grid((unsigned)max_k, (unsigned)count);
    if (vec8)
      move_selected_rows_kernel<TO_WHOLE, 8><<<grid, 128, 0, s>>>(descs.data());
    else
      move_selected_rows_kernel<TO_WHOLE, 1><<<grid, 128, 0, s>>>(descs.data());
    CUDA_CHECK_LAUNCH();
  }
};

using Shape = std::pair<int64_t, int64_t>;  // rows, cols

// items grouped by shape(item), the groups in first-seen order, each keeping the items' order.
template <typename F>
std::vector<std::pair<Shape, std::vector<size_t>>> group_by_shape(const std::vector<size_t>& items, F shape) {
  std::vector<std::pair<Shape, std::vector<size_t>>> groups;
  std::map<Shape, size_t> index;
  for (size_t i : items) {
    const Shape key = shape(i);
    const auto [it, fresh] = index.emplace(key, groups.size());
    if (fresh) groups.push_back({key, {}});
    groups[it->second].second.push_back(i);
  }
  return groups;
}

// A ChunkTable over CopyParts, ready to launch.
struct PartTable {
  ChunkTable chunks;
  DeviceBuffer<CopyPart> parts;
  bool vec4 = true;
  void build(const std::vector<CopyPart>& host) {
    std::vector<int64_t> numel;
    for (const CopyPart& p : host) {
      numel.push_back(p.numel);
      vec4 = vec4 && aligned_to(p.src, 8) && aligned_to(p.dst, 8);
    }
    chunks.build(numel);
    upload(parts, host);
  }
  void launch(cudaStream_t s, float* partial) const {
    const unsigned n = (unsigned)chunks.count();
    if (n == 0) return;
    with_constant<1, 4>(vec4 ? 4 : 1, [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      copy_parts_kernel<V><<<n, kChunkThreads, 0, s>>>(chunks.chunks.data(), parts.data(), partial);
      CUDA_CHECK_LAUNCH();
    });
  }
};

class CudaShardedMatrix final : public CudaOptimizer {
 public:
  CudaShardedMatrix(const OptimHParams& hp, std::vector<ParamSlot> params, Communicator& device_comm,
                    Communicator& host_comm, bool global_scope, const CudaOptimOptions& opt)
      : hp_(hp), params_(std::move(params)), comm_(device_comm) {
    const Algorithm a = hp_.algorithm;
    selective_ = a == Algorithm::Dion2 || a == Algorithm::NorDion2;
    global_ = selective_ && global_scope;
    normalized_ = a == Algorithm::NorMuon || a == Algorithm::NorDion2;
    OG_CHECK(a == Algorithm::Muon || a == Algorithm::NorMuon || selective_,
             "internal: the CUDA sharded matrix optimizer does not run {}", name_of(a));
    OG_CHECK(comm_.device_buffers(), "{} under fsdp on cuda needs a device communicator (nccl), got '{}'", name_of(a),
             comm_.backend());
    if (selective_)
      OG_CHECK(hp_.fraction > 0.0f && hp_.fraction <= 1.0f, "{}: fraction must be in (0, 1] (got {})", name_of(a),
               hp_.fraction);
    main_ = opt.stream;
    fork_.create();
    if (selective_ && opt.dion2_decay == CudaOptimOptions::Dion2Decay::SplitRows) {
      int prio_low = 0, prio_high = 0;
      CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&prio_low, &prio_high));
      decay_side_.create(prio_low);
    }
    ef_decay_ = a == Algorithm::NorDion2 ? hp_.mu : hp_.ef_decay;
    const int W = comm_.size(), me = comm_.rank();
    const size_t np = params_.size();
    map_ = gather_shard_map(host_comm, params_);

    // What every rank sends of every matrix (global scope: the most it can send), and the owners
    // (the CPU path's rule).
    count_.assign(np, std::vector<int64_t>(W, 0));
    std::vector<double> cost(np);
    std::vector<size_t> payload(np);
    for (size_t p = 0; p < np; ++p) {
      const ParamSlot& s = params_[p];
      const int64_t k_global = global_ ? select_count(hp_.fraction, s.rows) : 0;
      const int64_t k_local = global_ ? k_global : selective_ ? local_select_count(hp_.fraction, s.rows, W) : s.rows;
      int64_t total = 0, most = 0;
      for (int r = 0; r < W; ++r) {
        count_[p][r] = std::min(k_local, map_.nrows[p][r]);
        total += count_[p][r];
        most = std::max(most, count_[p][r]);
      }
      total_.push_back(global_ ? k_global : total);
      cost[p] = ns_cost(total, s.cols);
      payload[p] = align_elems((size_t)most * (size_t)s.cols);
    }
    plan_ = plan_owners(cost, payload, W);
    block_ = std::max(plan_.block, kAlignElems);
    send_.resize((size_t)W * block_);
    recv_.resize((size_t)W * block_);
    CUDA_CHECK(cudaMemset(send_.data(), 0, send_.bytes()));  // padding travels too: keep it defined
    CUDA_CHECK(cudaMemset(recv_.data(), 0, recv_.bytes()));
    auto slot = [&](DeviceBuffer<bf16>& buf, int rank, size_t p) {
      return buf.data() + (size_t)rank * block_ + plan_.offset[p];
    };

    // State: the shard's rows.
    std::vector<int64_t> numel, rows;
    for (const ParamSlot& s : params_) {
      numel.push_back(s.shard_rows() * s.cols);
      rows.push_back(s.shard_rows());
    }
    momentum_.init(numel, hp_.state_dtype);
    if (normalized_) variance_.init(rows, hp_.state_dtype);

    // Owner side: one Newton–Schulz batch per (rows, cols) of the assembled matrices it owns.
    for (auto& [key, members] : group_by_shape(plan_.owned[me], [&](size_t p) {
           return Shape{total_[p], params_[p].cols};
         })) {
      ns_groups_.push_back(std::make_unique<NsGroup>());
      ns_groups_.back()->shape.rows = key.first;
      ns_groups_.back()->shape.cols = key.second;
      ns_groups_.back()->members = std::move(members);
    }
    std::vector<CopyPart> assemble, scatter;
    std::vector<SelectedRowsDesc> to_whole, from_whole;  // global scope
    std::vector<MuonDesc> norm_descs;
    std::vector<int64_t> norm_numel;
    std::vector<size_t> first_part;  // per owned matrix (NS group order): its first part
    for (auto& gp : ns_groups_) {
      NsGroup& g = *gp;
      g.shape.count = (int)g.members.size();
      for (auto* b : {&g.x[0], &g.x[1]}) {
        b->resize((size_t)g.shape.x_elems());
        CUDA_CHECK(cudaMemset(b->data(), 0, b->bytes()));
      }
      for (auto* b : {&g.a, &g.b}) {
        b->resize((size_t)g.shape.gram_elems());
        CUDA_CHECK(cudaMemset(b->data(), 0, b->bytes()));
      }
      g.blas = std::make_unique<BlasContext>();
      if (opt.concurrent_groups && &gp != &ns_groups_.front()) {  // the first group runs on the step stream
        g.side.create();
      }
      g.blas->set_stream(g.side.s ? g.side.s : main_);
      g.ns.plan(*g.blas, hp_.ortho, g.shape, NsBuffers{{g.x[0].data(), g.x[1].data()}, g.a.data(), g.b.data()}, opt);
      const int64_t per = g.shape.rows * g.shape.cols;
      for (size_t pos = 0; pos < g.members.size(); ++pos) {
        const size_t p = g.members[pos];
        const int64_t cols = params_[p].cols;
        bf16* whole = g.x[0].data() + (int64_t)pos * per;
        const bf16* result = g.ns.result() + (int64_t)pos * per;
        if (global_) {  // placed by the selection at every step (move_selected_rows_kernel)
          to_whole.push_back(
              {whole, slot(recv_, 0, p), nullptr, nullptr, (int64_t)block_, cols, (int32_t)total_[p], (int32_t)W});
          from_whole.push_back({const_cast<bf16*>(result), slot(send_, 0, p), nullptr, nullptr, (int64_t)block_, cols,
                                (int32_t)total_[p], (int32_t)W});
          owned_.push_back(p);
          continue;  // no assemble/scatter parts and no owner normalization: the rows arrive scaled
        }
        first_part.push_back(assemble.size());
        int64_t row = 0;
        for (int r : map_.order[p]) {
          const int64_t n = count_[p][r] * cols;
          if (n == 0) continue;
          assemble.push_back({slot(recv_, r, p), whole + row * cols, n});
          scatter.push_back({result + row * cols, slot(send_, r, p), n});
          row += count_[p][r];
        }
        MuonDesc d{};
        d.x = whole;
        d.numel = per;
        d.cols = cols;
        norm_descs.push_back(d);
        norm_numel.push_back(per);
      }
    }
    first_part.push_back(assemble.size());
    assemble_.build(assemble);
    scatter_.build(scatter);
    for (size_t i = 0; i + 1 < first_part.size(); ++i) {  // each matrix's partial sums: its parts' chunks
      norm_descs[i].first_chunk = assemble_.chunks.first_chunk[first_part[i]];
      norm_descs[i].end_chunk = assemble_.chunks.first_chunk[first_part[i + 1]];
    }
    norm_chunks_.build(norm_numel);
    upload(norm_descs_, norm_descs);
    norm_vec4_ = true;
    for (const MuonDesc& d : norm_descs) norm_vec4_ = norm_vec4_ && aligned_to(d.x, 8);
    partials_.resize((size_t)std::max<int64_t>(assemble_.chunks.count(), 1));

    // Shard side: NorMuon / NorDion2 factors (this rank's rows of every O).
    std::vector<int64_t> factor_off;
    int64_t factor_total = 0;
    for (size_t p = 0; p < np; ++p) {
      factor_off.push_back(factor_total);
      factor_total += count_[p][me];
      max_mine_ = std::max(max_mine_, count_[p][me]);
    }
    factors_.resize((size_t)std::max<int64_t>(factor_total, 1));

    // Update groups: the matrices of one whole shape (one lr_eff; equal shard shapes).
    std::vector<size_t> all(np);
    std::iota(all.begin(), all.end(), size_t{0});
    for (auto& [key, members] : group_by_shape(all, [&](size_t p) {
           return Shape{params_[p].rows, params_[p].cols};
         })) {
      ugroups_.push_back(std::make_unique<UpdateGroup>());
      ugroups_.back()->rows = key.first;
      ugroups_.back()->cols = key.second;
      ugroups_.back()->members.assign(members.begin(), members.end());
    }
    if (selective_)
      build_dion2(slot, factor_off);
    else
      build_muon(slot, factor_off);
    if (global_) build_global(to_whole, from_whole);

    if (normalized_) {
      std::vector<ShardNormDesc> nd;
      for (size_t p = 0; p < np; ++p)
        nd.push_back({slot(recv_, plan_.owner[p], p), variance_.ptr(p), selective_ ? sel_ptr_[p] : nullptr,
                      factors_.data() + factor_off[p], count_[p][me], params_[p].cols,
                      global_ ? &mats_.data()[p].k : nullptr});
      upload(norm_rows_descs_, nd);
      norm_rows_vec4_ = true;
      for (const ShardNormDesc& d : nd) norm_rows_vec4_ = norm_rows_vec4_ && d.L % 4 == 0 && aligned_to(d.o, 8);
      norm_blocks_ = (int)std::max<int64_t>((max_mine_ + kNormRowsPerBlock - 1) / kNormRowsPerBlock, 1);
      norm_partial_.resize((size_t)2 * norm_blocks_ * std::max<size_t>(np, 1));
      norm_sums_.resize((size_t)2 * std::max<size_t>(np, 1));
    }
    // Descriptor uploads and memsets ran on the legacy stream, asynchronously: finish them before
    // any step can run on another stream.
    CUDA_CHECK(cudaDeviceSynchronize());
  }

  Algorithm algorithm() const override { return hp_.algorithm; }
  void set_stream(cudaStream_t s) override {
    main_ = s;
    for (auto& g : ns_groups_)
      if (!g->side.s) g->blas->set_stream(s);
  }
  cudaStream_t stream() const override { return main_; }

  void step(const StepContext& ctx) override {
    check_step_context(ctx, hp_.algorithm);
    comm_.reset();
    cudaStream_t s = main_;
    if (selective_)
      local_dion2(ctx, s);
    else
      local_muon(ctx, s);
    if (decay_side_.s) {  // Dion2: the unselected rows' weight decay, under the exchanges and the NS
      CUDA_CHECK(cudaEventRecord(fork_.e, s));
      decay_side_.fork(fork_.e);
      for (auto& ug : ugroups_)
        dion2_decay_update(decay_side_.s, mats_.data(), ug->members_dev.data(), (int)ug->members.size(), ug->max_tiles,
                           true, false, ug->vec4, dion2_scalars_.data(), RowSlices::Unselected);
    }
    exchange(s);  // 2. the rows to their owners

    // 3. assemble, normalize, orthonormalize (the owner's matrices)
    if (global_) to_whole_.launch<true>(s);
    assemble_.launch(s, partials_.data());
    const unsigned nc = (unsigned)norm_chunks_.count();
    if (nc > 0)
      with_constant<1, 4>(norm_vec4_ ? 4 : 1, [&](auto vec) {
        constexpr int V = decltype(vec)::value;
        muon_normalize_kernel<V><<<nc, kChunkThreads, 0, s>>>(norm_chunks_.chunks.data(), norm_descs_.data(),
                                                              partials_.data(), ns_norm_multiplier(hp_.ortho), hp_.eps);
        CUDA_CHECK_LAUNCH();
      });
    // the shape groups concurrently (forked from and joined back into s)
    CUDA_CHECK(cudaEventRecord(fork_.e, s));
    for (auto& g : ns_groups_) {
      if (g->side.s) g->side.fork(fork_.e);
      bf16* out = g->ns.run(*g->blas);
      OG_CHECK(out == g->ns.result(), "internal: NS result not where planned");
      if (g->side.s) g->side.join(s);
    }
    // 4. every rank's rows of the results back
    if (global_) from_whole_.launch<false>(s);
    scatter_.launch(s, nullptr);
    exchange(s);

    // 5. normalization and update on the shard
    if (normalized_) neuron_factors(s);
    if (selective_)
      update_dion2(s);
    else
      update_muon(s);
    stats_["comm_bytes"] = comm_.total_bytes();
  }

  std::map<std::string, double> stats() const override { return stats_; }

  // Per parameter, as the CPU path: the shard's momentum, and for NorMuon / NorDion2 its V.
  std::vector<StateTensor> state() override {
    std::vector<StateTensor> out;
    for (size_t p = 0; p < params_.size(); ++p) {
      out.push_back(momentum_.view(p, params_[p].name, "momentum"));
      if (normalized_) out.push_back(variance_.view(p, params_[p].name, "variance_neuron"));
    }
    return out;
  }

  // Dion2 / NorDion2: this rank's selected rows of every matrix at the last step (shard-local).
  std::vector<std::vector<int32_t>> last_selection() override {
    if (!selective_) return {};
    CUDA_CHECK(cudaStreamSynchronize(main_));
    std::vector<std::vector<int32_t>> out;
    for (size_t p = 0; p < params_.size(); ++p) {
      int32_t k = (int32_t)count_[p][comm_.rank()];
      if (global_) CUDA_CHECK(cudaMemcpy(&k, &mats_.data()[p].k, sizeof(k), cudaMemcpyDeviceToHost));
      out.emplace_back((size_t)k);
      if (!out.back().empty())
        CUDA_CHECK(
            cudaMemcpy(out.back().data(), sel_ptr_[p], out.back().size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
    }
    return out;
  }

 private:
  // The matrices of one whole shape: one launch each of the shard-side kernels.
  struct UpdateGroup {
    int64_t rows = 0, cols = 0;
    std::vector<int32_t> members;
    DeviceBuffer<int32_t> members_dev;
    ChunkTable chunks;             // Muon: over the members' shards
    DeviceBuffer<MuonDesc> descs;  // Muon
    bool vec4 = false;
    int64_t max_tiles = 0;  // Dion2: dion2_tiles of the shard
    int64_t max_k = 0;      // Dion2: the most rows a member selects on this rank
  };
  // Members are destroyed in reverse order: the cuBLAS context before its stream.
  struct NsGroup {
    SideStream side;  // CudaOptimOptions::concurrent_groups: groups after the first (first: destroyed last)
    NsShape shape;
    std::vector<size_t> members;  // owned matrices, increasing index
    DeviceBuffer<bf16> x[2], a, b;
    std::unique_ptr<BlasContext> blas;
    NsBatch ns;
  };

  template <typename Slot> void build_muon(Slot slot, const std::vector<int64_t>& factor_off) {
    for (auto& ug : ugroups_) {
      std::vector<MuonDesc> descs;
      std::vector<int64_t> numel;
      ug->vec4 = ug->cols % 4 == 0;
      for (int32_t p : ug->members) {
        const ParamSlot& s = params_[p];
        MuonDesc d{};
        d.w = s.w;
        d.g = s.g;
        d.m = momentum_.ptr(p);
        d.x = slot(send_, plan_.owner[p], p);
        d.o = slot(recv_, plan_.owner[p], p);
        d.row_factor = normalized_ ? factors_.data() + factor_off[p] : nullptr;
        d.numel = s.shard_rows() * s.cols;
        d.cols = s.cols;
        descs.push_back(d);
        numel.push_back(d.numel);
        ug->vec4 = ug->vec4 && (d.numel == 0 || (aligned_to(s.w, 16) && aligned_to(s.g, 16)));
      }
      ug->chunks.build(numel);
      upload(ug->descs, descs);
    }
    scalars_.resize(1 + ugroups_.size());
  }

  template <typename Slot> void build_dion2(Slot slot, const std::vector<int64_t>& factor_off) {
    const int me = comm_.rank();
    const size_t np = params_.size();
    int64_t norm_total = 0, sel_total = 0, slot_total = 0;
    int64_t most_rows = 1;
    for (size_t p = 0; p < np; ++p) {
      const int64_t n = params_[p].shard_rows();
      OG_CHECK(n <= kMaxSelectSlices,
               "{}: parameter '{}' has a shard of {} rows; the CUDA selection supports at most {}",
               name_of(hp_.algorithm), params_[p].name, n, kMaxSelectSlices);
      norm_total += n;
      sel_total += count_[p][me];
      slot_total += n + 1;
      most_rows = std::max(most_rows, n);
    }
    npow2_ = 1;
    while (npow2_ < most_rows) npow2_ <<= 1;
    dion2_select_prepare(npow2_);
    part_l1_.resize((size_t)std::max<int64_t>(norm_total, 1));
    part_l2_.resize((size_t)std::max<int64_t>(norm_total, 1));
    sel_.resize((size_t)std::max<int64_t>(sel_total, 1));
    slot_.resize((size_t)std::max<int64_t>(slot_total, 1));
    CUDA_CHECK(cudaMemset(sel_.data(), 0, sel_.bytes()));
    CUDA_CHECK(cudaMemset(slot_.data(), 0xff, slot_.bytes()));
    scale_.resize(std::max<size_t>(np, 1));
    mass_.resize(std::max<size_t>(np, 1));
    vec4_ = true;
    std::vector<Dion2Mat> mats(np);
    std::vector<Pass1Block> blocks;
    int64_t noff = 0, soff = 0, toff = 0;
    for (size_t p = 0; p < np; ++p) {
      const ParamSlot& s = params_[p];
      const int64_t n = s.shard_rows();
      Dion2Mat& d = mats[p];
      d.w = s.w;
      d.g = s.g;
      d.m = momentum_.ptr(p);
      d.rows = n;
      d.cols = s.cols;
      d.by_cols = 0;
      d.n = (int32_t)n;
      d.k = (int32_t)count_[p][me];
      d.nparts = 1;
      d.p = (int32_t)p;
      d.key0 = (int32_t)s.row0;  // the random key of the GLOBAL row, as the CPU path
      d.lr_factor = adjusted_lr(1.0f, hp_.adjust_lr, s.rows, s.cols);  // the WHOLE shape
      d.part_l1 = part_l1_.data() + noff;
      d.part_l2 = part_l2_.data() + noff;
      d.sel = sel_.data() + soff;
      d.slot = slot_.data() + toff;
      d.scale = scale_.data() + p;
      d.mass = mass_.data() + p;
      d.s = slot(send_, plan_.owner[p], p);
      d.o = slot(recv_, plan_.owner[p], p);
      d.row_factor = normalized_ ? factors_.data() + factor_off[p] : nullptr;
      sel_ptr_.push_back(d.sel);
      noff += n;
      soff += d.k;
      toff += n + 1;
      for (int64_t r0 = 0; r0 < n; r0 += kRowsPerBlock) blocks.push_back({(int32_t)p, 0, r0, 0});
      if (n > 0) vec4_ = vec4_ && s.cols % 4 == 0 && aligned_to(s.w, 16) && aligned_to(s.g, 16);
    }
    upload(mats_, mats);
    upload(row_blocks_, blocks);
    n_row_blocks_ = (int64_t)blocks.size();
    for (auto& ug : ugroups_) {
      upload(ug->members_dev, ug->members);
      for (int32_t p : ug->members) {
        ug->max_tiles = std::max(ug->max_tiles, dion2_tiles(mats[p].rows, mats[p].cols));
        ug->max_k = std::max(ug->max_k, (int64_t)mats[p].k);
      }
      ug->vec4 = vec4_;
    }
    dion2_scalars_.resize(1);
  }

  // Dion2's global scope: the norm exchange (the local descriptors' norms land in the send
  // block), the whole-matrix descriptors for the selection, the localize and move tables.
  void build_global(std::vector<SelectedRowsDesc> to_whole, std::vector<SelectedRowsDesc> from_whole) {
    const int W = comm_.size();
    const size_t np = params_.size();
    std::vector<int64_t> moff(np), goff(np), gsoff(np), gtoff(np);
    int64_t rows_total = 0, sel_total = 0, slot_total = 0, most_rows = 1;
    per_rank_ = 0;
    for (size_t p = 0; p < np; ++p) {
      const ParamSlot& s = params_[p];
      OG_CHECK(s.rows <= kMaxSelectSlices,
               "{}: select_scope global: parameter '{}' has {} rows; the CUDA selection supports at most {}",
               name_of(hp_.algorithm), s.name, s.rows, kMaxSelectSlices);
      moff[p] = per_rank_;
      per_rank_ += map_.max_rows[p];
      goff[p] = rows_total;
      rows_total += s.rows;
      gsoff[p] = sel_total;
      sel_total += total_[p];
      gtoff[p] = slot_total;
      slot_total += s.rows + 1;
      most_rows = std::max(most_rows, s.rows);
    }
    gnpow2_ = 1;
    while (gnpow2_ < most_rows) gnpow2_ <<= 1;
    dion2_select_prepare(std::max(gnpow2_, npow2_));
    norm_send_.resize((size_t)std::max<int64_t>(2 * per_rank_, 1));
    norm_recv_.resize((size_t)W * norm_send_.size());
    CUDA_CHECK(cudaMemset(norm_send_.data(), 0, norm_send_.bytes()));  // the padding travels too
    gl1_.resize((size_t)std::max<int64_t>(rows_total, 1));
    gl2_.resize(gl1_.size());
    gsel_.resize((size_t)std::max<int64_t>(sel_total, 1));
    gslot_.resize((size_t)std::max<int64_t>(slot_total, 1));
    gscale_.resize(std::max<size_t>(np, 1));
    gmass_.resize(std::max<size_t>(np, 1));
    rank_row0_.resize(np * (W + 1));
    lo_.resize(np * (W + 1));
    order_dev_.resize(np * W);
    std::vector<Dion2Mat> mats(np), gmats(np);
    CUDA_CHECK(cudaMemcpy(mats.data(), mats_.data(), np * sizeof(Dion2Mat), cudaMemcpyDeviceToHost));
    std::vector<FloatRun> runs;
    std::vector<LocalizeDesc> loc;
    std::vector<int32_t> row0s, order;
    for (size_t p = 0; p < np; ++p) {
      const ParamSlot& s = params_[p];
      mats[p].part_l1 = norm_send_.data() + moff[p];
      mats[p].part_l2 = norm_send_.data() + per_rank_ + moff[p];
      mats[p].scale = gscale_.data() + p;  // the gather scales by the single-process scale
      Dion2Mat& g = gmats[p];
      g = Dion2Mat{};
      g.rows = s.rows;
      g.cols = s.cols;
      g.n = (int32_t)s.rows;
      g.k = (int32_t)total_[p];
      g.nparts = 1;
      g.p = (int32_t)p;
      g.key0 = 0;
      g.part_l1 = gl1_.data() + goff[p];
      g.part_l2 = gl2_.data() + goff[p];
      g.sel = gsel_.data() + gsoff[p];
      g.slot = gslot_.data() + gtoff[p];
      g.scale = gscale_.data() + p;
      g.mass = gmass_.data() + p;
      for (int r : map_.order[p]) {
        row0s.push_back((int32_t)map_.row0[p][r]);
        order.push_back(r);
        if (map_.nrows[p][r] == 0) continue;
        const float* src = norm_recv_.data() + (size_t)r * norm_send_.size() + moff[p];
        runs.push_back({src, g.part_l1 + map_.row0[p][r], map_.nrows[p][r]});
        runs.push_back({src + per_rank_, g.part_l2 + map_.row0[p][r], map_.nrows[p][r]});
      }
      row0s.push_back((int32_t)s.rows);
      loc.push_back({g.sel, g.slot, rank_row0_.data() + p * (W + 1), lo_.data() + p * (W + 1), (int32_t)s.row0,
                     (int32_t)s.shard_rows(), g.k, (int32_t)W});
    }
    CUDA_CHECK(cudaMemcpy(rank_row0_.data(), row0s.data(), row0s.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(order_dev_.data(), order.data(), order.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    upload(mats_, mats);
    upload(gmats_, gmats);
    upload(localize_, loc);
    upload(runs_, runs);
    n_runs_ = (int64_t)runs.size();
    for (std::vector<SelectedRowsDesc>* table : {&to_whole, &from_whole})
      for (size_t i = 0; i < table->size(); ++i) {
        const size_t p = owned_[i];
        (*table)[i].lo = lo_.data() + p * (W + 1);
        (*table)[i].order = order_dev_.data() + p * W;
      }
    to_whole_.build(to_whole);
    from_whole_.build(from_whole);
  }

  // Step 1, Muon / NorMuon: momentum, U into the send slots.
  void local_muon(const StepContext& ctx, cudaStream_t s) {
    std::vector<float> sc{1.0f - ctx.lr * hp_.weight_decay};
    for (auto& ug : ugroups_) sc.push_back(adjusted_lr(ctx.lr, hp_.adjust_lr, ug->rows, ug->cols));
    set_step_scalars(s, scalars_.data(), sc);
    const bool bf = hp_.state_dtype == StateDtype::BF16;
    for (auto& ug : ugroups_) {
      const unsigned n = (unsigned)ug->chunks.count();
      if (n == 0) continue;
      with_constant<1, 4>(ug->vec4 ? 4 : 1, [&](auto vec) {
        constexpr int V = decltype(vec)::value;
        if (bf)
          muon_momentum_kernel<V, bf16>
              <<<n, kChunkThreads, 0, s>>>(ug->chunks.chunks.data(), ug->descs.data(), hp_.mu, hp_.nesterov, nullptr);
        else
          muon_momentum_kernel<V, float>
              <<<n, kChunkThreads, 0, s>>>(ug->chunks.chunks.data(), ug->descs.data(), hp_.mu, hp_.nesterov, nullptr);
        CUDA_CHECK_LAUNCH();
      });
    }
  }

  // Step 1, Dion2 / NorDion2: M ← M + G with the row norms, the shard's k_local rows, bf16(M[K])
  // into the send slots (scale 1: the owner normalizes the assembled matrix) with the selective decay.
  void local_dion2(const StepContext& ctx, cudaStream_t s) {
    const Dion2Scalars* sc = dion2_scalars_.data();
    dion2_set_scalars(s, dion2_scalars_.data(),
                      Dion2Scalars{ctx.lr, 1.0f - ctx.lr * hp_.weight_decay, (int64_t)ctx.step, 1.0f});
    const int np = (int)params_.size();
    if (np == 0) return;
    dion2_pass1(s, mats_.data(), row_blocks_.data(), n_row_blocks_, nullptr, 0, vec4_, hp_.state_dtype, false, sc);
    if (global_) {  // every rank: the whole matrices' norms, the single-process selection, its shard of it
      order_.run(comm_, s,
                 [&] { comm_.all_gather(norm_send_.data(), norm_recv_.data(), 2 * (size_t)per_rank_, DType::F32); });
      if (n_runs_ > 0) {
        copy_float_runs_kernel<<<(unsigned)n_runs_, 256, 0, s>>>(runs_.data());
        CUDA_CHECK_LAUNCH();
      }
      dion2_select(s, gmats_.data(), np, gnpow2_, hp_.select == Select::Random, hp_.seed, sc,
                   ns_norm_multiplier(hp_.ortho), hp_.eps);
      localize_selection_kernel<<<(unsigned)np, 256, 0, s>>>(localize_.data(), mats_.data());
      CUDA_CHECK_LAUNCH();
    } else {
      // mult 0, eps 1: the scale 1/(0·‖M[K]‖ + 1) is exactly 1 (the owner normalizes the assembled matrix)
      dion2_select(s, mats_.data(), np, npow2_, hp_.select == Select::Random, hp_.seed, sc, 0.0f, 1.0f);
    }
    for (auto& ug : ugroups_)
      if (ug->max_k > 0)
        dion2_gather(s, mats_.data(), ug->members_dev.data(), (int)ug->members.size(), ug->max_k, ug->cols,
                     ug->max_tiles, true, false, vec4_, hp_.state_dtype, hp_.ef, ef_decay_);
  }

  // One all-to-all of the exchange buffers (send → recv).
  void exchange(cudaStream_t s) {
    order_.run(comm_, s, [&] { comm_.all_to_all(send_.data(), recv_.data(), block_, DType::BF16); });
  }

  // NorMuon / NorDion2: the factors of this rank's rows; the two Frobenius sums over all ranks.
  void neuron_factors(cudaStream_t s) {
    const unsigned np = (unsigned)params_.size();
    if (np == 0) return;
    const dim3 grid((unsigned)norm_blocks_, np);
    const bool bf = hp_.state_dtype == StateDtype::BF16;
    with_constant<1, 4>(norm_rows_vec4_ ? 4 : 1, [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      if (bf)
        shard_norm_rows_kernel<V, bf16>
            <<<grid, 32 * kNormRowsPerBlock, 0, s>>>(norm_rows_descs_.data(), hp_.beta2, norm_partial_.data());
      else
        shard_norm_rows_kernel<V, float>
            <<<grid, 32 * kNormRowsPerBlock, 0, s>>>(norm_rows_descs_.data(), hp_.beta2, norm_partial_.data());
      CUDA_CHECK_LAUNCH();
    });
    shard_norm_sums_kernel<<<np, 256, 0, s>>>(norm_partial_.data(), norm_blocks_, norm_sums_.data());
    CUDA_CHECK_LAUNCH();
    order_.run(comm_, s, [&] { comm_.all_reduce(norm_sums_.data(), 2 * (size_t)np, DType::F32, ReduceOp::Sum); });
    const dim3 rgrid((unsigned)std::max<int64_t>((max_mine_ + 255) / 256, 1), np);
    shard_norm_restore_kernel<<<rgrid, 256, 0, s>>>(norm_rows_descs_.data(), norm_sums_.data());
    CUDA_CHECK_LAUNCH();
  }

  void update_muon(cudaStream_t s) {
    for (size_t gi = 0; gi < ugroups_.size(); ++gi) {
      UpdateGroup& ug = *ugroups_[gi];
      const unsigned n = (unsigned)ug.chunks.count();
      if (n == 0) continue;
      with_constant<1, 4>(ug.vec4 ? 4 : 1, [&](auto vec) {
        constexpr int V = decltype(vec)::value;
        muon_update_kernel<V>
            <<<n, kChunkThreads, 0, s>>>(ug.chunks.chunks.data(), ug.descs.data(), scalars_.data(), (int)gi);
        CUDA_CHECK_LAUNCH();
      });
    }
  }

  void update_dion2(cudaStream_t s) {
    const Dion2Scalars* sc = dion2_scalars_.data();
    const RowSlices rows = decay_side_.s ? RowSlices::Selected : RowSlices::All;
    for (auto& ug : ugroups_)
      dion2_decay_update(s, mats_.data(), ug->members_dev.data(), (int)ug->members.size(), ug->max_tiles, true, false,
                         ug->vec4, sc, rows, ug->max_k, ug->cols);
    if (decay_side_.s) decay_side_.join(s);
    if (!hp_.ef) scale_state(s, momentum_.base(), momentum_.total(), hp_.state_dtype, ef_decay_);
  }

  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  CountingCommunicator comm_;
  bool selective_ = false, normalized_ = false;
  float ef_decay_ = 0.95f;
  cudaStream_t main_ = nullptr;
  ShardMap map_;
  OwnerPlan plan_;
  std::vector<std::vector<int64_t>> count_;  // per matrix and rank: the rows it sends
  std::vector<int64_t> total_;               // per matrix: the rows its owner orthonormalizes
  size_t block_ = 0;
  DeviceBuffer<bf16> send_, recv_;
  CommOrder order_;
  OwnedEvent fork_;
  SideStream decay_side_;  // Dion2 with CudaOptimOptions::dion2_decay SplitRows
  StateArena momentum_, variance_;
  std::vector<std::unique_ptr<NsGroup>> ns_groups_;
  std::vector<std::unique_ptr<UpdateGroup>> ugroups_;
  PartTable assemble_, scatter_;
  ChunkTable norm_chunks_;
  DeviceBuffer<MuonDesc> norm_descs_;
  bool norm_vec4_ = false;
  DeviceBuffer<float> partials_;
  DeviceBuffer<float> factors_;
  int64_t max_mine_ = 0;  // the most rows this rank holds of one O
  DeviceBuffer<ShardNormDesc> norm_rows_descs_;
  bool norm_rows_vec4_ = false;
  int norm_blocks_ = 1;
  DeviceBuffer<float> norm_partial_, norm_sums_;
  // Muon
  DeviceBuffer<float> scalars_;  // decay, then lr_eff per update group
  // Dion2
  DeviceBuffer<Dion2Mat> mats_;
  DeviceBuffer<Pass1Block> row_blocks_;
  int64_t n_row_blocks_ = 0;
  DeviceBuffer<int32_t> sel_, slot_;
  DeviceBuffer<float> part_l1_, part_l2_, scale_, mass_;
  DeviceBuffer<Dion2Scalars> dion2_scalars_;
  std::vector<int32_t*> sel_ptr_;
  int npow2_ = 1;
  bool vec4_ = false;
  // Dion2's global scope (build_global)
  bool global_ = false;
  int64_t per_rank_ = 0;  // norms per rank and kind: Σ max shard rows
  DeviceBuffer<float> norm_send_, norm_recv_, gl1_, gl2_, gscale_, gmass_;
  DeviceBuffer<Dion2Mat> gmats_;
  DeviceBuffer<int32_t> gsel_, gslot_, rank_row0_, lo_, order_dev_;
  DeviceBuffer<LocalizeDesc> localize_;
  DeviceBuffer<FloatRun> runs_;
  int64_t n_runs_ = 0;
  int gnpow2_ = 1;
  std::vector<size_t> owned_;  // owned matrices, NS group order (the move tables' order)
  SelectedRowsTable to_whole_, from_whole_;
  std::map<std::string, double> stats_;
};

}  // namespace

std::unique_ptr<CudaOptimizer> make_cuda_sharded_matrix(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                        Communicator& device_comm, Communicator& host_comm,
                                                        bool global_scope, const CudaOptimOptions& options) {
  return std::make_unique<CudaShardedMatrix>(hp, std::move(params), device_comm, host_comm, global_scope, options);
}

}  // namespace og::cuda
