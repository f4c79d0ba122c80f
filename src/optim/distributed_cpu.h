// The CPU distributed matrix optimizers (internal; use make_distributed_optimizer).
#pragma once
#include <memory>
#include <vector>

#include "dist/communicator.h"
#include "optim/optimizer.h"

namespace og {

// Muon, NorMuon, Dion2, NorDion2 on replicated parameters (DDP): one owner rank orthonormalizes
// each matrix, an all-gather shares the results (replicated_matrix_cpu.cpp). compressed: Dion2
// random selection with local gradients, only the selected momentum slices all-reduced.
std::unique_ptr<Optimizer> make_replicated_matrix_cpu(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                      Communicator& comm, bool compressed);

// Muon, NorMuon, Dion2, NorDion2 on row shards (FSDP): all-to-all to the owner and back
// (sharded_matrix_cpu.cpp). global_scope: Dion2 selects by the global row ranking.
std::unique_ptr<Optimizer> make_sharded_matrix_cpu(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                   Communicator& comm, bool global_scope);

}  // namespace og
