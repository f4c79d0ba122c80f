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
//      selected rows' update riding along), and without ef the decay of all of M.
// lr_eff comes from the WHOLE shape. Bytes per step and rank: two all-to-alls of the largest
// rank block (bf16) — Muon ≈ 2·(W−1)/W² of the group's elements; Dion2 ∝ α — plus, for NorMuon
// and NorDion2, an all-reduce of 2 floats per matrix.
// Differences from one process, as on the CPU path: the owner normalizes bf16(U) (one more
// bf16 rounding than the single-process NS input), and Dion2's local scope selects per shard.
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
};

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
  if (j < d.k) {
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
  if (j >= d.k) return;
  const float restore = sqrtf(sums[2 * blockIdx.y]) / fmaxf(sqrtf(sums[2 * blockIdx.y + 1]), 1e-8f);
  d.factors[j] *= restore;
}

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
                    Communicator& host_comm, const CudaOptimOptions& opt)
      : hp_(hp), params_(std::move(params)), comm_(device_comm) {
    const Algorithm a = hp_.algorithm;
    selective_ = a == Algorithm::Dion2 || a == Algorithm::NorDion2;
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
    ef_decay_ = a == Algorithm::NorDion2 ? hp_.mu : hp_.ef_decay;
    const int W = comm_.size(), me = comm_.rank();
    const size_t np = params_.size();
    map_ = gather_shard_map(host_comm, params_);

    // What every rank sends of every matrix, and the owners (the CPU path's rule).
    count_.assign(np, std::vector<int64_t>(W, 0));
    std::vector<double> cost(np);
    std::vector<size_t> payload(np);
    for (size_t p = 0; p < np; ++p) {
      const ParamSlot& s = params_[p];
      const int64_t k_local = selective_ ? local_select_count(hp_.fraction, s.rows, W) : s.rows;
      int64_t total = 0, most = 0;
      for (int r = 0; r < W; ++r) {
        count_[p][r] = std::min(k_local, map_.nrows[p][r]);
        total += count_[p][r];
        most = std::max(most, count_[p][r]);
      }
      total_.push_back(total);
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

    if (normalized_) {
      std::vector<ShardNormDesc> nd;
      for (size_t p = 0; p < np; ++p)
        nd.push_back({slot(recv_, plan_.owner[p], p), variance_.ptr(p), selective_ ? sel_ptr_[p] : nullptr,
                      factors_.data() + factor_off[p], count_[p][me], params_[p].cols});
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
    exchange(s);  // 2. the rows to their owners

    // 3. assemble, normalize, orthonormalize (the owner's matrices)
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
      out.emplace_back((size_t)count_[p][comm_.rank()]);
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
    // mult 0, eps 1: the scale 1/(0·‖M[K]‖ + 1) is exactly 1 (the owner normalizes the assembled matrix)
    dion2_select(s, mats_.data(), np, npow2_, hp_.select == Select::Random, hp_.seed, sc, 0.0f, 1.0f);
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
    for (auto& ug : ugroups_)
      dion2_decay_update(s, mats_.data(), ug->members_dev.data(), (int)ug->members.size(), ug->max_tiles, true, false,
                         ug->vec4, sc);
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
  std::map<std::string, double> stats_;
};

}  // namespace

std::unique_ptr<CudaOptimizer> make_cuda_sharded_matrix(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                        Communicator& device_comm, Communicator& host_comm,
                                                        const CudaOptimOptions& options) {
  return std::make_unique<CudaShardedMatrix>(hp, std::move(params), device_comm, host_comm, options);
}

}  // namespace og::cuda
