// Checkpoint format: round trip, atomic publish, and refusal of corrupted or truncated files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "tests/common/tiny_run.h"
#include "train/checkpoint.h"

using og_test::TempDir;

namespace {

og::CheckpointMeta sample_meta() {
  og::CheckpointMeta m;
  m.step = 42;
  m.world = 2;
  m.loaders = {{0, 128, 0}, {1, 256, 3}};
  m.model_signature = "model";
  m.optimizer_signature = "optim";
  m.config_yaml = "model:\n  d_model: 8\n";
  return m;
}

template <typename F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const og::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Checkpoint, RoundTrip) {
  TempDir run("og_ckpt_rt");
  og::Rng rng(3);
  std::vector<float> a(1000), b(77);
  for (auto& x : a) x = (float)rng.normal();
  for (auto& x : b) x = (float)rng.normal();
  const std::string dir = og::checkpoint_dir(run.str(), 42);
  og::write_checkpoint(dir, sample_meta(), {{"params", a.data(), a.size() * 4}, {"optim/m", b.data(), b.size() * 4}});
  EXPECT_EQ(og::latest_checkpoint(run.str()), dir);
  for (const std::string& path : {dir, run.str(), run / "checkpoints"}) {
    og::CheckpointReader r(path);
    EXPECT_EQ(r.meta().step, 42);
    EXPECT_EQ(r.meta().world, 2);
    ASSERT_EQ(r.meta().loaders.size(), 2u);
    EXPECT_EQ(r.meta().loaders[1].position, 256);
    EXPECT_EQ(r.meta().loaders[1].epoch, 3);
    EXPECT_EQ(r.meta().config_yaml, sample_meta().config_yaml);
    std::vector<float> a2(a.size()), b2(b.size());
    r.read("params", a2.data(), a2.size() * 4);
    r.read("optim/m", b2.data(), b2.size() * 4);
    EXPECT_EQ(a, a2);
    EXPECT_EQ(b, b2);
    EXPECT_NE(error_of([&] { r.read("params", a2.data(), 4); }).find("params"), std::string::npos);
    EXPECT_NE(error_of([&] { r.read("nothere", a2.data(), 4); }).find("nothere"), std::string::npos);
  }
}

TEST(Checkpoint, CorruptionIsRefused) {
  TempDir run("og_ckpt_bad");
  std::vector<float> a(5000, 1.5f);
  const std::string dir = og::checkpoint_dir(run.str(), 1);
  og::write_checkpoint(dir, sample_meta(), {{"params", a.data(), a.size() * 4}});
  const std::string state = dir + "/state.bin";
  // flip one byte in the middle
  {
    std::fstream f(state, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(3000);
    char c = 0x55;
    f.write(&c, 1);
  }
  std::string msg = error_of([&] { og::CheckpointReader r(dir); });
  EXPECT_NE(msg.find("checksum"), std::string::npos) << msg;
  EXPECT_NE(msg.find("state.bin"), std::string::npos) << msg;
  // truncated
  og::write_checkpoint(dir, sample_meta(), {{"params", a.data(), a.size() * 4}});
  std::filesystem::resize_file(state, 10000);
  msg = error_of([&] { og::CheckpointReader r(dir); });
  EXPECT_FALSE(msg.empty());
  // malformed meta
  og::write_checkpoint(dir, sample_meta(), {{"params", a.data(), a.size() * 4}});
  std::ofstream(dir + "/meta.json") << "{ not json";
  msg = error_of([&] { og::CheckpointReader r(dir); });
  EXPECT_NE(msg.find("meta.json"), std::string::npos) << msg;
  // nothing there
  msg = error_of([&] { og::CheckpointReader r(run / "empty"); });
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
}

TEST(Checkpoint, FailedWriteKeepsThePreviousOne) {
  TempDir run("og_ckpt_fail");
  std::vector<float> a(100, 2.0f);
  og::write_checkpoint(og::checkpoint_dir(run.str(), 1), sample_meta(), {{"params", a.data(), a.size() * 4}});
  // a tensor pointer that faults cannot be used portably; instead make the target's parent a
  // regular file so creating the temp folder fails
  std::ofstream(run / "blocker") << "x";
  const std::string msg = error_of([&] {
    og::write_checkpoint(run / "blocker/checkpoints/step_00000002", sample_meta(), {{"params", a.data(), 400}});
  });
  EXPECT_FALSE(msg.empty());
  og::CheckpointReader r(run.str());
  EXPECT_EQ(r.meta().step, 42);
  EXPECT_EQ(og::latest_checkpoint(run.str()), og::checkpoint_dir(run.str(), 1));
}

TEST(Checkpoint, PruneKeepsNewest) {
  TempDir run("og_ckpt_prune");
  std::vector<float> a(10, 1.0f);
  for (int s = 1; s <= 4; ++s)
    og::write_checkpoint(og::checkpoint_dir(run.str(), s), sample_meta(), {{"params", a.data(), 40}});
  og::prune_checkpoints(run.str(), 2);
  EXPECT_FALSE(std::filesystem::exists(og::checkpoint_dir(run.str(), 1)));
  EXPECT_FALSE(std::filesystem::exists(og::checkpoint_dir(run.str(), 2)));
  EXPECT_TRUE(std::filesystem::exists(og::checkpoint_dir(run.str(), 3)));
  EXPECT_TRUE(std::filesystem::exists(og::checkpoint_dir(run.str(), 4)));
  EXPECT_EQ(og::latest_checkpoint(run.str()), og::checkpoint_dir(run.str(), 4));
}
