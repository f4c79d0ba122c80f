// The CUDA matrix optimizers across DDP ranks (optim/cuda/owner_split.h), run under mpirun with 2
// and 3 ranks: every rank builds the same random matrices and per-step gradients (the trainer's
// averaged gradient is the same on every rank), runs make_distributed_optimizer on the GPU and
// the single-process make_optimizer on the same inputs, and compares.
//  - weights: bit-identical on all ranks (every rank applies the same all-gathered results), and
//    equal to one process within max|Δw| / max|w| < 1e-4. Not bit-identical to one process: each
//    owner runs Newton–Schulz on a smaller batch, for which cuBLASLt may pick another kernel (bf16
//    results one rounding apart); one bf16 ulp of O moves w by ~lr·|O|·2⁻⁸ ≈ 1e-5 of max|w|,
//    while a missing or misplaced update would be ~lr·|O| ≈ 5e-3 of it.
//  - momentum: bit-identical to one process (elementwise, the same kernels on every matrix).
//  - bytes: the all-gather's, > 0, and for Dion2 smaller with a smaller fraction.
// Communicators: the host-staged one (any number of ranks on one GPU), and NCCL when every rank
// has a GPU of its own. Without a GPU every test skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/cuda_utils.h"
#include "cpu/optim_test_group.h"
#include "gpu/device_test_group.h"
#include "gpu_mpi/gpu_mpi_env.h"
#include "optim/cuda/cuda_optimizer.h"
#include "optim/cuda/owner_split.h"
#include "optim/distributed_optimizer.h"
#include "optim/distributed_plan.h"
#include "tests/mpi/mpi_env.h"

using namespace og;
using og::test::DeviceTestGroup;
using og::test::TestGroup;
using og_test::comm;
using og_test::device_backends;
using og_test::device_comm;
using og_test::download_f32;
using og_test::gpu_ready;
using og_test::matrix_hparams;

namespace {

// Same-shape groups whose counts do not divide 2 or 3, wide and tall of one slice shape (Dion2
// batches them together), the Gram NS path (long side ≥ 2× the short one), columns not a
// multiple of 4 (scalar kernels).
const std::vector<std::pair<int64_t, int64_t>> kShapes = {{64, 96},   {64, 96},  {96, 64},  {64, 96}, {96, 64},
                                                          {128, 128}, {48, 160}, {128, 40}, {30, 50}};
constexpr int kSteps = 3;
constexpr double kTol = 1e-4;

struct Result {
  std::vector<std::vector<float>> w, momentum;
  double comm_bytes = 0.0;
};

// The gradients of step t: the same on every rank (the trainer's averaged gradient).
void averaged_grads(TestGroup& h, int t) { h.new_grads(100 + t); }
// Compressed sync: every rank's own gradient (not averaged) ...
void local_grads(TestGroup& h, int t) { h.new_grads(1000 * (uint64_t)(comm().rank() + 1) + t); }
// ... and their rank average, for the single-process reference.
void mean_of_local_grads(TestGroup& h, int t) {
  std::vector<std::vector<double>> sum(h.g.size());
  for (size_t p = 0; p < h.g.size(); ++p) sum[p].assign(h.g[p].size(), 0.0);
  const int W = comm().size();
  for (int r = 0; r < W; ++r) {
    h.new_grads(1000 * (uint64_t)(r + 1) + t);
    for (size_t p = 0; p < h.g.size(); ++p)
      for (size_t i = 0; i < h.g[p].size(); ++i) sum[p][i] += h.g[p][i];
  }
  for (size_t p = 0; p < h.g.size(); ++p)
    for (size_t i = 0; i < h.g[p].size(); ++i) h.g[p][i] = (float)(sum[p][i] / W);
}

// kSteps steps of the distributed (dc != nullptr) or single-process optimizer on the GPU, on the
// gradients `grads` gives. compressed: dist.compressed_sync (the momenta are synchronized after
// the last step, before they are read).
Result run(const OptimHParams& hp, Communicator* dc, void (*grads)(TestGroup&, int) = averaged_grads,
           bool compressed = false, const std::string& owner_split = "on") {
  TestGroup h(kShapes, 11);
  DeviceTestGroup d(h);
  const std::vector<ParamSlot>& slots = d.slots;
  std::unique_ptr<Optimizer> opt;
  if (dc) {
    DistributedOptions o;
    o.comm = dc;
    o.owner_split = owner_split;  // auto would keep these small matrices replicated (owner_split_pays)
    o.compressed_sync = compressed;
    opt = make_distributed_optimizer(hp, slots, Device::CUDA, o);
  } else {
    opt = make_optimizer(hp, slots, Device::CUDA);
  }
  Result r;
  for (int t = 1; t <= kSteps; ++t) {
    grads(h, t);
    d.upload_grads(h);
    opt->step({t, 0.02f});
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto st = opt->stats();
    if (st.count("comm_bytes")) r.comm_bytes = st.at("comm_bytes");
  }
  r.w = d.weights();
  if (compressed) {
    opt->synchronize_state();
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  for (const StateTensor& s : opt->state())
    if (s.name.find("/momentum") != std::string::npos) r.momentum.push_back(download_f32(s.data, s.count, s.dtype));
  return r;
}

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, (double)std::fabs(a[i] - b[i]));
    den = std::max(den, (double)std::fabs(b[i]));
  }
  return num / den;
}

void expect_same_on_all_ranks(const std::vector<float>& v, const std::string& what) {
  std::vector<float> mx = v, mn = v;
  comm().all_reduce(mx.data(), mx.size(), DType::F32, ReduceOp::Max);
  comm().all_reduce(mn.data(), mn.size(), DType::F32, ReduceOp::Min);
  EXPECT_EQ(mx, mn) << what << " differs between ranks";
}

// One configuration against one process, on every available backend.
double check_against_single(const OptimHParams& hp, const std::string& what) {
  const Result ref = run(hp, nullptr);
  double bytes = 0.0;
  for (const std::string& b : device_backends()) {
    auto dc = device_comm(b);
    const Result got = run(hp, dc.get());
    const std::string tag = what + " over " + b + " on " + std::to_string(comm().size()) + " ranks";
    EXPECT_EQ(got.momentum.size(), ref.momentum.size()) << tag;
    if (got.momentum.size() != ref.momentum.size()) return 0.0;
    for (size_t i = 0; i < ref.w.size(); ++i) {
      EXPECT_LT(max_rel(got.w[i], ref.w[i]), kTol) << tag << ", matrix " << i;
      expect_same_on_all_ranks(got.w[i], tag + ": weights of matrix " + std::to_string(i));
      EXPECT_EQ(got.momentum[i], ref.momentum[i]) << tag << ": momentum of matrix " << i;
    }
    EXPECT_GT(got.comm_bytes, 0.0) << tag;
    EXPECT_EQ(ref.comm_bytes, 0.0) << tag;
    bytes = got.comm_bytes;
  }
  return bytes;
}

}  // namespace

TEST(CudaDdpOptim, OwnerSplitCoversEveryMatrixOnce) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  const int W = comm().size();
  // three groups: 5 of one shape, 1 of another, 3 of a third (matrix indices interleaved)
  const std::vector<std::vector<int32_t>> groups = {{0, 2, 4, 6, 8}, {1}, {3, 5, 7}};
  const std::vector<int64_t> rows = {64, 128, 48}, cols = {96, 128, 160};
  auto dc = make_staged_communicator(comm(), nullptr);
  cuda::OwnerSplit split(*dc, groups, rows, cols);
  std::vector<double> load(W, 0.0);
  double max_cost = 0.0;
  std::set<const cuda::bf16*> results;
  std::vector<int> owners;
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& m = split.members((int)g);
    ASSERT_EQ(std::multiset<int32_t>(m.begin(), m.end()), std::multiset<int32_t>(groups[g].begin(), groups[g].end()));
    int covered = 0;
    for (int r = 0; r < W; ++r) {
      EXPECT_EQ(split.first((int)g, r), covered) << "group " << g << " rank " << r;
      for (int q = 0; q < split.count((int)g, r); ++q) EXPECT_EQ(split.owner(m[covered + q]), r);
      covered += split.count((int)g, r);
      EXPECT_TRUE(aligned_to(split.run((int)g, r), 256));
      load[r] += split.count((int)g, r) * ns_cost(rows[g], cols[g]);
    }
    EXPECT_EQ(covered, (int)m.size());
    max_cost = std::max(max_cost, ns_cost(rows[g], cols[g]));
    for (int pos = 0; pos < (int)m.size(); ++pos) EXPECT_TRUE(results.insert(split.result((int)g, pos)).second);
  }
  for (int32_t p = 0; p < 9; ++p) owners.push_back(split.owner(p));
  std::vector<float> fo(owners.begin(), owners.end());
  expect_same_on_all_ranks(fo, "owners");
  // greedy longest-processing-time: the loads differ by at most the largest single cost
  EXPECT_LE(*std::max_element(load.begin(), load.end()) - *std::min_element(load.begin(), load.end()),
            max_cost * (1 + 1e-12));
}

TEST(CudaDdpOptim, MuonAndNorMuonMatchOneProcess) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  og_test::check_muon_configs(check_against_single);
}

TEST(CudaDdpOptim, Dion2AndNorDion2MatchOneProcess) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  og_test::check_dion2_configs(check_against_single);
}

TEST(CudaDdpOptim, Dion2BytesScaleWithFraction) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  og_test::check_dion2_bytes_fall_with_fraction(check_against_single);
}

// dist.compressed_sync (Dion2, random selection): local gradients, only the selected momentum
// slices averaged before the Newton–Schulz == one process on the averaged gradients. Weights
// within kTol with fp32 state (the fp32 average's summation order differs), identical on every
// rank. With bf16 state each rank rounds its own M + G before the average while one process
// rounds the sum of averages: M[K] differs by ~2⁻⁹ relative, so the weights by up to 7.4e-4 of
// max|w| after 3 steps (measured, 2×H200); tolerance 1.5e-3 there (a missing update: ~5e-3). After
// synchronize_state the momentum equals one process's (1e-5, fp32 / 1e-2, bf16 state). Bytes: the
// all-reduce of the k selected slices (α = 0.25 here), well under a full gradient all-reduce.
TEST(CudaDdpOptim, CompressedSyncEqualsFullSync) {
  if (!gpu_ready()) GTEST_SKIP() << "no CUDA device";
  const int W = comm().size();
  double full = 0.0;  // ring bytes of the whole matrices' fp32 all-reduce
  for (const auto& [r, c] : kShapes) full += 2.0 * (W - 1) / W * 4.0 * (double)(r * c);
  for (StateDtype dt : {StateDtype::F32, StateDtype::BF16})
    for (bool ef : {true, false})
      for (const char* split : {"off", "on"}) {
        OptimHParams hp = matrix_hparams(Algorithm::Dion2);
        hp.select = Select::Random;
        hp.fraction = 0.25f;
        hp.ef = ef;
        hp.state_dtype = dt;
        const Result ref = run(hp, nullptr, mean_of_local_grads);
        for (const std::string& b : device_backends()) {
          auto dc = device_comm(b);
          const Result got = run(hp, dc.get(), local_grads, true, split);
          const std::string tag = fmt::format("compressed sync, {} state, ef {}, owner_split {}, over {} on {} ranks",
                                              name_of(dt), ef, split, b, W);
          ASSERT_EQ(got.momentum.size(), ref.momentum.size()) << tag;
          for (size_t i = 0; i < ref.w.size(); ++i) {
            EXPECT_LT(max_rel(got.w[i], ref.w[i]), dt == StateDtype::F32 ? kTol : 1.5e-3) << tag << ", matrix " << i;
            expect_same_on_all_ranks(got.w[i], tag + ": weights of matrix " + std::to_string(i));
            EXPECT_LT(og::test::rel_diff(got.momentum[i], ref.momentum[i]), dt == StateDtype::F32 ? 1e-5 : 1e-2)
                << tag << ": momentum of matrix " << i;
          }
          EXPECT_GT(got.comm_bytes, 0.0) << tag;
          EXPECT_LT(got.comm_bytes, 0.4 * full + (std::string(split) == "on" ? full : 0.0)) << tag;
        }
      }
}
