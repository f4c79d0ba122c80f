// Planning shared by the distributed matrix optimizers (distributed_optimizer.h): which rank
// orthonormalizes which matrix, where its payload sits in the communication buffers, and the
// row-shard bookkeeping of FSDP parameters. Everything here is a pure function of values every
// rank has (shapes, counts, world size), so all ranks compute the same plan without talking.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "dist/communicator.h"
#include "optim/optimizer.h"

namespace og {

// FLOPs of one Newton–Schulz orthonormalization of a rows x cols matrix (5 quintic iterations on
// the wide orientation, m = min, n = max: 5·(4m²n + 2m³)); the owner balance weight.
double ns_cost(int64_t rows, int64_t cols);

// Whether the DDP owner split pays for a CUDA matrix optimizer on these (replicated) matrices:
// the step's Newton–Schulz FLOPs (ns_cost, on the k selected slices for Dion2 / NorDion2) per byte
// of its memory passes (20 B per element) reach kOwnerSplitFlopsPerByte. Below that, the
// single-GPU step runs the NS concurrently with the memory passes of the other shape groups and
// hides most of it; splitting it then saves little, and the all-gather and the barrier before the
// updates cost more. Measured on 2×H200 (bench_optim_ddp, docs/PERF.md; session 7, after the NCCL
// wait fix), FLOP/B and the split's speed-up: 160M Muon 960, 1.32×; Dion2 α=0.5 216, 1.07×;
// α=0.25 51, 0.95× (slower); α=0.125 12, 0.94×; 1B Muon 2560, 1.67×; Dion2 α=0.5 576, 1.38×;
// α=0.25 136, 1.05×; α=0.125 33, 0.98×. The threshold sits between the slowest win (136) and the
// mildest loss (51).
inline constexpr double kOwnerSplitFlopsPerByte = 100.0;
bool owner_split_pays(const OptimHParams& hp, const std::vector<ParamSlot>& params);

// Owners and buffer layout of one collective: matrix p (cost cost[p], payload[p] elements) is
// orthonormalized by owner[p]; rank j's matrices sit one after another in a block of `block`
// elements (the largest rank's total; smaller ranks pad), at offset[p] inside the owner's block.
// Owners are balanced by cost: matrices in decreasing cost (ties: lower index first; same-shape
// matrices are therefore consecutive and spread round-robin) each go to the least-loaded rank
// (ties: lower rank) — the greedy longest-processing-time rule.
struct OwnerPlan {
  std::vector<int> owner;
  std::vector<size_t> offset;
  size_t block = 0;
  std::vector<std::vector<size_t>> owned;  // per rank, its matrices in increasing index
};
OwnerPlan plan_owners(const std::vector<double>& cost, const std::vector<size_t>& payload, int world);
// Same owners, new payloads (Dion2's per-step selection sizes under global scope).
void relayout(OwnerPlan& plan, const std::vector<size_t>& payload);

// Dion2's per-rank row count under local scope: k_local = max(1, ceil(fraction · ceil(rows / world)))
// (select_count on the even shard length), the same on every rank whatever its shard's length;
// a shard with fewer rows selects all of them.
int64_t local_select_count(float fraction, int64_t rows, int world);

// Where every rank's rows of every parameter are: all-gathered once at construction (one
// collective), then checked to tile [0, rows) exactly.
struct ShardMap {
  // per parameter, per rank
  std::vector<std::vector<int64_t>> row0, nrows;
  // per parameter: the ranks in increasing row0 (the order their rows assemble in)
  std::vector<std::vector<int>> order;
  std::vector<int64_t> max_rows;  // per parameter, over ranks (the padded shard length)
};
ShardMap gather_shard_map(Communicator& comm, const std::vector<ParamSlot>& params);

}  // namespace og
