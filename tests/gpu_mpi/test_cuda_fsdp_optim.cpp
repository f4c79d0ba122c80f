// The CUDA matrix optimizers on row shards (FSDP; optim/cuda/sharded_matrix_cuda.h), run under
// mpirun with 2 and 3 ranks, against the CPU row-shard optimizer (sharded_matrix_cpu.cpp, itself
// checked against one process by tests/mpi) on the same shards. Every rank builds the same random
// matrices and per-step averaged gradients and takes its rows of them (uneven splits, and one
// matrix with fewer rows than 3 ranks, so one shard is empty).
// Protocol (as tests/gpu/test_cuda_optim.cpp): before each step the GPU shard's weights are set to
// the CPU's, and the step's update ΔW of each shard is compared by ‖ΔW_gpu − ΔW_cpu‖ / ‖ΔW_cpu‖:
//   ≤ 5e-2  Newton–Schulz in bf16 on the GPU vs the CPU's fp64 (a missing, misplaced or
//           wrongly-owned row block gives ~1)
// State after the steps: momentum 1e-5 (fp32; elementwise on both sides, and for Dion2 with ef
// only if the same rows were selected and decayed), 1e-2 with bf16 state; NorMuon's / NorDion2's
// variance_neuron 1e-1 (a function of the bf16 NS output).
// Dion (fp32 products on both sides; the GPU orthonormalizes the gathered P with another sketch,
// the CPU from summed Gram products): test_cuda_dion.cpp's tolerances, ΔW 1e-3, momentum 1e-5,
// Q 1e-3 (bf16 state: 2e-2, 2e-2, 4e-2).
// Communicators: the host-staged one (any number of ranks on one GPU), and NCCL when every rank
// has a GPU of its own. Without a GPU every test skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/cuda_utils.h"
#include "cpu/optim_test_group.h"
#include "dist/shard_plan.h"
#include "gpu_mpi/gpu_mpi_env.h"
#include "optim/cuda/cuda_optimizer.h"
#include "optim/cuda/sharded_matrix_cuda.h"
#include "optim/distributed_optimizer.h"
#include "optim/distributed_plan.h"
#include "optim/slice_select.h"
#include "tests/mpi/mpi_env.h"

using namespace og;
using og::test::rel_diff;
using og::test::TestGroup;
using og_test::comm;
using og_test::device_backends;
using og_test::device_comm;
using og_test::download_f32;
using og_test::gpu_ready;
using og_test::matrix_hparams;

namespace {

// Uneven row splits over 2 and 3 ranks, wide and tall, the Gram NS path, columns not a multiple
// of 4 (scalar kernels), a 2-row matrix (an empty shard on 3 ranks).
const std::vector<std::pair<int64_t, int64_t>> kShapes = {{64, 96},  {64, 96},   {96, 64}, {37, 48},
                                                          {130, 40}, {128, 128}, {2, 32},  {31, 50}};
constexpr int kSteps = 3;

struct Tolerances {
  double dw = 5e-2;  // ‖ΔW_gpu − ΔW_cpu‖ / ‖ΔW_cpu‖ per shard and step
  // state: momentum and other states, a Dion Q, NorMuon's variance_neuron
  double f32_state = 1e-5, bf16_state = 1e-2, q = 0.0, variance = 1e-1;
};
const Tolerances kNsTol;  // Muon, Dion2 and their normalized variants
Tolerances dion_tol(StateDtype dt) {
  Tolerances t;
  t.dw = dt == StateDtype::F32 ? 1e-3 : 2e-2;
  t.f32_state = 1e-5;
  t.bf16_state = 2e-2;
  t.q = dt == StateDtype::F32 ? 1e-3 : 4e-2;
  return t;
}

std::vector<float> host_f32(const StateTensor& s) {
  std::vector<float> out(s.count);
  for (size_t i = 0; i < s.count; ++i)
    out[i] = s.dtype == StateDtype::F32 ? static_cast<const float*>(s.data)[i]
                                        : float_from_bf16_bits(static_cast<const uint16_t*>(s.data)[i]);
  return out;
}

// This rank's rows of every matrix, on the host (CPU optimizer) and on the GPU.
struct Shards {
  std::vector<RowRange> rr;
  std::vector<std::vector<float>> w, g;  // host
  std::vector<DeviceBuffer<float>> dw, dg;
  std::vector<ParamSlot> host_slots, dev_slots;

  explicit Shards(const TestGroup& h) {
    for (size_t p = 0; p < kShapes.size(); ++p) {
      const auto [R, C] = kShapes[p];
      rr.push_back(split_rows(R, comm().size(), comm().rank()));
      const size_t n = (size_t)rr[p].rows * C;
      w.emplace_back(h.w[p].begin() + rr[p].row0 * C, h.w[p].begin() + rr[p].row0 * C + n);
      g.emplace_back(n);
      dw.emplace_back(std::max<size_t>(n, 1));
      dg.emplace_back(std::max<size_t>(n, 1));
    }
    for (size_t p = 0; p < kShapes.size(); ++p) {
      ParamSlot s = h.slots[p];
      s.row0 = rr[p].row0;
      s.local_rows = rr[p].rows;
      s.w = w[p].data();
      s.g = g[p].data();
      host_slots.push_back(s);
      s.w = dw[p].data();
      s.g = dg[p].data();
      dev_slots.push_back(s);
    }
  }
  // The averaged gradient's rows (host and device); the GPU weights ← the CPU's.
  void prepare_step(const TestGroup& h) {
    for (size_t p = 0; p < kShapes.size(); ++p) {
      const int64_t C = kShapes[p].second;
      std::copy(h.g[p].begin() + rr[p].row0 * C, h.g[p].begin() + rr[p].end() * C, g[p].begin());
      if (g[p].empty()) continue;
      CUDA_CHECK(cudaMemcpy(dg[p].data(), g[p].data(), g[p].size() * 4, cudaMemcpyHostToDevice));
      CUDA_CHECK(cudaMemcpy(dw[p].data(), w[p].data(), w[p].size() * 4, cudaMemcpyHostToDevice));
    }
  }
  std::vector<float> device_w(size_t p) const { return download_f32(dw[p].data(), w[p].size(), StateDtype::F32); }
};

// kSteps steps of the CUDA and the CPU row-shard optimizer (Dion2: select_scope `scope`); returns
// the GPU's comm bytes. With the global scope both select over whole matrices, so each rank's
// selected rows (as global rows) must be the same on both sides too.
// decay: the Dion2 weight-decay placement of the GPU side (nullptr: make_distributed_optimizer's
// default, which the trainer uses).
double check_against_cpu_scope(const OptimHParams& hp, const std::string& what, const std::string& scope,
                               const Tolerances& tol = kNsTol, const CudaOptimOptions::Dion2Decay* decay = nullptr) {
  double bytes = 0.0;
  for (const std::string& b : device_backends()) {
    const std::string tag =
        what + " over " + b + " on " + std::to_string(comm().size()) + " ranks, rank " + std::to_string(comm().rank());
    auto dc = device_comm(b);
    TestGroup h(kShapes, 11);
    Shards sh(h);
    DistributedOptions o;
    o.row_sharded = true;
    o.comm = &comm();
    o.select_scope = scope;
    auto cpu = make_distributed_optimizer(hp, sh.host_slots, Device::CPU, o);
    o.comm = dc.get();
    o.host_comm = &comm();
    std::unique_ptr<Optimizer> gpu;
    if (decay) {
      CudaOptimOptions co;
      co.dion2_decay = *decay;
      gpu = cuda::make_cuda_sharded_matrix(hp, sh.dev_slots, *dc, comm(), scope == "global", co);
    } else {
      gpu = make_distributed_optimizer(hp, sh.dev_slots, Device::CUDA, o);
    }
    double worst = 0.0;  // the largest ΔW error of this rank
    for (int t = 1; t <= kSteps; ++t) {
      h.new_grads(100 + t);  // the same on every rank: the averaged gradient
      sh.prepare_step(h);
      const std::vector<std::vector<float>> before = sh.w;
      gpu->step({t, 0.02f});
      cpu->step({t, 0.02f});
      CUDA_CHECK(cudaDeviceSynchronize());
      for (size_t p = 0; p < kShapes.size(); ++p) {
        if (sh.w[p].empty()) continue;  // an empty shard
        const std::vector<float> got = sh.device_w(p);
        std::vector<float> d_gpu(got.size()), d_cpu(got.size());
        for (size_t i = 0; i < got.size(); ++i) {
          d_gpu[i] = got[i] - before[p][i];
          d_cpu[i] = sh.w[p][i] - before[p][i];
        }
        const double e = rel_diff(d_gpu, d_cpu);
        worst = std::max(worst, e);
        EXPECT_LE(e, tol.dw) << tag << ": step " << t << ", matrix " << p;
      }
      if (scope == "global") {  // every selected row on exactly one rank; random: the single-process draw
        auto* cuda_opt = dynamic_cast<CudaOptimizer*>(gpu.get());
        const auto sel = cuda_opt ? cuda_opt->last_selection() : std::vector<std::vector<int32_t>>{};
        EXPECT_EQ(sel.size(), kShapes.size()) << tag;
        if (sel.size() != kShapes.size()) continue;
        int64_t mine = 0, total = 0;
        for (size_t p = 0; p < kShapes.size(); ++p) {
          const int64_t k = select_count(hp.fraction, kShapes[p].first);
          std::vector<int64_t> got;
          for (int32_t i : sel[p]) got.push_back(sh.rr[p].row0 + i);
          if (hp.select == Select::Random) {
            std::vector<int64_t> draw, want;
            random_k_indices(hp.seed, t, (int64_t)p, kShapes[p].first, k, draw);
            for (int64_t g : draw)
              if (g >= sh.rr[p].row0 && g < sh.rr[p].end()) want.push_back(g);
            EXPECT_EQ(got, want) << tag << ": step " << t << ", matrix " << p;
          }
          mine += (int64_t)got.size();
          total += k;
        }
        EXPECT_EQ(comm().all_reduce_scalar((double)mine, ReduceOp::Sum), (double)total) << tag << ": step " << t;
      }
    }
    const auto sg = gpu->state(), sc = cpu->state();
    EXPECT_EQ(sg.size(), sc.size()) << tag;
    for (size_t i = 0; i < std::min(sg.size(), sc.size()); ++i) {
      EXPECT_EQ(sg[i].name, sc[i].name) << tag;
      EXPECT_EQ(sg[i].count, sc[i].count) << tag << ": " << sg[i].name;
      if (sg[i].count == 0 || sg[i].count != sc[i].count) continue;
      const bool vn = sg[i].name.find("variance_neuron") != std::string::npos;
      const bool q = sg[i].name.size() > 2 && sg[i].name.substr(sg[i].name.size() - 2) == "/Q";
      const double t = vn                                  ? tol.variance
                       : q                                 ? tol.q
                       : hp.state_dtype == StateDtype::F32 ? tol.f32_state
                                                           : tol.bf16_state;
      if (sg[i].device == Device::CPU) {  // a host scalar (Dion's step counter)
        EXPECT_EQ(rel_diff(host_f32(sg[i]), host_f32(sc[i])), 0.0) << tag << ": " << sg[i].name;
        continue;
      }
      EXPECT_LE(rel_diff(download_f32(sg[i].data, sg[i].count, sg[i].dtype), host_f32(sc[i])), t)
          << tag << ": " << sg[i].name;
    }
    worst = comm().all_reduce_scalar(worst, ReduceOp::Max);
    if (comm().rank() == 0)
      std::printf("%-48s %-6s np %d: worst dW error %.2e (tol %.0e)\n", what.c_str(), b.c_str(), comm().size(), worst,
                  tol.dw);
    const auto gs = gpu->stats(), cs = cpu->stats();
    if (cs.count("dion_ef_residual")) {  // diagnostics: the whole matrices' ratio on both sides
      EXPECT_TRUE(gs.count("dion_ef_residual")) << tag;
      if (gs.count("dion_ef_residual"))
        EXPECT_NEAR(gs.at("dion_ef_residual"), cs.at("dion_ef_residual"), 1e-3 * cs.at("dion_ef_residual")) << tag;
    }
    bytes = gs.at("comm_bytes");
    EXPECT_GT(bytes, 0.0) << tag;
  }
  return bytes;
}

double check_against_cpu(const OptimHParams& hp, const std::string& what) {
  return check_against_cpu_scope(hp, what, "local");
}
double check_global_against_cpu(const OptimHParams& hp, const std::string& what) {
  return check_against_cpu_scope(hp, what + " (global scope)", "global");
}

}  // namespace

TEST(CudaFsdpOptim, MuonAndNorMuonMatchTheCpuShards) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  og_test::check_muon_configs(check_against_cpu);
}

TEST(CudaFsdpOptim, Dion2AndNorDion2MatchTheCpuShards) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  og_test::check_dion2_configs(check_against_cpu);
}

// Dion: tall and wide shards (P gathered or all-reduced), an empty shard, QR / randomized
// Cholesky-QR at first and plain Cholesky-QR after a one-step warm-up, rank fractions 0.25 and 1,
// fp32 and bf16 state, diagnostics on (their sums all-reduced).
TEST(CudaFsdpOptim, DionMatchesTheCpuShards) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  OptimHParams hp = matrix_hparams(Algorithm::Dion);
  hp.diagnostics = true;
  check_against_cpu_scope(hp, "dion", "local", dion_tol(hp.state_dtype));
  hp.cqr_warmup_steps = 1;
  hp.rank_fraction = 1.0f;
  check_against_cpu_scope(hp, "dion cqr after 1 step, rank fraction 1", "local", dion_tol(hp.state_dtype));
  hp = matrix_hparams(Algorithm::Dion);
  hp.state_dtype = StateDtype::BF16;
  hp.rank_fraction = 0.5f;
  check_against_cpu_scope(hp, "dion bf16 state, rank fraction 0.5", "local", dion_tol(hp.state_dtype));
}

TEST(CudaFsdpOptim, Dion2BytesScaleWithFraction) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  og_test::check_dion2_bytes_fall_with_fraction(check_against_cpu);
}

// select_scope: global — the single-process selection over whole matrices (norms all-gathered;
// random draws need no exchange) against the CPU's global scope, rows and updates.
TEST(CudaFsdpOptim, Dion2AndNorDion2GlobalScopeMatchTheCpuShards) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  og_test::check_dion2_configs(check_global_against_cpu);
}

// The other weight-decay placement (dion2_decay SplitRows: the unselected rows decayed on a side
// stream, the selected ones after the exchange), both scopes.
TEST(CudaFsdpOptim, Dion2SplitRowsDecayMatchesTheCpuShards) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  const auto split = CudaOptimOptions::Dion2Decay::SplitRows;
  for (const char* scope : {"local", "global"})
    og_test::check_dion2_configs([&](const OptimHParams& hp, const std::string& what) {
      return check_against_cpu_scope(hp, what + " (split rows, " + scope + " scope)", scope, kNsTol, &split);
    });
}
