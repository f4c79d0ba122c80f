// StepGraph: one optimizer step captured once as a CUDA graph and replayed (CudaOptimOptions::
// cuda_graph). A step of Dion2 / Muon is ~50–100 small launches (kernels and cuBLASLt GEMMs,
// several µs of host time each); replaying a graph costs one launch. Everything that changes
// between steps (lr, step number) must therefore be read by the kernels from device memory that a
// small kernel writes before each replay, never passed by value inside the captured body.
//
// Capture runs on a private non-blocking stream (the legacy default stream cannot be captured);
// the caller points its own streams/handles at capture_stream() while enqueueing the body, and
// every stream it forks must be joined back into it (as the non-graph step already does).
#pragma once
#include <cuda_runtime_api.h>

#include "core/cuda_utils.h"
#include "core/error.h"

namespace og::cuda {

class StepGraph {
 public:
  StepGraph() = default;
  ~StepGraph() {
    reset();
    if (cap_) cudaStreamDestroy(cap_);
  }
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  bool ready() const { return exec_ != nullptr; }
  cudaStream_t capture_stream() {
    if (!cap_) CUDA_CHECK(cudaStreamCreateWithFlags(&cap_, cudaStreamNonBlocking));
    return cap_;
  }
  // Capture what `enqueue(capture_stream())` puts on the stream (and the streams it forks).
  template <typename F> void capture(F&& enqueue) {
    reset();
    cudaStream_t s = capture_stream();
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue(s);
    } catch (...) {
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(s, &g);
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(s, &graph_));
    CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
  }
  void launch(cudaStream_t s) const { CUDA_CHECK(cudaGraphLaunch(exec_, s)); }
  // Replay one step on `user`, capturing it the first time: set_stream(s) points the caller's
  // streams and handles at s, enqueue(s) enqueues one step on s.
  template <typename SetStream, typename Enqueue>
  void run(cudaStream_t user, SetStream&& set_stream, Enqueue&& enqueue) {
    if (!ready()) {
      set_stream(capture_stream());
      try {
        capture(enqueue);
      } catch (...) {
        set_stream(user);
        throw;
      }
      set_stream(user);
    }
    launch(user);
  }
  void reset() {
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
    exec_ = nullptr;
    graph_ = nullptr;
  }

 private:
  cudaStream_t cap_ = nullptr;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace og::cuda
