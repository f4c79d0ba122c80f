// Reduction of per-token losses to the mean loss, on the device, so the trainer can read the
// loss of several micro-batches with one host synchronization per step.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace og::gpu {

// acc[0] += scale · Σ losses[0..n), accumulated in fp64. Deterministic: one block of 1024
// threads, thread t sums elements t, t + 1024, ... in order, then a fixed tree. n may be 0.
void accumulate_loss_sum(double* acc, const float* losses, int64_t n, double scale, cudaStream_t stream);

}  // namespace og::gpu
