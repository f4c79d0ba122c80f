// Config loading: YAML + CLI overrides, strict validation with messages that name the key.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "optim/lr_schedule.h"
#include "train/config.h"

namespace {

std::string write_tmp(const std::string& name, const std::string& text) {
  const auto dir = std::filesystem::temp_directory_path() / ("og_config_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = (dir / name).string();
  std::ofstream(path) << text;
  return path;
}

// Expect an og::Error whose message contains every needle.
template <typename F> void expect_error(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
    FAIL() << "expected an og::Error";
  } catch (const og::Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message: " << msg << "\nmissing: " << n;
  }
}

}  // namespace

TEST(Config, DefaultsValidate) {
  og::Config c = og::load_config("");
  EXPECT_NO_THROW(og::validate_config(c, 1));
  EXPECT_EQ(c.model.d_model, 768);
  EXPECT_EQ(c.optim.matrix.algorithm, "dion2");
}

TEST(Config, YamlThenCliOverrides) {
  const auto path = write_tmp("a.yaml",
                              "model:\n  d_model: 128\n  n_head: 4\noptim:\n  lr: 0.01\n  matrix:\n    fraction: 0.5\n"
                              "    ef: off\n  scalar:\n    betas: [0.8, 0.9]\ntrain:\n  steps: 7\n");
  og::Config c = og::load_config(path, {"--optim.matrix.select", "random", "--lr=0.03", "--fraction", "0.125",
                                        "--steps", "9", "--ef", "on", "--model.n_layer", "3"});
  EXPECT_EQ(c.model.d_model, 128);
  EXPECT_EQ(c.model.n_head, 4);
  EXPECT_EQ(c.model.n_layer, 3);
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.03);
  EXPECT_DOUBLE_EQ(c.optim.matrix.fraction, 0.125);
  EXPECT_EQ(c.optim.matrix.select, "random");
  EXPECT_TRUE(c.optim.matrix.ef);
  EXPECT_EQ(c.train.steps, 9);
  EXPECT_DOUBLE_EQ(c.optim.scalar.betas[0], 0.8);
  EXPECT_DOUBLE_EQ(c.optim.scalar.betas[1], 0.9);
  const og::OptimHParams h = c.matrix_hparams();
  EXPECT_EQ(h.algorithm, og::Algorithm::Dion2);
  EXPECT_EQ(h.select, og::Select::Random);
  EXPECT_FLOAT_EQ(h.ef_decay, 0.95f);  // ef_decay < 0 means mu
}

TEST(Config, UnknownKeysSuggest) {
  const auto path = write_tmp("b.yaml", "optim:\n  matrix:\n    fracton: 0.5\n");
  expect_error([&] { og::load_config(path); }, {path, "optim.matrix.fracton", "did you mean 'optim.matrix.fraction'"});
  expect_error([&] { og::load_config("", {"--optim.lrr", "1"}); }, {"optim.lrr", "did you mean 'optim.lr'"});
  expect_error([&] { og::load_config("", {"--fractoin", "0.5"}); }, {"fractoin", "did you mean 'fraction'"});
  // the reference's silent typo: betas on a group that does not read them
  const auto p2 = write_tmp("c.yaml", "optim:\n  betas: [0.95, 0.98]\n");
  expect_error([&] { og::load_config(p2); }, {"optim.betas", "did you mean 'optim.scalar.betas'"});
}

TEST(Config, WrongTypesNameTheKey) {
  expect_error([&] { og::load_config("", {"--train.steps", "ten"}); }, {"train.steps", "integer", "ten"});
  expect_error([&] { og::load_config("", {"--optim.lr", "fast"}); }, {"optim.lr", "number"});
  expect_error([&] { og::load_config("", {"--optim.matrix.ef", "maybe"}); }, {"optim.matrix.ef", "on/off"});
  expect_error([&] { og::load_config("", {"--optim.matrix.select", "l2"}); }, {"optim.matrix.select", "l1, random"});
  expect_error([&] { og::load_config("", {"--optim.scalar.betas", "0.9"}); }, {"optim.scalar.betas", "two numbers"});
  const auto path = write_tmp("d.yaml", "model:\n  d_model: [1, 2]\n");
  expect_error([&] { og::load_config(path); }, {path, "model.d_model"});
  const auto bad = write_tmp("e.yaml", "model: {d_model: 1\n");
  expect_error([&] { og::load_config(bad); }, {bad, "YAML"});
  // found by fuzz_config in CI: a complex (list or mapping) key used to escape as a yaml-cpp exception
  const auto ck = write_tmp("f.yaml", "model:\n  ? [d_model, n_head]\n  : 1\n");
  expect_error([&] { og::load_config(ck); }, {ck, "model", "list, not a name"});
  const auto ck2 = write_tmp("g.yaml", "? {a: 1}\n: 2\n");
  expect_error([&] { og::load_config(ck2); }, {ck2, "mapping, not a name"});
  // found by fuzz_config: a `base:` name the OS refuses (too long) escaped as a filesystem_error
  const auto longname = write_tmp("h.yaml", "base: " + std::string(5000, 'x') + ".yaml\n");
  expect_error([&] { og::load_config(longname); }, {"config file", "too long"});
  expect_error([&] { og::load_config("/nonexistent/x.yaml"); }, {"/nonexistent/x.yaml"});
  expect_error([&] { og::load_config("", {"--lr"}); }, {"--lr", "needs a value"});
}

TEST(Config, ImpossibleValuesNameTheKey) {
  auto invalid = [](std::vector<std::string> ov, int world, std::initializer_list<std::string> needles) {
    og::Config c = og::load_config("", ov);
    expect_error([&] { og::validate_config(c, world); }, needles);
  };
  invalid({"--fraction", "0"}, 1, {"optim.matrix.fraction", "(0, 1]"});
  invalid({"--fraction", "1.5"}, 1, {"optim.matrix.fraction"});
  invalid({"--batch-size", "100", "--micro-batch-size", "32"}, 1, {"train.batch_size", "not divisible"});
  invalid({"--batch-size", "64", "--micro-batch-size", "32"}, 3, {"train.batch_size", "3 rank"});
  invalid({"--model.n_head", "5"}, 1, {"model.n_head", "do not divide"});
  invalid({"--model.d_model", "12", "--model.n_head", "4"}, 1, {"model.n_head", "even"});
  invalid({"--optim.matrix.mu", "1"}, 1, {"optim.matrix.mu"});
  invalid({"--train.warmup_frac", "0.9", "--train.warmdown_frac", "0.2"}, 1, {"train.warmdown_frac"});
  invalid({"--dist.compressed_sync", "on"}, 1, {"dist.compressed_sync", "random"});
  invalid({"--steps", "0"}, 1, {"train.steps"});
  invalid({"--model.vocab_size", "70000"}, 1, {"model.vocab_size", "uint16"});
}

TEST(Config, ResolvedYamlRoundTrips) {
  og::Config c = og::load_config("", {"--fraction", "0.125", "--optim.scalar.algorithm", "lion", "--log.dir", "x y"});
  const std::string yaml = og::config_to_yaml(c);
  const auto path = write_tmp("f.yaml", yaml);
  og::Config d = og::load_config(path);
  EXPECT_EQ(og::config_to_yaml(d), yaml);
  EXPECT_DOUBLE_EQ(d.optim.matrix.fraction, 0.125);
  EXPECT_EQ(d.optim.scalar.algorithm, "lion");
  EXPECT_EQ(d.log.dir, "x y");
  EXPECT_NEAR(d.lm_head_lr_scale(), 1.0 / std::sqrt(768.0), 1e-7);
  EXPECT_NE(og::config_help().find("optim.matrix.fraction"), std::string::npos);
}

TEST(LrSchedule, MatchesReferenceLambda) {
  // N = 10, warmdown 0.2 -> d = 2: steps 0..8 at 1, step 9 at 1/2
  for (int i = 0; i <= 8; ++i) EXPECT_DOUBLE_EQ(og::lr_multiplier(i, 10, 0.0, 0.2), 1.0) << i;
  EXPECT_DOUBLE_EQ(og::lr_multiplier(9, 10, 0.0, 0.2), 0.5);
  // the reference 160M: d = 600 of 3000; last step uses 1/d, never 0
  EXPECT_DOUBLE_EQ(og::lr_multiplier(2400, 3000, 0.0, 0.2), 1.0);
  EXPECT_DOUBLE_EQ(og::lr_multiplier(2401, 3000, 0.0, 0.2), 599.0 / 600.0);
  EXPECT_DOUBLE_EQ(og::lr_multiplier(2999, 3000, 0.0, 0.2), 1.0 / 600.0);
  // warmup: w = 4 of 40
  EXPECT_DOUBLE_EQ(og::lr_multiplier(0, 40, 0.1, 0.0), 0.25);
  EXPECT_DOUBLE_EQ(og::lr_multiplier(3, 40, 0.1, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(og::lr_multiplier(39, 40, 0.1, 0.0), 1.0);
}

TEST(Config, BaseFilesAreLoadedFirst) {
  const auto base = write_tmp("base.yaml", "model:\n  d_model: 256\n  n_head: 4\noptim:\n  lr: 0.01\n");
  const auto exp = write_tmp("exp.yaml", "base: base.yaml\noptim:\n  lr: 0.05\n  matrix:\n    algorithm: muon\n");
  og::Config c = og::load_config(exp, {"--model.n_layer", "2"});
  EXPECT_EQ(c.model.d_model, 256);
  EXPECT_DOUBLE_EQ(c.optim.lr, 0.05);
  EXPECT_EQ(c.optim.matrix.algorithm, "muon");
  EXPECT_EQ(c.model.n_layer, 2);
  const auto loop = write_tmp("loop.yaml", "base: loop.yaml\n");
  expect_error([&] { og::load_config(loop); }, {"loops"});
  const auto missing = write_tmp("m.yaml", "base: nothere.yaml\n");
  expect_error([&] { og::load_config(missing); }, {"nothere.yaml", "does not exist"});
}

// Every shipped experiment config loads and validates (1 rank; the big ones also on 8).
TEST(Config, ShippedConfigsValidate) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(OG_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".yaml") continue;
    SCOPED_TRACE(e.path().string());
    og::Config c = og::load_config(e.path().string());
    EXPECT_NO_THROW(og::validate_config(c, 1));
    if (c.model.d_model >= 768) EXPECT_NO_THROW(og::validate_config(c, 8));
    ++n;
  }
  EXPECT_GE(n, 20);
}
