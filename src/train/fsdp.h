// Fully-sharded data parallel (dist.mode fsdp, ZeRO-3 style), the mechanics of a training step
// over a ShardPlan (dist/shard_plan.h): every parameter is split by rows over the ranks; the
// fp32 master weights, the averaged gradients and the optimizer state exist only as this rank's
// shards (about 1/N each). A step:
//   1. forward/backward on the model's full compute weights into its full gradient buffer;
//   2. reduce_gradients(): the gradients are reduce-scattered (averaged) into the shard buffer;
//   3. grad_norm_sq(): squared norm of the shards, all-reduced;
//   4. the optimizer groups (make_groups) step on the shards;
//   5. gather_params(): the shards are all-gathered into the model's full fp32 weights and the
//      model refreshes its compute copy (CUDA: bf16), ready for the next forward pass.
// The whole-buffer path: the model still holds a full fp32 copy of the weights and a full
// gradient buffer during the step (per-layer gathering would need hooks inside the models).
// CPU model: collectives of the host communicator (MPI); CUDA model: an NCCL communicator on
// the model's stream (waited for with dist.timeout_s). A world of one copies instead.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "dist/bootstrap.h"
#include "dist/shard_plan.h"
#include "model/model.h"
#include "optim/param_groups.h"
#include "train/checkpoint.h"
#include "train/config.h"

namespace og {

// Bytes per rank: what FSDP holds as shards, and what a replicated (DDP) rank holds instead.
struct FsdpMemory {
  size_t master = 0, grads = 0, state = 0;                                   // this rank's shards (incl. alignment)
  size_t replicated_master = 0, replicated_grads = 0, replicated_state = 0;  // DDP, per rank
  size_t model_compute = 0;  // the model's full weights + gradients (not sharded yet; CUDA: + bf16 copy)
  std::string describe() const;
};

class Fsdp {
 public:
  Fsdp(DistContext& dist, Model& model, const DistSection& cfg);
  ~Fsdp();
  Fsdp(const Fsdp&) = delete;
  Fsdp& operator=(const Fsdp&) = delete;

  const ShardPlan& plan() const { return plan_; }
  int rank() const { return rank_; }
  std::string backend() const;

  // Optimizer groups over this rank's shards: every group's optimizer comes from
  // make_sharded_group_optimizer (train/fsdp_optimizers.h).
  ParamGroups make_groups(const std::vector<GroupSpec>& specs);
  // Master shards <- this rank's rows of the model's weights (after the model was initialized).
  void shard_params();
  // Model weights <- every rank's master shards; then the model refreshes its compute copy.
  void gather_params();
  // Gradient shards <- the rank average of this rank's rows of the model's gradients.
  void reduce_gradients();
  // Bytes this rank sent in the last reduce_gradients() + gather_params() (ring formulas of
  // dist/counting_communicator.h on the padded blocks).
  double last_bytes() const { return last_bytes_; }
  // Squared L2 norm of the averaged gradient (all ranks' shards; NaN/Inf propagate).
  double grad_norm_sq();
  // A collective (the replicated state size is summed over ranks).
  FsdpMemory memory(ParamGroups& groups);

  // Checkpoints (collectives): each rank writes its shards of the parameters ("params/<name>")
  // and of its optimizer state ("optim/<state name>") into its rank file.
  void save_checkpoint(const std::string& dir, const CheckpointMeta& meta, ParamGroups& groups);
  // This rank's shards from a sharded checkpoint. Written at another world size: the parameters
  // and the row-sharded optimizer state (adamw, lion, muon, normuon, dion2, nordion2) are
  // re-sharded (the row split is deterministic); dion is refused naming both world sizes. Then
  // gather_params().
  void load_checkpoint(const CheckpointReader& ck, ParamGroups& groups);

 private:
  struct Buffers;
  void load_same_world(const CheckpointReader& ck, ParamGroups& groups);
  void load_resharded(const CheckpointReader& ck, ParamGroups& groups);
  Model& model_;
  Communicator& host_;
  std::unique_ptr<Communicator> device_comm_;  // NCCL for a CUDA model on more than one rank
  const DistSection cfg_;
  ShardPlan plan_;
  int rank_, world_;
  double last_bytes_ = 0;
  std::unique_ptr<Buffers> buf_;
};

// The optimizer identity of a sharded checkpoint: groups, algorithms and state dtypes (the state
// tensors' sizes depend on the world size; each rank file is checked tensor by tensor).
std::string fsdp_optimizer_signature(const std::vector<GroupSpec>& specs);
// This rank's data-loader position from a checkpoint written by `meta.world` ranks: its own at
// the same world size, else rank 0's step base plus this rank's offset (ranks read consecutive
// windows of one span per micro-step, so the same global batches follow).
LoaderState resume_loader_state(const CheckpointMeta& meta, int rank, int world, int B, int T);

}  // namespace og
