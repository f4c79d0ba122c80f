// Collectives on device buffers through a host communicator (MPI): every call waits for its
// stream, copies the device input to pinned host memory, runs the host collective, and copies
// the result back (and waits again). Two PCIe copies and a synchronization per call: slow, but it
// needs no NCCL and lets several ranks share one GPU, which NCCL refuses ("duplicate GPU") — the
// GPU tests of the distributed CUDA optimizers run with mpirun -np 2 and 3 on a one-GPU machine
// over it (tests/gpu_mpi). Training uses NCCL (nccl_communicator.h).
#pragma once
#include <memory>

#include "dist/communicator.h"

#ifdef ORTHOGPT_CUDA
#include <cuda_runtime_api.h>

namespace og {

// host: an initialized host communicator over the same ranks (not owned; must outlive the result).
std::unique_ptr<Communicator> make_staged_communicator(Communicator& host, cudaStream_t stream);

}  // namespace og
#endif
