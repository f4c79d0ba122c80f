// The model interface the trainer drives; one implementation per backend (model/cpu, model/cuda).
// Parameters and gradients each live in one contiguous fp32 buffer laid out by layout();
// for the CUDA model these pointers are device memory. Token arrays are always host memory.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/gpt_config.h"
#include "model/param_layout.h"
#include "model/param_units.h"
#include "optim/optimizer.h"  // Device

namespace og {

class Model {
 public:
  virtual ~Model() = default;
  virtual Device device() const = 0;
  virtual const GPTConfig& config() const = 0;
  virtual const ParamLayout& layout() const = 0;
  virtual float* params() = 0;  // fp32 master weights, layout().total() floats
  virtual float* grads() = 0;   // fp32 gradients, same layout
  virtual void zero_grad() = 0;
  // Forward on B x T tokens (B <= max batch given at construction, T <= config().seq_len),
  // then backward: grads += grad_scale * d(mean loss)/d(params). Returns the mean loss.
  virtual float forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T, float grad_scale) = 0;
  // Forward only: mean cross-entropy loss.
  virtual float forward_loss(const int32_t* inputs, const int32_t* targets, int B, int T) = 0;
  // Forward only on one sequence of T tokens: fp32 logits of the last position (vocab_size floats, host).
  virtual std::vector<float> last_logits(const int32_t* tokens, int T) = 0;
  // Copy parameters from / to a host buffer of layout().total() floats (checkpoints, init).
  virtual void upload_params(const float* host) = 0;
  virtual void download_params(float* host) = 0;
  // Squared L2 norm of the gradient buffer (NaN/Inf propagate, which is how the trainer sees them).
  virtual double grad_norm_sq() = 0;

  // ---- for backends that queue work (CUDA); the defaults suit a synchronous one (CPU) ----
  // Like forward_backward, but the mean loss is added to an accumulator that take_loss_sum()
  // reads and resets, so a step of several micro-batches needs no host synchronization before
  // that read.
  virtual void forward_backward_accumulate(const int32_t* inputs, const int32_t* targets, int B, int T,
                                           float grad_scale) {
    loss_sum_ += forward_backward(inputs, targets, B, T, grad_scale);
  }
  virtual double take_loss_sum() {
    const double s = loss_sum_;
    loss_sum_ = 0;
    return s;
  }
  // Call after the parameters were written through params() (an optimizer step): a backend that
  // computes with a low-precision copy of the weights (CUDA: bf16) refreshes it. upload_params
  // does this itself.
  virtual void params_changed() {}
  // Wait until all queued work is done.
  virtual void synchronize() {}

  // ---- sharded weights (train/fsdp.h) ----
  // The parameter units (model/param_units.h) and the element type of each unit's weights that
  // the model computes with.
  virtual const std::vector<ParamUnit>& units() const = 0;
  virtual WeightType unit_weight_type(int unit) const = 0;
  // From now on the model takes its weights from, and hands its gradients to, `src` (not owned;
  // it must outlive the model's use) and frees its own whole buffers: params() and grads()
  // return nullptr, zero_grad() does nothing (the source owns the gradients), and
  // upload_params, download_params and grad_norm_sq are errors.
  virtual void attach_units(UnitSource* src) = 0;
  bool units_attached() const { return attached_; }
  // The model's own whole buffers as a unit source (what it computes with until attach_units).
  virtual UnitSource& own_units() = 0;
  // Make the unit calls through `src`, which forwards them to own_units() and may act on them
  // (DDP: all-reduce each unit's gradient as soon as backward has it); nullptr: own_units()
  // again. The whole buffers stay.
  virtual void route_units(UnitSource* src) = 0;

 protected:
  double loss_sum_ = 0;
  bool attached_ = false;
};

// The fp32 CPU reference model (model/cpu). max_batch: the largest B a call will pass.
std::unique_ptr<Model> make_cpu_model(const GPTConfig& cfg, int max_batch);

}  // namespace og
