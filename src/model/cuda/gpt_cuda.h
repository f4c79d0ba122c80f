// og::Model on one GPU: the paper's GPT (see model/cpu/gpt_cpu.h for the architecture) on the
// CUDA kernels of kernels.h and the cuBLASLt matmuls of matmul.h, in mixed precision:
//
//   - fp32 master weights and fp32 gradients, each ONE contiguous device buffer laid out by
//     gpt_param_layout (the CPU model's offsets, so optimizers and checkpoints work unchanged);
//     a bf16 copy of the whole buffer feeds the matmuls, refreshed by one conversion kernel in
//     params_changed() (the trainer calls it after each optimizer step) and upload_params();
//   - bf16 activations and matmul inputs, fp32 accumulation (cuBLASLt COMPUTE_32F), fp32
//     statistics (rstd, logsumexp) and fp32 per-token losses;
//   - the residual stream and its gradient are fp32 (as in the reference's DDP run): each
//     block adds a bf16 branch output into it, and the embedding is copied in from the fp32
//     master table, so small updates are not lost to bf16 rounding of the stream itself;
//   - the lm_head and the cross-entropy are fused over chunks of rows: a chunk's bf16 logits
//     are computed, turned into dlogits in place (crossentropy_forward_backward), and consumed
//     at once by the lm_head's input and weight gradients, so logits for the whole batch are
//     never stored (the loss is computed in forward, the head's backward runs right after it);
//   - every activation and scratch buffer is carved once, at construction, out of one device
//     allocation planned for (max_batch, seq_len); nothing is allocated in a step;
//   - optional recomputation (CudaModelOptions::recompute) trades compute for activation memory.
//
// Everything is queued on the model's own stream (stream(); the CUDA optimizers should run on
// it). Host syncs: forward_backward / forward_loss / last_logits / take_loss_sum /
// grad_norm_sq / download_params return host values and wait; zero_grad, params_changed and
// forward_backward_accumulate only enqueue. Tokens are copied through pinned staging buffers.
//
// Deterministic: given the same inputs, every kernel here produces the same bits run to run
// (no atomics; the embedding backward sorts; reductions have a fixed order; cuBLASLt picks one
// algorithm per shape and keeps it). Not guaranteed across GPU models or CUDA/cuBLAS versions.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/cuda_utils.h"
#include "model/cuda/attention_cudnn.h"
#include "model/cuda/kernels.h"
#include "model/cuda/matmul.h"
#include "model/model.h"

namespace og {

// What backward may recompute instead of keeping from forward.
enum class Recompute {
  None,         // keep every activation backward needs (fastest, most memory)
  Elementwise,  // recompute the ReLU² output and both rmsnorm outputs of each block (about free)
  Block,        // keep only each block's input; re-run the block's forward in backward (~+1/3 compute)
};
Recompute parse_recompute(const std::string& s);  // "none" | "elementwise" | "block"
const char* name_of(Recompute r);

// Which causal-attention implementation the blocks use.
enum class AttentionKernel {
  Auto,   // cuDNN when this build has it and it has an engine for the shapes, else Flash (logged)
  Flash,  // the project's tensor-core kernels (attention_*.cu): deterministic
  Cudnn,  // cuDNN's fused flash attention (attention_cudnn.cu): an error if unavailable;
          // not deterministic (its backward adds dQ with atomics)
};
AttentionKernel parse_attention_kernel(const std::string& s);  // "auto" | "flash" | "cudnn"

struct CudaModelOptions {
  Recompute recompute = Recompute::None;
  AttentionKernel attention = AttentionKernel::Flash;
  // Initialize the parameters with gpt_init_params(seed) at construction (as make_cpu_model
  // does with seed 0). Off: they start at zero until upload_params.
  bool init_params = true;
  uint64_t init_seed = 0;
  // Bytes of bf16 logits per lm_head/cross-entropy chunk (rows: the largest power of two that
  // fits, at least 64, at most max_batch * seq_len).
  size_t logits_chunk_bytes = size_t(512) << 20;
};

// Device memory the model holds, in bytes.
struct CudaModelMemory {
  size_t weights = 0;      // fp32 params + fp32 grads + bf16 weight copy
  size_t activations = 0;  // the planned arena (activations, backward scratch, logits chunk)
  size_t other = 0;        // matmul workspace, embedding-backward workspace, token buffers
  size_t total() const { return weights + activations + other; }
};

class GptCuda final : public Model {
 public:
  GptCuda(const GPTConfig& cfg, int max_batch, const CudaModelOptions& options = {});
  ~GptCuda() override;
  GptCuda(const GptCuda&) = delete;
  GptCuda& operator=(const GptCuda&) = delete;

  // ---- og::Model ----
  Device device() const override { return Device::CUDA; }
  const GPTConfig& config() const override { return cfg_; }
  const ParamLayout& layout() const override { return layout_; }
  float* params() override { return params_.data(); }  // device memory
  float* grads() override { return grads_.data(); }    // device memory
  void zero_grad() override;
  float forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T, float grad_scale) override;
  float forward_loss(const int32_t* inputs, const int32_t* targets, int B, int T) override;
  std::vector<float> last_logits(const int32_t* tokens, int T) override;
  void upload_params(const float* host) override;
  void download_params(float* host) override;
  double grad_norm_sq() override;
  void forward_backward_accumulate(const int32_t* inputs, const int32_t* targets, int B, int T,
                                   float grad_scale) override;
  double take_loss_sum() override;
  void params_changed() override;  // bf16 weights <- fp32 master weights (one kernel, queued)
  void synchronize() override;
  const std::vector<ParamUnit>& units() const override { return units_; }
  // The embedding is read in fp32 (into the fp32 residual stream); every other unit in bf16.
  WeightType unit_weight_type(int unit) const override { return unit == 0 ? WeightType::F32 : WeightType::BF16; }
  // The source's calls are made as work is enqueued (see model/param_units.h); the lm_head's
  // forward and backward are fused, so it is acquired once: acquire(L+1, L) .. release(L+1).
  void attach_units(UnitSource* src) override;
  UnitSource& own_units() override { return *own_; }
  void route_units(UnitSource* src) override;

  // ---- CUDA specifics ----
  cudaStream_t stream() const { return stream_; }
  int max_batch() const { return max_batch_; }
  Recompute recompute() const { return options_.recompute; }
  // The attention implementation in use (Flash or Cudnn; Auto resolved at construction) and, for
  // cuDNN, its version and engines. cuDNN plans are built for sequences of seq_len tokens; shorter
  // ones (sampling) take the flash kernels, which compute the same attention and logsumexp.
  AttentionKernel attention_kernel() const {
    return cudnn_attention_ ? AttentionKernel::Cudnn : AttentionKernel::Flash;
  }
  std::string attention_description() const;
  int64_t logits_chunk_rows() const { return chunk_rows_; }
  CudaModelMemory memory() const;

 private:
  // What one block keeps for its backward. Depending on the recompute mode, some of these
  // point at buffers shared by all blocks (rewritten before each block's backward).
  struct LayerActs {
    float* res_in = nullptr;                             // block input (fp32 residual) [N, d]
    gpu::bf16* ln1 = nullptr;                            // rmsnorm(res_in) [N, d]
    float* rstd1 = nullptr;                              // [N]
    gpu::bf16 *q = nullptr, *k = nullptr, *v = nullptr;  // q, k after rotary + QK-norm [N, d]
    float *rstdq = nullptr, *rstdk = nullptr;            // QK-norm rstd [N, H]
    gpu::bf16* att = nullptr;                            // attention output [N, d]
    float* lse = nullptr;                                // attention logsumexp [B, H, T]
    float* res_mid = nullptr;                            // residual after attention (fp32) [N, d]
    gpu::bf16* ln2 = nullptr;                            // rmsnorm(res_mid) [N, d]
    float* rstd2 = nullptr;                              // [N]
    gpu::bf16 *fc = nullptr, *act = nullptr;             // MLP pre-activation and ReLU² output [N, 4d]
  };
  struct LayerWeights {  // offsets (elements) of one block's weights in its unit's range
    size_t q, k, v, o, fc, proj;
  };
  class OwnUnits;         // the whole-buffer UnitSource over params_ (embedding), wbf_ and grads_
  void plan();            // carve the arena (two passes: size, then pointers)
  void make_attention();  // cudnn_attention_ per options_.attention
  // attention forward / backward through cuDNN (cudnn_attention_for(T)) or the flash kernels
  bool cudnn_attention_for(int T) const;
  void attention_forward(const LayerActs& L, int B, int T);
  void attention_backward(gpu::bf16* dq, gpu::bf16* dk, gpu::bf16* dv, const gpu::bf16* datt, const LayerActs& L, int B,
                          int T);
  void check_batch(int B, int T, const char* what) const;
  void validate_tokens(const int32_t* tokens, int64_t N, bool targets, const char* what) const;
  int64_t count_valid_targets(const int32_t* targets, int64_t N) const;
  void stage_tokens(const int32_t* inputs, const int32_t* targets, int64_t N);  // host -> device (async)

  // gpt_cuda_passes.cu: the passes (all queued on stream_)
  void forward_blocks(int B, int T);  // embedding .. final rmsnorm (lnf_)
  // One block with its unit's bf16 weights w; `last`: stop after the ReLU² (recompute).
  void block_forward(int l, const gpu::bf16* w, int B, int T, bool last);
  void restore_layer(int l, const gpu::bf16* w, int B, int T);  // recompute what the mode dropped
  void head_forward_backward(int64_t N, float dloss);           // chunked lm_head + CE: losses_, dln_ (dlnf), dW_lm
  void head_loss(int64_t N);                                    // chunked lm_head + CE, loss only
  void backward_blocks(int B, int T);                           // dlnf .. embedding gradient
  void enqueue_train(const int32_t* inputs, const int32_t* targets, int B, int T, float grad_scale, double* loss_acc);
  double read_scalar(const double* device_value);  // waits for the stream

  const gpu::bf16* acquire_bf16(int unit, int next) { return static_cast<const gpu::bf16*>(src_->acquire(unit, next)); }
  float* grad_buffer(int unit) { return static_cast<float*>(src_->grad_buffer(unit)); }
  int head_unit() const { return cfg_.n_layer + 1; }
  void check_own(const char* what) const;

  int32_t* inputs_d() { return tokens_d_.data(); }
  int32_t* targets_d() { return tokens_d_.data() + (size_t)max_batch_ * cfg_.seq_len; }

  // Owners of the CUDA handles, so a constructor that throws half way releases what it made.
  struct StreamDeleter {
    void operator()(CUstream_st* s) const;
  };
  struct EventDeleter {
    void operator()(CUevent_st* e) const;
  };
  struct PinnedDeleter {
    void operator()(void* p) const;
  };

  GPTConfig cfg_;
  ParamLayout layout_;
  int max_batch_;
  CudaModelOptions options_;
  std::unique_ptr<CUstream_st, StreamDeleter> stream_owner_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<gpu::Matmul> matmul_;

  DeviceBuffer<float> params_, grads_;
  DeviceBuffer<gpu::bf16> wbf_;   // bf16 copy of params_
  std::vector<ParamUnit> units_;  // wte, blocks, lm_head
  std::vector<LayerWeights> lw_;
  std::unique_ptr<UnitSource> own_;
  UnitSource* src_ = nullptr;  // own_ until attach_units

  DeviceBuffer<char> arena_;
  size_t arena_bytes_ = 0;
  int64_t chunk_rows_ = 0;
  std::vector<LayerActs> layers_;
  float* res_final_ = nullptr;    // output of the last block [N, d]
  gpu::bf16* lnf_ = nullptr;      // final rmsnorm [N, d]
  float* rstdf_ = nullptr;        // [N]
  gpu::bf16* logits_ = nullptr;   // one chunk of logits / dlogits [chunk_rows_, V]
  float* logits_f32_ = nullptr;   // last_logits result [V]
  float* losses_ = nullptr;       // per-token losses [N]
  float* dres_ = nullptr;         // gradient of the residual stream (fp32) [N, d]
  gpu::bf16* dres_bf_ = nullptr;  // its bf16 copy, the dout of the o / proj matmuls [N, d]
  gpu::bf16* dln_ = nullptr;      // gradient of an rmsnorm output [N, d]; forward scratch for branch outputs
  gpu::bf16* dact_ = nullptr;     // MLP gradient [N, 4d]; in the attention backward it holds datt, dq, dk, dv
  float* delta_ = nullptr;        // attention backward scratch [B, H, T]
  std::unique_ptr<gpu::CudnnAttention> cudnn_attention_;  // set when the blocks use cuDNN's attention

  DeviceBuffer<char> emb_workspace_;
  DeviceBuffer<int32_t> tokens_d_;  // inputs [N] then targets [N]

  // pinned staging for tokens: two slots so the host can fill one while the other is in flight
  std::unique_ptr<void, PinnedDeleter> staging_owner_;
  int32_t* staging_ = nullptr;                           // 2 slots x (inputs N, targets N) int32
  std::unique_ptr<CUevent_st, EventDeleter> staged_[2];  // recorded after each slot's copy
  int slot_ = 0;

  // [0] train loss sum (forward_backward_accumulate), [1] loss sum of a single call,
  // [2] grad norm², then kSumSquaresPartials partials
  DeviceBuffer<double> scalars_;
  std::unique_ptr<void, PinnedDeleter> host_scalar_owner_;
  double* host_scalar_ = nullptr;
};

// The CUDA model on the current device. max_batch: the largest B a call will pass.
std::unique_ptr<GptCuda> make_cuda_model(const GPTConfig& cfg, int max_batch, const CudaModelOptions& options = {});

// Bytes of device memory in use on the current device (all processes; cudaMemGetInfo), and
// its capacity.
size_t gpu_memory_in_use();
size_t gpu_memory_total();
std::string gpu_device_name();

}  // namespace og
