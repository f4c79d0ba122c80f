// Device-specific pieces of training (see backend.h). All CUDA code of the trainer lives here,
// under ORTHOGPT_CUDA.
#include "train/backend.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <limits>

#include "core/error.h"
#include "dist/counting_communicator.h"
#include "train/fsdp_optimizers.h"

#ifdef ORTHOGPT_CUDA
#include "core/cuda_utils.h"
#include "model/cuda/gpt_cuda.h"
#include "optim/cuda/cuda_optimizer.h"
#ifdef ORTHOGPT_NCCL
#include "dist/nccl_communicator.h"
#endif
#endif

namespace og {
namespace {

double host_now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

#ifdef ORTHOGPT_CUDA
GptCuda& as_cuda(Model& model) {
  auto* m = dynamic_cast<GptCuda*>(&model);
  OG_CHECK(m != nullptr, "internal: a CUDA-device model that is not the CUDA GPT");
  return *m;
}
#endif

[[maybe_unused]] constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

}  // namespace

Device resolve_device(const std::string& want) {
  if (want == "cpu") return Device::CPU;
  OG_CHECK(want == "cuda" || want == "auto", "train.device: '{}' is not one of: auto, cpu, cuda", want);
#ifdef ORTHOGPT_CUDA
  const bool gpu = cuda_available();
  if (want == "cuda" && !gpu)
    fail("train.device: cuda requested but no CUDA device is available (use --device cpu, or auto)");
  return gpu ? Device::CUDA : Device::CPU;
#else
  if (want == "cuda")
    fail("train.device: cuda requested but this orthogpt was built without CUDA (use --device cpu, or auto)");
  return Device::CPU;
#endif
}

std::string describe_device(Device device) {
  if (device == Device::CPU) return fmt::format("cpu, {} threads", omp_get_max_threads());
#ifdef ORTHOGPT_CUDA
  return fmt::format("cuda: {} ({:.0f} GiB)", gpu_device_name(), gpu_memory_total() / kGiB);
#else
  return "cuda";
#endif
}

std::unique_ptr<Model> make_model(const Config& cfg, Device device, int max_batch, int local_rank) {
  if (device == Device::CPU) return make_cpu_model(cfg.gpt(), max_batch);
#ifdef ORTHOGPT_CUDA
  int count = 0;
  CUDA_CHECK(cudaGetDeviceCount(&count));
  OG_CHECK(count > 0, "train.device: no CUDA device is available");
  CUDA_CHECK(cudaSetDevice(local_rank % count));
  CudaModelOptions opt;
  opt.recompute = parse_recompute(cfg.train.recompute);
  opt.attention = parse_attention_kernel(cfg.train.attention);
  opt.init_params = false;  // the caller uploads its own initialization
  return make_cuda_model(cfg.gpt(), max_batch, opt);
#else
  fail("train.device: cuda requested but this orthogpt was built without CUDA");
#endif
}

std::string describe_cuda_model(const Config& cfg, Model& model) {
  if (model.device() != Device::CUDA) return {};
#ifdef ORTHOGPT_CUDA
  return fmt::format(", recompute {}, attention {}", cfg.train.recompute, as_cuda(model).attention_description());
#else
  return {};
#endif
}

void bind_optimizers(ParamGroups& groups, Model& model) {
  if (model.device() != Device::CUDA) return;
#ifdef ORTHOGPT_CUDA
  GptCuda& gpu = as_cuda(model);
  // Optimizer construction queued its uploads on the legacy stream and synchronized; from now
  // on every step goes on the model's stream, ordered with forward/backward.
  CUDA_CHECK(cudaDeviceSynchronize());
  for (Optimizer* opt : groups.optimizers()) {
    if (is_empty_shard_optimizer(opt)) continue;  // FSDP: this rank holds no row of the group
    auto* cuda_opt = dynamic_cast<CudaOptimizer*>(opt);
    OG_CHECK(cuda_opt != nullptr, "internal: a CPU optimizer ({}) on CUDA parameters", name_of(opt->algorithm()));
    cuda_opt->set_stream(gpu.stream());
  }
#endif
}

void poison_gradient(Model& model) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  if (model.device() == Device::CPU) {
    model.grads()[0] = nan;
    return;
  }
#ifdef ORTHOGPT_CUDA
  // A pageable source: the copy is staged before the call returns, so `nan` may go out of scope.
  CUDA_CHECK(cudaMemcpyAsync(model.grads(), &nan, sizeof(float), cudaMemcpyHostToDevice, as_cuda(model).stream()));
#endif
}

// ---- gradient averaging ---------------------------------------------------------------------

struct GradientAverager::Streams {
#ifdef ORTHOGPT_CUDA
  OwnedStream comm;       // the all-reduces
  OwnedEvent model_mark;  // recorded on the model's stream, waited for by comm
  OwnedEvent comm_mark;   // recorded on comm, waited for by the model's stream
  cudaStream_t model = nullptr;
#endif
};

GradientAverager::GradientAverager(DistContext& dist, Model& model, double timeout_s)
    : model_(model), host_(*dist.host_comm), own_(model.own_units()), units_(model.units()) {
  ranges_.emplace_back(0, model.layout().total());
  reduced_.assign(units_.size(), 0);
  if (dist.world == 1) return;
  model.route_units(this);
  if (model.device() == Device::CPU) return;
#if defined(ORTHOGPT_CUDA) && defined(ORTHOGPT_NCCL)
  streams_ = std::make_unique<Streams>();
  streams_->model = as_cuda(model).stream();
  CUDA_CHECK(cudaStreamCreate(&streams_->comm.s));  // blocking, like the model's stream
  streams_->model_mark.create();
  streams_->comm_mark.create();
  device_comm_ = make_nccl_communicator(host_, streams_->comm.s, timeout_s);
#else
  (void)timeout_s;
  fail("train.device cuda with {} ranks needs NCCL, and this orthogpt was built without it", dist.world);
#endif
}

GradientAverager::~GradientAverager() {
  model_.route_units(nullptr);
#ifdef ORTHOGPT_CUDA
  if (streams_ && streams_->comm.s) cudaStreamSynchronize(streams_->comm.s);  // quietly: no throw here
#endif
}

void GradientAverager::grads_ready(int unit) {
  own_.grads_ready(unit);
  if (reduce_in_backward_) reduce_unit(unit);
}

// The unit's part of every averaged range, in one collective group; on CUDA after everything
// the model has enqueued so far (its backward wrote the unit's gradient), on the communication
// stream.
void GradientAverager::reduce_unit(int unit) {
  if (reduced_[unit]) return;
  reduced_[unit] = 1;
  const size_t u0 = units_[unit].offset, u1 = u0 + units_[unit].floats;
  Communicator& comm = device_comm_ ? *device_comm_ : host_;
#ifdef ORTHOGPT_CUDA
  if (streams_) stream_wait(streams_->comm.s, streams_->model, streams_->model_mark.e);
#endif
  CollectiveGroup group(comm);
  for (auto [begin, end] : ranges_) {
    const size_t b = std::max(begin, u0), e = std::min(end, u1);
    if (b >= e) continue;
    comm.all_reduce(model_.grads() + b, e - b, DType::F32, ReduceOp::Avg);
    step_bytes_ += ring_bytes_per_rank(CollectiveKind::AllReduce, e - b, DType::F32, host_.size());
  }
}

void GradientAverager::average() {
  if (host_.size() == 1) {
    last_bytes_ = 0;
    return;
  }
  for (size_t u = 0; u < units_.size(); ++u) reduce_unit((int)u);  // what backward did not start
#ifdef ORTHOGPT_CUDA
  if (streams_) stream_wait(streams_->model, streams_->comm.s, streams_->comm_mark.e);
#endif
#if defined(ORTHOGPT_CUDA) && defined(ORTHOGPT_NCCL)
  if (device_comm_) nccl_synchronize(*device_comm_);  // with the timeout: a dead peer is an error, not a hang
#endif
  last_bytes_ = step_bytes_;
  step_bytes_ = 0;
  std::fill(reduced_.begin(), reduced_.end(), 0);
  reduce_in_backward_ = false;
}

void GradientAverager::exclude_role(ParamRole role) {
  ranges_.clear();
  const auto& ps = model_.layout().params();
  for (size_t i = 0; i < ps.size(); ++i) {
    if (ps[i].role == role) continue;
    // Extend the last range over the padding before this parameter when nothing excluded lies between.
    const bool adjacent = i > 0 && ps[i - 1].role != role && !ranges_.empty();
    if (adjacent)
      ranges_.back().second = ps[i].offset + ps[i].numel();
    else
      ranges_.emplace_back(ps[i].offset, ps[i].offset + ps[i].numel());
  }
}

Communicator& GradientAverager::optimizer_comm() { return device_comm_ ? *device_comm_ : host_; }

std::string GradientAverager::backend() const { return device_comm_ ? device_comm_->backend() : host_.backend(); }

// ---- timing of queued work --------------------------------------------------------------------

QueueTimer::QueueTimer(Model& model) : model_(model) {
#ifdef ORTHOGPT_CUDA
  if (model.device() == Device::CUDA)
    for (auto& e : events_) {
      cudaEvent_t ev = nullptr;
      CUDA_CHECK(cudaEventCreate(&ev));
      e = ev;
    }
#endif
}

QueueTimer::~QueueTimer() {
#ifdef ORTHOGPT_CUDA
  for (auto& e : events_)
    if (e) cudaEventDestroy(static_cast<cudaEvent_t>(e));
#endif
}

void QueueTimer::start() {
  stopped_ = false;
#ifdef ORTHOGPT_CUDA
  if (events_[0]) {
    CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(events_[0]), as_cuda(model_).stream()));
    return;
  }
#endif
  host_t0_ = host_now_ms();
}

void QueueTimer::stop() {
  stopped_ = true;
#ifdef ORTHOGPT_CUDA
  if (events_[1]) {
    CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(events_[1]), as_cuda(model_).stream()));
    return;
  }
#endif
  host_ms_ = host_now_ms() - host_t0_;
}

double QueueTimer::elapsed_ms() {
  OG_CHECK(stopped_, "internal: QueueTimer read before stop()");
#ifdef ORTHOGPT_CUDA
  if (events_[1]) {
    CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(events_[1])));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(events_[0]), static_cast<cudaEvent_t>(events_[1])));
    return ms;
  }
#endif
  return host_ms_;
}

// ---- memory -----------------------------------------------------------------------------------

DeviceMemory device_memory(Model& model) {
  DeviceMemory m;
  if (model.device() != Device::CUDA) return m;
#ifdef ORTHOGPT_CUDA
  m.gpu = true;
  m.in_use_gib = gpu_memory_in_use() / kGiB;
  m.total_gib = gpu_memory_total() / kGiB;
  const CudaModelMemory mm = as_cuda(model).memory();
  m.model_weights_gib = mm.weights / kGiB;
  m.model_activations_gib = mm.activations / kGiB;
  m.model_other_gib = mm.other / kGiB;
#endif
  return m;
}

}  // namespace og
