// Process bootstrap: under mpirun, MPI gives rank, world size and local rank (the GPU index);
// a plain `orthogpt train` without a launcher is a world of one and never touches MPI.
#pragma once
#include <memory>

#include "dist/communicator.h"

namespace og {

struct DistContext {
  int rank = 0, world = 1, local_rank = 0, local_world = 1;
  bool mpi = false;                         // MPI was initialized (and must be finalized)
  std::unique_ptr<Communicator> host_comm;  // MPI (or self) communicator on host buffers
};

// True when the process was started by an MPI launcher (OpenMPI, MPICH/PMI, Slurm PMI).
bool launched_by_mpi();
// Initialize MPI when launched by one (thread level FUNNELED), else a world of one.
DistContext init_distributed(int* argc, char*** argv);
// Finalize MPI if it was initialized. Safe to call twice.
void finalize_distributed(DistContext& ctx);
// Abort every rank (after an error on this one), so no rank hangs in a collective.
[[noreturn]] void abort_distributed(const DistContext& ctx, int code);

}  // namespace og
