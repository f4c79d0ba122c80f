// NCCL backend of the Communicator (device buffers, one GPU per rank). The unique id travels
// from rank 0 over the host (MPI) communicator. Collectives are enqueued on the stream given at
// construction; synchronize() waits for them with a timeout: a peer that died or hangs makes
// it abort the communicator and throw an og::Error naming this rank, never hang forever.
#pragma once
#include <memory>

#include "dist/communicator.h"

#ifdef ORTHOGPT_NCCL
#include <cuda_runtime.h>

namespace og {

class NcclCommunicator;
// host: an initialized communicator over the same ranks (MPI), used to share the NCCL id.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, cudaStream_t stream, double timeout_s);
// Wait for every collective enqueued on the communicator's stream (with its timeout).
void nccl_synchronize(Communicator& nccl);

}  // namespace og
#endif
