// The CUDA GPT (model/cuda/gpt_cuda.h) against the fp32 CPU reference model, and GPU training
// end to end. Both models get the SAME parameters (uploaded from one host buffer) and the same
// tokens; the CUDA model computes in bf16 with fp32 accumulation, so the comparisons use bf16
// tolerances, stated next to each check:
//   loss:                     |Δ| <= 1e-2 · |loss_cpu|
//   each parameter gradient:  ||g_gpu − g_cpu|| / ||g_cpu|| <= 3e-2 (relative L2, per tensor)
//   last-position logits:     relative L2 <= 2e-2
// A model attached to a UnitSource (as FSDP attaches it) must give the bits of its own whole
// buffers and follow the unit protocol (tests/common/unit_call_log.h).
// Set OG_TEST_VERBOSE=1 to print every measured error (to see the margins).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "core/cuda_utils.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/cuda/gpt_cuda.h"
#include "model/cuda/kernels.h"
#include "model/model.h"
#include "optim/param_groups.h"
#include "tests/common/tiny_run.h"
#include "tests/common/unit_call_log.h"
#include "train/backend.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/trainer.h"

namespace {

using og_test::TempDir;

bool verbose() { return std::getenv("OG_TEST_VERBOSE") != nullptr; }

og::GPTConfig tiny_gpt(int d_model, int n_head, int vocab = 512, int seq = 64) {
  og::GPTConfig g;
  g.vocab_size = vocab;
  g.d_model = d_model;
  g.n_layer = 2;
  g.n_head = n_head;
  g.seq_len = seq;
  return g;
}

// A config of the tiny model (vocab 512, d_model 128, 2 heads: head_dim 64, seq 64).
og::Config tiny_model_config(int n_layer) {
  og::Config c;
  c.model.vocab_size = 512;
  c.model.d_model = 128;
  c.model.n_layer = n_layer;
  c.model.n_head = 2;
  c.model.seq_len = 64;
  return c;
}

std::vector<float> init_params(const og::ParamLayout& layout, uint64_t seed) {
  std::vector<float> p(layout.total());
  og::gpt_init_params(layout, p.data(), seed);
  return p;
}

struct Batch {
  std::vector<int32_t> x, y;
};

// Uniform random tokens; every `ignore_every`-th target is the ignore index -1 (0: none).
Batch random_batch(int B, int T, int V, uint64_t seed, int ignore_every = 0) {
  og::Rng rng(seed);
  Batch b;
  b.x.resize((size_t)B * T);
  b.y.resize((size_t)B * T);
  for (auto& t : b.x) t = (int32_t)rng.below((uint64_t)V);
  for (size_t i = 0; i < b.y.size(); ++i)
    b.y[i] = ignore_every > 0 && i % ignore_every == 3 ? -1 : (int32_t)rng.below((uint64_t)V);
  return b;
}

// A learnable stream over the first 32 tokens of the vocabulary: mostly t' = (5t + 3) mod 32,
// 1 in 8 tokens random; targets are the inputs shifted by one (what the data loader does).
// A model learns quickly that only 32 tokens occur (ln V -> ln 32) and then the bigram.
Batch markov_batch(int B, int T, uint64_t seed) {
  constexpr int kAlphabet = 32;
  og::Rng rng(seed);
  Batch b;
  b.x.resize((size_t)B * T);
  b.y.resize((size_t)B * T);
  for (int r = 0; r < B; ++r) {
    int32_t t = (int32_t)rng.below(kAlphabet);
    for (int i = 0; i <= T; ++i) {
      if (i < T) b.x[(size_t)r * T + i] = t;
      if (i > 0) b.y[(size_t)r * T + i - 1] = t;
      t = rng.below(8) == 0 ? (int32_t)rng.below(kAlphabet) : (int32_t)((5 * t + 3) % kAlphabet);
    }
  }
  return b;
}

std::vector<float> download(const float* device, size_t n) {
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> h(n);
  CUDA_CHECK(cudaMemcpy(h.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}

double rel_l2(const float* got, const float* want, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = (double)got[i] - (double)want[i];
    num += d * d;
    den += (double)want[i] * want[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// Per-tensor relative L2 error of two gradient buffers (same layout); fails above tol.
void expect_grads_close(const og::ParamLayout& layout, const std::vector<float>& got, const std::vector<float>& want,
                        double tol, const std::string& what) {
  ASSERT_TRUE(all_finite(got)) << what << ": non-finite gradient";
  for (const auto& p : layout.params()) {
    const double e = rel_l2(got.data() + p.offset, want.data() + p.offset, p.numel());
    if (verbose()) std::printf("  %s %-18s rel_l2 %.3e (tol %.0e)\n", what.c_str(), p.name.c_str(), e, tol);
    EXPECT_LE(e, tol) << what << ": gradient of " << p.name;
  }
}

#define SKIP_WITHOUT_CUDA() \
  if (!og::cuda_available()) GTEST_SKIP() << "no CUDA device"

// ---- one forward/backward against the CPU model ------------------------------------------------

struct Shape {
  int d_model, n_head;  // head_dim 32: the simple attention kernels; 64 / 128: the tensor-core ones
  og::AttentionKernel attention = og::AttentionKernel::Flash;  // Cudnn: cuDNN's attention (T = seq_len)
};

og::CudaModelOptions options_for(const Shape& s) {
  og::CudaModelOptions o;
  o.attention = s.attention;
  return o;
}

#define SKIP_IF_CUDNN_MISSING(shape)                                                                   \
  if ((shape).attention == og::AttentionKernel::Cudnn && !og::gpu::CudnnAttention::built_with_cudnn()) \
  GTEST_SKIP() << "this build has no cuDNN"

class CudaModelVsCpu : public ::testing::TestWithParam<Shape> {};

TEST_P(CudaModelVsCpu, LossAndEveryGradient) {
  SKIP_WITHOUT_CUDA();
  const Shape s = GetParam();
  SKIP_IF_CUDNN_MISSING(s);
  const og::GPTConfig g = tiny_gpt(s.d_model, s.n_head);
  const int B = 4, T = 64;
  auto cpu = og::make_cpu_model(g, B);
  auto gpu = og::make_cuda_model(g, B, options_for(s));
  const std::vector<float> p = init_params(cpu->layout(), 11);
  cpu->upload_params(p.data());
  gpu->upload_params(p.data());
  const Batch b = random_batch(B, T, g.vocab_size, 5, /*ignore_every=*/7);

  cpu->zero_grad();
  gpu->zero_grad();
  const float lc = cpu->forward_backward(b.x.data(), b.y.data(), B, T, 1.0f);
  const float lg = gpu->forward_backward(b.x.data(), b.y.data(), B, T, 1.0f);
  if (verbose()) std::printf("  hd %d: loss cpu %.6f gpu %.6f\n", g.head_dim(), lc, lg);
  EXPECT_NEAR(lg, lc, 1e-2 * std::fabs(lc));

  const size_t n = cpu->layout().total();
  const std::vector<float> gc(cpu->grads(), cpu->grads() + n);
  const std::vector<float> gg = download(gpu->grads(), n);
  expect_grads_close(cpu->layout(), gg, gc, 3e-2, "hd " + std::to_string(g.head_dim()));
  // the whole-buffer norm (sum_squares on the device) against the CPU's
  const double nc = cpu->grad_norm_sq(), ng = gpu->grad_norm_sq();
  EXPECT_NEAR(std::sqrt(ng), std::sqrt(nc), 3e-2 * std::sqrt(nc));
  // and against the downloaded buffer summed on the host, in fp64 (same data: tight)
  double host = 0;
  for (float v : gg) host += (double)v * v;
  EXPECT_NEAR(ng, host, 1e-9 * host);

  // forward_loss runs the same forward: the same loss bits as forward_backward
  EXPECT_EQ(gpu->forward_loss(b.x.data(), b.y.data(), B, T), lg);
  EXPECT_NEAR(gpu->forward_loss(b.x.data(), b.y.data(), B, T), cpu->forward_loss(b.x.data(), b.y.data(), B, T),
              1e-2 * std::fabs(lc));
}

TEST_P(CudaModelVsCpu, LastLogitsOfAShortSequence) {
  SKIP_WITHOUT_CUDA();
  const Shape s = GetParam();
  SKIP_IF_CUDNN_MISSING(s);
  const og::GPTConfig g = tiny_gpt(s.d_model, s.n_head);
  auto cpu = og::make_cpu_model(g, 2);
  auto gpu = og::make_cuda_model(g, 2, options_for(s));
  const std::vector<float> p = init_params(cpu->layout(), 12);
  cpu->upload_params(p.data());
  gpu->upload_params(p.data());
  const Batch b = random_batch(1, 37, g.vocab_size, 6);  // T = 37: partial attention tiles
  const std::vector<float> lc = cpu->last_logits(b.x.data(), 37);
  const std::vector<float> lg = gpu->last_logits(b.x.data(), 37);
  ASSERT_EQ(lg.size(), (size_t)g.vocab_size);
  ASSERT_TRUE(all_finite(lg));
  const double e = rel_l2(lg.data(), lc.data(), lc.size());
  if (verbose()) std::printf("  hd %d: last logits rel_l2 %.3e\n", g.head_dim(), e);
  EXPECT_LE(e, 2e-2);
}

// hd 64 / 128 also with cuDNN's attention (the full-length batch goes through cuDNN; the short
// sequence of LastLogitsOfAShortSequence takes the flash kernels)
INSTANTIATE_TEST_SUITE_P(HeadDims, CudaModelVsCpu,
                         ::testing::Values(Shape{64, 2}, Shape{128, 2}, Shape{256, 2},
                                           Shape{128, 2, og::AttentionKernel::Cudnn},
                                           Shape{256, 2, og::AttentionKernel::Cudnn}),
                         [](const auto& info) {
                           return "hd" + std::to_string(info.param.d_model / info.param.n_head) +
                                  (info.param.attention == og::AttentionKernel::Cudnn ? "_cudnn" : "");
                         });

// ---- semantics ----------------------------------------------------------------------------------

// grads += grad_scale · dL/dθ over micro-batches. Power-of-two scales are exact in fp32 and bf16,
// so 0.5·G1 + 0.25·G2 must match the accumulated gradient up to fp32 summation order (1e-5).
TEST(CudaModel, GradientAccumulation) {
  SKIP_WITHOUT_CUDA();
  const og::GPTConfig g = tiny_gpt(128, 2);
  const int B = 4, T = 64;
  auto gpu = og::make_cuda_model(g, B);
  const size_t n = gpu->layout().total();
  const Batch b1 = random_batch(B, T, g.vocab_size, 21), b2 = random_batch(B, T, g.vocab_size, 22, 5);

  gpu->zero_grad();
  const float l1 = gpu->forward_backward(b1.x.data(), b1.y.data(), B, T, 1.0f);
  const std::vector<float> g1 = download(gpu->grads(), n);
  gpu->zero_grad();
  const float l2 = gpu->forward_backward(b2.x.data(), b2.y.data(), B, T, 1.0f);
  const std::vector<float> g2 = download(gpu->grads(), n);

  // the deferred-loss path: two micro-batches queued, one read
  gpu->zero_grad();
  gpu->forward_backward_accumulate(b1.x.data(), b1.y.data(), B, T, 0.5f);
  gpu->forward_backward_accumulate(b2.x.data(), b2.y.data(), B, T, 0.25f);
  const double sum = gpu->take_loss_sum();
  EXPECT_NEAR(sum, (double)l1 + (double)l2, 1e-6 * sum);
  EXPECT_EQ(gpu->take_loss_sum(), 0.0) << "take_loss_sum must reset the accumulator";
  const std::vector<float> acc = download(gpu->grads(), n);
  std::vector<float> want(n);
  for (size_t i = 0; i < n; ++i) want[i] = 0.5f * g1[i] + 0.25f * g2[i];
  for (const auto& p : gpu->layout().params())
    EXPECT_LE(rel_l2(acc.data() + p.offset, want.data() + p.offset, p.numel()), 1e-5) << p.name;

  // zero_grad clears everything
  gpu->zero_grad();
  EXPECT_EQ(gpu->grad_norm_sq(), 0.0);
}

// A UnitSource over device copies of whole fp32 weights (and their bf16 conversion) that logs the
// calls. Every unit gets buffers of its own: acquire copies the unit in (fp32 for the embedding,
// bf16 otherwise), release overwrites it with NaN (all-ones bits), grad_buffer hands out a zeroed
// one, grads_ready adds it into a whole gradient buffer and poisons it. All on the model's
// stream, so a model that read a unit after releasing it, or wrote outside its unit, would see
// or leave wrong numbers.
class DeviceRecordingUnits final : public og::UnitSource {
 public:
  DeviceRecordingUnits(og::GptCuda& m, const std::vector<float>& host)
      : m_(m), units_(m.units()), f32_(host.size()), bf16_(host.size()), grads_(host.size()) {
    CUDA_CHECK(cudaMemcpy(f32_.data(), host.data(), f32_.bytes(), cudaMemcpyHostToDevice));
    og::gpu::convert_f32_to_bf16(bf16_.data(), f32_.data(), (int64_t)host.size(), m.stream());
    CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), m.stream()));
    for (size_t u = 0; u < units_.size(); ++u) {
      held_.emplace_back(units_[u].floats * 4);
      out_.emplace_back(units_[u].floats);
    }
  }
  const void* acquire(int u, int next) override {
    log.add('a', u, next);
    const size_t off = units_[u].offset, n = units_[u].floats;
    if (u == 0)
      CUDA_CHECK(cudaMemcpyAsync(held_[u].data(), f32_.data() + off, n * 4, cudaMemcpyDeviceToDevice, m_.stream()));
    else
      CUDA_CHECK(cudaMemcpyAsync(held_[u].data(), bf16_.data() + off, n * 2, cudaMemcpyDeviceToDevice, m_.stream()));
    return held_[u].data();
  }
  void release(int u) override {
    log.add('r', u);
    CUDA_CHECK(cudaMemsetAsync(held_[u].data(), 0xFF, held_[u].bytes(), m_.stream()));
  }
  void* grad_buffer(int u) override {
    log.add('g', u);
    CUDA_CHECK(cudaMemsetAsync(out_[u].data(), 0, out_[u].bytes(), m_.stream()));
    return out_[u].data();
  }
  void grads_ready(int u) override {
    log.add('d', u);
    og::gpu::add_f32(grads_.data() + units_[u].offset, out_[u].data(), (int64_t)units_[u].floats, m_.stream());
    CUDA_CHECK(cudaMemsetAsync(out_[u].data(), 0xFF, out_[u].bytes(), m_.stream()));
  }
  std::vector<float> grads() {
    m_.synchronize();
    return download(grads_.data(), grads_.size());
  }
  void zero_grads() { CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), m_.stream())); }
  og_test::UnitCallLog log;

 private:
  og::GptCuda& m_;
  std::vector<og::ParamUnit> units_;
  og::DeviceBuffer<float> f32_;
  og::DeviceBuffer<og::gpu::bf16> bf16_;
  og::DeviceBuffer<float> grads_;
  std::vector<og::DeviceBuffer<char>> held_;
  std::vector<og::DeviceBuffer<float>> out_;
};

// Bitwise: a gradient element is written once per micro-batch, into zero, by the same kernels;
// the attached source adds each micro-batch's unit gradient into its sum (exact for one).
TEST(CudaModel, UnitSourceEqualsWholeBuffers) {
  SKIP_WITHOUT_CUDA();
  og::GPTConfig g = tiny_gpt(128, 2);
  g.n_layer = 3;
  const int B = 2, T = 64;
  const std::vector<float> p = init_params(og::gpt_param_layout(g), 23);
  const Batch b1 = random_batch(B, T, g.vocab_size, 71), b2 = random_batch(B, T, g.vocab_size, 72, 7);
  for (og::Recompute r : {og::Recompute::None, og::Recompute::Block}) {
    og::CudaModelOptions o;
    o.recompute = r;
    auto own = og::make_cuda_model(g, B, o);
    auto attached = og::make_cuda_model(g, B, o);
    own->upload_params(p.data());
    DeviceRecordingUnits src(*attached, p);
    attached->attach_units(&src);
    EXPECT_EQ(attached->params(), nullptr);
    EXPECT_EQ(attached->memory().weights, 0u) << "the whole buffers must be freed";
    EXPECT_THROW(attached->download_params(std::vector<float>(p.size()).data()), og::Error);
    const int nu = (int)attached->units().size();
    const size_t n = p.size();

    own->zero_grad();
    EXPECT_EQ(attached->forward_backward(b1.x.data(), b1.y.data(), B, T, 1.0f),
              own->forward_backward(b1.x.data(), b1.y.data(), B, T, 1.0f))
        << og::name_of(r);
    EXPECT_EQ(src.log.check(nu, true), "") << og::name_of(r);
    EXPECT_TRUE(src.grads() == download(own->grads(), n)) << og::name_of(r) << ": gradients differ";
    // the deferred-loss path, two micro-batches
    own->zero_grad();
    src.zero_grads();
    src.log.clear();
    for (const Batch* b : {&b1, &b2}) {
      own->forward_backward_accumulate(b->x.data(), b->y.data(), B, T, 0.5f);
      attached->forward_backward_accumulate(b->x.data(), b->y.data(), B, T, 0.5f);
    }
    EXPECT_EQ(attached->take_loss_sum(), own->take_loss_sum());
    const std::vector<float> got = src.grads(), want = download(own->grads(), n);
    for (const auto& pi : own->layout().params())
      EXPECT_LE(rel_l2(got.data() + pi.offset, want.data() + pi.offset, pi.numel()), 1e-6) << pi.name;
    src.log.clear();
    EXPECT_EQ(attached->forward_loss(b2.x.data(), b2.y.data(), B, T),
              own->forward_loss(b2.x.data(), b2.y.data(), B, T));
    EXPECT_EQ(src.log.check(nu, false), "");
    src.log.clear();
    EXPECT_EQ(attached->last_logits(b1.x.data(), 33), own->last_logits(b1.x.data(), 33));
    EXPECT_EQ(src.log.check(nu, false), "");
  }
}

// Recomputation must not change the result: the recomputed activations come from the same
// kernels on the same inputs. Calls use a smaller B and T than planned (buffer prefixes).
TEST(CudaModel, RecomputeModesMatchKeepingEverything) {
  SKIP_WITHOUT_CUDA();
  const og::GPTConfig g = tiny_gpt(128, 2, 512, 64);
  const int maxB = 4, B = 3, T = 48;
  const Batch b = random_batch(B, T, g.vocab_size, 31, 9);
  const std::vector<float> p = init_params(og::gpt_param_layout(g), 13);
  std::vector<float> ref;
  float ref_loss = 0;
  size_t prev_bytes = 0;
  for (og::Recompute r : {og::Recompute::None, og::Recompute::Elementwise, og::Recompute::Block}) {
    og::CudaModelOptions o;
    o.recompute = r;
    auto gpu = og::make_cuda_model(g, maxB, o);
    gpu->upload_params(p.data());
    gpu->zero_grad();
    const float loss = gpu->forward_backward(b.x.data(), b.y.data(), B, T, 1.0f);
    const std::vector<float> gr = download(gpu->grads(), gpu->layout().total());
    const size_t bytes = gpu->memory().activations;
    if (verbose()) std::printf("  recompute %-11s activations %zu bytes, loss %.6f\n", og::name_of(r), bytes, loss);
    if (r == og::Recompute::None) {
      ref = gr;
      ref_loss = loss;
      prev_bytes = bytes;
      continue;
    }
    EXPECT_EQ(loss, ref_loss) << og::name_of(r);
    for (const auto& pi : gpu->layout().params())
      EXPECT_LE(rel_l2(gr.data() + pi.offset, ref.data() + pi.offset, pi.numel()), 1e-6)
          << og::name_of(r) << ": " << pi.name;
    EXPECT_LT(bytes, prev_bytes) << og::name_of(r) << " should plan less activation memory";
    prev_bytes = bytes;
  }
}

// The same with cuDNN's attention (full-length sequences: T = seq_len). Its forward is
// deterministic, so the recomputed activations and the loss match; its backward adds dQ with
// atomics, so the gradients need only agree to the summation order (a stale or wrong recomputed
// activation would be off by far more; measured on the H100 at this size: bit-identical).
TEST(CudaModel, RecomputeModesMatchWithCudnnAttention) {
  SKIP_WITHOUT_CUDA();
  if (!og::gpu::CudnnAttention::built_with_cudnn()) GTEST_SKIP() << "this build has no cuDNN";
  const og::GPTConfig g = tiny_gpt(128, 2, 512, 64);
  const int B = 4, T = 64;
  const Batch b = random_batch(B, T, g.vocab_size, 32, 9);
  const std::vector<float> p = init_params(og::gpt_param_layout(g), 14);
  std::vector<float> ref;
  float ref_loss = 0;
  for (og::Recompute r : {og::Recompute::None, og::Recompute::Elementwise, og::Recompute::Block}) {
    og::CudaModelOptions o;
    o.recompute = r;
    o.attention = og::AttentionKernel::Cudnn;
    auto gpu = og::make_cuda_model(g, B, o);
    gpu->upload_params(p.data());
    gpu->zero_grad();
    const float loss = gpu->forward_backward(b.x.data(), b.y.data(), B, T, 1.0f);
    const std::vector<float> gr = download(gpu->grads(), gpu->layout().total());
    if (r == og::Recompute::None) {
      ref = gr;
      ref_loss = loss;
      continue;
    }
    EXPECT_NEAR(loss, ref_loss, 1e-6 * std::fabs(ref_loss)) << og::name_of(r);
    for (const auto& pi : gpu->layout().params()) {
      const double e = rel_l2(gr.data() + pi.offset, ref.data() + pi.offset, pi.numel());
      if (verbose()) std::printf("  recompute %-11s %-14s rel_l2 %.3e\n", og::name_of(r), pi.name.c_str(), e);
      EXPECT_LE(e, 5e-3) << og::name_of(r) << ": " << pi.name;
    }
  }
}

// Repeating a step on the same inputs gives the same bits (no atomics, fixed reduction orders).
TEST(CudaModel, Deterministic) {
  SKIP_WITHOUT_CUDA();
  const og::GPTConfig g = tiny_gpt(128, 2);
  const int B = 4, T = 64;
  auto gpu = og::make_cuda_model(g, B);
  const Batch b = random_batch(B, T, g.vocab_size, 41);
  std::vector<float> first;
  for (int rep = 0; rep < 2; ++rep) {
    gpu->zero_grad();
    gpu->forward_backward(b.x.data(), b.y.data(), B, T, 1.0f);
    const std::vector<float> gr = download(gpu->grads(), gpu->layout().total());
    if (rep == 0)
      first = gr;
    else
      EXPECT_TRUE(gr == first) << "a repeated forward/backward gave different gradient bits";
  }
}

TEST(CudaModel, BadInputsAreClearErrors) {
  SKIP_WITHOUT_CUDA();
  const og::GPTConfig g = tiny_gpt(64, 2);
  auto gpu = og::make_cuda_model(g, 2);
  Batch b = random_batch(2, 16, g.vocab_size, 51);
  b.x[5] = g.vocab_size;
  EXPECT_THROW(gpu->forward_backward(b.x.data(), b.y.data(), 2, 16, 1.0f), og::Error);
  b = random_batch(2, 16, g.vocab_size, 51);
  b.y[3] = -2;
  EXPECT_THROW(gpu->forward_backward(b.x.data(), b.y.data(), 2, 16, 1.0f), og::Error);
  b = random_batch(2, 16, g.vocab_size, 51);
  std::fill(b.y.begin(), b.y.end(), -1);
  EXPECT_THROW(gpu->forward_loss(b.x.data(), b.y.data(), 2, 16), og::Error);
  b = random_batch(3, 16, g.vocab_size, 51);
  EXPECT_THROW(gpu->forward_backward(b.x.data(), b.y.data(), 3, 16, 1.0f), og::Error) << "batch above max_batch";
  b = random_batch(1, 65, g.vocab_size, 51);
  EXPECT_THROW(gpu->last_logits(b.x.data(), 65), og::Error) << "sequence above seq_len";
  // the model still works after refusing
  b = random_batch(2, 16, g.vocab_size, 52);
  EXPECT_TRUE(std::isfinite(gpu->forward_loss(b.x.data(), b.y.data(), 2, 16)));
}

// ---- training: CUDA model + CUDA optimizers vs CPU model + CPU optimizers ----------------------

// 20 steps from the same init on the same (learnable) batches. The paths differ by bf16
// rounding in every step, so the curves drift apart slowly: |Δloss| <= 2% of the CPU loss for
// the first 5 steps and <= 5% over all 20; both must learn (final loss < 80% of the first).
class CudaTrainingVsCpu : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaTrainingVsCpu, LossCurvesAgree) {
  SKIP_WITHOUT_CUDA();
  og::Config cfg = tiny_model_config(2);
  cfg.optim.matrix.algorithm = GetParam();
  cfg.optim.matrix.fraction = 0.5;
  cfg.optim.lr = 0.02;  // the reference's lr, for every group
  const og::GPTConfig g = cfg.gpt();
  const int B = 4, T = 64, steps = 20;
  auto cpu = og::make_cpu_model(g, B);
  auto gpu = og::make_cuda_model(g, B);
  const std::vector<float> p = init_params(cpu->layout(), 3);
  cpu->upload_params(p.data());
  gpu->upload_params(p.data());
  og::ParamGroups gc(og::build_group_specs(cfg), cpu->layout(), cpu->params(), cpu->grads(), og::Device::CPU);
  og::ParamGroups gg(og::build_group_specs(cfg), gpu->layout(), gpu->params(), gpu->grads(), og::Device::CUDA);
  og::bind_optimizers(gg, *gpu);

  std::vector<double> lc, lg;
  for (int s = 0; s < steps; ++s) {
    const Batch b = markov_batch(B, T, 100 + s);
    cpu->zero_grad();
    gpu->zero_grad();
    lc.push_back(cpu->forward_backward(b.x.data(), b.y.data(), B, T, 1.0f));
    lg.push_back(gpu->forward_backward(b.x.data(), b.y.data(), B, T, 1.0f));
    gc.step(s + 1, cfg.optim.lr);
    gg.step(s + 1, cfg.optim.lr);
    gpu->params_changed();
  }
  for (int s = 0; s < steps; ++s) {
    if (verbose()) std::printf("  %s step %2d loss cpu %.5f gpu %.5f\n", GetParam().c_str(), s, lc[s], lg[s]);
    ASSERT_TRUE(std::isfinite(lg[s])) << "step " << s;
    EXPECT_NEAR(lg[s], lc[s], (s < 5 ? 0.02 : 0.05) * lc[s]) << GetParam() << " step " << s;
  }
  EXPECT_LT(lc.back(), 0.8 * lc.front()) << "the CPU run did not learn; the comparison would say little";
  EXPECT_LT(lg.back(), 0.8 * lg.front());
  // the parameters after 20 steps stay close too
  std::vector<float> pc(cpu->layout().total()), pg(cpu->layout().total());
  cpu->download_params(pc.data());
  gpu->download_params(pg.data());
  ASSERT_TRUE(all_finite(pg));
  EXPECT_LE(rel_l2(pg.data(), pc.data(), pc.size()), 5e-2);
}

INSTANTIATE_TEST_SUITE_P(Optimizers, CudaTrainingVsCpu, ::testing::Values("adamw", "dion2"));

// ---- run_train on the GPU -------------------------------------------------------------------------

og::DistContext self_context() {
  og::DistContext d;
  d.host_comm = og::make_self_communicator();
  return d;
}

og::Config gpu_train_config(const std::string& data, const std::string& out) {
  og::Config c = og_test::tiny_config(data, out);
  c.model.d_model = 128;  // head_dim 64: the tensor-core attention path
  c.model.n_head = 2;
  c.model.seq_len = 64;
  c.train.batch_size = 8;
  c.train.micro_batch_size = 4;  // 2 micro-batches per step
  c.data.val_tokens = 4 * 64 * 2;
  c.train.device = "auto";      // must pick the GPU
  c.train.attention = "flash";  // deterministic (bit-identical resume); cuDNN's has its own test
  return c;
}

// The training losses of metrics.jsonl, step by step.
std::vector<double> train_losses(const std::filesystem::path& metrics) {
  std::vector<double> out;
  std::ifstream m(metrics);
  for (std::string line; std::getline(m, line);) {
    if (line.find("\"type\":\"train\"") == std::string::npos) continue;
    const size_t at = line.find("\"loss\":");
    if (at != std::string::npos) out.push_back(std::strtod(line.c_str() + at + 7, nullptr));
  }
  return out;
}

TEST(CudaTrain, RunsEndToEndWithAutoDevice) {
  SKIP_WITHOUT_CUDA();
  TempDir data("og_cuda_train_data"), out("og_cuda_train_out");
  og_test::write_random_shards(data.str(), "train", 1, 30000, 256, 1);
  og_test::write_random_shards(data.str(), "val", 1, 5000, 256, 2);
  og::Config c = gpu_train_config(data.str(), out.str());
  c.train.steps = 6;
  c.train.val_every = 3;
  og::validate_config(c);
  og::DistContext d = self_context();
  const og::TrainResult r = og::run_train(c, d);
  EXPECT_EQ(r.steps_done, 6);
  EXPECT_TRUE(std::isfinite(r.final_train_loss));
  EXPECT_TRUE(std::isfinite(r.final_val_loss));
  EXPECT_TRUE(all_finite(r.final_params));
  // GPU rows carry MFU; optim_ms comes one row late (from CUDA events)
  std::ifstream m(out / "metrics.jsonl");
  int train_rows = 0, mfu_rows = 0, optim_rows = 0, done_mem = 0;
  for (std::string line; std::getline(m, line);) {
    if (line.find("\"type\":\"train\"") != std::string::npos) {
      ++train_rows;
      mfu_rows += line.find("\"mfu\"") != std::string::npos;
      optim_rows += line.find("\"optim_ms\"") != std::string::npos;
    }
    done_mem += line.find("\"gpu_memory_peak_gib\"") != std::string::npos;
  }
  EXPECT_EQ(train_rows, 6);
  EXPECT_EQ(mfu_rows, 6) << "device auto did not train on the GPU";
  EXPECT_EQ(optim_rows, 5);
  EXPECT_EQ(done_mem, 1);

  // the same run on the CPU lands close (bf16 vs fp32 over 6 steps of random tokens)
  og::Config cc = c;
  cc.train.device = "cpu";
  cc.log.dir = out / "cpu";
  const og::TrainResult rc = og::run_train(cc, d);
  EXPECT_NEAR(r.final_val_loss, rc.final_val_loss, 0.03 * rc.final_val_loss);
}

// train.attention: cudnn trains like the flash kernels: the same loss at every step and close
// weights after 8 steps of Dion2 (both bf16 attention with fp32 accumulation; cuDNN adds dQ with
// atomics, so only closeness is expected). Also: auto resolves to cuDNN in a build with it.
TEST(CudaTrain, CudnnAttentionTrainsLikeFlash) {
  SKIP_WITHOUT_CUDA();
  if (!og::gpu::CudnnAttention::built_with_cudnn()) GTEST_SKIP() << "this build has no cuDNN";
  TempDir data("og_cuda_cudnn_data"), out("og_cuda_cudnn_out");
  og_test::write_random_shards(data.str(), "train", 1, 30000, 256, 1);
  og_test::write_random_shards(data.str(), "val", 1, 5000, 256, 2);
  og::DistContext d = self_context();
  og::TrainResult r[2];
  std::vector<double> losses[2];
  const char* kinds[2] = {"flash", "cudnn"};
  for (int i = 0; i < 2; ++i) {
    og::Config c = gpu_train_config(data.str(), out / kinds[i]);
    c.train.steps = 8;
    c.train.val_every = 4;
    c.optim.matrix.algorithm = "dion2";
    c.train.attention = kinds[i];
    r[i] = og::run_train(c, d);
    losses[i] = train_losses(std::filesystem::path(out / kinds[i]) / "metrics.jsonl");
  }
  ASSERT_EQ(losses[0].size(), 8u);
  ASSERT_EQ(losses[1].size(), 8u);
  for (int s = 0; s < 8; ++s) {
    if (verbose()) std::printf("  step %d: loss flash %.6f cudnn %.6f\n", s, losses[0][s], losses[1][s]);
    EXPECT_NEAR(losses[1][s], losses[0][s], 2e-3 * losses[0][s]) << "step " << s;
  }
  EXPECT_NEAR(r[1].final_val_loss, r[0].final_val_loss, 2e-3 * r[0].final_val_loss);
  ASSERT_TRUE(all_finite(r[1].final_params));
  const double e = rel_l2(r[1].final_params.data(), r[0].final_params.data(), r[0].final_params.size());
  if (verbose()) std::printf("  final weights cudnn vs flash: rel_l2 %.3e\n", e);
  EXPECT_LE(e, 1e-2);

  og::Config c = tiny_model_config(1);
  auto m = og::make_model(c, og::Device::CUDA, 2);
  EXPECT_EQ(dynamic_cast<og::GptCuda&>(*m).attention_kernel(), og::AttentionKernel::Cudnn) << "train.attention: auto";
}

// dist.mode fsdp in a world of one on the GPU: the unit gathers, per-unit gradient reductions
// (with two micro-batches: the scratch-and-add path), the communication stream and its events,
// validation and a sharded checkpoint through the trainer, against the same run as DDP (whole
// buffers). Only the accumulation of the micro-batches' gradients is ordered differently, so
// the weights agree to fp32 rounding (max relative 1e-4).
TEST(CudaTrain, FsdpOneRankMatchesWholeBuffers) {
  SKIP_WITHOUT_CUDA();
  TempDir data("og_cuda_fsdp_data"), out("og_cuda_fsdp_out");
  og_test::write_random_shards(data.str(), "train", 1, 30000, 256, 1);
  og_test::write_random_shards(data.str(), "val", 1, 5000, 256, 2);
  og::DistContext d = self_context();
  for (const char* algo : {"adamw", "muon"}) {
    og::Config c = gpu_train_config(data.str(), out / (std::string(algo) + "_ddp"));
    c.train.steps = 5;
    c.train.val_every = 2;
    c.optim.matrix.algorithm = algo;
    const og::TrainResult ddp = og::run_train(c, d);
    c.dist.mode = "fsdp";
    c.log.dir = out / (std::string(algo) + "_fsdp");
    c.checkpoint.enabled = true;
    c.checkpoint.every = 5;
    const og::TrainResult fsdp = og::run_train(c, d);
    ASSERT_EQ(fsdp.final_params.size(), ddp.final_params.size());
    ASSERT_TRUE(all_finite(fsdp.final_params));
    double err = 0, mx = 0;
    for (size_t i = 0; i < ddp.final_params.size(); ++i) {
      err = std::max(err, (double)std::fabs(fsdp.final_params[i] - ddp.final_params[i]));
      mx = std::max(mx, (double)std::fabs(ddp.final_params[i]));
    }
    if (verbose()) std::printf("  fsdp vs whole buffers (%s): max rel diff %.3e\n", algo, err / mx);
    EXPECT_LE(err, 1e-4 * mx) << algo;
    EXPECT_NEAR(fsdp.final_val_loss, ddp.final_val_loss, 1e-3) << algo;
  }
  // a poisoned gradient shard is seen and the step skipped
  og::Config c = gpu_train_config(data.str(), out / "nan");
  c.dist.mode = "fsdp";
  c.train.fault_nan_step = 2;
  c.train.skip_nonfinite = true;
  const og::TrainResult r = og::run_train(c, d);
  EXPECT_EQ(r.skipped_steps, 1);
  EXPECT_TRUE(all_finite(r.final_params));
}

TEST(CudaTrain, NonFiniteGradientStopsOrIsSkipped) {
  SKIP_WITHOUT_CUDA();
  TempDir data("og_cuda_nan_data"), out("og_cuda_nan_out");
  og_test::write_random_shards(data.str(), "train", 1, 20000, 256, 1);
  og_test::write_random_shards(data.str(), "val", 1, 5000, 256, 2);
  og::Config c = gpu_train_config(data.str(), out.str());
  c.train.device = "cuda";
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
  c.log.dir = out / "skip";
  const og::TrainResult r = og::run_train(c, d);
  EXPECT_EQ(r.skipped_steps, 1);
  EXPECT_EQ(r.steps_done, c.train.steps);
  EXPECT_TRUE(all_finite(r.final_params));
}

// Deterministic given the seed: a run resumed from a checkpoint ends with the same bits as the
// straight run (model and optimizers are deterministic on one GPU).
TEST(CudaTrain, ResumeIsBitIdentical) {
  SKIP_WITHOUT_CUDA();
  TempDir data("og_cuda_resume_data"), straight("og_cuda_resume_a"), split("og_cuda_resume_b");
  og_test::write_random_shards(data.str(), "train", 2, 6000, 256, 21);
  og_test::write_random_shards(data.str(), "val", 1, 3000, 256, 22);
  og::Config c = gpu_train_config(data.str(), straight.str());
  c.train.device = "cuda";
  c.train.steps = 8;
  c.train.val_every = 4;
  c.optim.matrix.algorithm = "dion2";
  og::DistContext d = self_context();
  const og::TrainResult full = og::run_train(c, d);

  c.log.dir = split.str();
  c.checkpoint.enabled = true;
  c.checkpoint.every = 4;
  og::run_train(c, d);
  og::Config r = c;
  r.checkpoint.resume = og::checkpoint_dir(split.str(), 4);
  r.log.dir = split / "resumed";
  const og::TrainResult resumed = og::run_train(r, d);
  ASSERT_EQ(resumed.final_params.size(), full.final_params.size());
  size_t differ = 0;
  for (size_t i = 0; i < full.final_params.size(); ++i) differ += resumed.final_params[i] != full.final_params[i];
  EXPECT_EQ(differ, 0u) << "resumed run differs from the straight run in " << differ << " parameters";
  EXPECT_EQ(resumed.final_val_loss, full.final_val_loss);
}

TEST(CudaTrain, RecomputeKeyReachesTheModel) {
  SKIP_WITHOUT_CUDA();
  og::Config c = tiny_model_config(2);
  c.train.recompute = "block";
  c.train.attention = "flash";
  auto m = og::make_model(c, og::Device::CUDA, 2);
  auto* gpu = dynamic_cast<og::GptCuda*>(m.get());
  ASSERT_NE(gpu, nullptr);
  EXPECT_EQ(gpu->recompute(), og::Recompute::Block);
  EXPECT_EQ(gpu->attention_kernel(), og::AttentionKernel::Flash) << "train.attention: flash";
  EXPECT_THROW(og::set_config_value(c, "train.recompute", "most", "test"), og::Error);
  EXPECT_THROW(og::set_config_value(c, "train.attention", "fastest", "test"), og::Error);
}

// ---- the paper's 160M model: memory planning at full size ---------------------------------------

// d 768, 12 layers, 6 heads (hd 128), seq 1024, vocab 50304, micro-batch 32 (32,768 tokens):
// one forward/backward per recompute mode must run, with a loss near ln(50304) ≈ 10.8 at init.
TEST(CudaModel, Gpt160mForwardBackwardFits) {
  SKIP_WITHOUT_CUDA();
  og::GPTConfig g;  // the defaults are the 160M model
  const int B = 32, T = g.seq_len;
  const Batch b = random_batch(B, T, g.vocab_size, 61);
  const std::vector<float> p = init_params(og::gpt_param_layout(g), 42);
  size_t none_bytes = 0;
  for (og::Recompute r : {og::Recompute::None, og::Recompute::Block}) {
    og::CudaModelOptions o;
    o.recompute = r;
    o.init_params = false;
    auto gpu = og::make_cuda_model(g, B, o);
    gpu->upload_params(p.data());
    gpu->zero_grad();
    const float loss = gpu->forward_backward(b.x.data(), b.y.data(), B, T, 1.0f);
    const double gn = std::sqrt(gpu->grad_norm_sq());
    const og::CudaModelMemory mem = gpu->memory();
    std::printf(
        "  160M, B=%d, recompute %s: loss %.4f, grad norm %.4f; weights %.2f GiB, activations %.2f GiB, "
        "other %.2f GiB; device in use %.2f GiB\n",
        B, og::name_of(r), loss, gn, mem.weights / 1073741824.0, mem.activations / 1073741824.0,
        mem.other / 1073741824.0, og::gpu_memory_in_use() / 1073741824.0);
    EXPECT_TRUE(std::isfinite(loss));
    EXPECT_GT(loss, 9.0);
    EXPECT_LT(loss, 13.0);
    EXPECT_TRUE(std::isfinite(gn));
    EXPECT_GT(gn, 0.0);
    if (r == og::Recompute::None)
      none_bytes = mem.activations;
    else
      EXPECT_LT(mem.activations, none_bytes / 2) << "block recomputation should at least halve the activations";
  }
}

}  // namespace
