// Dion (low-rank power iteration with error feedback), CPU reference. See OPTIMIZERS.md "Dion".
#pragma once
#include <memory>
#include <vector>

#include "optim/optimizer.h"

namespace og {

std::unique_ptr<Optimizer> make_dion_cpu(const OptimHParams& hp, std::vector<ParamSlot> params);

}  // namespace og
