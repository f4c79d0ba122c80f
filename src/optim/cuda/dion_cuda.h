// Dion on the GPU (internal; use make_cuda_optimizer). See dion_cuda.cu.
#pragma once
#include <memory>
#include <vector>

#include "optim/cuda/cuda_optimizer.h"

namespace og::cuda {

std::unique_ptr<CudaOptimizer> make_cuda_dion(const OptimHParams& hp, std::vector<ParamSlot> params,
                                              const CudaOptimOptions& options);

}  // namespace og::cuda
