// What differs between training on the CPU and on a GPU, behind device-neutral helpers, so the
// trainer and the benchmark hold no CUDA code: choosing the device, building the model, putting
// the optimizers on the model's stream, averaging gradients over ranks, injecting a NaN,
// timing queued work and reading GPU memory. In a CPU-only build every CUDA request is an
// og::Error that says so.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dist/bootstrap.h"
#include "model/model.h"
#include "optim/param_groups.h"
#include "train/config.h"

namespace og {

// train.device: "cpu"; "cuda" (an og::Error without a CUDA build or without a GPU); "auto":
// cuda when this is a CUDA build and a GPU is present, else cpu.
Device resolve_device(const std::string& want);
// One line naming the device ("cpu, 16 threads" / "cuda: NVIDIA H100 80GB HBM3").
std::string describe_device(Device device);

// The model of cfg on `device`, for micro-batches of up to max_batch sequences. CUDA: on GPU
// local_rank % (number of GPUs), with train.recompute. The parameters are NOT initialized
// (upload them). An og::Error if the device cannot be used.
std::unique_ptr<Model> make_model(const Config& cfg, Device device, int max_batch, int local_rank = 0);

// CUDA: run every optimizer of `groups` on the model's stream (they are built on the legacy
// default stream). CPU: nothing.
void bind_optimizers(ParamGroups& groups, Model& model);

// ", recompute X, attention Y" for a CUDA model (Y: flash kernels, or cuDNN's version and
// engines); empty for the CPU model.
std::string describe_cuda_model(const Config& cfg, Model& model);

// grads()[0] = NaN (train.fault_nan_step), on either device.
void poison_gradient(Model& model);

// Averages the gradient buffer over the data-parallel ranks: the host communicator for the CPU
// model, NCCL on a stream of its own for the CUDA model (waited for with dist.timeout_s).
// With more than one rank it routes the model's unit calls through itself (Model::route_units):
// during the last micro-batch of a step, each unit's gradient (the embedding, a block, the
// lm_head: the buckets) is all-reduced as soon as backward has written it, on the CUDA model
// overlapping the rest of backward; average() then waits for them (and reduces whatever backward
// did not). Earlier micro-batches only accumulate.
class GradientAverager final : public UnitSource {
 public:
  GradientAverager(DistContext& dist, Model& model, double timeout_s);
  ~GradientAverager() override;
  // Before each micro-batch's forward_backward: is it the step's last one?
  void set_last_micro_batch(bool last) { reduce_in_backward_ = last && host_.size() > 1; }
  void average();  // no-op in a world of one
  std::string backend() const;
  // Leave the gradients of parameters with this role out of average() (dist.compressed_sync:
  // the matrix optimizer synchronizes what it needs itself). The remaining parameters are
  // averaged as maximal contiguous ranges of the buffer (padding between them included).
  void exclude_role(ParamRole role);
  // The communicator optimizers of this model's parameters use: NCCL on the model's stream for a
  // CUDA model with more than one rank, else the host communicator.
  Communicator& optimizer_comm();
  // Bytes this rank sent in the last average(), by the ring formula (dist/counting_communicator.h).
  double last_bytes() const { return last_bytes_; }

  // ---- UnitSource: forwards to the model's own buffers, all-reducing in grads_ready ----
  const void* acquire(int unit, int next) override { return own_.acquire(unit, next); }
  void release(int unit) override { own_.release(unit); }
  void* grad_buffer(int unit) override { return own_.grad_buffer(unit); }
  void grads_ready(int unit) override;

 private:
  struct Streams;
  void reduce_unit(int unit);  // starts the all-reduce of the unit's share of ranges_
  Model& model_;
  Communicator& host_;
  UnitSource& own_;
  std::vector<ParamUnit> units_;
  std::unique_ptr<Communicator> device_comm_;
  std::unique_ptr<Streams> streams_;               // CUDA: the communication stream and its events
  std::vector<std::pair<size_t, size_t>> ranges_;  // [begin, end) in floats; whole buffer by default
  std::vector<char> reduced_;                      // per unit: all-reduced this step
  bool reduce_in_backward_ = false;
  double step_bytes_ = 0, last_bytes_ = 0;
};

// Elapsed time of work queued between start() and stop(): CUDA events on the model's stream,
// or the host clock for a CPU model (whose work is done when the call returns).
class QueueTimer {
 public:
  explicit QueueTimer(Model& model);
  ~QueueTimer();
  QueueTimer(const QueueTimer&) = delete;
  QueueTimer& operator=(const QueueTimer&) = delete;
  void start();
  void stop();
  bool has_interval() const { return stopped_; }
  // Milliseconds of the last start..stop interval; waits for the stop event on a GPU.
  double elapsed_ms();

 private:
  Model& model_;
  void* events_[2] = {nullptr, nullptr};  // cudaEvent_t (CUDA builds)
  double host_t0_ = 0, host_ms_ = 0;
  bool stopped_ = false;
};

// GPU memory in GiB (all zero for a CPU model): in use on the device (cudaMemGetInfo, every
// process), its capacity, and what the model holds.
struct DeviceMemory {
  bool gpu = false;
  double in_use_gib = 0, total_gib = 0;
  double model_weights_gib = 0, model_activations_gib = 0, model_other_gib = 0;
};
DeviceMemory device_memory(Model& model);

// Peak FLOP/s that MFU is measured against (H100 SXM dense bf16).
constexpr double kPeakFlops = 989e12;

}  // namespace og
