// End-to-end training on the CPU path: a tiny model on real text learns; NaN guards; outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "core/error.h"
#include "tests/common/tiny_run.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

using og_test::TempDir;

namespace {
og::DistContext self_context() {
  og::DistContext d;
  d.host_comm = og::make_self_communicator();
  return d;
}
}  // namespace

// Real English text (KJV, tokenized by orthogpt's own tokenizer into tests/data/kjv_small):
// 60 steps of a small model must bring the validation loss well below its start.
TEST(Train, TinyModelLearnsRealText) {
  TempDir out("og_train_real");
  og::Config c = og_test::tiny_config(std::string(OG_TEST_DATA_DIR) + "/kjv_small", out.str(), 50304);
  c.data.train = std::string(OG_TEST_DATA_DIR) + "/kjv_small/kjv_train_*.bin";
  c.data.val = std::string(OG_TEST_DATA_DIR) + "/kjv_small/kjv_val_*.bin";
  c.model.d_model = 64;
  c.model.n_layer = 2;
  c.model.n_head = 2;
  c.model.seq_len = 64;
  c.train.batch_size = 8;
  c.train.micro_batch_size = 4;
  c.train.steps = 60;
  c.data.val_tokens = 8 * 64 * 4;
  c.optim.matrix.algorithm = "dion2";
  c.optim.matrix.fraction = 0.5;
  og::validate_config(c);
  og::DistContext d = self_context();
  const og::TrainResult r = og::run_train(c, d);
  EXPECT_EQ(r.steps_done, 60);
  // init loss is ~ln(50304) = 10.8 at this init; the run must learn frequent words and structure
  EXPECT_GT(r.first_val_loss, 9.5);
  EXPECT_LT(r.final_val_loss, r.first_val_loss - 2.5) << "val loss " << r.first_val_loss << " -> " << r.final_val_loss;
  // outputs: resolved config and one metrics row per step plus the val rows
  std::ifstream cfg_file(out / "config.yaml");
  EXPECT_TRUE(cfg_file.good());
  std::ifstream m(out / "metrics.jsonl");
  int train_rows = 0, val_rows = 0;
  for (std::string line; std::getline(m, line);) {
    train_rows += line.find("\"type\":\"train\"") != std::string::npos;
    val_rows += line.find("\"type\":\"val\"") != std::string::npos;
  }
  EXPECT_EQ(train_rows, 60);
  EXPECT_EQ(val_rows, 2);
}

TEST(Train, NonFiniteGradientStopsWithTheStep) {
  TempDir data("og_train_nan_data"), out("og_train_nan_out");
  og_test::write_random_shards(data.str(), "train", 1, 20000, 256, 1);
  og_test::write_random_shards(data.str(), "val", 1, 5000, 256, 2);
  og::Config c = og_test::tiny_config(data.str(), out.str());
  c.train.fault_nan_step = 2;
  og::DistContext d = self_context();
  try {
    og::run_train(c, d);
    FAIL() << "expected the run to stop";
  } catch (const og::Error& e) {
    EXPECT_NE(std::string(e.what()).find("step 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
  }
  c.train.skip_nonfinite = true;
  const og::TrainResult r = og::run_train(c, d);
  EXPECT_EQ(r.skipped_steps, 1);
  for (float v : r.final_params) ASSERT_TRUE(std::isfinite(v));
}

TEST(Train, MissingDataIsAClearError) {
  TempDir out("og_train_missing");
  og::Config c = og_test::tiny_config(out / "nowhere", out.str());
  og::DistContext d = self_context();
  try {
    og::run_train(c, d);
    FAIL() << "expected an error";
  } catch (const og::Error& e) {
    EXPECT_NE(std::string(e.what()).find("data.train"), std::string::npos) << e.what();
  }
}

// 2N steps straight vs N steps, checkpoint, resume, N steps: bit-identical on the CPU path,
// for the stateful optimizers (AdamW moments, Dion2 momentum + random selection, Dion's Q).
class Resume : public ::testing::TestWithParam<std::string> {};

TEST_P(Resume, BitIdentical) {
  TempDir data("og_resume_data"), straight("og_resume_straight"), split("og_resume_split");
  og_test::write_random_shards(data.str(), "train", 2, 3000, 256, 21);
  og_test::write_random_shards(data.str(), "val", 1, 2000, 256, 22);
  og::Config c = og_test::tiny_config(data.str(), straight.str());
  const std::string algo = GetParam();
  c.optim.matrix.algorithm = algo.rfind("dion2", 0) == 0 ? "dion2" : algo;
  c.optim.matrix.select = algo == "dion2_random" ? "random" : "l1";
  c.train.steps = 8;
  c.train.val_every = 4;
  og::DistContext d = self_context();
  const og::TrainResult full = og::run_train(c, d);

  c.log.dir = split.str();
  c.checkpoint.enabled = true;
  c.checkpoint.every = 4;
  c.train.steps = 8;
  // Train the same 8 steps with checkpoints every 4, then resume a new run from step 4.
  og::run_train(c, d);
  og::Config r = c;
  r.checkpoint.resume = og::checkpoint_dir(split.str(), 4);
  r.log.dir = split / "resumed";
  const og::TrainResult resumed = og::run_train(r, d);
  ASSERT_EQ(resumed.final_params.size(), full.final_params.size());
  EXPECT_TRUE(resumed.final_params == full.final_params) << algo << ": resumed run differs from the straight run";
  EXPECT_EQ(resumed.final_val_loss, full.final_val_loss);

  // a mismatched config is refused with a reason
  og::Config bad = r;
  bad.optim.matrix.fraction = 0.125;
  bad.optim.matrix.algorithm = "dion2";
  bad.optim.matrix.select = "l1";
  if (algo == "dion2_l1" || algo == "dion2_random") {
    bad.model.d_model = 64;
    try {
      og::run_train(bad, d);
      ADD_FAILURE() << "expected a refusal";
    } catch (const og::Error& e) {
      EXPECT_NE(std::string(e.what()).find("model differs"), std::string::npos) << e.what();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Optimizers, Resume, ::testing::Values("adamw", "muon", "dion2_l1", "dion2_random", "dion"));
