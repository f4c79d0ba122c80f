// Internal interface between the attention files (not for the model): the row statistic
// delta = rowsum(dout ∘ out) used by both backward paths, and the tensor-core eligibility test.
#pragma once
#include <cuda_runtime.h>

#include <initializer_list>

#include "model/cuda/kernels.h"

namespace og::gpu::attn {

// delta[b, h, t] = Σ_d dout[b, t, h, d]·out[b, t, h, d]  (fp32; defined in attention_simple.cu)
void launch_delta(float* delta, const bf16* dout, const bf16* out, int B, int T, int H, int hd, cudaStream_t stream);

// Warps per block of the tensor-core kernels (each warp owns 16 rows of the block's output; 4
// or 8): what attention_forward/backward use. More warps share each K/V (or Q/dO) tile read from
// L2 among more rows; fewer keep more blocks per multiprocessor. Chosen by measurement
// (tests/gpu/test_cuda_ops_timing.cpp times every choice; docs/PERF.md has the numbers).
// H100, 160M shapes (B 32, T 1024, H 6, hd 128), backward incl. delta, dK/dV / dQ warps:
// forward 0.292 ms at 8 vs 0.307 at 4; backward 4/4 1.157, 4/8 1.160, 8/4 1.199, 8/8 1.202 ms.
constexpr int kForwardWarps = 8;
constexpr int kDkdvWarps = 4;
constexpr int kDqWarps = 8;  // a tie with 4 at these shapes

// The tensor-core kernels with an explicit number of warps per block (hd 64 or 128, 16-byte
// aligned pointers), so tests can check and time every configuration.
void attention_forward_flash(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                             int hd, int warps, cudaStream_t stream);
void attention_backward_flash(bf16* dq, bf16* dk, bf16* dv, float* delta, const bf16* dout, const bf16* out,
                              const float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                              int hd, int dkdv_warps, int dq_warps, cudaStream_t stream);

// hd has a tensor-core kernel and every pointer is 16-byte aligned (defined in attention_forward.cu).
bool tensor_core_eligible(int hd, std::initializer_list<const void*> ptrs);

void check_attention_sizes(const char* what, int B, int T, int H, int hd);

}  // namespace og::gpu::attn
