// `orthogpt bench` on the CPU path (a tiny model: seconds), and train.device resolution.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "train/backend.h"
#include "train/bench.h"

#ifdef ORTHOGPT_CUDA
#include "core/cuda_utils.h"
#endif

namespace {

og::BenchOptions tiny_bench() {
  og::BenchOptions o;
  o.overrides = {"--model.vocab_size", "256", "--model.d_model", "32",   "--model.n_layer",          "2",
                 "--model.n_head",     "2",   "--model.seq_len", "16",   "--train.micro_batch_size", "2",
                 "--device",           "cpu", "--optimizer",     "dion2"};
  o.warmup = 1;
  o.steps = 2;
  o.grad_accum = 3;
  return o;
}

TEST(Bench, TinyModelOnCpu) {
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  const og::BenchResult r = og::run_bench(tiny_bench(), out);
  EXPECT_EQ(r.tokens_per_step, 2 * 16 * 3);
  EXPECT_GT(r.num_params, 0u);
  for (const og::BenchPhase* p : {&r.forward_backward, &r.optimizer, &r.step}) {
    EXPECT_GT(p->mean_ms, 0.0);
    EXPECT_LE(p->min_ms, p->mean_ms);
    EXPECT_TRUE(std::isnan(p->mfu)) << "MFU is a GPU figure";
  }
  EXPECT_GE(r.step.mean_ms, r.forward_backward.mean_ms);
  EXPECT_NEAR(r.step.tokens_per_s, r.tokens_per_step / (r.step.mean_ms / 1e3), 1e-6 * r.step.tokens_per_s);
  EXPECT_TRUE(std::isfinite(r.first_loss) && std::isfinite(r.last_loss));
  // the table
  std::rewind(out);
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof buf, out)) text += buf;
  std::fclose(out);
  for (const char* needle : {"forward+backward", "optimizer", "step", "tokens/s", "dion2"})
    EXPECT_NE(text.find(needle), std::string::npos) << needle << " missing from:\n" << text;
}

TEST(Bench, BadOptionsAreErrors) {
  og::BenchOptions o = tiny_bench();
  o.steps = 0;
  EXPECT_THROW(og::run_bench(o, nullptr), og::Error);
  o = tiny_bench();
  o.overrides.push_back("--model.n_hed");
  o.overrides.push_back("3");
  EXPECT_THROW(og::run_bench(o, nullptr), og::Error);
}

TEST(Device, Resolution) {
  EXPECT_EQ(og::resolve_device("cpu"), og::Device::CPU);
  EXPECT_THROW(og::resolve_device("tpu"), og::Error);
#ifdef ORTHOGPT_CUDA
  const bool gpu = og::cuda_available();
#else
  const bool gpu = false;
#endif
  EXPECT_EQ(og::resolve_device("auto"), gpu ? og::Device::CUDA : og::Device::CPU);
  if (gpu) {
    EXPECT_EQ(og::resolve_device("cuda"), og::Device::CUDA);
  } else {
    try {
      og::resolve_device("cuda");
      ADD_FAILURE() << "cuda without a GPU must be refused";
    } catch (const og::Error& e) {
      EXPECT_NE(std::string(e.what()).find("train.device"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
