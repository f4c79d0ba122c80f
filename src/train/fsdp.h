// Fully-sharded data parallel (dist.mode fsdp, ZeRO-3 style), the mechanics of a training step
// over a ShardPlan (dist/shard_plan.h): every parameter is split by rows over the ranks; the
// fp32 master weights, the averaged gradients and the optimizer state exist only as this rank's
// shards (about 1/N each). The model keeps no whole copy of either: Fsdp is its UnitSource
// (model/param_units.h), so a rank holds only a few gathered units (embedding, block, lm_head)
// of weights and of gradients at any time: three slots each, one as large as the largest unit
// and two as large as a block, whatever the depth. A step:
//   1. zero_grads();
//   2. forward/backward, per micro-batch: each unit's weights are all-gathered just before use
//      (bf16 on CUDA, the embedding in fp32 since it feeds the fp32 residual stream), the next
//      unit's gather starting while the current one computes; as soon as backward has written a
//      unit's gradient it is reduce-scattered (averaged) into this rank's gradient shards (added
//      to them after the first micro-batch) while backward goes on;
//   3. finish_gradients(): the reductions are done (CUDA: the model's stream waits for them);
//   4. grad_norm_sq(): squared norm of the shards, all-reduced;
//   5. the optimizer groups (make_groups) step on the shards;
//   6. params_updated(): CUDA refreshes the bf16 shards the gathers send.
// CPU model: collectives of the host communicator (MPI), as the model calls. CUDA model: an
// NCCL communicator on a stream of its own, ordered with the model's stream by events (waited
// for with dist.timeout_s), so gathers and reductions overlap the model's compute. A world of
// one copies instead.
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
  // The gathered working set: the weight and gradient slots (one of the largest unit's size and
  // two of a block's, each), the reduce scratch and (CUDA) the bf16 master shards the gathers send.
  size_t unit_weights = 0, unit_grads = 0, other = 0;
  // What a DDP rank's model holds instead: whole fp32 weights + gradients (+ CUDA's bf16 copy).
  size_t replicated_model = 0;
  size_t total() const { return master + grads + state + unit_weights + unit_grads + other; }
  size_t replicated_total() const { return replicated_model + replicated_state; }
  std::string describe() const;
};

class Fsdp final : public UnitSource {
 public:
  Fsdp(DistContext& dist, Model& model, const DistSection& cfg);
  ~Fsdp() override;
  Fsdp(const Fsdp&) = delete;
  Fsdp& operator=(const Fsdp&) = delete;

  const ShardPlan& plan() const { return plan_; }
  int rank() const { return rank_; }
  std::string backend() const;

  // Optimizer groups over this rank's shards: every group's optimizer comes from
  // make_sharded_group_optimizer (train/fsdp_optimizers.h).
  ParamGroups make_groups(const std::vector<GroupSpec>& specs);
  // Master shards <- this rank's rows of the model's weights (after the model was initialized);
  // then the model takes its weights from this object (Model::attach_units) and frees its whole
  // buffers.
  void shard_params();
  // A step's start: the gradient shards are empty (the first micro-batch's reductions write
  // them, later ones add) and the traffic count restarts.
  void zero_grads();
  // Wait (with dist.timeout_s) for the reductions backward started: the gradient shards then
  // hold the rank average of the step's gradients, ordered before the model's next work.
  void finish_gradients();
  // After the optimizer changed the master shards: CUDA refreshes the bf16 shards the gathers
  // send; gathered units are forgotten.
  void params_updated();
  // Bytes this rank sent since zero_grads() (ring formulas of dist/counting_communicator.h on
  // the padded blocks): the step's gathers and reduce-scatters.
  double last_bytes() const { return last_bytes_; }
  // Squared L2 norm of the averaged gradient (all ranks' shards; NaN/Inf propagate).
  double grad_norm_sq();
  // train.fault_nan_step: the first element of this rank's gradient shards becomes NaN.
  void poison_gradient();
  // A collective: the whole fp32 weights, on every rank (host, layout().total() floats).
  void download_params(float* host);
  // A collective (the replicated state size is summed over ranks).
  FsdpMemory memory(ParamGroups& groups);

  // Checkpoints (collectives): each rank writes its shards of the parameters ("params/<name>")
  // and of its optimizer state ("optim/<state name>") into its rank file.
  void save_checkpoint(const std::string& dir, const CheckpointMeta& meta, ParamGroups& groups);
  // This rank's shards from a sharded checkpoint. Written at another world size: the parameters
  // and the row-sharded optimizer state (adamw, lion, muon, normuon, dion2, nordion2) are
  // re-sharded (the row split is deterministic); dion is refused naming both world sizes. Then
  // params_updated().
  void load_checkpoint(const CheckpointReader& ck, ParamGroups& groups);

  // ---- UnitSource: the model's calls during forward and backward ----
  const void* acquire(int unit, int next) override;
  void release(int unit) override;
  void* grad_buffer(int unit) override;
  void grads_ready(int unit) override;

 private:
  struct Buffers;
  void load_same_world(const CheckpointReader& ck, ParamGroups& groups);
  void load_resharded(const CheckpointReader& ck, ParamGroups& groups);
  Communicator* collective_comm();       // the communicator of the shard collectives (nullptr: a world of one)
  void gather_unit(int unit, int slot);  // starts the all-gather of unit's weights into a weight slot
  void copy_on_stream(const void* src, void* dst, size_t bytes);
  void comm_after_model();
  int weight_slot_of(int unit) const;
  int free_weight_slot(int unit, int exclude, int keep_unit) const;  // -1: none
  char* weight_slot(int slot);
  float* grad_slot(int slot);
  size_t unit_weight_bytes(int unit) const;
  size_t unit_local_begin(int unit) const;  // floats: the unit's range in this rank's shard buffers
  size_t unit_local_end(int unit) const;
  Model& model_;
  Communicator& host_;
  std::unique_ptr<Communicator> device_comm_;  // NCCL for a CUDA model on more than one rank
  const DistSection cfg_;
  ShardPlan plan_;
  int rank_, world_;
  std::vector<ParamUnit> units_;
  std::vector<WeightType> unit_type_;
  size_t scratch_floats_ = 0;
  // Three slots each for weights and gradients: one as large as the largest unit (embedding or
  // lm_head), two as large as a block, so a block's gather can run while the embedding or the
  // lm_head is in use (and two blocks' gradients can be in flight) without vocabulary-sized
  // buffers for every slot.
  struct Slot {
    size_t offset = 0, capacity = 0;  // in the slot buffer: bytes (weights) or floats (gradients)
    int unit = -1;                    // the unit in it (-1: none; weights: also stale after a step)
    bool in_use = false;              // weights: acquired, not yet released; gradients: handed out
  };
  std::vector<Slot> wslot_, gslot_;
  std::vector<char> grads_fresh_;  // per unit: its gradient shard has no contribution yet this step
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
