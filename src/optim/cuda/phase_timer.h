// PhaseTimer: CUDA events between the phases of one optimizer step (CudaOptimOptions::
// profile_phases), for the benchmark's per-phase breakdown. mark(s, name) closes the phase that
// began at the previous mark; phases with the same name (e.g. one gather per NS group) add up.
// Meaningful only when the step runs its phases in order on one stream (the optimizers turn off
// their internal concurrency while profiling).
#pragma once
#include <cuda_runtime_api.h>

#include <string>
#include <utility>
#include <vector>

#include "core/cuda_utils.h"

namespace og::cuda {

class PhaseTimer {
 public:
  ~PhaseTimer() {
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }
  // Start a step: the first event (no phase closes here).
  void begin(cudaStream_t s) {
    used_ = 0;
    names_.clear();
    CUDA_CHECK(cudaEventRecord(next(), s));
  }
  void mark(cudaStream_t s, const char* name) {
    names_.emplace_back(name);
    CUDA_CHECK(cudaEventRecord(next(), s));
  }
  // Milliseconds per phase name, in first-seen order (waits for the last event).
  std::vector<std::pair<std::string, double>> results() const {
    std::vector<std::pair<std::string, double>> out;
    if (used_ < 2) return out;
    CUDA_CHECK(cudaEventSynchronize(pool_[used_ - 1]));
    for (size_t i = 0; i < names_.size(); ++i) {
      float ms = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, pool_[i], pool_[i + 1]));
      bool found = false;
      for (auto& [n, v] : out)
        if (n == names_[i]) v += ms, found = true;
      if (!found) out.emplace_back(names_[i], (double)ms);
    }
    return out;
  }

 private:
  cudaEvent_t next() {
    if (used_ == pool_.size()) {
      cudaEvent_t e;
      CUDA_CHECK(cudaEventCreate(&e));
      pool_.push_back(e);
    }
    return pool_[used_++];
  }
  std::vector<cudaEvent_t> pool_;
  std::vector<std::string> names_;
  size_t used_ = 0;
};

}  // namespace og::cuda
