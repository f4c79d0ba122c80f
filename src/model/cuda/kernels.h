// Host launchers of the CUDA kernels of the GPT (bf16 compute, fp32 accumulation). Each launch
// goes to the given stream and is checked (CUDA_CHECK_LAUNCH); all pointers are device memory.
// Layouts match the CPU reference (model/cpu/ops.h): N = B*T rows; attention activations are
// [B, T, H, hd]; weights are (rows, cols) = (fan_out, fan_in) and y = x·Wᵀ (see matmul.h).
// Unlike the CPU reference (whose backward ops accumulate into input gradients), a launcher
// here WRITES its outputs unless its comment says "accumulates" — the CUDA model feeds each
// input gradient straight into the next backward op. Sizes are int64 where N*C can pass 2^31.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace og::gpu {

using bf16 = __nv_bfloat16;

// RMSNorm epsilon of the CPU reference (machine epsilon of float). It is also what the PyTorch
// reference uses under bf16 autocast, QK-norm included: since pytorch/pytorch#142848 (Jan 2025)
// F.rms_norm's default eps is the epsilon of the op-math type, fp32 for bf16/fp16 inputs (not
// bf16's 0.0078125; the docs were corrected in pytorch/pytorch#173039).
constexpr float kRmsNormEps = 1.1920928955078125e-07f;

// ---- embedding.cu ------------------------------------------------------------------------------
// out[n, :] = wte[tokens[n], :] for Tout, Ttab in {float, bf16}. A token outside [0, V) gives
// a row of NaN (so the loss shows it) instead of reading out of bounds.
template <typename Tout, typename Ttab>
void embedding_forward(Tout* out, const int32_t* tokens, const Ttab* wte, int64_t N, int64_t C, int64_t V,
                       cudaStream_t stream);
// dwte[v, :] += sum over n with tokens[n] == v of dout[n, :]   (accumulates; fp32 dwte;
// Tgrad in {float, bf16}). Deterministic: positions are grouped by a stable radix sort and each
// row is summed in position order. Tokens outside [0, V) are skipped. Needs a workspace of
// embedding_backward_workspace_bytes(N, V) bytes (16-byte aligned).
size_t embedding_backward_workspace_bytes(int64_t N, int64_t V);
template <typename Tgrad>
void embedding_backward(float* dwte, const Tgrad* dout, const int32_t* tokens, int64_t N, int64_t C, int64_t V,
                        void* workspace, size_t workspace_bytes, cudaStream_t stream);

// ---- rmsnorm.cu --------------------------------------------------------------------------------
// RMSNorm without weight over rows of C (16-byte vector path when C % 8 == 0 and C <= 2048):
// rstd[n] = 1/sqrt(mean(x²) + eps), out = x·rstd (bf16).
template <typename Tin>
void rmsnorm_forward(bf16* out, float* rstd, const Tin* inp, int64_t N, int C, float eps, cudaStream_t stream);
// Fused residual add + RMSNorm: res_out = res_in + y (rounded to Tres), then rmsnorm(res_out)
// as above. res_out may alias res_in (in-place residual stream). Tres in {float, bf16}.
template <typename Tres>
void rmsnorm_residual_forward(Tres* res_out, bf16* out, float* rstd, const Tres* res_in, const bf16* y, int64_t N,
                              int C, float eps, cudaStream_t stream);
// dinp += rstd·(dout − x̂·mean(dout·x̂)), x̂ = inp·rstd   (accumulates into the residual gradient).
// dinp_bf16, when given, also receives the updated dinp rounded to bf16 (the next matmul's input:
// saves a conversion pass over the residual gradient).
template <typename Tin>
void rmsnorm_backward(Tin* dinp, const bf16* dout, const Tin* inp, const float* rstd, int64_t N, int C,
                      cudaStream_t stream, bf16* dinp_bf16 = nullptr);

// ---- rotary_qknorm.cu --------------------------------------------------------------------------
// Rotary embedding (halves rotated, theta = t·base^(−2i/hd), t = position in the sequence) then
// per-head RMSNorm over hd, on x[B, T, H, hd] (q or k): out = rmsnorm(rotary(inp)), rstd[B, T, H].
// out may alias inp. hd must be even.
void rotary_qknorm_forward(bf16* out, float* rstd, const bf16* inp, int B, int T, int H, int hd, float base, float eps,
                           cudaStream_t stream);
// Gradient through both, from the forward's OUTPUT (out, rstd): dinp = Rᵀ·rstd·(dout − out·mean(dout·out)).
// dinp may alias dout.
void rotary_qknorm_backward(bf16* dinp, const bf16* dout, const bf16* out, const float* rstd, int B, int T, int H,
                            int hd, float base, cudaStream_t stream);

// ---- attention_*.cu ----------------------------------------------------------------------------
// Causal softmax attention, scale 1/sqrt(hd), q, k, v, out: [B, T, H, hd] bf16; lse[B, H, T] fp32
// is the natural-log logsumexp of each row's scaled scores (saved for backward). Uses the fused
// tensor-core kernels for hd in {64, 128} (16-byte aligned pointers), else the simple kernels.
// These are the project's own kernels (train.attention: flash); the model uses cuDNN's fused
// attention by default, with the same contract (attention_cudnn.h).
void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int hd,
                       cudaStream_t stream);
// Writes dq, dk, dv [B, T, H, hd]. delta[B, H, T] fp32 is scratch (rowsum(dout∘out)).
// Deterministic (no atomics): one kernel for dK/dV over key blocks, one for dQ over query blocks.
void attention_backward(bf16* dq, bf16* dk, bf16* dv, float* delta, const bf16* dout, const bf16* out, const float* lse,
                        const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int hd, cudaStream_t stream);
// True when attention_forward takes the tensor-core path for these arguments (attention_backward
// does when, in addition, dq, dk, dv and dout are 16-byte aligned).
bool attention_uses_tensor_cores(int hd, const void* q, const void* k, const void* v, const void* out);
// The simple kernels (fp32 math, one warp per row; any even hd <= 512): the fallback, and a
// second implementation for the tests.
void attention_forward_simple(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                              int hd, cudaStream_t stream);
void attention_backward_simple(bf16* dq, bf16* dk, bf16* dv, float* delta, const bf16* dout, const bf16* out,
                               const float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                               int hd, cudaStream_t stream);

// ---- relu2.cu ----------------------------------------------------------------------------------
// out = max(x, 0)²; out may alias inp.
void relu2_forward(bf16* out, const bf16* inp, int64_t n, cudaStream_t stream);
// dinp = dout · 2·max(x, 0); dinp may alias dout.
void relu2_backward(bf16* dinp, const bf16* dout, const bf16* inp, int64_t n, cudaStream_t stream);

// ---- crossentropy.cu ---------------------------------------------------------------------------
// Fused loss + gradient over a chunk of N rows of bf16 logits [N, V] (fp32 math, one pass to
// find max/sum, one to write): losses[n] = logsumexp(logits[n]) − logits[n, targets[n]], and the
// logits are overwritten IN PLACE by dlogits = dloss·(softmax − onehot(target)) in bf16.
// A target < 0 (ignore index) gives loss 0 and a zero gradient row; a target >= V is an error
// that gives a NaN loss (and NaN gradient row).
void crossentropy_forward_backward(float* losses, bf16* logits, const int32_t* targets, int64_t N, int64_t V,
                                   float dloss, cudaStream_t stream);
// Loss only (logits untouched).
void crossentropy_forward(float* losses, const bf16* logits, const int32_t* targets, int64_t N, int64_t V,
                          cudaStream_t stream);

// ---- reduce_convert.cu -------------------------------------------------------------------------
// result[0] = sum of x[i]² over n fp32 values, accumulated in fp64, deterministic: a fixed grid
// of kSumSquaresPartials blocks writes partials[] (device, that many doubles), then one block
// sums them in a fixed order. NaN/Inf propagate. n may be 0 (result 0).
constexpr int kSumSquaresPartials = 1024;
void sum_squares(double* result, double* partials, const float* x, int64_t n, cudaStream_t stream);
// Round-to-nearest-even fp32 -> bf16, and exact bf16 -> fp32.
void convert_f32_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t stream);
void convert_bf16_to_f32(float* out, const bf16* in, int64_t n, cudaStream_t stream);
// y[i] += x[i] over n fp32 values (FSDP: a micro-batch's reduced gradient shard into the sum).
// Grid-stride, 256 threads per block.
void add_f32(float* y, const float* x, int64_t n, cudaStream_t stream);

}  // namespace og::gpu
