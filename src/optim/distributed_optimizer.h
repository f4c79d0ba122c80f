// The optimizers of a parameter group across data-parallel ranks (the distributed-training
// issue). make_distributed_optimizer builds, from the same hyperparameters and slots as
// make_optimizer, an Optimizer whose step() every rank calls in the same order:
//
//   world of one        exactly make_optimizer.
//   adamw / lion        elementwise: make_optimizer on this rank's slots (replicated, or the row
//                       shards as local_rows x cols matrices) is exact.
//   dion, replicated    make_optimizer on every rank: all ranks compute the same update from the
//                       same averaged gradient (correct, but the work is not split).
//   muon, normuon, dion2, nordion2, replicated (DDP; gradients already averaged):
//                       momentum / variance replicated and identical on all ranks; every rank does
//                       the elementwise work, ONE owner rank per matrix orthonormalizes it (owners
//                       balanced by FLOPs, distributed_plan.h), one all-gather gives every rank
//                       every result. Dion2 / NorDion2 ship only the k selected slices. NorMuon's /
//                       NorDion2's neuron-wise normalization is elementwise-cheap and runs on every
//                       rank after the all-gather, so V stays identical without shipping it.
//                       CPU: replicated_matrix_cpu.cpp; CUDA: the single-GPU optimizers with
//                       CudaOptimOptions::ddp_comm (optim/cuda/owner_split.h). owner_split "off"
//                       (or "auto" on the GPU where owner_split_pays says no): make_optimizer on
//                       every rank, the whole step replicated, no optimizer traffic.
//   compressed_sync     (replicated dion2, select random) the trainer does not average the
//                       matrix gradients; momenta accumulate local gradients and only the selected
//                       slices of the momentum are all-reduced (averaged) before NS; see
//                       synchronize_state().
//   row-sharded (FSDP)  slots are row shards (ParamSlot::row0 / local_rows), state sharded the
//                       same way. Muon / NorMuon: an all-to-all assembles each whole matrix on its
//                       owner, NS there, a second all-to-all returns the shards. Dion2 / NorDion2
//                       select ROWS (select_dim auto means rows here; cols is an error) and ship only selected rows:
//                         local scope: each rank takes the top-k_local rows of its own shard,
//                           k_local = max(1, ceil(fraction · ceil(rows / world)))  (the reference's
//                           rule, from the GLOBAL row count so every rank agrees), capped at the
//                           shard's row count: every shard contributes equally, whatever its norms.
//                         global scope: the ℓ1 norms of all rows are all-gathered and every rank
//                           computes the single-process top-k (k = max(1, ceil(fraction · rows)))
//                           exactly; random selection draws the single-process set directly.
//                       NorMuon / NorDion2 normalize on the shard owner with V sharded; the
//                       Frobenius restore's two sums are all-reduced, so it equals one process.
//                       Dion: M, W and (for a wide matrix) Q stay row-sharded; only the sums over
//                       rows of its low-rank factors are all-reduced — P or R (cols x r), the
//                       sketch product and Gram matrices of the orthonormalization (optim/dion.cpp).
//
// The CPU path uses host buffers and the host (MPI) communicator; CUDA parameters need a device
// communicator (NCCL, or the host-staged one of dist/staged_communicator.h); on CUDA, row-sharded
// Muon / NorMuon / Dion2 / NorDion2 (both selection scopes) are optim/cuda/sharded_matrix_cuda.h,
// row-sharded Dion is optim/cuda/dion_cuda.h (a tall P's row blocks are gathered instead of its
// Gram sums), compressed sync is the single-GPU Dion2 with CudaOptimOptions::compressed_sync_comm.
// stats()["comm_bytes"]: bytes this rank sent in the last step, by the ring formulas of
// dist/counting_communicator.h.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "optim/optimizer.h"

namespace og {

struct DistributedOptions {
  Communicator* comm = nullptr;        // host (MPI) comm for CPU params, a device (NCCL) comm for CUDA params
  Communicator* host_comm = nullptr;   // CUDA row shards: the host comm for the construction-time exchange of
                                       // every rank's row ranges (nullptr: comm, which must then be a host comm)
  bool row_sharded = false;            // FSDP: slots are row shards (row0/local_rows); else replicated (DDP)
  bool compressed_sync = false;        // dist.compressed_sync (Dion2, random selection, replicated only)
  std::string select_scope = "local";  // dist.select_scope: "local" | "global" (row-sharded Dion2)
  // dist.owner_split, replicated Muon / NorMuon / Dion2 / NorDion2 (DDP): "on" — each matrix
  // orthonormalized by one owner rank, results all-gathered; "off" — every rank runs the whole
  // single-process step (no optimizer traffic); "auto" — on for CPU parameters, and for CUDA ones
  // where owner_split_pays (distributed_plan.h) says the Newton–Schulz work outweighs the
  // memory-bound passes (small NS batches are hidden behind those passes by the single-GPU step's
  // concurrent groups, so splitting them only adds the all-gather).
  std::string owner_split = "auto";
};

std::unique_ptr<Optimizer> make_distributed_optimizer(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                      Device device, const DistributedOptions& opt);

}  // namespace og
