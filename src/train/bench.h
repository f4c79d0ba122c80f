// `orthogpt bench`: throughput of one config's model and optimizer on random tokens, without
// data files. Builds the model and the optimizer groups exactly as training does, runs warm-up
// steps, then times steps (CUDA events on a GPU, the host clock on the CPU) split into
// forward+backward, optimizer, and the whole step, and prints a table with tokens/s, MFU
// (flops_per_token from train/metrics.h over 989 TFLOP/s) and GPU memory.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace og {

struct BenchOptions {
  std::string config_path;             // empty: the built-in defaults (the 160M model, dion2 0.25 + adamw)
  std::vector<std::string> overrides;  // --section.key value, as for train
  int warmup = 3;                      // untimed steps (plans, caches, clocks)
  int steps = 10;                      // timed steps
  int grad_accum = 2;                  // micro-batches (of train.micro_batch_size) per step
};

struct BenchPhase {
  double mean_ms = 0, min_ms = 0;
  double tokens_per_s = 0;  // tokens of one step / mean time (0 for the optimizer)
  double mfu = 0;           // NaN on the CPU
};

struct BenchResult {
  std::string device;
  int64_t tokens_per_step = 0;
  size_t num_params = 0;
  BenchPhase forward_backward, optimizer, step;
  double first_loss = 0, last_loss = 0;
  double gpu_memory_gib = 0;  // in use on the device after the run (0 on the CPU)
};

// Runs the benchmark and prints the table to `out` (may be null). Throws og::Error on a bad
// config, an unusable device, or a non-finite loss.
BenchResult run_bench(const BenchOptions& options, std::FILE* out);

}  // namespace og
