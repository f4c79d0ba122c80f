// Test-only faults of a distributed run (train.fault_kill_* / train.fault_hang_*): a rank that
// dies or hangs at a chosen step, so tests can check that the other ranks end the job promptly
// instead of waiting in a collective forever (tests/mpi/rank_failure.sh). No effect by default.
#pragma once
#include <cstdint>

#include "train/config.h"

namespace og {

// Called at the start of each step's gradient averaging on every rank: SIGKILLs this process if
// it is train.fault_kill_rank at train.fault_kill_step, or sleeps forever if it is
// train.fault_hang_rank at train.fault_hang_step.
void inject_rank_faults(const TrainSection& t, int rank, int64_t step);

}  // namespace og
