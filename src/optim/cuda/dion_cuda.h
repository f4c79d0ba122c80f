// Dion on the GPU (internal; use make_cuda_optimizer). See dion_cuda.cu.
#pragma once
#include <memory>
#include <vector>

#include "dist/communicator.h"
#include "optim/cuda/cuda_optimizer.h"

namespace og::cuda {

std::unique_ptr<CudaOptimizer> make_cuda_dion(const OptimHParams& hp, std::vector<ParamSlot> params,
                                              const CudaOptimOptions& options);

// Dion on row shards (FSDP; internal, use make_distributed_optimizer): params are this rank's row
// shards (ParamSlot::row0 / local_rows; device pointers; w and g may be null for an empty shard).
// device_comm carries the step's collectives (device buffers: NCCL or the staged backend);
// host_comm only the construction-time exchange of every rank's row ranges. Both must outlive the
// optimizer. The same arithmetic as the CPU row-shard Dion (optim/dion.cpp); see dion_cuda.cu.
std::unique_ptr<CudaOptimizer> make_cuda_dion_sharded(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                      Communicator& device_comm, Communicator& host_comm,
                                                      const CudaOptimOptions& options = {});

}  // namespace og::cuda
