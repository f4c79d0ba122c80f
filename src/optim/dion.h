// Dion (low-rank power iteration with error feedback), CPU reference. See OPTIMIZERS.md "Dion".
#pragma once
#include <memory>
#include <vector>

#include "optim/optimizer.h"

namespace og {

class Communicator;

// comm: null for replicated parameters (one process, or DDP where every rank runs the same step);
// for row shards (FSDP: ParamSlot::row0 / local_rows) the ranks' communicator, see dion.cpp.
std::unique_ptr<Optimizer> make_dion_cpu(const OptimHParams& hp, std::vector<ParamSlot> params,
                                         Communicator* comm = nullptr);

}  // namespace og
