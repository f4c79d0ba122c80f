// make_distributed_optimizer on CUDA parameters in a world of one (the self communicator): the
// factory's device path must give exactly make_optimizer's result (bit for bit: the same kernels
// on the same inputs), replicated and with the row_sharded flag on whole-matrix "shards".
// (Several ranks over NCCL are exercised by the trainer's DDP runs on a multi-GPU machine; on
// CUDA with more than one rank the replicated matrix algorithms run the single-GPU optimizer on
// every rank, see distributed_optimizer.cpp.)
#include <gtest/gtest.h>

#include <vector>

#include "core/cuda_utils.h"
#include "cpu/optim_test_group.h"
#include "dist/communicator.h"
#include "gpu/device_test_group.h"
#include "optim/distributed_optimizer.h"

using namespace og;
using og::test::DeviceTestGroup;
using og::test::TestGroup;

namespace {

std::vector<std::vector<float>> run_steps(const OptimHParams& hp, const TestGroup& h, bool distributed, bool sharded) {
  DeviceTestGroup d(h);
  std::vector<ParamSlot> slots = d.slots;
  if (sharded)
    for (ParamSlot& s : slots) s.local_rows = s.rows;
  auto self = make_self_communicator();
  DistributedOptions o;
  o.comm = self.get();
  o.row_sharded = sharded;
  auto opt =
      distributed ? make_distributed_optimizer(hp, slots, Device::CUDA, o) : make_optimizer(hp, slots, Device::CUDA);
  for (int t = 1; t <= 3; ++t) opt->step({t, 0.02f});
  CUDA_CHECK(cudaDeviceSynchronize());
  return d.weights();
}

}  // namespace

TEST(CudaDistributedOptim, WorldOfOneIsMakeOptimizer) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  TestGroup h({{64, 64}, {48, 80}, {96, 40}, {64, 64}}, 3);
  for (Algorithm a : {Algorithm::Muon, Algorithm::NorMuon, Algorithm::Dion2, Algorithm::NorDion2, Algorithm::Dion,
                      Algorithm::AdamW, Algorithm::Lion}) {
    OptimHParams hp;
    hp.algorithm = a;
    hp.weight_decay = 0.1f;
    hp.fraction = 0.5f;
    hp.select_dim = SelectDim::Rows;  // allowed with row_sharded
    const auto ref = run_steps(hp, h, false, false);
    for (bool sharded : {false, true}) {
      const auto got = run_steps(hp, h, true, sharded);
      for (size_t i = 0; i < ref.size(); ++i)
        EXPECT_EQ(got[i], ref[i]) << name_of(a) << (sharded ? " row_sharded" : "") << " matrix " << i;
    }
  }
}
