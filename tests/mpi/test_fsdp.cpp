// Fully-sharded data parallel on CPU ranks (dist.mode fsdp, AdamW / Lion on every group):
//  - R ranks on the same global batch end with the same weights as one process and as DDP on
//    R ranks (reductions run in another order: a tolerance applies);
//  - a sharded checkpoint: 2N steps straight == N steps, resume, N steps (bitwise at the same
//    world size; across world sizes within the same tolerance, after re-sharding);
//  - per-rank master / gradient / optimizer-state bytes are about 1/R of the replicated ones, and
//    the gathered working set (two units of weights and of gradients) does not grow with depth;
//  - a poisoned gradient shard stops the run (or is skipped) on every rank.
// The model has rows not divisible by 2 or 3 (d_model 40, d_ff 160, vocab 250) so shards are uneven.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "model/model.h"
#include "tests/common/tiny_run.h"
#include "tests/mpi/mpi_env.h"
#include "train/fsdp.h"
#include "train/trainer.h"

using og_test::comm;

namespace {

constexpr int kVocab = 250;
// Max |a - b| / max|b| over all parameters. AdamW divides by sqrt(v): fp32 summation-order
// differences in the averaged gradients (reduce-scatter vs all-reduce vs one process) stay
// around 1e-6 relative after a few steps; 2e-4 is the DDP test's bound.
constexpr double kTol = 2e-4;
// FSDP and DDP on the same ranks differ only by reduce-scatter vs all-reduce summation order.
constexpr double kTolSameWorld = 1e-5;

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, (double)std::fabs(a[i] - b[i]));
    den = std::max(den, (double)std::fabs(b[i]));
  }
  return num / den;
}

// A folder shared by all ranks (named after rank 0's pid, so the np2 and np3 runs that ctest
// starts side by side never collide), with random-token shards; removed at the end.
class SharedDir {
 public:
  explicit SharedDir(const std::string& tag) {
    int64_t pid = comm().rank() == 0 ? (int64_t)::getpid() : 0;
    comm().broadcast(&pid, 1, og::DType::I64, 0);
    path_ = (std::filesystem::temp_directory_path() / (tag + "_" + std::to_string(pid))).string();
    if (comm().rank() == 0) {
      std::filesystem::remove_all(path_);
      std::filesystem::create_directories(path_);
      og_test::write_random_shards(path_, "train", 2, 6000, kVocab, 11);
      og_test::write_random_shards(path_, "val", 1, 3000, kVocab, 12);
    }
    comm().barrier();
  }
  ~SharedDir() {
    comm().barrier();
    if (comm().rank() == 0) std::filesystem::remove_all(path_);
  }
  std::string str() const { return path_; }
  std::string operator/(const std::string& s) const { return path_ + "/" + s; }

 private:
  std::string path_;
};

og::Config fsdp_config(const std::string& data, const std::string& out, const std::string& algorithm) {
  og::Config c = og_test::tiny_config(data, out, kVocab);
  c.model.d_model = 40;
  c.model.n_head = 2;
  c.train.batch_size = 12;  // divisible by micro 2 x R for R = 1, 2, 3
  c.optim.matrix.algorithm = algorithm;
  c.optim.scalar.algorithm = algorithm;
  c.dist.mode = "fsdp";
  // AdamW's first steps are ~lr * sign(g): an entry whose averaged gradient is at the fp32
  // rounding level of the sum could flip sign between reduction orders. eps 1e-6 (instead of
  // 1e-8) damps such entries, so the comparison measures the sharding, not that noise.
  c.optim.scalar.eps = 1e-6;
  return c;
}

og::DistContext self_context() {
  og::DistContext self;
  self.host_comm = og::make_self_communicator();
  return self;
}

// Rank 0 trains `c` as a world of one (writing its checkpoints); every rank gets its final weights.
std::vector<float> train_on_rank0_alone(const og::Config& c) {
  std::vector<float> params;
  if (comm().rank() == 0) {
    og::DistContext self = self_context();
    params = og::run_train(c, self).final_params;
  }
  comm().barrier();
  int64_t n = (int64_t)params.size();
  comm().broadcast(&n, 1, og::DType::I64, 0);
  params.resize((size_t)n);
  comm().broadcast(params.data(), params.size(), og::DType::F32, 0);
  return params;
}

}  // namespace

TEST(FSDP, AdamWMatchesSingleProcessAndDDP) {
  const int R = comm().size();
  SharedDir data("og_fsdp_eq");
  og_test::TempDir out_fsdp("og_fsdp_f"), out_ddp("og_fsdp_d"), out_single("og_fsdp_s");
  og::Config c = fsdp_config(data.str(), out_fsdp.str(), "adamw");
  og::validate_config(c, R);
  const og::TrainResult fsdp = og::run_train(c, *og_test::g_dist);

  c.dist.mode = "ddp";
  c.log.dir = out_ddp.str();
  const og::TrainResult ddp = og::run_train(c, *og_test::g_dist);

  og::DistContext self = self_context();
  c.log.dir = out_single.str();
  const og::TrainResult single = og::run_train(c, self);

  const double d_single = rel_diff(fsdp.final_params, single.final_params);
  const double d_ddp = rel_diff(fsdp.final_params, ddp.final_params);
  if (comm().rank() == 0)
    std::printf("FSDP on %d ranks: max rel diff %.3g vs one process, %.3g vs DDP\n", R, d_single, d_ddp);
  EXPECT_LT(d_single, kTol) << R << " FSDP ranks vs one process: max rel diff " << d_single;
  EXPECT_LT(d_ddp, kTolSameWorld) << R << " FSDP ranks vs DDP: max rel diff " << d_ddp;
  EXPECT_GT(rel_diff(single.final_params, std::vector<float>(single.final_params.size(), 0.0f)), 0.0);
  EXPECT_NEAR(fsdp.final_val_loss, single.final_val_loss, 1e-3);
  // every rank holds the same gathered weights
  std::vector<float> maxv = fsdp.final_params;
  comm().all_reduce(maxv.data(), maxv.size(), og::DType::F32, og::ReduceOp::Max);
  EXPECT_EQ(rel_diff(fsdp.final_params, maxv), 0.0);
}

// 4 steps straight vs 2 + resume + 2, on R ranks (bitwise) and re-sharded across world sizes.
TEST(FSDP, ShardedCheckpointResumeAndReshard) {
  const int R = comm().size(), r = comm().rank();
  SharedDir data("og_fsdp_ck");
  for (const std::string alg : {"adamw", "lion"}) {
    // straight, on R ranks, checkpoints at steps 2 and 4 in the shared folder
    og::Config c = fsdp_config(data.str(), data / ("straight_" + alg), alg);
    c.checkpoint.enabled = true;
    c.checkpoint.every = 2;
    const og::TrainResult straight = og::run_train(c, *og_test::g_dist);
    const std::string ck2 = og::checkpoint_dir(c.log.dir, 2);
    if (r == 0) {
      for (int q = 0; q < R; ++q) EXPECT_TRUE(std::filesystem::exists(ck2 + "/" + og::shard_file_name(q, R))) << ck2;
      EXPECT_FALSE(std::filesystem::exists(ck2 + "/state.bin"));
    }

    // resume at the same world size: bitwise the same weights
    c.log.dir = data / ("resumed_" + alg);
    c.checkpoint.resume = ck2;
    const og::TrainResult resumed = og::run_train(c, *og_test::g_dist);
    EXPECT_EQ(resumed.final_params, straight.final_params) << alg << ": resume on " << R << " ranks";
    EXPECT_EQ(resumed.steps_done, 4);

    // re-shard R -> 1: every rank resumes the R-rank checkpoint alone
    {
      og_test::TempDir out("og_fsdp_r1");
      og::Config c1 = c;
      c1.log.dir = out.str();
      og::DistContext self = self_context();
      const og::TrainResult one = og::run_train(c1, self);
      const double d = rel_diff(one.final_params, straight.final_params);
      if (r == 0) std::printf("%s: resumed %d -> 1 ranks: max rel diff %.3g\n", alg.c_str(), R, d);
      // Lion's sign() turns last-bit differences of a near-zero momentum into whole lr steps:
      // compare it at the looser bound of a few flipped entries (lr 0.02 of weights ~1).
      EXPECT_LT(d, alg == "adamw" ? kTol : 0.05) << alg << ": " << R << " -> 1 ranks, max rel diff " << d;
    }
    comm().barrier();
  }

  // re-shard 1 -> R: rank 0 writes a one-rank checkpoint, all R ranks resume it
  og::Config c = fsdp_config(data.str(), data / "one", "adamw");
  c.checkpoint.enabled = true;
  c.checkpoint.every = 2;
  const std::vector<float> reference = train_on_rank0_alone(c);
  c.checkpoint.resume = og::checkpoint_dir(c.log.dir, 2);
  c.log.dir = data / "one_resumed";
  const og::TrainResult many = og::run_train(c, *og_test::g_dist);
  const double d = rel_diff(many.final_params, reference);
  if (r == 0) std::printf("adamw: resumed 1 -> %d ranks: max rel diff %.3g\n", R, d);
  EXPECT_LT(d, kTol) << "1 -> " << R << " ranks, max rel diff " << d;
}

TEST(FSDP, RefusesModeMismatch) {
  SharedDir data("og_fsdp_refuse");
  og::Config c = fsdp_config(data.str(), data / "w", "adamw");
  c.checkpoint.enabled = true;
  c.train.steps = 2;
  og::run_train(c, *og_test::g_dist);
  c.checkpoint.resume = og::checkpoint_dir(c.log.dir, 2);
  c.train.steps = 4;
  c.dist.mode = "ddp";
  c.log.dir = data / "x";
  try {
    og::run_train(c, *og_test::g_dist);
    ADD_FAILURE() << "a DDP run resumed an FSDP checkpoint";
  } catch (const og::Error& e) {
    EXPECT_NE(std::string(e.what()).find("dist.mode fsdp"), std::string::npos) << e.what();
  }
}

// Per-rank bytes of master weights, gradient shards and optimizer state vs replicated.
TEST(FSDP, StateBytesPerRankAboutOneOverN) {
  const int R = comm().size();
  og::Config c = fsdp_config("unused", "unused", "adamw");
  c.model.d_model = 64;
  c.model.vocab_size = 1000;
  std::unique_ptr<og::Model> model = og::make_cpu_model(c.gpt(), 2);
  og::Fsdp fsdp(*og_test::g_dist, *model, c.dist);
  og::ParamGroups groups = fsdp.make_groups(og::build_group_specs(c));
  const og::FsdpMemory m = fsdp.memory(groups);
  // the replicated optimizer state, from a DDP group set on the whole model
  og::ParamGroups ddp(og::build_group_specs(c), model->layout(), model->params(), model->grads(), og::Device::CPU);
  size_t ddp_state = 0;
  for (const auto& t : ddp.state()) ddp_state += t.count * 4;
  const size_t P = model->layout().params().size();
  // the per-parameter AdamW step counters (one float) exist on every rank that holds rows
  EXPECT_LE(m.replicated_state, ddp_state + (size_t)(R - 1) * P * 4);
  EXPECT_GE(m.replicated_state, ddp_state);
  const double state_ratio = (double)m.state * R / (double)ddp_state;
  const double master_ratio = (double)m.master * R / (double)m.replicated_master;
  // uneven rows (one row per parameter at most) and 256-byte alignment of each shard
  EXPECT_NEAR(state_ratio, 1.0, 0.05) << "optimizer state " << m.state << " bytes on rank of " << R;
  EXPECT_NEAR(master_ratio, 1.0, 0.05) << "master " << m.master << " bytes of " << m.replicated_master;
  EXPECT_EQ(m.grads, m.master);
  // the model keeps no whole copy: three slots of weights and three of gradients, one of the
  // largest unit's size (the 1000 x 64 embedding / lm_head) and two of a block's (12 x 64²),
  // whatever the depth
  const size_t largest = 1000 * 64 * sizeof(float), block = 12 * 64 * 64 * sizeof(float);
  EXPECT_EQ(m.unit_weights, largest + 2 * block);
  EXPECT_EQ(m.unit_grads, largest + 2 * block);
  if (R > 1) {
    EXPECT_LT(m.total(), m.replicated_total());
  }
  c.model.n_layer = 6;
  std::unique_ptr<og::Model> deep = og::make_cpu_model(c.gpt(), 2);
  og::Fsdp fsdp_deep(*og_test::g_dist, *deep, c.dist);
  og::ParamGroups groups_deep = fsdp_deep.make_groups(og::build_group_specs(c));
  const og::FsdpMemory md = fsdp_deep.memory(groups_deep);
  EXPECT_EQ(md.unit_weights, m.unit_weights);
  EXPECT_EQ(md.unit_grads, m.unit_grads);
  EXPECT_GT(md.replicated_model, m.replicated_model);
  if (comm().rank() == 0) std::printf("%s\n", m.describe().c_str());
}

// train.fault_nan_step under FSDP: the poisoned shard reaches every rank through the norm.
TEST(FSDP, NonFiniteGradientIsSeenByEveryRank) {
  SharedDir data("og_fsdp_nan");
  og_test::TempDir out("og_fsdp_nan_o");
  og::Config c = fsdp_config(data.str(), out.str(), "adamw");
  c.train.fault_nan_step = 1;
  try {
    og::run_train(c, *og_test::g_dist);
    ADD_FAILURE() << "expected the run to stop at step 1";
  } catch (const og::Error& e) {
    EXPECT_NE(std::string(e.what()).find("step 1"), std::string::npos) << e.what();
  }
  c.train.skip_nonfinite = true;
  const og::TrainResult r = og::run_train(c, *og_test::g_dist);
  EXPECT_EQ(r.skipped_steps, 1);
  for (float v : r.final_params) ASSERT_TRUE(std::isfinite(v));
}

// The matrix optimizers on row shards (optim/distributed_optimizer.h through the trainer): R
// ranks equal one process. Dion2 with select_scope global is the single-process selection
// exactly; local scope picks per shard, so it is compared only for running and agreeing across
// ranks. Then a sharded checkpoint of the distributed state resumes bitwise at the same size.
TEST(FSDP, MatrixOptimizersOnShardsMatchSingleProcess) {
  const int R = comm().size();
  SharedDir data("og_fsdp_mat");
  struct Case {
    std::string algorithm, scope;
    bool compare;
  };
  for (const Case& k : {Case{"muon", "local", true}, Case{"normuon", "local", true}, Case{"dion2", "global", true},
                        Case{"dion2", "local", false}, Case{"dion", "local", true}}) {
    og_test::TempDir out_f("og_fsdp_mf"), out_s("og_fsdp_ms");
    og::Config c = fsdp_config(data.str(), out_f.str(), "adamw");
    c.optim.matrix.algorithm = k.algorithm;
    c.optim.matrix.fraction = 0.5;
    c.dist.select_scope = k.scope;
    c.optim.matrix.select_dim = "rows";  // what FSDP selects along (auto may pick cols on one process)
    og::validate_config(c, R);
    const og::TrainResult fsdp = og::run_train(c, *og_test::g_dist);
    std::vector<float> maxv = fsdp.final_params;
    comm().all_reduce(maxv.data(), maxv.size(), og::DType::F32, og::ReduceOp::Max);
    EXPECT_EQ(rel_diff(fsdp.final_params, maxv), 0.0) << k.algorithm << ": ranks disagree";
    if (!k.compare) continue;
    og::DistContext self = self_context();
    c.log.dir = out_s.str();
    const og::TrainResult single = og::run_train(c, self);
    const double d = rel_diff(fsdp.final_params, single.final_params);
    if (comm().rank() == 0)
      std::printf("FSDP %s (%s) on %d ranks: max rel diff %.3g vs one process\n", k.algorithm.c_str(), k.scope.c_str(),
                  R, d);
    // Newton-Schulz in fp32 on the same matrices, summed in another order: same bound as AdamW.
    EXPECT_LT(d, kTol) << k.algorithm << " on " << R << " FSDP ranks vs one process: max rel diff " << d;
  }

  og::Config c = fsdp_config(data.str(), data / "mat_straight", "adamw");
  c.optim.matrix.algorithm = "dion2";
  c.optim.matrix.fraction = 0.5;
  c.checkpoint.enabled = true;
  c.checkpoint.every = 2;
  const og::TrainResult straight = og::run_train(c, *og_test::g_dist);
  c.checkpoint.resume = og::checkpoint_dir(c.log.dir, 2);
  c.log.dir = data / "mat_resumed";
  const og::TrainResult resumed = og::run_train(c, *og_test::g_dist);
  EXPECT_EQ(resumed.final_params, straight.final_params) << "dion2 under FSDP: resume on " << R << " ranks";
}

// Re-sharding the matrix optimizers' state: Muon's, Dion2's and Dion's momentum, NorMuon's per-row
// variance and Dion's Q of a wide matrix are row shards like the parameters (a tall matrix's Q is
// replicated), so a checkpoint of R ranks resumes on one
// process (and one of one process on R ranks) and ends where the straight R-rank run ends.
// Dion2 runs with select_scope global (the one-process selection) so the two sides agree.
TEST(FSDP, ReshardsMatrixOptimizerState) {
  const int R = comm().size(), r = comm().rank();
  SharedDir data("og_fsdp_rsm");
  for (const std::string alg : {"muon", "normuon", "dion2", "dion"}) {
    og::Config c = fsdp_config(data.str(), data / ("straight_" + alg), "adamw");
    c.optim.matrix.algorithm = alg;
    c.optim.matrix.fraction = 0.5;
    c.optim.matrix.select_dim = "rows";
    c.dist.select_scope = "global";
    c.checkpoint.enabled = true;
    c.checkpoint.every = 2;
    const og::TrainResult straight = og::run_train(c, *og_test::g_dist);
    {  // R -> 1
      og_test::TempDir out("og_fsdp_rsm1");
      og::Config c1 = c;
      c1.checkpoint.resume = og::checkpoint_dir(c.log.dir, 2);
      c1.log.dir = out.str();
      og::DistContext self = self_context();
      const og::TrainResult one = og::run_train(c1, self);
      const double d = rel_diff(one.final_params, straight.final_params);
      if (r == 0) std::printf("%s: resumed %d -> 1 ranks: max rel diff %.3g\n", alg.c_str(), R, d);
      EXPECT_LT(d, kTol) << alg << ": " << R << " -> 1 ranks, max rel diff " << d;
    }
    comm().barrier();
    // 1 -> R: rank 0 writes a one-process checkpoint, all ranks resume it
    og::Config c1 = c;
    c1.log.dir = data / ("one_" + alg);
    const std::vector<float> reference = train_on_rank0_alone(c1);
    c1.checkpoint.resume = og::checkpoint_dir(c1.log.dir, 2);
    c1.log.dir = data / ("one_resumed_" + alg);
    const og::TrainResult many = og::run_train(c1, *og_test::g_dist);
    const double d = rel_diff(many.final_params, reference);
    if (r == 0) std::printf("%s: resumed 1 -> %d ranks: max rel diff %.3g\n", alg.c_str(), R, d);
    EXPECT_LT(d, kTol) << alg << ": 1 -> " << R << " ranks, max rel diff " << d;
  }
}
