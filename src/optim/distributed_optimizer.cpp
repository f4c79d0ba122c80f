// make_distributed_optimizer: validate the combination, then pick the path (see
// distributed_optimizer.h for what each path computes).
#include "optim/distributed_optimizer.h"

#include "core/error.h"
#include "optim/cpu_optimizers.h"
#include "optim/dion.h"
#include "optim/distributed_cpu.h"
#include "optim/distributed_plan.h"
#ifdef ORTHOGPT_CUDA
#include "optim/cuda/cuda_optimizer.h"
#include "optim/cuda/dion_cuda.h"
#include "optim/cuda/sharded_matrix_cuda.h"
#endif

namespace og {
namespace {

// A row shard as a matrix of its own (local_rows x cols): what elementwise algorithms need.
// Empty shards (more ranks than rows) are dropped.
std::vector<ParamSlot> shards_as_matrices(const std::vector<ParamSlot>& params) {
  std::vector<ParamSlot> out;
  for (ParamSlot s : params) {
    if (s.shard_rows() == 0) continue;
    s.rows = s.shard_rows();
    s.row0 = 0;
    s.local_rows = -1;
    out.push_back(s);
  }
  return out;
}

// make_optimizer's checks on the whole shapes (an empty shard has no buffers: stand-ins for the check).
void validate_group(const OptimHParams& hp, const std::vector<ParamSlot>& params) {
  static float stand_in = 0.0f;
  std::vector<ParamSlot> check = params;
  for (ParamSlot& s : check) {
    OG_CHECK(s.shard_rows() >= 0 && s.row0 >= 0 && s.row0 + s.shard_rows() <= s.rows,
             "fsdp: parameter '{}' ({} rows) has the row shard [{}, {})", s.name, s.rows, s.row0,
             s.row0 + s.shard_rows());
    if (s.shard_rows() == 0) s.w = &stand_in, s.g = &stand_in;
  }
  validate_optimizer(hp, check);
}

}  // namespace

std::unique_ptr<Optimizer> make_distributed_optimizer(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                      Device device, const DistributedOptions& opt) {
  OG_CHECK(opt.comm != nullptr, "internal: make_distributed_optimizer without a communicator");
  const int W = opt.comm->size();
  const Algorithm a = hp.algorithm;
  const bool selective = a == Algorithm::Dion2 || a == Algorithm::NorDion2;
  OG_CHECK(opt.select_scope == "local" || opt.select_scope == "global",
           "dist.select_scope: '{}' is not one of: local, global", opt.select_scope);
  OG_CHECK(opt.owner_split == "auto" || opt.owner_split == "on" || opt.owner_split == "off",
           "dist.owner_split: '{}' is not one of: auto, on, off", opt.owner_split);
  if (opt.compressed_sync) {
    OG_CHECK(!opt.row_sharded, "dist.compressed_sync: only for replicated parameters (dist.mode ddp), not fsdp");
    OG_CHECK(a == Algorithm::Dion2 && hp.select == Select::Random,
             "dist.compressed_sync: needs optim.matrix.algorithm dion2 with select random (got {}{}): the ranks must "
             "select the same slices without seeing each other's momentum",
             name_of(a), selective ? fmt::format(", select {}", name_of(hp.select)) : std::string());
  }
  if (opt.row_sharded && selective)
    OG_CHECK(hp.select_dim != SelectDim::Cols,
             "optim.matrix.select_dim: cols is not possible under fsdp: parameters are sharded by rows and {} "
             "selects along the sharded dimension (use rows or shorter)",
             name_of(a));
  validate_group(hp, params);

  if (W == 1) {
    for (const ParamSlot& s : params)
      OG_CHECK(s.row0 == 0 && s.shard_rows() == s.rows, "fsdp: parameter '{}' is a row shard in a world of one",
               s.name);
    return make_optimizer(hp, std::move(params), device);
  }
  if (!is_matrix_algorithm(a))
    return make_optimizer(hp, opt.row_sharded ? shards_as_matrices(params) : std::move(params), device);
  if (a == Algorithm::Dion) {
    // Replicated: every rank runs the same Dion step on the same averaged gradient (correct, not
    // work-split). Row shards: the low-rank factors' sums are all-reduced, M never moves (dion.cpp).
    // CUDA row shards: the same rules, the collectives on the device communicator (dion_cuda.cu).
    if (!opt.row_sharded) return make_optimizer(hp, std::move(params), device);
    if (device == Device::CPU) return make_dion_cpu(hp, std::move(params), opt.comm);
#ifdef ORTHOGPT_CUDA
    OG_CHECK(opt.host_comm != nullptr, "internal: dion under fsdp on cuda without a host communicator");
    return cuda::make_cuda_dion_sharded(hp, std::move(params), *opt.comm, *opt.host_comm);
#else
    fail("dion: this build has no CUDA support");
#endif
  }
  if (device == Device::CUDA) {
    // The CUDA path. Row shards: optim/cuda/sharded_matrix_cuda.h. Replicated parameters: each
    // matrix orthonormalized by one owner rank, the results all-gathered over the device
    // communicator (optim/cuda/owner_split.h).
#ifdef ORTHOGPT_CUDA
    if (opt.row_sharded) {
      OG_CHECK(opt.host_comm != nullptr, "internal: {} under fsdp on cuda without a host communicator", name_of(a));
      return cuda::make_cuda_sharded_matrix(hp, std::move(params), *opt.comm, *opt.host_comm,
                                            opt.select_scope == "global");
    }
#endif
    const bool split = opt.owner_split == "on" || (opt.owner_split == "auto" && owner_split_pays(hp, params));
    if (!split && !opt.compressed_sync) return make_optimizer(hp, std::move(params), device);
#ifdef ORTHOGPT_CUDA
    OG_CHECK(opt.comm->device_buffers(), "{} on cuda across {} ranks needs a device communicator (nccl), got '{}'",
             name_of(a), W, opt.comm->backend());
    CudaOptimOptions o;
    if (split) o.ddp_comm = opt.comm;
    if (opt.compressed_sync) o.compressed_sync_comm = opt.comm;  // Dion2 random (checked above)
    return make_cuda_optimizer(hp, std::move(params), o);
#else
    fail("{}: this build has no CUDA support", name_of(a));
#endif
  }
  if (opt.row_sharded) return make_sharded_matrix_cpu(hp, std::move(params), *opt.comm, opt.select_scope == "global");
  if (opt.owner_split == "off" && !opt.compressed_sync) return make_optimizer(hp, std::move(params), device);
  return make_replicated_matrix_cpu(hp, std::move(params), *opt.comm, opt.compressed_sync);
}

}  // namespace og
