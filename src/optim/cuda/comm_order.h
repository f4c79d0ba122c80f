// Ordering a device communicator's collective with work on another stream: the collective runs
// on the communicator's own stream (Communicator::device_stream()), after everything enqueued on
// stream s so far, and s continues only after it (two events; nothing when the streams are one).
#pragma once
#include <cuda_runtime_api.h>

#include <utility>

#include "core/cuda_utils.h"
#include "dist/communicator.h"

namespace og::cuda {

class CommOrder {
 public:
  CommOrder() {
    before_.create();
    after_.create();
  }

  // collective(): the calls on comm, enqueued on its stream in order with s.
  template <typename F> void run(Communicator& comm, cudaStream_t s, F&& collective) {
    auto* cs = static_cast<cudaStream_t>(comm.device_stream());
    const bool other = cs != s;
    if (other) stream_wait(cs, s, before_.e);
    std::forward<F>(collective)();
    if (other) stream_wait(s, cs, after_.e);
  }

 private:
  OwnedEvent before_, after_;
};

}  // namespace og::cuda
