// The DDP and FSDP optimizer step across GPUs: `mpirun -np W bench_optim_ddp`, one rank per GPU, NCCL.
// Every rank holds the whole matrix set (replicated parameters, as under DDP after the gradient
// all-reduce). Per case, on every rank at once:
//   1 GPU    the single-process step (make_cuda_optimizer, no communicator): every rank does all
//            of the work, as the CUDA path did before the owner split;
//   W GPUs   the owner split (make_distributed_optimizer over NCCL with dist.owner_split on,
//            optim/cuda/owner_split.h): each matrix orthonormalized on one rank, one all-gather of
//            the bf16 results;
//   auto     what dist.owner_split auto picks for the case (owner_split_pays): split or the
//            replicated single-GPU step.
//   FSDP     the row-shard step (make_distributed_optimizer with row_sharded, NCCL;
//            optim/cuda/sharded_matrix_cuda.h): each rank holds rows [row0, row0 + n) of every
//            matrix (dist/shard_plan.h's split) and its momentum; two bf16 all-to-alls per step.
// A step's time is the slowest rank's (CUDA events on the optimizer stream; the ranks line up on
// a host barrier before every step); the table shows the median over --steps steps after 3
// warm-up steps, the speed-up, and the bytes each rank sends per step (the all-gather, by the
// ring formula: (W − 1) · block · 2 B). Then rank 0's per-phase breakdown of the split step
// (profile_phases: groups in sequence), whose "all-gather" row is the communication time.
//
// --fig1: the Dion2 paper's Figure 1 micro-benchmark instead (issue 7): the hidden matrices of a
// 4-layer GPT of model dimension d (--dims, default 1024,2048,4096,8192) row-sharded over the W
// ranks (FSDP), the optimizer step time averaged over the last 20 of --steps (default 100) steps
// (slowest rank per step, no warm-up beyond the 80 untimed), for Muon and Dion2 α = 0.5, 0.25,
// 0.125 with ℓ1 and random selection, with each case's ratio to Muon at the same d and the bytes
// each rank sends per step.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/cuda_utils.h"
#include "core/error.h"
#include "dist/bootstrap.h"
#include "dist/nccl_communicator.h"
#include "dist/shard_plan.h"
#include "matrix_set.cuh"
#include "optim/cuda/cuda_optimizer.h"
#include "optim/distributed_optimizer.h"
#include "optim/distributed_plan.h"

using namespace og;
using og::bench::MatrixSet;
using og::bench::median_of;

namespace {

struct Case {
  std::string label;
  MatrixSet* set;
  OptimHParams hp;
};

OptimHParams hp_of(Algorithm a, float fraction = 0.25f, Select sel = Select::L1) {
  OptimHParams hp;
  hp.algorithm = a;
  hp.weight_decay = 0.01f;
  hp.nesterov = a == Algorithm::Muon;
  hp.fraction = fraction;
  hp.select = sel;
  return hp;
}

// The slowest rank's time (ms) of each of `steps` steps after `warmup` untimed ones.
std::vector<double> step_times(Optimizer& opt, cudaStream_t s, int steps, Communicator& host, int warmup) {
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  int64_t t = 1;
  for (int i = 0; i < warmup; ++i) opt.step({t++, 1e-4f});
  CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    host.barrier();
    CUDA_CHECK(cudaEventRecord(e0, s));
    opt.step({t++, 1e-4f});
    CUDA_CHECK(cudaEventRecord(e1, s));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float x = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&x, e0, e1));
    double worst = x;
    host.all_reduce(&worst, 1, ReduceOp::Max);
    ms.push_back(worst);
  }
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  return ms;
}

// Median over the steps of the slowest rank's step time (ms), after 3 warm-up steps.
double time_steps(Optimizer& opt, cudaStream_t s, int steps, Communicator& host) {
  return median_of(step_times(opt, s, steps, host, 3));
}

// A result table printed by rank 0 as its rows come, then again whole under "==== summary ====".
struct RankZeroTable {
  int rank = 0;
  std::string header;
  std::vector<std::string> rows;
  void add(std::string row) {
    if (rank == 0) {
      fmt::print("{}", row);
      std::fflush(stdout);
    }
    rows.push_back(std::move(row));
  }
  void summary() const {
    if (rank != 0) return;
    fmt::print("\n==== summary ====\n{}", header);
    for (const auto& r : rows) fmt::print("{}", r);
  }
};

// This rank's row shards (dist/shard_plan.h's split) of whole matrices.
// Bytes this rank sent in its last step; 0 in a world of one, where the distributed optimizer
// is the single-GPU one and reports no comm_bytes.
double comm_bytes(const Optimizer& opt) {
  const auto st = opt.stats();
  const auto it = st.find("comm_bytes");
  return it == st.end() ? 0.0 : it->second;
}

std::vector<ParamSlot> row_shards(std::vector<ParamSlot> slots, int W, int rank) {
  for (ParamSlot& s : slots) {
    const RowRange rr = split_rows(s.rows, W, rank);
    s.w += rr.row0 * s.cols;
    s.g += rr.row0 * s.cols;
    s.row0 = rr.row0;
    s.local_rows = rr.rows;
  }
  return slots;
}

// --fig1 (see the top): one table row per (d, case).
void figure1(const DistContext& ctx, Communicator& nccl, cudaStream_t stream, const std::vector<int64_t>& dims,
             int steps, const std::string& only) {
  const int W = ctx.world;
  const int tail = std::min(steps, 20);
  RankZeroTable table{ctx.rank,
                      fmt::format("{:>6} {:<24} {:>12} {:>10} {:>10} {:>12}\n", "d", "case",
                                  fmt::format("ms (last {})", tail), "median", "/ muon", "MB/step/rank"),
                      {}};
  if (ctx.rank == 0) {
    fmt::print(
        "figure 1: 4-layer GPT hidden matrices, FSDP row shards over {} GPUs, {} steps, mean of the last {}\n\n{}", W,
        steps, tail, table.header);
    std::fflush(stdout);
  }
  for (int64_t d : dims) {
    MatrixSet set(fmt::format("d{}", d), 4, d);
    const std::vector<ParamSlot> shards = row_shards(set.slots, W, ctx.rank);
    std::vector<std::pair<std::string, OptimHParams>> cases = {{"muon", hp_of(Algorithm::Muon)}};
    for (float a : {0.5f, 0.25f, 0.125f})
      for (Select sel : {Select::L1, Select::Random})
        cases.push_back({fmt::format("dion2 a={} {}", a, name_of(sel)), hp_of(Algorithm::Dion2, a, sel)});
    double muon = 0.0;
    for (const auto& [label, hp] : cases) {
      if (!only.empty() && label != "muon" && label.find(only) == std::string::npos) continue;
      DistributedOptions o;
      o.comm = &nccl;
      o.host_comm = &*ctx.host_comm;
      o.row_sharded = true;
      auto opt = make_distributed_optimizer(hp, shards, Device::CUDA, o);
      dynamic_cast<CudaOptimizer&>(*opt).set_stream(stream);
      const std::vector<double> ms = step_times(*opt, stream, steps, *ctx.host_comm, 0);
      double mean = 0.0;
      for (size_t i = ms.size() - (size_t)tail; i < ms.size(); ++i) mean += ms[i] / tail;
      if (label == "muon") muon = mean;
      const double bytes = comm_bytes(*opt);
      table.add(fmt::format("{:>6} {:<24} {:>12.3f} {:>10.3f} {:>9.3f}x {:>12.1f}\n", d, label, mean, median_of(ms),
                            muon > 0.0 ? mean / muon : 0.0, bytes / 1e6));
    }
  }
  table.summary();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"orthogpt DDP optimizer step benchmark (mpirun -np W, one GPU per rank)"};
  int steps = 20;
  bool big = true, fig1 = false;
  std::vector<int64_t> dims = {1024, 2048, 4096, 8192};
  std::string only;
  app.add_option("--steps", steps, "timed steps per case (after 3 warm-up steps)")->check(CLI::Range(1, 10000));
  app.add_option("--only", only, "run only the cases whose label contains this text");
  app.add_flag("!--no-1b", big, "skip the 1B matrix set");
  app.add_flag("--fig1", fig1, "the Dion2 paper's Figure 1 micro-benchmark (FSDP, 4 layers, --dims; --steps 100)");
  app.add_option("--dims", dims, "--fig1: the model dimensions")->delimiter(',')->check(CLI::Range(64, 65536));
  CLI11_PARSE(app, argc, argv);
  DistContext ctx = init_distributed(&argc, &argv);
  int rc = 0;
  try {
    int ngpu = 0;
    if (cuda_available()) CUDA_CHECK(cudaGetDeviceCount(&ngpu));
    int ok = ngpu >= ctx.local_world ? 1 : 0;
    ctx.host_comm->all_reduce(&ok, 1, DType::I32, ReduceOp::Min);
    if (!ok) {
      if (ctx.rank == 0)
        fmt::print("bench_optim_ddp: needs one GPU per rank ({} ranks on this node, {} GPUs): nothing measured\n",
                   ctx.local_world, ngpu);
      finalize_distributed(ctx);
      return 0;
    }
    CUDA_CHECK(cudaSetDevice(ctx.local_rank));
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    auto nccl = make_nccl_communicator(*ctx.host_comm, stream, 300.0);
    const int W = ctx.world;
    if (fig1) {
      figure1(ctx, *nccl, stream, dims, app.count("--steps") ? steps : 100, only);
      nccl_synchronize(*nccl);
      finalize_distributed(ctx);
      return 0;
    }

    MatrixSet m160("160M", 12, 768);
    std::unique_ptr<MatrixSet> m1b;
    if (big) m1b = std::make_unique<MatrixSet>("1B", 16, 2048);
    std::vector<Case> cases;
    for (MatrixSet* set : {&m160, m1b.get()}) {
      if (!set) continue;
      cases.push_back({set->name + " muon", set, hp_of(Algorithm::Muon)});
      cases.push_back({set->name + " normuon", set, hp_of(Algorithm::NorMuon)});
      for (float a : {0.5f, 0.25f, 0.125f})
        for (Select sel : {Select::L1, Select::Random})
          cases.push_back(
              {fmt::format("{} dion2 a={} {}", set->name, a, name_of(sel)), set, hp_of(Algorithm::Dion2, a, sel)});
    }
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, ctx.local_rank));
    RankZeroTable table{ctx.rank, "", {}};
    table.header =
        fmt::format("{:<28} {:>10} {:>10} {:>8} {:>12} {:>10} {:>10} {:>8} {:>12}\n", "case", "1 GPU ms",
                    fmt::format("{} GPUs ms", W), "speedup", "MB/step/rank", "auto", "FSDP ms", "speedup", "FSDP MB");
    if (ctx.rank == 0) {
      fmt::print("devices: {} x {}; {} timed steps per case; slowest rank per step, median\n\n{}", W, prop.name, steps,
                 table.header);
      std::fflush(stdout);
    }
    for (const Case& c : cases) {
      if (!only.empty() && c.label.find(only) == std::string::npos) continue;
      CudaOptimOptions single;
      single.stream = stream;
      double one = 0.0, many = 0.0, bytes = 0.0;
      {
        auto opt = make_cuda_optimizer(c.hp, c.set->slots, single);
        one = time_steps(*opt, stream, steps, *ctx.host_comm);
      }
      {
        DistributedOptions o;
        o.comm = nccl.get();
        o.owner_split = "on";
        auto opt = make_distributed_optimizer(c.hp, c.set->slots, Device::CUDA, o);
        dynamic_cast<CudaOptimizer&>(*opt).set_stream(stream);
        many = time_steps(*opt, stream, steps, *ctx.host_comm);
        bytes = comm_bytes(*opt);
      }
      double fsdp = 0.0, fsdp_bytes = 0.0;
      {
        const std::vector<ParamSlot> shards = row_shards(c.set->slots, W, ctx.rank);
        DistributedOptions o;
        o.comm = nccl.get();
        o.host_comm = &*ctx.host_comm;
        o.row_sharded = true;
        auto opt = make_distributed_optimizer(c.hp, shards, Device::CUDA, o);
        dynamic_cast<CudaOptimizer&>(*opt).set_stream(stream);
        fsdp = time_steps(*opt, stream, steps, *ctx.host_comm);
        fsdp_bytes = comm_bytes(*opt);
      }
      table.add(fmt::format("{:<28} {:>10.3f} {:>10.3f} {:>7.2f}x {:>12.1f} {:>10} {:>10.3f} {:>7.2f}x {:>12.1f}\n",
                            c.label, one, many, one / many, bytes / 1e6,
                            owner_split_pays(c.hp, c.set->slots) ? "split" : "replicated", fsdp, one / fsdp,
                            fsdp_bytes / 1e6));
    }
    table.summary();
    if (ctx.rank == 0) {
      fmt::print("\n==== per-phase breakdown of the split step (rank 0, groups in sequence, median ms) ====\n");
    }
    for (const Case& c : cases) {
      if (c.label.find("a=0.5") != std::string::npos || c.label.find("random") != std::string::npos ||
          c.label.find("normuon") != std::string::npos)
        continue;
      if (!only.empty() && c.label.find(only) == std::string::npos) continue;
      CudaOptimOptions prof;
      prof.stream = stream;
      prof.profile_phases = true;
      prof.ddp_comm = nccl.get();
      auto opt = make_cuda_optimizer(c.hp, c.set->slots, prof);
      int64_t t = 1;
      std::map<std::string, std::vector<double>> per;
      std::vector<std::string> order;
      for (int i = 0; i < 3 + steps; ++i) {
        ctx.host_comm->barrier();
        opt->step({t++, 1e-4f});
        for (const auto& [name, ms] : opt->last_phase_ms()) {
          if (i < 3) continue;
          if (!per.count(name)) order.push_back(name);
          per[name].push_back(ms);
        }
      }
      if (ctx.rank == 0) {
        fmt::print("{}\n", c.label);
        for (const auto& name : order) fmt::print("    {:<20} {:>9.3f}\n", name, median_of(per[name]));
        std::fflush(stdout);
      }
    }
    nccl_synchronize(*nccl);
  } catch (const Error& e) {
    fmt::print(stderr, "bench_optim_ddp: rank {}: {}\n", ctx.rank, e.what());
    rc = 1;
  }
  finalize_distributed(ctx);
  return rc;
}
