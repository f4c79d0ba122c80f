// CUDA implementations of the optimizer interface (pointers in ParamSlot are device memory).
// Available only in CUDA builds (ORTHOGPT_CUDA); make_optimizer(..., Device::CUDA) calls it.
//
// Contract: the w and g pointers of every ParamSlot must stay valid and unchanged for the
// optimizer's lifetime (kernel argument tables are built once). Every step() is asynchronous:
// all work is enqueued on one stream (set_stream), with no host synchronization and no
// device-to-host copy inside step().
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "optim/optimizer.h"

namespace og {

// Tuning knobs of the CUDA matrix optimizers (the defaults are the fast choices; the benchmark
// flips them to measure alternatives).
struct CudaOptimOptions {
  cudaStream_t stream = nullptr;  // all work goes on this stream (nullptr: the legacy default stream)
  // X·Xᵀ and A·A are symmetric: compute only the upper triangle of b×b blocks and mirror it.
  // Auto uses it where the saved FLOPs outweigh the mirror pass (see newton_schulz.cu).
  enum class Symmetric { Auto, Off, On };
  Symmetric symmetric = Symmetric::Auto;
  int symmetric_block = 256;  // b, a multiple of 32
  // Time the cuBLASLt heuristic's candidate algorithms once at construction and keep the fastest.
  // Off by default: timing can pick different algorithms on different ranks, and ranks that run
  // the same update redundantly (DDP) must round identically; the heuristic's first choice is
  // deterministic.
  bool autotune_gemm = false;
  // Dion2 / NorDion2: run the per-shape NS groups concurrently on internal streams (forked from
  // and joined back into `stream`, so the step stays ordered on it).
  bool concurrent_groups = true;
};

class CudaOptimizer : public Optimizer {
 public:
  // Later steps go on `stream`; work already enqueued on the previous one is not ordered with it
  // (synchronize or record an event first).
  virtual void set_stream(cudaStream_t stream) = 0;
  virtual cudaStream_t stream() const = 0;
  // Dion2 / NorDion2 only (empty otherwise): the slice indices selected at the last step, per
  // parameter, ascending. Synchronizes the stream and copies to the host: for tests and debugging.
  virtual std::vector<std::vector<int32_t>> last_selection() { return {}; }
};

std::unique_ptr<CudaOptimizer> make_cuda_optimizer(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                   const CudaOptimOptions& options = {});

}  // namespace og
