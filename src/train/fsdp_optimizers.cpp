// make_sharded_group_optimizer (see fsdp_optimizers.h).
#include "train/fsdp_optimizers.h"

#include "core/error.h"
#include "optim/cpu_optimizers.h"  // check_step_context
#include "optim/distributed_optimizer.h"

namespace og {
namespace {

// The group's algorithm on a rank that holds no row of any of the group's parameters.
class EmptyShardOptimizer final : public Optimizer {
 public:
  explicit EmptyShardOptimizer(Algorithm a) : algorithm_(a) {}
  Algorithm algorithm() const override { return algorithm_; }
  void step(const StepContext& ctx) override { check_step_context(ctx, algorithm_); }
  std::vector<StateTensor> state() override { return {}; }

 private:
  Algorithm algorithm_;
};

bool whole(const ParamSlot& s) { return s.row0 == 0 && s.shard_rows() == s.rows; }

}  // namespace

std::unique_ptr<Optimizer> make_sharded_group_optimizer(const OptimHParams& hp, std::vector<ParamSlot> slots,
                                                        Device device, Communicator& comm, Communicator& host_comm,
                                                        const DistSection& dist) {
  bool all_whole = true;
  for (const ParamSlot& s : slots) all_whole = all_whole && whole(s);
  if (all_whole) return make_optimizer(hp, std::move(slots), device);  // a world of one: nothing is split

  if (is_matrix_algorithm(hp.algorithm)) {
    // Muon / NorMuon / Dion2 / NorDion2 on row shards: all-to-all to whole matrices (or to the
    // selected rows), owner-computed, back to shards (optim/distributed_optimizer.h).
    DistributedOptions o;
    o.comm = &comm;
    o.host_comm = &host_comm;
    o.row_sharded = true;
    o.compressed_sync = false;  // a DDP option (validate_config)
    o.select_scope = dist.select_scope;
    return make_distributed_optimizer(hp, std::move(slots), device, o);
  }
  std::vector<ParamSlot> local;
  for (const ParamSlot& s : slots) {
    if (s.shard_rows() == 0) continue;
    ParamSlot v = s;
    v.rows = s.shard_rows();
    v.row0 = 0;
    v.local_rows = -1;
    local.push_back(std::move(v));
  }
  if (local.empty()) return std::make_unique<EmptyShardOptimizer>(hp.algorithm);
  return make_optimizer(hp, std::move(local), device);
}

bool is_empty_shard_optimizer(const Optimizer* opt) { return dynamic_cast<const EmptyShardOptimizer*>(opt) != nullptr; }

}  // namespace og
