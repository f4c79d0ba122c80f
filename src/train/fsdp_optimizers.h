// The optimizer of one parameter group under FSDP, where every slot is a row shard of its
// parameter (ParamSlot::row0 / local_rows; rows x cols stay the whole shape). The one place that
// decides how a sharded group is stepped:
//   - scalar algorithms (AdamW, Lion) are elementwise, hence exact on shards: the ordinary
//     optimizer runs on local views (rows = the shard's rows; shards of 0 rows are left out).
//     Neither has a shape-dependent lr rule, so the local shapes change nothing;
//   - matrix algorithms need whole matrices (orthonormalization): on more than one rank the
//     distributed optimizer (optim/distributed_optimizer.h) moves the row shards (or only the
//     selected rows, Dion2) to one owner per matrix by all-to-all and the updates back.
#pragma once
#include <memory>
#include <vector>

#include "dist/communicator.h"
#include "optim/optimizer.h"
#include "train/config.h"

namespace og {

// comm: the communicator over the shards' memory (MPI for host buffers, NCCL for device ones);
// host_comm: the host (MPI) one, for the construction-time exchanges on host memory.
std::unique_ptr<Optimizer> make_sharded_group_optimizer(const OptimHParams& hp, std::vector<ParamSlot> slots,
                                                        Device device, Communicator& comm, Communicator& host_comm,
                                                        const DistSection& dist);

// True for the optimizer of a group of which this rank holds no row at all (it steps nothing
// and has no state; it is no CudaOptimizer, so it is not bound to a stream).
bool is_empty_shard_optimizer(const Optimizer* opt);

}  // namespace og
