// make_sharded_group_optimizer (see fsdp_optimizers.h).
#include "train/fsdp_optimizers.h"

#include "core/error.h"
#include "optim/cpu_optimizers.h"  // check_step_context

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
                                                        Device device, Communicator& comm, const DistSection& dist) {
  (void)dist;  // compressed_sync / select_scope: options of the distributed matrix optimizer
  bool all_whole = true;
  for (const ParamSlot& s : slots) all_whole = all_whole && whole(s);
  if (all_whole) return make_optimizer(hp, std::move(slots), device);  // a world of one: nothing is split

  if (is_matrix_algorithm(hp.algorithm)) {
    // MERGE: the distributed optimizer (branch distopt) replaces this error:
    //   return make_distributed_optimizer(hp, std::move(slots), device,
    //                                     DistributedOptions{&comm, true, dist.compressed_sync, dist.select_scope});
    fail("optim.matrix.algorithm {}: under dist.mode fsdp on {} ranks the matrix optimizers need the distributed "
         "optimizer (all-to-all of the row shards), which this build does not have; use dist.mode ddp, or "
         "optim.matrix.algorithm adamw / lion",
         name_of(hp.algorithm), comm.size());
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
