// The DDP work split of the CUDA matrix optimizers (replicated parameters whose gradients were
// already averaged; distributed_optimizer.h): every rank does the elementwise work on every
// matrix (so momentum and selection stay identical everywhere), but each matrix is
// orthonormalized by ONE owner rank, and one all-gather hands every rank every result.
//  - owners: plan_owners (distributed_plan.h), balanced by Newton–Schulz FLOPs, the same rule as
//    the CPU path;
//  - every NS group's members are ordered by (owner, index), so a rank's members of a group are
//    contiguous and form one NS sub-batch;
//  - rank r's block of the gather buffer holds, group after group, the results of its
//    sub-batches (each run 256-byte aligned, as cuBLASLt wants). The owner's Newton–Schulz writes
//    its result straight into its run (NsBatch::result_in_input picks which NS buffer that is),
//    and one in-place all-gather of the blocks completes the buffer on every rank.
// Bytes per step and rank: (W − 1) · block · 2 (bf16), block ≈ the largest rank's share of the
// results — Muon: all matrix elements / W; Dion2: the k selected slices only (∝ α).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "core/cuda_utils.h"
#include "dist/counting_communicator.h"
#include "optim/cuda/blas.h"
#include "optim/cuda/comm_order.h"
#include "optim/cuda/neuron_norm.h"

namespace og::cuda {

class OwnerSplit {
 public:
  // groups[g]: the matrix indices of NS group g (any order); rows[g] × cols[g]: the shape of each
  // of its NS inputs. comm: a device communicator (not owned; must outlive this).
  OwnerSplit(Communicator& comm, const std::vector<std::vector<int32_t>>& groups, const std::vector<int64_t>& rows,
             const std::vector<int64_t>& cols);
  ~OwnerSplit();
  OwnerSplit(const OwnerSplit&) = delete;
  OwnerSplit& operator=(const OwnerSplit&) = delete;

  int world() const { return comm_.size(); }
  int rank() const { return comm_.rank(); }
  // Group g's members ordered by (owner, index).
  const std::vector<int32_t>& members(int g) const { return members_[g]; }
  // Rank r's members of group g: positions [first(g, r), first(g, r) + count(g, r)) of members(g).
  int first(int g, int r) const { return first_[g][r]; }
  int count(int g, int r) const { return count_[g][r]; }
  int owner(int32_t matrix) const { return owner_[matrix]; }
  // Rank r's results of group g (count(g, r) matrices, contiguous) in the gather buffer.
  bf16* run(int g, int r) { return buf_.data() + (size_t)r * block_ + offset_[g][r]; }
  // Where the result of members(g)[pos] sits.
  bf16* result(int g, int pos);
  // One in-place all-gather of the rank blocks, ordered after the work on stream s, and s after
  // it (events, when the communicator's stream is another).
  void all_gather(cudaStream_t s);
  // Bytes this rank sent in the last all_gather (ring formula, counting_communicator.h).
  double last_bytes() const { return comm_.total_bytes(); }

 private:
  CountingCommunicator comm_;
  std::vector<int> owner_;
  std::vector<std::vector<int32_t>> members_;
  std::vector<std::vector<int>> first_, count_;
  std::vector<std::vector<size_t>> offset_;
  std::vector<int64_t> per_;  // elements of one result, per group
  size_t block_ = 0;
  DeviceBuffer<bf16> buf_;
  CommOrder order_;
};

// NorMuon's / NorDion2's neuron-wise factors (neuron_norm.h) of every member of NS group g, whose
// k×L results lie in one contiguous run per owner rank: one neuron_norm_factors call per run,
// with descs, rowsq and factors indexed by the member's position in members(g). Without a split
// (split == nullptr): one call for the whole batch of `size` results at `all`.
void neuron_norm_factors_by_run(OwnerSplit* split, int g, int size, const bf16* all, cudaStream_t s, int64_t k,
                                int64_t L, const NeuronNormDesc* descs, StateDtype v_dtype, float beta2, float* rowsq,
                                float* factors);

}  // namespace og::cuda
