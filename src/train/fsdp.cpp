// FSDP step mechanics, shard checkpoints and the memory report (see fsdp.h).
#include "train/fsdp.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <optional>

#include "core/error.h"
#include "dist/counting_communicator.h"
#include "train/fsdp_optimizers.h"

#ifdef ORTHOGPT_CUDA
#include "core/cuda_utils.h"
#include "model/cuda/gpt_cuda.h"
#include "model/cuda/kernels.h"
#ifdef ORTHOGPT_NCCL
#include "dist/nccl_communicator.h"
#endif
#endif

namespace og {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

#ifdef ORTHOGPT_CUDA
cudaStream_t stream_of(Model& model) {
  auto* m = dynamic_cast<GptCuda*>(&model);
  OG_CHECK(m != nullptr, "internal: a CUDA-device model that is not the CUDA GPT");
  return m->stream();
}
#endif

// Byte copies between memory of `device` and the host (or within the device), ordered with the
// model's work (CUDA: on its stream; reads to the host wait for it).
void copy_on_device(Model& model, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (model.device() == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef ORTHOGPT_CUDA
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(model)));
#endif
}
void copy_to_host(Model& model, Device where, void* host, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (where == Device::CPU) {
    std::memcpy(host, src, bytes);
    return;
  }
#ifdef ORTHOGPT_CUDA
  cudaStream_t s = stream_of(model);
  CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
#endif
}
void copy_from_host(Model& model, Device where, void* dst, const void* host, size_t bytes) {
  if (bytes == 0) return;
  if (where == Device::CPU) {
    std::memcpy(dst, host, bytes);
    return;
  }
#ifdef ORTHOGPT_CUDA
  cudaStream_t s = stream_of(model);
  CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, s));
  CUDA_CHECK(cudaStreamSynchronize(s));  // `host` may be a temporary
#endif
}

// "group:param/what" -> (param, what)
std::pair<std::string, std::string> split_state_name(const std::string& name) {
  const size_t colon = name.find(':'), slash = name.rfind('/');
  OG_CHECK(colon != std::string::npos && slash != std::string::npos && slash > colon,
           "internal: optimizer state tensor '{}' is not named group:param/what", name);
  return {name.substr(colon + 1, slash - colon - 1), name.substr(slash + 1)};
}

}  // namespace

// The shard buffers and the gathered working set, on the model's device: master weights and
// gradients (plan local_total floats each, zero padding between shards), the weight and
// gradient slots (one buffer each, carved by wslot_ / gslot_), the reduce scratch (the largest
// unit's shard) and, on CUDA, the bf16 master shards, the communication stream and its events.
struct Fsdp::Buffers {
  std::vector<float> host_master, host_grads, host_scratch, host_gslots;
  std::vector<char> host_wslots;
#ifdef ORTHOGPT_CUDA
  DeviceBuffer<float> dev_master, dev_grads, dev_scratch, dev_gslots;
  DeviceBuffer<gpu::bf16> dev_master_bf16;
  DeviceBuffer<char> dev_wslots;
  DeviceBuffer<double> norm_scratch;  // result, then gpu::kSumSquaresPartials partials
  OwnedStream comm_stream;            // the shard collectives (and the copies of a world of one)
  OwnedEvent model_mark;              // recorded on the model's stream, waited for by comm_stream
  OwnedEvent comm_mark;               // recorded on comm_stream, waited for by the model's stream
  OwnedEvent weights_ready[3];        // a weight slot's gather is done (comm_stream)
  OwnedEvent grads_free[3];           // a gradient slot's reduce-scatter is done (comm_stream)
  cudaStream_t model_stream = nullptr;
#endif
  float* master = nullptr;
  float* grads = nullptr;
  float* scratch = nullptr;
  float* gslots = nullptr;
  char* wslots = nullptr;
  const void* master_bf16 = nullptr;
};

Fsdp::Fsdp(DistContext& dist, Model& model, const DistSection& cfg)
    : model_(model),
      host_(*dist.host_comm),
      cfg_(cfg),
      plan_(model.layout(), dist.world),
      rank_(dist.rank),
      world_(dist.world),
      units_(model.units()),
      buf_(std::make_unique<Buffers>()) {
  const size_t n = plan_.local_total(rank_);
  const int nu = (int)units_.size();
  size_t w_large = 0, w_small = 0, g_large = 0, g_small = 0;  // the largest unit; the largest block
  for (int u = 0; u < nu; ++u) {
    unit_type_.push_back(model.unit_weight_type(u));
    const bool block = u > 0 && u + 1 < nu;
    const size_t wb = (unit_weight_bytes(u) + 255) / 256 * 256, gf = (units_[u].floats + 63) / 64 * 64;
    w_large = std::max(w_large, wb);
    g_large = std::max(g_large, gf);
    if (block) w_small = std::max(w_small, wb), g_small = std::max(g_small, gf);
    scratch_floats_ = std::max(scratch_floats_, unit_local_end(u) - unit_local_begin(u));
  }
  auto carve = [](std::vector<Slot>& slots, std::initializer_list<size_t> caps) {
    size_t off = 0;
    for (size_t c : caps) {
      Slot sl;
      sl.offset = off;
      sl.capacity = c;
      slots.push_back(sl);
      off += c;
    }
    return off;
  };
  const size_t wslot_bytes = carve(wslot_, {w_large, w_small, w_small});
  const size_t gslot_floats = carve(gslot_, {g_large, g_small, g_small});
  grads_fresh_.assign(units_.size(), 1);
  if (model.device() == Device::CPU) {
    buf_->host_master.assign(n, 0.0f);
    buf_->host_grads.assign(n, 0.0f);
    buf_->host_scratch.assign(scratch_floats_, 0.0f);
    buf_->host_gslots.assign(gslot_floats, 0.0f);
    buf_->host_wslots.assign(wslot_bytes, 0);
    buf_->master = buf_->host_master.data();
    buf_->grads = buf_->host_grads.data();
    buf_->scratch = buf_->host_scratch.data();
    buf_->gslots = buf_->host_gslots.data();
    buf_->wslots = buf_->host_wslots.data();
    return;
  }
#ifdef ORTHOGPT_CUDA
  Buffers& b = *buf_;
  b.model_stream = stream_of(model);
  b.dev_master.resize(n);
  b.dev_grads.resize(n);
  b.dev_master_bf16.resize(n);
  b.dev_scratch.resize(std::max<size_t>(scratch_floats_, 1));
  b.dev_gslots.resize(gslot_floats);
  b.dev_wslots.resize(wslot_bytes);
  b.norm_scratch.resize(1 + gpu::kSumSquaresPartials);
  // Zero once: the padding between shards (and in the slots) is never written afterwards.
  CUDA_CHECK(cudaMemset(b.dev_master.data(), 0, b.dev_master.bytes()));
  CUDA_CHECK(cudaMemset(b.dev_grads.data(), 0, b.dev_grads.bytes()));
  CUDA_CHECK(cudaMemset(b.dev_master_bf16.data(), 0, b.dev_master_bf16.bytes()));
  CUDA_CHECK(cudaMemset(b.dev_scratch.data(), 0, b.dev_scratch.bytes()));
  CUDA_CHECK(cudaMemset(b.dev_wslots.data(), 0, b.dev_wslots.bytes()));
  CUDA_CHECK(cudaDeviceSynchronize());  // the memsets ran on the legacy stream; later work uses others
  b.master = b.dev_master.data();
  b.grads = b.dev_grads.data();
  b.scratch = b.dev_scratch.data();
  b.gslots = b.dev_gslots.data();
  b.wslots = b.dev_wslots.data();
  b.master_bf16 = b.dev_master_bf16.data();
  CUDA_CHECK(cudaStreamCreate(&b.comm_stream.s));  // blocking, like the model's stream
  b.model_mark.create();
  b.comm_mark.create();
  for (int i = 0; i < 3; ++i) {
    b.weights_ready[i].create();
    b.grads_free[i].create();
  }
  if (world_ > 1) {
#ifdef ORTHOGPT_NCCL
    device_comm_ = make_nccl_communicator(host_, b.comm_stream.s, cfg.timeout_s);
#else
    fail("dist.mode fsdp with train.device cuda on {} ranks needs NCCL, and this orthogpt was built without it",
         world_);
#endif
  }
#else
  fail("train.device cuda: this orthogpt was built without CUDA");
#endif
}

Fsdp::~Fsdp() {
#ifdef ORTHOGPT_CUDA
  if (buf_ && buf_->comm_stream.s) cudaStreamSynchronize(buf_->comm_stream.s);  // quietly: no throw here
#endif
}

std::string Fsdp::backend() const {
  if (world_ == 1) return "local copies (one rank)";
  return device_comm_ ? device_comm_->backend() : host_.backend();
}

Communicator* Fsdp::collective_comm() {
  if (world_ == 1) return nullptr;
  return device_comm_ ? device_comm_.get() : &host_;
}

ParamGroups Fsdp::make_groups(const std::vector<GroupSpec>& specs) {
  const auto& params = plan_.layout().params();
  std::map<std::string, size_t> index;
  for (size_t p = 0; p < params.size(); ++p) index[params[p].name] = p;
  Communicator& comm = device_comm_ ? *device_comm_ : host_;
  return ParamGroups(
      specs, plan_.layout(),
      [&](const ParamInfo& info) {
        const size_t p = index.at(info.name);
        const RowRange rr = plan_.rows(p, rank_);
        const size_t off = plan_.local_offset(p, rank_);
        ParamSlot s{info.name, info.role, info.rows, info.cols, buf_->master + off, buf_->grads + off};
        s.row0 = rr.row0;
        s.local_rows = rr.rows;
        return s;
      },
      [&](const GroupSpec& spec, std::vector<ParamSlot> slots) {
        return make_sharded_group_optimizer(spec.hp, std::move(slots), model_.device(), comm, host_, cfg_);
      });
}

void Fsdp::shard_params() {
  OG_CHECK(!model_.units_attached(), "internal: fsdp: shard_params on a model already attached");
  const auto& params = plan_.layout().params();
  for (size_t p = 0; p < params.size(); ++p) {
    const RowRange rr = plan_.rows(p, rank_);
    copy_on_device(model_, buf_->master + plan_.local_offset(p, rank_),
                   model_.params() + params[p].offset + (size_t)rr.row0 * params[p].cols,
                   (size_t)rr.rows * params[p].cols * sizeof(float));
  }
  model_.attach_units(this);  // waits for the copies, then frees the model's whole buffers
  params_updated();
}

size_t Fsdp::unit_local_begin(int unit) const { return plan_.local_offset(units_[unit].first, rank_); }
size_t Fsdp::unit_local_end(int unit) const {
  const size_t end = units_[unit].end;
  return end < plan_.num_params() ? plan_.local_offset(end, rank_) : plan_.local_total(rank_);
}
char* Fsdp::weight_slot(int slot) { return buf_->wslots + wslot_[slot].offset; }
float* Fsdp::grad_slot(int slot) { return buf_->gslots + gslot_[slot].offset; }
size_t Fsdp::unit_weight_bytes(int unit) const { return units_[unit].floats * weight_type_size(unit_type_[unit]); }

namespace {
// Ring bytes per rank of a variable-size collective, counted as its padded equal-block form
// (each block max(counts) elements: what the host backends move; NCCL's grouped form moves less).
double padded_block_bytes(CollectiveKind kind, const std::vector<size_t>& counts, DType t, int world) {
  size_t m = 0;
  for (size_t c : counts) m = std::max(m, c);
  return ring_bytes_per_rank(kind, m, t, world);
}
}  // namespace

// ---- the unit source --------------------------------------------------------------------------

int Fsdp::weight_slot_of(int unit) const {
  for (int s = 0; s < (int)wslot_.size(); ++s)
    if (wslot_[s].unit == unit) return s;
  return -1;
}

// A slot for `unit`: large enough, not in use and not `exclude`; preferring one that does not
// hold keep_unit, then the smallest (a block keeps out of the large slot when it can).
int Fsdp::free_weight_slot(int unit, int exclude, int keep_unit) const {
  const size_t need = unit_weight_bytes(unit);
  int best = -1;
  for (int s = 0; s < (int)wslot_.size(); ++s) {
    const Slot& c = wslot_[s];
    if (s == exclude || c.in_use || c.capacity < need) continue;
    if (best < 0) {
      best = s;
      continue;
    }
    const Slot& b = wslot_[best];
    const bool c_keeps = keep_unit >= 0 && c.unit == keep_unit, b_keeps = keep_unit >= 0 && b.unit == keep_unit;
    if (c_keeps != b_keeps ? b_keeps : c.capacity < b.capacity) best = s;
  }
  return best;
}

void Fsdp::gather_unit(int unit, int slot) {
  const ParamUnit& U = units_[unit];
  const WeightType wt = unit_type_[unit];
  const size_t es = weight_type_size(wt);
  const DType dt = wt == WeightType::F32 ? DType::F32 : DType::BF16;
  const char* shards =
      wt == WeightType::F32 ? reinterpret_cast<const char*>(buf_->master) : static_cast<const char*>(buf_->master_bf16);
  OG_CHECK(shards != nullptr, "internal: fsdp: no {}-byte shards to gather unit {} from", es, unit);
  char* dst = weight_slot(slot);
  wslot_[slot].unit = unit;
  const auto& params = plan_.layout().params();
  Communicator* comm = collective_comm();
  // The slot's previous unit was released (its work is enqueued before this point), and the
  // shards are current.
  comm_after_model();
  {
    std::optional<CollectiveGroup> group;  // NCCL: the unit's collectives in one launch
    if (comm) group.emplace(*comm);
    for (size_t p = U.first; p < U.end; ++p) {
      const char* mine = shards + plan_.local_offset(p, rank_) * es;
      char* whole = dst + (params[p].offset - U.offset) * es;
      if (!comm) {
        copy_on_stream(mine, whole, params[p].numel() * es);
        continue;
      }
      comm->all_gatherv(mine, whole, plan_.counts(p), dt);
      last_bytes_ += padded_block_bytes(CollectiveKind::AllGather, plan_.counts(p), dt, world_);
    }
  }
#ifdef ORTHOGPT_CUDA
  if (model_.device() == Device::CUDA) CUDA_CHECK(cudaEventRecord(buf_->weights_ready[slot].e, buf_->comm_stream.s));
#endif
}

const void* Fsdp::acquire(int unit, int next) {
  OG_CHECK(unit >= 0 && unit < (int)units_.size(), "internal: fsdp: acquire of unit {} of {}", unit, units_.size());
  int s = weight_slot_of(unit);
  if (s < 0) {
    s = free_weight_slot(unit, -1, next);
    OG_CHECK(s >= 0, "internal: fsdp: no free weight slot for unit {} (the model holds too many units)", unit);
    gather_unit(unit, s);
  }
  wslot_[s].in_use = true;
#ifdef ORTHOGPT_CUDA
  if (model_.device() == Device::CUDA) CUDA_CHECK(cudaStreamWaitEvent(buf_->model_stream, buf_->weights_ready[s].e, 0));
#endif
  // Prefetch: the next unit's gather runs while the model computes with this one.
  if (next >= 0 && next < (int)units_.size() && weight_slot_of(next) < 0) {
    const int t = free_weight_slot(next, s, -1);
    if (t >= 0) gather_unit(next, t);
  }
  return weight_slot(s);
}

void Fsdp::release(int unit) {
  const int s = weight_slot_of(unit);
  OG_CHECK(s >= 0 && wslot_[s].in_use, "internal: fsdp: release of unit {}, which is not acquired", unit);
  wslot_[s].in_use = false;  // the slot keeps the unit until a gather overwrites it
}

void* Fsdp::grad_buffer(int unit) {
  int s = -1;  // the smallest free slot that fits
  for (int i = 0; i < (int)gslot_.size(); ++i)
    if (!gslot_[i].in_use && gslot_[i].capacity >= units_[unit].floats &&
        (s < 0 || gslot_[i].capacity < gslot_[s].capacity))
      s = i;
  OG_CHECK(s >= 0, "internal: fsdp: no free gradient slot for unit {}", unit);
  gslot_[s].unit = unit;
  gslot_[s].in_use = true;
  float* g = grad_slot(s);
  const size_t bytes = units_[unit].floats * sizeof(float);
  if (model_.device() == Device::CPU) {
    std::memset(g, 0, bytes);
    return g;
  }
#ifdef ORTHOGPT_CUDA
  // The slot's last reduce-scatter must be done reading it.
  CUDA_CHECK(cudaStreamWaitEvent(buf_->model_stream, buf_->grads_free[s].e, 0));
  CUDA_CHECK(cudaMemsetAsync(g, 0, bytes, buf_->model_stream));
#endif
  return g;
}

void Fsdp::grads_ready(int unit) {
  int s = -1;
  for (int i = 0; i < (int)gslot_.size(); ++i)
    if (gslot_[i].in_use && gslot_[i].unit == unit) s = i;
  OG_CHECK(s >= 0, "internal: fsdp: grads_ready of unit {} without its grad_buffer", unit);
  const ParamUnit& U = units_[unit];
  const auto& params = plan_.layout().params();
  const float* g = grad_slot(s);
  // The first micro-batch of a step reduces straight into the shards; later ones into the
  // scratch, which is then added.
  const bool fresh = grads_fresh_[unit] != 0;
  const size_t local0 = unit_local_begin(unit), local_n = unit_local_end(unit) - local0;
  float* dst = fresh ? buf_->grads + local0 : buf_->scratch;
  Communicator* comm = collective_comm();
  comm_after_model();  // backward has written the unit's gradient
  {
    std::optional<CollectiveGroup> group;  // NCCL: the unit's collectives in one launch
    if (comm) group.emplace(*comm);
    for (size_t p = U.first; p < U.end; ++p) {
      const float* whole = g + (params[p].offset - U.offset);
      float* mine = dst + (plan_.local_offset(p, rank_) - local0);
      if (!comm) {
        copy_on_stream(whole, mine, params[p].numel() * sizeof(float));
        continue;
      }
      comm->reduce_scatterv(whole, mine, plan_.counts(p), DType::F32, ReduceOp::Avg);
      last_bytes_ += padded_block_bytes(CollectiveKind::ReduceScatter, plan_.counts(p), DType::F32, world_);
    }
  }
  if (!fresh) {
    float* sum = buf_->grads + local0;
    if (model_.device() == Device::CPU) {
      for (size_t i = 0; i < local_n; ++i) sum[i] += buf_->scratch[i];
    } else {
#ifdef ORTHOGPT_CUDA
      gpu::add_f32(sum, buf_->scratch, (int64_t)local_n, buf_->comm_stream.s);
#endif
    }
  }
  grads_fresh_[unit] = 0;
#ifdef ORTHOGPT_CUDA
  if (model_.device() == Device::CUDA) CUDA_CHECK(cudaEventRecord(buf_->grads_free[s].e, buf_->comm_stream.s));
#endif
  gslot_[s].in_use = false;
  gslot_[s].unit = -1;
}

// CUDA: the communication stream continues only after everything the model has enqueued so far.
void Fsdp::comm_after_model() {
#ifdef ORTHOGPT_CUDA
  if (model_.device() == Device::CUDA) stream_wait(buf_->comm_stream.s, buf_->model_stream, buf_->model_mark.e);
#endif
}

// Byte copies of a world of one, where collectives would run (CUDA: the communication stream).
void Fsdp::copy_on_stream(const void* src, void* dst, size_t bytes) {
  if (bytes == 0) return;
  if (model_.device() == Device::CPU) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef ORTHOGPT_CUDA
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, buf_->comm_stream.s));
#endif
}

// ---- the step around the model's calls -----------------------------------------------------

void Fsdp::zero_grads() {
  // No memset: each unit's first reduction of the step overwrites its shards, and the padding
  // between shards stays zero from construction.
  std::fill(grads_fresh_.begin(), grads_fresh_.end(), 1);
  last_bytes_ = 0;
}

void Fsdp::finish_gradients() {
  for (size_t u = 0; u < units_.size(); ++u)
    OG_CHECK(!grads_fresh_[u], "internal: fsdp: unit {} got no gradient this step (was backward run?)", u);
  for (const Slot& g : gslot_)
    OG_CHECK(!g.in_use, "internal: fsdp: unit {}'s gradient slot was never handed back", g.unit);
#ifdef ORTHOGPT_CUDA
  if (model_.device() == Device::CUDA) {
    stream_wait(buf_->model_stream, buf_->comm_stream.s, buf_->comm_mark.e);
#ifdef ORTHOGPT_NCCL
    if (device_comm_) nccl_synchronize(*device_comm_);  // with the timeout: a dead peer is an error
#endif
  }
#endif
}

void Fsdp::params_updated() {
  for (auto& w : wslot_) {
    OG_CHECK(!w.in_use, "internal: fsdp: the weights changed while unit {} is acquired", w.unit);
    w.unit = -1;
  }
#ifdef ORTHOGPT_CUDA
  if (model_.device() == Device::CUDA) {
    // No gather may still read the shards the conversion rewrites.
    stream_wait(buf_->model_stream, buf_->comm_stream.s, buf_->comm_mark.e);
    gpu::convert_f32_to_bf16(buf_->dev_master_bf16.data(), buf_->master, (int64_t)plan_.local_total(rank_),
                             buf_->model_stream);
  }
#endif
}

void Fsdp::poison_gradient() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  copy_from_host(model_, model_.device(), buf_->grads, &nan, sizeof(float));
}

void Fsdp::download_params(float* host) {
  const auto& params = plan_.layout().params();
  const size_t total = plan_.layout().total();
  Communicator* comm = collective_comm();
  if (model_.device() == Device::CPU) {
    std::fill(host, host + total, 0.0f);
    for (size_t p = 0; p < params.size(); ++p) {
      const float* mine = buf_->master + plan_.local_offset(p, rank_);
      if (comm)
        comm->all_gatherv(mine, host + params[p].offset, plan_.counts(p), DType::F32);
      else
        std::memcpy(host + params[p].offset, mine, params[p].numel() * sizeof(float));
    }
    return;
  }
#ifdef ORTHOGPT_CUDA
  DeviceBuffer<float> whole(total);  // a temporary: the run's end, checkpoints' callers
  CUDA_CHECK(cudaMemsetAsync(whole.data(), 0, whole.bytes(), buf_->model_stream));
  comm_after_model();
  {
    std::optional<CollectiveGroup> group;  // NCCL: the unit's collectives in one launch
    if (comm) group.emplace(*comm);
    for (size_t p = 0; p < params.size(); ++p) {
      const float* mine = buf_->master + plan_.local_offset(p, rank_);
      if (comm)
        comm->all_gatherv(mine, whole.data() + params[p].offset, plan_.counts(p), DType::F32);
      else
        copy_on_stream(mine, whole.data() + params[p].offset, params[p].numel() * sizeof(float));
    }
  }
#ifdef ORTHOGPT_NCCL
  if (device_comm_) nccl_synchronize(*device_comm_);
#endif
  CUDA_CHECK(cudaStreamSynchronize(buf_->comm_stream.s));
  CUDA_CHECK(cudaMemcpy(host, whole.data(), total * sizeof(float), cudaMemcpyDeviceToHost));
#endif
}

double Fsdp::grad_norm_sq() {
  const size_t n = plan_.local_total(rank_);  // the padding between shards is zero
  double local = 0;
  if (model_.device() == Device::CPU) {
    const float* g = buf_->grads;
#pragma omp parallel for reduction(+ : local) schedule(static)
    for (size_t i = 0; i < n; ++i) local += (double)g[i] * (double)g[i];
  } else {
#ifdef ORTHOGPT_CUDA
    double* scratch = buf_->norm_scratch.data();
    gpu::sum_squares(scratch, scratch + 1, buf_->grads, (int64_t)n, stream_of(model_));
    copy_to_host(model_, Device::CUDA, &local, scratch, sizeof(double));
#endif
  }
  return world_ == 1 ? local : host_.all_reduce_scalar(local, ReduceOp::Sum);
}

FsdpMemory Fsdp::memory(ParamGroups& groups) {
  FsdpMemory m;
  m.master = plan_.local_total(rank_) * sizeof(float);
  m.grads = m.master;
  for (const auto& t : groups.state()) m.state += t.bytes();
  m.replicated_master = plan_.layout().total() * sizeof(float);
  m.replicated_grads = m.replicated_master;
  m.replicated_state =
      (size_t)(world_ == 1 ? (double)m.state : host_.all_reduce_scalar((double)m.state, ReduceOp::Sum));
  const bool cuda = model_.device() == Device::CUDA;
  for (const Slot& w : wslot_) m.unit_weights += w.capacity;
  for (const Slot& g : gslot_) m.unit_grads += g.capacity * sizeof(float);
  m.other = scratch_floats_ * sizeof(float) + (cuda ? plan_.local_total(rank_) * 2 : 0);
  m.replicated_model = 2 * m.replicated_master + (cuda ? m.replicated_master / 2 : 0);
  return m;
}

std::string FsdpMemory::describe() const {
  return fmt::format(
      "FSDP memory per rank: {:.2f} MiB = master weight shards {:.2f} + gradient shards {:.2f} + optimizer state "
      "{:.2f} + gathered-unit slots (weights, gradients) {:.2f} + {:.2f} + scratch/bf16 shards {:.2f}; "
      "a replicated (DDP) rank: {:.2f} MiB = model weights/gradients {:.2f} + optimizer state {:.2f}",
      total() / kMiB, master / kMiB, grads / kMiB, state / kMiB, unit_weights / kMiB, unit_grads / kMiB, other / kMiB,
      replicated_total() / kMiB, replicated_model / kMiB, replicated_state / kMiB);
}

// ---- checkpoints ------------------------------------------------------------------------------

void Fsdp::save_checkpoint(const std::string& dir, const CheckpointMeta& meta, ParamGroups& groups) {
  const auto& params = plan_.layout().params();
  std::vector<std::vector<char>> bufs;
  std::vector<NamedTensor> tensors;
  bufs.reserve(params.size() + 64);
  for (size_t p = 0; p < params.size(); ++p) {
    const size_t bytes = (size_t)plan_.rows(p, rank_).rows * params[p].cols * sizeof(float);
    if (bytes == 0) continue;  // no row of this parameter on this rank
    bufs.emplace_back(bytes);
    copy_to_host(model_, model_.device(), bufs.back().data(), buf_->master + plan_.local_offset(p, rank_), bytes);
    tensors.push_back({"params/" + params[p].name, nullptr, bytes});
  }
  for (const StateTensor& t : groups.state()) {
    bufs.emplace_back(t.bytes());
    copy_to_host(model_, t.device, bufs.back().data(), t.data, bufs.back().size());
    tensors.push_back({"optim/" + t.name, nullptr, bufs.back().size()});
  }
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].data = bufs[i].data();
  write_sharded_checkpoint(dir, meta, tensors, host_);
}

void Fsdp::load_checkpoint(const CheckpointReader& ck, ParamGroups& groups) {
  OG_CHECK(ck.sharded(), "--resume {}: written by dist.mode ddp (one state.bin); this run uses dist.mode fsdp",
           ck.dir());
  if (ck.meta().shards == world_)
    load_same_world(ck, groups);
  else
    load_resharded(ck, groups);
  params_updated();
}

void Fsdp::load_same_world(const CheckpointReader& ck, ParamGroups& groups) {
  const TensorFile file(ck.shard_path(rank_), ck.shard_path(rank_));
  const auto& params = plan_.layout().params();
  std::vector<char> host;
  for (size_t p = 0; p < params.size(); ++p) {
    const size_t bytes = (size_t)plan_.rows(p, rank_).rows * params[p].cols * sizeof(float);
    if (bytes == 0) continue;
    host.resize(bytes);
    file.read("params/" + params[p].name, host.data(), bytes);
    copy_from_host(model_, model_.device(), buf_->master + plan_.local_offset(p, rank_), host.data(), bytes);
  }
  for (const StateTensor& t : groups.state()) {
    host.resize(t.bytes());
    file.read("optim/" + t.name, host.data(), host.size());
    copy_from_host(model_, t.device, t.data, host.data(), host.size());
  }
}

// Rows [row0, end) of this rank's shards come from the old ranks whose shards overlap them; old
// rank files are opened one at a time. Row-sharded state (AdamW/Lion moments, Muon/Dion2/Dion
// momentum — rows x cols —, NorMuon/NorDion2's per-row variance, Dion's Q of a wide matrix —
// rows x r) is sliced by rows like the parameter; step counters and replicated state
// (StateTensor::replicated: Dion's Q of a tall matrix) are copied. A world of one runs the
// ordinary optimizers, whose state has the same names and layout.
void Fsdp::load_resharded(const CheckpointReader& ck, ParamGroups& groups) {
  const int old_world = ck.meta().shards;
  const ShardPlan old_plan(plan_.layout(), old_world);
  const auto& params = plan_.layout().params();
  std::map<std::string, size_t> index;
  for (size_t p = 0; p < params.size(); ++p) index[params[p].name] = p;

  // Host staging of this rank's master shards and state tensors.
  std::vector<float> master(plan_.local_total(rank_), 0.0f);
  std::vector<StateTensor> state = groups.state();
  struct Target {
    size_t param;
    bool elementwise;
    size_t row_bytes = 0;  // bytes of one parameter row's state (cols for momentum, 1 for NorMuon's V)
    std::vector<char> host;
    bool filled = false;
  };
  std::vector<Target> targets;
  for (const StateTensor& t : state) {
    if (t.replicated) {  // any old rank's copy (param: unused)
      targets.push_back(Target{0, false, 0, std::vector<char>(t.bytes()), false});
      continue;
    }
    const auto [pname, what] = split_state_name(t.name);
    const auto it = index.find(pname);
    OG_CHECK(it != index.end(), "internal: optimizer state {} names no parameter", t.name);
    const size_t p = it->second;
    const size_t my_rows = (size_t)plan_.rows(p, rank_).rows;
    Target tg{p, what != "step", 0, std::vector<char>(t.bytes()), false};
    if (tg.elementwise) {
      if (t.count == 0) {  // this rank holds no row of p: nothing to fill
        tg.filled = true;
      } else {
        OG_CHECK(my_rows > 0 && t.count % my_rows == 0, "internal: state {} has {} elements for a shard of {} rows",
                 t.name, t.count, my_rows);
        tg.row_bytes = t.bytes() / my_rows;
      }
    }
    targets.push_back(std::move(tg));
  }

  std::vector<char> tmp;
  for (int q = 0; q < old_world; ++q) {
    auto overlap = [&](size_t p) {
      const RowRange a = plan_.rows(p, rank_), b = old_plan.rows(p, q);
      const int64_t lo = std::max(a.row0, b.row0), hi = std::min(a.end(), b.end());
      return RowRange{lo, std::max<int64_t>(0, hi - lo)};
    };
    bool any = false;
    for (size_t p = 0; p < params.size() && !any; ++p) any = overlap(p).rows > 0;
    if (!any) continue;
    const std::string path = ck.shard_path(q);
    const TensorFile file(path, path);
    for (size_t p = 0; p < params.size(); ++p) {
      const RowRange o = overlap(p);
      if (o.rows == 0) continue;
      const size_t cols = params[p].cols;
      const RowRange old = old_plan.rows(p, q), mine = plan_.rows(p, rank_);
      tmp.resize((size_t)old.rows * cols * sizeof(float));
      file.read("params/" + params[p].name, tmp.data(), tmp.size());
      std::memcpy(master.data() + plan_.local_offset(p, rank_) + (size_t)(o.row0 - mine.row0) * cols,
                  tmp.data() + (size_t)(o.row0 - old.row0) * cols * sizeof(float),
                  (size_t)o.rows * cols * sizeof(float));
    }
    for (size_t i = 0; i < state.size(); ++i) {
      Target& tg = targets[i];
      const std::string name = "optim/" + state[i].name;
      if (state[i].replicated) {
        if (!tg.filled) file.read(name, tg.host.data(), tg.host.size());
        tg.filled = true;
        continue;
      }
      const RowRange o = overlap(tg.param);
      if (o.rows == 0) continue;
      if (!tg.elementwise) {
        if (!tg.filled) file.read(name, tg.host.data(), tg.host.size());
        tg.filled = true;
        continue;
      }
      if (tg.host.empty()) continue;
      const size_t row_bytes = tg.row_bytes;
      const RowRange old = old_plan.rows(tg.param, q), mine = plan_.rows(tg.param, rank_);
      tmp.resize((size_t)old.rows * row_bytes);
      file.read(name, tmp.data(), tmp.size());
      std::memcpy(tg.host.data() + (size_t)(o.row0 - mine.row0) * row_bytes,
                  tmp.data() + (size_t)(o.row0 - old.row0) * row_bytes, (size_t)o.rows * row_bytes);
      tg.filled = true;
    }
  }
  copy_from_host(model_, model_.device(), buf_->master, master.data(), master.size() * sizeof(float));
  for (size_t i = 0; i < state.size(); ++i) {
    OG_CHECK(targets[i].filled, "--resume {}: no rank file holds optimizer state {}", ck.dir(), state[i].name);
    copy_from_host(model_, state[i].device, state[i].data, targets[i].host.data(), targets[i].host.size());
  }
}

std::string fsdp_optimizer_signature(const std::vector<GroupSpec>& specs) {
  std::string s = "fsdp;";
  for (const auto& g : specs) s += fmt::format("{}:{}:{};", g.name, name_of(g.hp.algorithm), name_of(g.hp.state_dtype));
  return s;
}

LoaderState resume_loader_state(const CheckpointMeta& meta, int rank, int world, int B, int T) {
  OG_CHECK((int)meta.loaders.size() == meta.world && meta.world > 0,
           "checkpoint: {} data-loader positions recorded for a world of {}", meta.loaders.size(), meta.world);
  if (meta.world == world) return meta.loaders.at(rank);
  LoaderState s = meta.loaders[0];  // rank 0 reads at the step's base position
  s.position += (int64_t)rank * B * T;
  return s;
}

}  // namespace og
