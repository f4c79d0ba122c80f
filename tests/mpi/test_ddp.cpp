// Data parallel on CPU ranks: R ranks on the same global batch end with the same weights as
// one process (gradients averaged; fp32 summation order differs, so a tolerance applies).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "model/param_layout.h"
#include "tests/common/tiny_run.h"
#include "tests/mpi/mpi_env.h"
#include "train/trainer.h"

#include <nlohmann/json.hpp>

using og_test::comm;

namespace {

// Max |a - b| / max|b| over all parameters.
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, (double)std::fabs(a[i] - b[i]));
    den = std::max(den, (double)std::fabs(b[i]));
  }
  return num / den;
}

void check_ddp_matches_single(const std::string& algorithm, const std::string& select, bool compressed = false) {
  const int R = comm().size(), r = comm().rank();
  // rank 0 writes the shards into a folder every rank can read (same machine); its name carries
  // rank 0's pid, broadcast to all, so the np2 and np3 runs that ctest starts side by side never
  // share (and delete) each other's data.
  int64_t owner_pid = r == 0 ? (int64_t)::getpid() : 0;
  comm().broadcast(&owner_pid, 1, og::DType::I64, 0);
  std::string dir = (std::filesystem::temp_directory_path() /
                     ("og_ddp_" + algorithm + select + (compressed ? "c" : "") + "_" + std::to_string(owner_pid)))
                        .string();
  if (r == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    og_test::write_random_shards(dir, "train", 2, 6000, 256, 11);
    og_test::write_random_shards(dir, "val", 1, 3000, 256, 12);
  }
  comm().barrier();
  og_test::TempDir out_single("og_ddp_single"), out_multi("og_ddp_multi");
  og::Config c = og_test::tiny_config(dir, out_multi.str());
  c.train.batch_size = 12;  // divisible by micro 2 x R for R = 2, 3
  c.optim.matrix.algorithm = algorithm;
  c.optim.matrix.select = select;
  c.optim.matrix.fraction = 0.5;
  c.dist.compressed_sync = compressed;
  og::validate_config(c, R);
  const og::TrainResult multi = og::run_train(c, *og_test::g_dist);
  // the metrics rows of a multi-rank run carry the bytes this rank sent
  if (r == 0) {
    std::ifstream f(out_multi.str() + "/metrics.jsonl");
    std::string line;
    bool seen = false;
    // the gradient all-reduce moves 2 (R-1)/R x 4 bytes per averaged float: the whole buffer,
    // or (compressed sync) all but the matrices
    const og::ParamLayout layout = og::gpt_param_layout(c.gpt());
    size_t matrix = 0;
    for (const auto& p : layout.params()) matrix += p.role == og::ParamRole::Matrix ? p.numel() : 0;
    const double whole = 2.0 * (R - 1) / R * 4.0 * (double)layout.total();
    const double non_matrix = 2.0 * (R - 1) / R * 4.0 * (double)(layout.total() - matrix);
    while (std::getline(f, line)) {
      const auto row = nlohmann::json::parse(line);
      if (row["type"] != "train") continue;
      seen = true;
      ASSERT_TRUE(row.contains("comm_bytes") && row.contains("comm_bytes_grad")) << line;
      const double grad = row["comm_bytes_grad"].get<double>();
      if (compressed)
        EXPECT_LE(grad, non_matrix) << line;
      else
        EXPECT_EQ(grad, whole) << line;
      EXPECT_GE(row["comm_bytes"].get<double>(), grad);
    }
    EXPECT_TRUE(seen);
  }

  og::DistContext self;
  self.host_comm = og::make_self_communicator();
  c.log.dir = out_single.str();
  c.dist.compressed_sync = false;  // one process: the plain optimizer
  const og::TrainResult single = og::run_train(c, self);

  const double d = rel_diff(multi.final_params, single.final_params);
  EXPECT_LT(d, 2e-4) << algorithm << "/" << select << " on " << R << " ranks: max rel diff " << d;
  EXPECT_NEAR(multi.final_val_loss, single.final_val_loss, 1e-3);
  // every rank holds the same weights
  std::vector<float> mine = multi.final_params, maxv = mine;
  comm().all_reduce(maxv.data(), maxv.size(), og::DType::F32, og::ReduceOp::Max);
  EXPECT_EQ(rel_diff(mine, maxv), 0.0);
  comm().barrier();
  if (r == 0) std::filesystem::remove_all(dir);
}

}  // namespace

TEST(DDP, AdamWMatchesSingleProcess) { check_ddp_matches_single("adamw", "l1"); }
TEST(DDP, MuonMatchesSingleProcess) { check_ddp_matches_single("muon", "l1"); }
TEST(DDP, Dion2L1MatchesSingleProcess) { check_ddp_matches_single("dion2", "l1"); }
TEST(DDP, Dion2RandomMatchesSingleProcess) { check_ddp_matches_single("dion2", "random"); }
TEST(DDP, NorMuonMatchesSingleProcess) { check_ddp_matches_single("normuon", "l1"); }
TEST(DDP, NorDion2MatchesSingleProcess) { check_ddp_matches_single("nordion2", "l1"); }
TEST(DDP, DionMatchesSingleProcess) { check_ddp_matches_single("dion", "l1"); }
// Compressed sync: local matrix gradients, selected momentum rows averaged == full sync.
TEST(DDP, Dion2CompressedSyncMatchesSingleProcess) { check_ddp_matches_single("dion2", "random", true); }
