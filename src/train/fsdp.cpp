// FSDP step mechanics, shard checkpoints and the memory report (see fsdp.h).
#include "train/fsdp.h"

#include <algorithm>
#include <cstring>
#include <map>

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

// The shard buffers, on the model's device: master weights and gradients (plan local_total
// floats each, zero padding between shards) and, on CUDA, the grad-norm scratch.
struct Fsdp::Buffers {
  std::vector<float> host_master, host_grads;
#ifdef ORTHOGPT_CUDA
  DeviceBuffer<float> dev_master, dev_grads;
  DeviceBuffer<double> norm_scratch;  // result, then gpu::kSumSquaresPartials partials
#endif
  float* master = nullptr;
  float* grads = nullptr;
};

Fsdp::Fsdp(DistContext& dist, Model& model, const DistSection& cfg)
    : model_(model),
      host_(*dist.host_comm),
      cfg_(cfg),
      plan_(model.layout(), dist.world),
      rank_(dist.rank),
      world_(dist.world),
      buf_(std::make_unique<Buffers>()) {
  const size_t n = plan_.local_total(rank_);
  if (model.device() == Device::CPU) {
    buf_->host_master.assign(n, 0.0f);
    buf_->host_grads.assign(n, 0.0f);
    buf_->master = buf_->host_master.data();
    buf_->grads = buf_->host_grads.data();
    return;
  }
#ifdef ORTHOGPT_CUDA
  buf_->dev_master.resize(n);
  buf_->dev_grads.resize(n);
  buf_->norm_scratch.resize(1 + gpu::kSumSquaresPartials);
  CUDA_CHECK(cudaMemset(buf_->dev_master.data(), 0, n * sizeof(float)));
  CUDA_CHECK(cudaMemset(buf_->dev_grads.data(), 0, n * sizeof(float)));
  CUDA_CHECK(cudaDeviceSynchronize());  // the memsets ran on the legacy stream; later copies use the model's
  buf_->master = buf_->dev_master.data();
  buf_->grads = buf_->dev_grads.data();
  if (world_ > 1) {
#ifdef ORTHOGPT_NCCL
    device_comm_ = make_nccl_communicator(host_, stream_of(model), cfg.timeout_s);
#else
    fail("dist.mode fsdp with train.device cuda on {} ranks needs NCCL, and this orthogpt was built without it",
         world_);
#endif
  }
#else
  fail("train.device cuda: this orthogpt was built without CUDA");
#endif
}

Fsdp::~Fsdp() = default;

std::string Fsdp::backend() const {
  if (world_ == 1) return "local copies (one rank)";
  return device_comm_ ? device_comm_->backend() : host_.backend();
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
  const auto& params = plan_.layout().params();
  for (size_t p = 0; p < params.size(); ++p) {
    const RowRange rr = plan_.rows(p, rank_);
    copy_on_device(model_, buf_->master + plan_.local_offset(p, rank_),
                   model_.params() + params[p].offset + (size_t)rr.row0 * params[p].cols,
                   (size_t)rr.rows * params[p].cols * sizeof(float));
  }
}

namespace {
// Ring bytes per rank of a variable-size collective, counted as its padded equal-block form
// (each block max(counts) elements: what the host backends move; NCCL's grouped form moves less).
double padded_block_bytes(CollectiveKind kind, const std::vector<size_t>& counts, int world) {
  size_t m = 0;
  for (size_t c : counts) m = std::max(m, c);
  return ring_bytes_per_rank(kind, m, DType::F32, world);
}
}  // namespace

void Fsdp::gather_params() {
  const auto& params = plan_.layout().params();
  Communicator& comm = device_comm_ ? *device_comm_ : host_;
  {
    CollectiveGroup group(comm);  // NCCL: every parameter's gather in one launch
    for (size_t p = 0; p < params.size(); ++p) {
      float* whole = model_.params() + params[p].offset;
      const float* mine = buf_->master + plan_.local_offset(p, rank_);
      if (world_ == 1) {
        copy_on_device(model_, whole, mine, params[p].numel() * sizeof(float));
        continue;
      }
      comm.all_gatherv(mine, whole, plan_.counts(p), DType::F32);
      last_bytes_ += padded_block_bytes(CollectiveKind::AllGather, plan_.counts(p), world_);
    }
  }
#if defined(ORTHOGPT_CUDA) && defined(ORTHOGPT_NCCL)
  if (device_comm_) nccl_synchronize(*device_comm_);  // with the timeout: a dead peer is an error
#endif
  model_.params_changed();
}

void Fsdp::reduce_gradients() {
  last_bytes_ = 0;  // a step's traffic: this reduce-scatter and the all-gather after the optimizer
  const auto& params = plan_.layout().params();
  Communicator& comm = device_comm_ ? *device_comm_ : host_;
  {
    CollectiveGroup group(comm);  // NCCL: every parameter's reduce-scatter in one launch
    for (size_t p = 0; p < params.size(); ++p) {
      const float* whole = model_.grads() + params[p].offset;
      float* mine = buf_->grads + plan_.local_offset(p, rank_);
      if (world_ == 1) {
        copy_on_device(model_, mine, whole, params[p].numel() * sizeof(float));
        continue;
      }
      comm.reduce_scatterv(whole, mine, plan_.counts(p), DType::F32, ReduceOp::Avg);
      last_bytes_ += padded_block_bytes(CollectiveKind::ReduceScatter, plan_.counts(p), world_);
    }
  }
#if defined(ORTHOGPT_CUDA) && defined(ORTHOGPT_NCCL)
  if (device_comm_) nccl_synchronize(*device_comm_);
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
  m.model_compute = 2 * m.replicated_master + (model_.device() == Device::CUDA ? m.replicated_master / 2 : 0);
  return m;
}

std::string FsdpMemory::describe() const {
  return fmt::format(
      "FSDP memory per rank: master weights {:.2f} MiB, gradient shards {:.2f} MiB, optimizer state {:.2f} MiB "
      "(replicated: {:.2f} / {:.2f} / {:.2f} MiB); not sharded yet: the model's full compute weights and gradients "
      "{:.2f} MiB",
      master / kMiB, grads / kMiB, state / kMiB, replicated_master / kMiB, replicated_grads / kMiB,
      replicated_state / kMiB, model_compute / kMiB);
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
  gather_params();
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
