// CUDA implementations of the optimizer interface (pointers in ParamSlot are device memory).
#pragma once
#include <memory>
#include <vector>

#include "optim/optimizer.h"

namespace og {

// Available only in CUDA builds (ORTHOGPT_CUDA); make_optimizer(..., Device::CUDA) calls it.
std::unique_ptr<Optimizer> make_cuda_optimizer(const OptimHParams& hp, std::vector<ParamSlot> params);

}  // namespace og
