// Parameter groups: the model declares each parameter's role; a group maps a set of roles to
// one algorithm with its hyperparameters and an lr scale (lr of the group = base lr x schedule
// x lr_scale). The trainer steps every group once per optimizer step.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/param_layout.h"
#include "optim/optimizer.h"

namespace og {

struct GroupSpec {
  std::string name;              // "matrix", "embedding", "lm_head", "vector"
  std::vector<ParamRole> roles;  // which parameters belong to it
  OptimHParams hp;
  double lr_scale = 1.0;
};

// Builds the optimizer of one group (e.g. make_distributed_optimizer with the group's options);
// empty: make_optimizer.
using OptimizerFactory =
    std::function<std::unique_ptr<Optimizer>(const GroupSpec& spec, std::vector<ParamSlot> slots, Device device)>;

class ParamGroups {
 public:
  // params/grads: the model's contiguous buffers (device memory when device == CUDA).
  // Groups that select no parameter are dropped; a parameter claimed by two groups, or by none,
  // is an og::Error.
  ParamGroups(const std::vector<GroupSpec>& specs, const ParamLayout& layout, float* params, const float* grads,
              Device device, const OptimizerFactory& factory = {});
  // The general form: make_slot gives each selected parameter's slot (e.g. FSDP: a view of this
  // rank's shard), make_opt builds a group's optimizer from its slots.
  using SlotMaker = std::function<ParamSlot(const ParamInfo&)>;
  using OptimizerMaker = std::function<std::unique_ptr<Optimizer>(const GroupSpec&, std::vector<ParamSlot>)>;
  ParamGroups(const std::vector<GroupSpec>& specs, const ParamLayout& layout, const SlotMaker& make_slot,
              const OptimizerMaker& make_opt);
  // One optimizer step: step is 1-based; base_lr already includes the schedule multiplier.
  void step(int64_t step, double base_lr);
  std::vector<StateTensor> state();
  std::map<std::string, double> stats() const;  // "<group>.<stat>"
  // Optimizer::synchronize_state of every group (a collective; before checkpoints).
  void synchronize_state();
  std::string describe() const;  // one line per group, for the log
  // The optimizer of each group, in group order (e.g. to put CUDA optimizers on a stream).
  std::vector<Optimizer*> optimizers();

 private:
  struct Group {
    GroupSpec spec;
    size_t num_params = 0, num_elements = 0;
    std::unique_ptr<Optimizer> opt;
  };
  std::vector<Group> groups_;
};

}  // namespace og
