// The training loop: data -> model forward/backward (gradient accumulation) -> optimizer groups,
// with the LR schedule, periodic validation, a progress line, JSONL metrics and NaN guards.
#pragma once
#include <string>
#include <vector>

#include "dist/bootstrap.h"
#include "optim/param_groups.h"
#include "train/config.h"

namespace og {

// Optimizer groups of the reference training script (OPTIMIZERS.md "Parameter groups").
std::vector<GroupSpec> build_group_specs(const Config& cfg);

struct TrainResult {
  int64_t steps_done = 0;
  int64_t skipped_steps = 0;
  double first_val_loss = 0, final_val_loss = 0, final_train_loss = 0;
  double seconds = 0;
  std::vector<float> final_params;  // host copy of the parameters after the last step
};

// Run training as configured (the config must already be validated). Throws og::Error on bad
// input or a non-finite loss/gradient (unless train.skip_nonfinite).
// Data-parallel over dist.host_comm (a world of one without mpirun): each rank reads its own
// windows, gradients are averaged across ranks once per step, every rank steps identically
// (dist.mode ddp), or weights, gradients and optimizer state are row-sharded (dist.mode fsdp,
// train/fsdp.h; checkpoints are then one file per rank).
TrainResult run_train(const Config& cfg, DistContext& dist);

}  // namespace og
