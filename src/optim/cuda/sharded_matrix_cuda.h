// Muon / NorMuon / Dion2 / NorDion2 on row-sharded parameters (FSDP) on the GPU (internal; use
// make_distributed_optimizer). The CUDA counterpart of sharded_matrix_cpu.cpp, with the same
// arithmetic rules (owners, counts, Dion2's local- and global-scope selection), so a CUDA FSDP run
// and a CPU one agree within the bf16 Newton–Schulz tolerance. See sharded_matrix_cuda.cu for the step.
#pragma once
#include <memory>
#include <vector>

#include "dist/communicator.h"
#include "optim/cuda/cuda_optimizer.h"

namespace og::cuda {

// params: this rank's row shards (ParamSlot::row0 / local_rows; device pointers). device_comm
// carries the step's collectives (device buffers: NCCL or the staged backend); host_comm only the
// construction-time exchange of every rank's row ranges. Both must outlive the optimizer.
// Dion2 / NorDion2 select rows with the local scope (k_local rows of every shard), or with
// global_scope the single-process selection over every matrix's whole rows (as the CPU path).
std::unique_ptr<CudaOptimizer> make_cuda_sharded_matrix(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                        Communicator& device_comm, Communicator& host_comm,
                                                        bool global_scope, const CudaOptimOptions& options = {});

}  // namespace og::cuda
