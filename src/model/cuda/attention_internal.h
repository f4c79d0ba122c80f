// Internal interface between the attention files (not for the model): the row statistic
// delta = rowsum(dout ∘ out) used by both backward paths, and the tensor-core eligibility test.
#pragma once
#include <cuda_runtime.h>

#include <initializer_list>

#include "model/cuda/kernels.h"

namespace og::gpu::attn {

// delta[b, h, t] = Σ_d dout[b, t, h, d]·out[b, t, h, d]  (fp32; defined in attention_simple.cu)
void launch_delta(float* delta, const bf16* dout, const bf16* out, int B, int T, int H, int hd, cudaStream_t stream);

// hd has a tensor-core kernel and every pointer is 16-byte aligned (defined in attention_forward.cu).
bool tensor_core_eligible(int hd, std::initializer_list<const void*> ptrs);

void check_attention_sizes(const char* what, int B, int T, int H, int hd);

}  // namespace og::gpu::attn
