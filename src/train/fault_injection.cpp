// Test-only rank faults (see fault_injection.h): a SIGKILL (as from the OOM killer or a lost
// node) or an endless sleep (as from a deadlocked or stalled rank).
#include "train/fault_injection.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <thread>

namespace og {

void inject_rank_faults(const TrainSection& t, int rank, int64_t step) {
  if (rank == t.fault_kill_rank && step == t.fault_kill_step) {
    spdlog::warn("rank {}: train.fault_kill_step {}: killing this rank (SIGKILL) for a fault-injection test", rank,
                 step);
    spdlog::default_logger()->flush();
    std::raise(SIGKILL);
  }
  if (rank == t.fault_hang_rank && step == t.fault_hang_step) {
    spdlog::warn("rank {}: train.fault_hang_step {}: hanging before the gradient all-reduce for a fault-injection test",
                 rank, step);
    spdlog::default_logger()->flush();
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }
}

}  // namespace og
