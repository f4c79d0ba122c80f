// Causal attention through cuDNN's fused flash-attention engines (the backend graph API of
// cudnn_graph.h), the alternative to the project's own tensor-core kernels (attention_*.cu).
// Same contract as attention_forward / attention_backward in kernels.h: q, k, v, out and the
// gradients [B, T, H, hd] bf16, lse [B, H, T] fp32 (natural-log logsumexp of the scaled scores),
// scale 1/sqrt(hd). One object per model: it holds a cuDNN handle, the forward and backward
// execution plans of each batch size it has seen, their workspace and the backward's fp32 dQ
// accumulator. Not deterministic: cuDNN's backward adds dQ with atomics (docs/PERF.md).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>

#include "model/cuda/kernels.h"

namespace og::gpu {

class CudnnAttention {
 public:
  // Builds the plans for batch B now (an og::Error naming cuDNN's reason when no engine takes
  // the graph, or when the build has no cuDNN). T, H, hd are fixed; smaller batches get plans of
  // their own on first use.
  CudnnAttention(int B, int T, int H, int hd);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  void forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, cudaStream_t stream);
  void backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out, const float* lse, const bf16* q,
                const bf16* k, const bf16* v, int B, cudaStream_t stream);

  size_t device_bytes() const;   // workspace + dQ accumulator
  std::string describe() const;  // cuDNN version and the engines chosen, for the log

  static bool built_with_cudnn();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace og::gpu
