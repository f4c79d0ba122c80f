// FSDP building blocks on one process: the row split and shard plan on uneven shapes, the
// variable-size collectives' block layout, scalar optimizers on shards against whole
// parameters, and the sharded checkpoint files (a world of one).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "dist/communicator.h"
#include "dist/shard_plan.h"
#include "model/param_layout.h"
#include "tests/common/tiny_run.h"
#include "train/checkpoint.h"
#include "train/fsdp_optimizers.h"

namespace {

template <typename F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const og::Error& e) {
    return e.what();
  }
  return "";
}

std::vector<float> random_vec(size_t n, uint64_t seed) {
  og::Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = (float)rng.normal();
  return v;
}

}  // namespace

TEST(ShardPlan, SplitRowsCoversEveryRowOnce) {
  for (int64_t rows : {0, 1, 2, 3, 5, 40, 160, 256, 257}) {
    for (int world : {1, 2, 3, 4, 7}) {
      int64_t next = 0, lo = rows, hi = 0;
      for (int r = 0; r < world; ++r) {
        const og::RowRange rr = og::split_rows(rows, world, r);
        EXPECT_EQ(rr.row0, next) << rows << " rows, rank " << r << " of " << world;
        next = rr.end();
        lo = std::min(lo, rr.rows);
        hi = std::max(hi, rr.rows);
      }
      EXPECT_EQ(next, rows);
      EXPECT_LE(hi - lo, 1) << "uneven by more than one row: " << rows << " over " << world;
    }
  }
  EXPECT_EQ(og::split_rows(2, 3, 2).rows, 0);  // a rank may hold no row of a tiny parameter
}

TEST(ShardPlan, LocalBuffersAndGatherCounts) {
  og::GPTConfig g;
  g.vocab_size = 257;
  g.d_model = 40;
  g.n_layer = 2;
  g.n_head = 2;
  g.seq_len = 8;
  const og::ParamLayout layout = og::gpt_param_layout(g);
  std::vector<float> flat = random_vec(layout.total(), 3);
  for (int world : {1, 2, 3, 5}) {
    const og::ShardPlan plan(layout, world);
    size_t elements = 0;
    std::vector<std::vector<float>> local(world);
    for (int r = 0; r < world; ++r) {
      elements += plan.local_elements(r);
      local[r].assign(plan.local_total(r), 0.0f);
      size_t end = 0;
      for (size_t p = 0; p < plan.num_params(); ++p) {
        const auto& info = layout.params()[p];
        const size_t off = plan.local_offset(p, r), n = (size_t)plan.rows(p, r).rows * info.cols;
        EXPECT_EQ(off % og::ParamLayout::kAlign, 0u);
        EXPECT_GE(off, end) << "shards overlap in rank " << r << "'s buffer";
        end = off + n;
        // rank r's shard: rows [row0, end) of the row-major parameter
        std::copy_n(flat.data() + info.offset + (size_t)plan.rows(p, r).row0 * info.cols, n, local[r].data() + off);
      }
      EXPECT_LE(end, plan.local_total(r));
    }
    EXPECT_EQ(elements, layout.num_elements());
    // The blocks of counts(p), concatenated in rank order, are the parameter (what all_gatherv
    // writes into the flat buffer and reduce_scatterv reads from it).
    for (size_t p = 0; p < plan.num_params(); ++p) {
      const auto& info = layout.params()[p];
      const std::vector<size_t> counts = plan.counts(p);
      std::vector<float> gathered;
      for (int r = 0; r < world; ++r) {
        const float* s = local[r].data() + plan.local_offset(p, r);
        gathered.insert(gathered.end(), s, s + counts[r]);
      }
      ASSERT_EQ(gathered.size(), info.numel());
      EXPECT_TRUE(std::equal(gathered.begin(), gathered.end(), flat.data() + info.offset)) << info.name;
    }
  }
}

TEST(ShardPlan, VariableCollectivesOnOneRank) {
  auto self = og::make_self_communicator();
  std::vector<float> a = random_vec(11, 4), b(11), c(11);
  self->all_gatherv(a.data(), b.data(), {11}, og::DType::F32);
  self->reduce_scatterv(a.data(), c.data(), {11}, og::DType::F32, og::ReduceOp::Avg);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
}

// Each simulated rank steps its shards; together they equal one optimizer on the whole
// parameters, exactly (elementwise arithmetic, same order per element). Includes a 2-row
// parameter over 3 ranks (one rank holds none of it).
TEST(ShardPlan, ScalarOptimizersOnShardsEqualWhole) {
  struct Shape {
    int64_t rows, cols;
  };
  const std::vector<Shape> shapes = {{40, 24}, {2, 16}, {7, 5}};
  auto self = og::make_self_communicator();
  for (og::Algorithm alg : {og::Algorithm::AdamW, og::Algorithm::Lion}) {
    og::OptimHParams hp;
    hp.algorithm = alg;
    hp.weight_decay = 0.1f;
    const int world = 3;
    std::vector<std::vector<float>> w_whole, g_whole;
    for (size_t i = 0; i < shapes.size(); ++i) {
      w_whole.push_back(random_vec(shapes[i].rows * shapes[i].cols, 10 + i));
      g_whole.push_back(random_vec(shapes[i].rows * shapes[i].cols, 20 + i));
    }
    std::vector<std::vector<float>> w_sharded = w_whole;  // shards point into these copies
    std::vector<og::ParamSlot> whole_slots;
    for (size_t i = 0; i < shapes.size(); ++i)
      whole_slots.push_back({"p" + std::to_string(i), og::ParamRole::Matrix, shapes[i].rows, shapes[i].cols,
                             w_whole[i].data(), g_whole[i].data()});
    auto whole = og::make_optimizer(hp, whole_slots);
    std::vector<std::unique_ptr<og::Optimizer>> ranks;
    for (int r = 0; r < world; ++r) {
      std::vector<og::ParamSlot> slots;
      for (size_t i = 0; i < shapes.size(); ++i) {
        const og::RowRange rr = og::split_rows(shapes[i].rows, world, r);
        og::ParamSlot s{"p" + std::to_string(i),
                        og::ParamRole::Matrix,
                        shapes[i].rows,
                        shapes[i].cols,
                        w_sharded[i].data() + rr.row0 * shapes[i].cols,
                        g_whole[i].data() + rr.row0 * shapes[i].cols};
        s.row0 = rr.row0;
        s.local_rows = rr.rows;
        slots.push_back(s);
      }
      ranks.push_back(og::make_sharded_group_optimizer(hp, slots, og::Device::CPU, *self, *self, og::DistSection{}));
    }
    for (int64_t step = 1; step <= 3; ++step) {
      whole->step({step, 0.01f});
      for (auto& o : ranks) o->step({step, 0.01f});
    }
    for (size_t i = 0; i < shapes.size(); ++i) EXPECT_EQ(w_sharded[i], w_whole[i]) << og::name_of(alg) << " p" << i;
  }
}

TEST(ShardPlan, MatrixAlgorithmOnShardsGoesToTheDistributedOptimizer) {
  auto self = og::make_self_communicator();
  std::vector<float> w = random_vec(40 * 8, 1), g = random_vec(40 * 8, 2);
  og::ParamSlot s{"h.0.attn.q", og::ParamRole::Matrix, 40, 8, w.data(), g.data()};
  og::OptimHParams hp;
  hp.algorithm = og::Algorithm::Muon;
  // A whole parameter (one rank) steps with the ordinary optimizer.
  EXPECT_NO_THROW(og::make_sharded_group_optimizer(hp, {s}, og::Device::CPU, *self, *self, og::DistSection{}));
  // Half of the rows in a world of one do not tile the matrix: the distributed optimizer's shard
  // map check refuses it, naming the parameter (the R-rank cases run in tests/mpi/test_fsdp.cpp).
  s.row0 = 20;
  s.local_rows = 20;
  const std::string e =
      error_of([&] { og::make_sharded_group_optimizer(hp, {s}, og::Device::CPU, *self, *self, og::DistSection{}); });
  EXPECT_NE(e.find("h.0.attn.q"), std::string::npos) << e;
}

TEST(ShardPlan, ShardedCheckpointFilesOnOneRank) {
  og_test::TempDir run("og_fsdp_ckpt");
  auto self = og::make_self_communicator();
  og::CheckpointMeta m;
  m.step = 3;
  m.world = 1;
  m.loaders = {{0, 64, 0}};
  m.model_signature = "model";
  m.optimizer_signature = "fsdp;";
  m.config_yaml = "x: 1\n";
  std::vector<float> a = random_vec(100, 5), b = random_vec(7, 6);
  const std::string dir = og::checkpoint_dir(run.str(), 3);
  og::write_sharded_checkpoint(dir, m, {{"params/a", a.data(), a.size() * 4}, {"optim/b", b.data(), b.size() * 4}},
                               *self);
  EXPECT_TRUE(std::filesystem::exists(dir + "/" + og::shard_file_name(0, 1)));
  EXPECT_FALSE(std::filesystem::exists(dir + "/state.bin"));
  og::CheckpointReader ck(run.str());  // through `latest`
  EXPECT_TRUE(ck.sharded());
  EXPECT_EQ(ck.meta().shards, 1);
  EXPECT_EQ(ck.meta().step, 3);
  EXPECT_NE(error_of([&] { ck.read("params", a.data(), 4); }).find("rank file"), std::string::npos);
  og::TensorFile f(ck.shard_path(0), ck.shard_path(0));
  std::vector<float> a2(100), b2(7);
  f.read("params/a", a2.data(), a2.size() * 4);
  f.read("optim/b", b2.data(), b2.size() * 4);
  EXPECT_EQ(a, a2);
  EXPECT_EQ(b, b2);
  // a flipped byte in a rank file is refused by its checksum
  {
    std::fstream io(ck.shard_path(0), std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(200);
    char c = 0;
    io.read(&c, 1);
    io.seekp(200);
    c ^= 0x5a;
    io.write(&c, 1);
  }
  EXPECT_NE(error_of([&] { og::TensorFile g(ck.shard_path(0), "x"); }).find("checksum"), std::string::npos);
  // a missing rank file is named when the checkpoint is opened
  std::filesystem::remove(ck.shard_path(0));
  EXPECT_NE(error_of([&] { og::CheckpointReader again(dir); }).find("rank-00000-of-00001.bin"), std::string::npos);
}
