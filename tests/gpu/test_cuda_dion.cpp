// Dion on the GPU (optim/cuda/dion_cuda.h) against the CPU reference (make_optimizer(...,
// Device::CPU)), and its batched orthonormalization (optim/cuda/dion_cuda_ortho.h) against the
// CPU's fp64 Householder QR (dion::householder_qr).
//
// Protocol (as test_cuda_optim.cpp): both backends get the same W and G at every step (the GPU's W
// is re-synced to the CPU's before each step; each keeps its own momentum and Q, which start
// bit-identical), the update ΔW = W_after − W_before is compared per parameter by
// ‖ΔW_gpu − ΔW_cpu‖ / ‖ΔW_cpu‖, and every state tensor by the same relative norm.
// The GPU draws another sketch (a device hash, not og::Rng) and sums in other orders, so the two
// agree to rounding amplified by the conditioning of P. Tolerances come from an experiment on the
// CPU alone: two CPU instances, one with another sketch seed and its gradients perturbed by 1e-6
// relative (about 10x fp32 rounding), run on these shapes for 6 steps at rank fractions 0.25 / 0.5
// / 1 (with and without Cholesky-QR). Worst seen: ΔW 4e-5, momentum 1.4e-6, Q 3e-5 (Q and ΔW are
// most sensitive at rank fraction 1, where the last columns of a square P are ill-conditioned).
// bf16 state amplifies any difference through rounding flips: ΔW 2.3e-3 (1e-2 on a 128 x 128
// matrix not used here), momentum 1e-3, Q 8e-3.
//   fp32 state:  ΔW 1e-3, momentum 1e-5, Q 1e-3
//   bf16 state:  ΔW 2e-2, momentum 2e-2, Q 4e-2
// Orthonormalization vs host Householder QR on well-conditioned P: 1e-5 max abs (both fp64
// inside, fp32 out).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/cuda_utils.h"
#include "core/error.h"
#include "core/rng.h"
#include "cpu/optim_test_group.h"
#include "optim/cuda/blas.h"
#include "optim/cuda/cuda_optimizer.h"
#include "optim/cuda/dion_cuda_ortho.h"
#include "optim/dion_linalg.h"
#include "optim/dion_shape.h"
#include "optim/optimizer.h"

using namespace og;
using og::test::rel_diff;
using og::test::TestGroup;

namespace {

#define SKIP_WITHOUT_CUDA() \
  if (!og::cuda_available()) GTEST_SKIP() << "no CUDA device"

using Shapes = std::vector<std::pair<int64_t, int64_t>>;

constexpr double kF32DwTol = 1e-3, kF32MomentumTol = 1e-5, kF32QTol = 1e-3;
constexpr double kBf16DwTol = 2e-2, kBf16MomentumTol = 2e-2, kBf16QTol = 4e-2;

// Square, wide, tall, a same-shape pair (one batch), a transposed pair, odd sizes, rank 1.
const Shapes kShapes = {{64, 64}, {64, 64},   {48, 80},   {96, 40}, {40, 96}, {33, 47},
                        {47, 33}, {256, 512}, {512, 256}, {17, 9},  {1, 24}};

// The weights and gradients of a TestGroup, mirrored on the GPU.
struct DeviceGroup {
  std::vector<DeviceBuffer<float>> w, g;
  std::vector<ParamSlot> slots;

  explicit DeviceGroup(const TestGroup& h) {
    for (const ParamSlot& s : h.slots) {
      w.emplace_back(s.numel());
      g.emplace_back(s.numel());
      ParamSlot d = s;
      d.w = w.back().data();
      d.g = g.back().data();
      slots.push_back(d);
    }
  }
  void upload(const TestGroup& h) {
    for (size_t i = 0; i < slots.size(); ++i) {
      CUDA_CHECK(cudaMemcpy(w[i].data(), h.w[i].data(), h.w[i].size() * 4, cudaMemcpyHostToDevice));
      CUDA_CHECK(cudaMemcpy(g[i].data(), h.g[i].data(), h.g[i].size() * 4, cudaMemcpyHostToDevice));
    }
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  std::vector<std::vector<float>> download_w() {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<std::vector<float>> out;
    for (size_t i = 0; i < slots.size(); ++i) {
      out.emplace_back(slots[i].numel());
      CUDA_CHECK(cudaMemcpy(out.back().data(), w[i].data(), out.back().size() * 4, cudaMemcpyDeviceToHost));
    }
    return out;
  }
};

size_t elem_bytes(const StateTensor& s) { return s.dtype == StateDtype::BF16 ? 2 : 4; }

// A state tensor's values on the host as fp32, wherever it lives and whatever its dtype.
std::vector<float> state_values(const StateTensor& s) {
  std::vector<unsigned char> raw(s.count * elem_bytes(s));
  if (s.device == Device::CUDA) {
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(raw.data(), s.data, raw.size(), cudaMemcpyDeviceToHost));
  } else {
    std::memcpy(raw.data(), s.data, raw.size());
  }
  std::vector<float> out(s.count);
  for (size_t i = 0; i < s.count; ++i) {
    if (elem_bytes(s) == 2) {
      uint16_t h;
      std::memcpy(&h, raw.data() + 2 * i, 2);
      const uint32_t u = (uint32_t)h << 16;
      std::memcpy(&out[i], &u, 4);
    } else {
      std::memcpy(&out[i], raw.data() + 4 * i, 4);
    }
  }
  return out;
}

// Copy the raw bytes of every state tensor of `from` into `to` (same names, counts, dtypes).
void copy_state(Optimizer& from, Optimizer& to) {
  const std::vector<StateTensor> a = from.state(), b = to.state();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].name, b[i].name);
    ASSERT_EQ(a[i].count, b[i].count);
    ASSERT_EQ(a[i].dtype, b[i].dtype);
    std::vector<unsigned char> raw(a[i].count * elem_bytes(a[i]));
    const auto kind_in = a[i].device == Device::CUDA ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost;
    const auto kind_out = b[i].device == Device::CUDA ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost;
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(raw.data(), a[i].data, raw.size(), kind_in));
    CUDA_CHECK(cudaMemcpy(b[i].data, raw.data(), raw.size(), kind_out));
  }
  CUDA_CHECK(cudaDeviceSynchronize());
}

OptimHParams dion_hp(float rank_fraction, StateDtype dtype = StateDtype::F32) {
  OptimHParams hp;
  hp.algorithm = Algorithm::Dion;
  hp.weight_decay = 0.01f;
  hp.rank_fraction = rank_fraction;
  hp.state_dtype = dtype;
  hp.seed = 7;
  return hp;
}

struct CompareSpec {
  double dw_tol = kF32DwTol, momentum_tol = kF32MomentumTol, q_tol = kF32QTol;
  int64_t first_step = 1, steps = 4;
  float lr = 0.02f;
  uint64_t seed = 1;
  // Called after fresh gradients are drawn, before a step (e.g. to zero some of them).
  std::function<void(TestGroup&, int64_t)> edit_grads;
};

// Step both optimizers side by side (see the file comment) and check every step.
void run_side_by_side(Optimizer& cpu, CudaOptimizer& gpu, TestGroup& host, DeviceGroup& dev, const CompareSpec& spec,
                      const std::string& what) {
  double worst_dw = 0.0, worst_m = 0.0, worst_q = 0.0;
  for (int64_t t = spec.first_step; t < spec.first_step + spec.steps; ++t) {
    host.new_grads(spec.seed * 1000 + (uint64_t)t);
    if (spec.edit_grads) spec.edit_grads(host, t);
    dev.upload(host);
    const std::vector<std::vector<float>> before = host.w;
    cpu.step(StepContext{t, spec.lr});
    gpu.step(StepContext{t, spec.lr});
    const std::vector<std::vector<float>> after = dev.download_w();
    for (size_t p = 0; p < host.slots.size(); ++p) {
      std::vector<float> d_gpu(before[p].size()), d_cpu(before[p].size());
      for (size_t i = 0; i < d_gpu.size(); ++i) {
        d_gpu[i] = after[p][i] - before[p][i];
        d_cpu[i] = host.w[p][i] - before[p][i];
      }
      const double e = rel_diff(d_gpu, d_cpu);
      worst_dw = std::max(worst_dw, std::isnan(e) ? INFINITY : e);
      EXPECT_LE(e, spec.dw_tol) << what << " step " << t << " param " << p << " (" << host.slots[p].rows << "x"
                                << host.slots[p].cols << ")";
    }
    const std::vector<StateTensor> sc = cpu.state(), sg = gpu.state();
    ASSERT_EQ(sc.size(), sg.size());
    for (size_t i = 0; i < sc.size(); ++i) {
      ASSERT_EQ(sc[i].name, sg[i].name);
      ASSERT_EQ(sc[i].count, sg[i].count) << sc[i].name;
      ASSERT_EQ(sc[i].dtype, sg[i].dtype) << sc[i].name;
      const std::vector<float> vg = state_values(sg[i]), vc = state_values(sc[i]);
      if (sc[i].name == "dion/step") {
        EXPECT_EQ(sg[i].device, Device::CPU);
        EXPECT_EQ(vg, vc) << what << " step " << t;
        continue;
      }
      EXPECT_EQ(sg[i].device, Device::CUDA) << sc[i].name;
      const bool is_q = sc[i].name.size() >= 2 && sc[i].name.compare(sc[i].name.size() - 2, 2, "/Q") == 0;
      const double e = rel_diff(vg, vc);
      (is_q ? worst_q : worst_m) = std::max(is_q ? worst_q : worst_m, std::isnan(e) ? INFINITY : e);
      EXPECT_LE(e, is_q ? spec.q_tol : spec.momentum_tol) << what << " " << sc[i].name << " step " << t;
    }
  }
  std::printf("  %-40s worst rel err: dW %.2e  momentum %.2e  Q %.2e\n", what.c_str(), worst_dw, worst_m, worst_q);
}

void compare_with_cpu(const OptimHParams& hp, const Shapes& shapes, const CompareSpec& spec, const std::string& what) {
  TestGroup host(shapes, spec.seed);
  DeviceGroup dev(host);
  std::unique_ptr<Optimizer> cpu = make_optimizer(hp, host.slots, Device::CPU);
  std::unique_ptr<CudaOptimizer> gpu = make_cuda_optimizer(hp, dev.slots);
  run_side_by_side(*cpu, *gpu, host, dev, spec, what);
}

std::string label(const OptimHParams& hp) {
  return fmt::format("rank {:.2f} cqr_warmup {} {}", hp.rank_fraction, hp.cqr_warmup_steps, name_of(hp.state_dtype));
}

}  // namespace

// ---- the optimizer against the CPU reference ------------------------------------------------------

TEST(CudaDion, MatchesCpuAcrossShapesAndRanks) {
  SKIP_WITHOUT_CUDA();
  for (float frac : {0.25f, 0.5f, 1.0f}) {
    const OptimHParams hp = dion_hp(frac);
    compare_with_cpu(hp, kShapes, CompareSpec{}, label(hp));
  }
}

TEST(CudaDion, AdjustLrRulesAndNoWeightDecayMatchCpu) {
  SKIP_WITHOUT_CUDA();
  for (AdjustLr rule : {AdjustLr::RmsNorm, AdjustLr::None}) {
    OptimHParams hp = dion_hp(0.25f);
    hp.adjust_lr = rule;
    hp.weight_decay = 0.0f;
    hp.mu = 0.9f;
    compare_with_cpu(hp, {{64, 64}, {48, 80}, {96, 40}}, CompareSpec{}, std::string("adjust_lr ") + name_of(rule));
  }
}

// Plain Cholesky-QR from step 3 on (steps 1-2: RCQR or QR). Ranks from 9 to 320 cover both the
// batched potrf / trsm calls (r <= 32) and the per-matrix ones, in CQR and in RCQR. Diagnostics agree: no fallbacks, same
// error-feedback residual.
TEST(CudaDion, CholeskyQrAfterWarmupMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const Shapes shapes = {{64, 64}, {96, 40}, {40, 96}, {33, 47}, {320, 320}, {400, 300}};
  for (float frac : {0.25f, 1.0f}) {
    OptimHParams hp = dion_hp(frac);
    hp.cqr_warmup_steps = 2;
    hp.diagnostics = true;
    TestGroup host(shapes, 3);
    DeviceGroup dev(host);
    auto cpu = make_optimizer(hp, host.slots, Device::CPU);
    auto gpu = make_cuda_optimizer(hp, dev.slots);
    CompareSpec spec;
    spec.steps = 5;
    spec.seed = 3;
    run_side_by_side(*cpu, *gpu, host, dev, spec, label(hp));
    const auto sc = cpu->stats(), sg = gpu->stats();
    ASSERT_TRUE(sg.count("dion_ortho_fallbacks") && sg.count("dion_ef_residual"));
    EXPECT_EQ(sc.at("dion_ortho_fallbacks"), 0.0);
    EXPECT_EQ(sg.at("dion_ortho_fallbacks"), 0.0);
    EXPECT_NEAR(sg.at("dion_ef_residual"), sc.at("dion_ef_residual"), 1e-4 * sc.at("dion_ef_residual"));
  }
}

// All-zero momentum (zero gradients at step 1): P = 0, R = Q, so W only decays and Q is
// renormalized. Step 2 zeroes one matrix of a same-shape batch only (per-matrix flags), step 3
// has no zeros. With cqr_warmup 1, steps 2-3 run Cholesky-QR with the zero matrix in the batch.
TEST(CudaDion, AllZeroGradientsMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const Shapes shapes = {{64, 64}, {64, 64}, {48, 80}, {96, 40}};
  for (int warmup : {0, 1}) {
    OptimHParams hp = dion_hp(0.5f);
    hp.cqr_warmup_steps = warmup;
    CompareSpec spec;
    spec.edit_grads = [](TestGroup& h, int64_t t) {
      for (size_t p = 0; p < h.g.size(); ++p)
        if (t == 1 || (t == 2 && p == 0)) std::fill(h.g[p].begin(), h.g[p].end(), 0.0f);
    };
    TestGroup host(shapes, 4);
    DeviceGroup dev(host);
    auto cpu = make_optimizer(hp, host.slots, Device::CPU);
    auto gpu = make_cuda_optimizer(hp, dev.slots);
    const std::vector<float> q0 = state_values(gpu->state()[1]);  // "m0/Q"
    spec.steps = 1;
    run_side_by_side(*cpu, *gpu, host, dev, spec, label(hp) + " all zero");
    // After the all-zero step: momentum still zero, Q = Q0 with unit columns.
    const auto st = gpu->state();
    for (float m : state_values(st[0])) ASSERT_EQ(m, 0.0f);
    const dion::DionShape sh = dion::dion_shape(64, 64, 0.5f);
    const std::vector<float> q1 = state_values(st[1]);
    for (int64_t j = 0; j < sh.r; ++j) {
      double nrm = 0.0;
      for (int64_t i = 0; i < sh.cols_b; ++i) nrm += (double)q0[i * sh.r + j] * q0[i * sh.r + j];
      const float denom = (float)std::sqrt(nrm) + 1e-8f;
      for (int64_t i = 0; i < sh.cols_b; ++i) EXPECT_NEAR(q1[i * sh.r + j], q0[i * sh.r + j] / denom, 1e-6);
    }
    spec.first_step = 2;
    spec.steps = 2;
    run_side_by_side(*cpu, *gpu, host, dev, spec, label(hp) + " partly zero, then none");
  }
}

TEST(CudaDion, Bf16StateMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (float frac : {0.25f, 1.0f})
    for (int warmup : {0, 2}) {
      OptimHParams hp = dion_hp(frac, StateDtype::BF16);
      hp.cqr_warmup_steps = warmup;
      CompareSpec spec;
      spec.dw_tol = kBf16DwTol;
      spec.momentum_tol = kBf16MomentumTol;
      spec.q_tol = kBf16QTol;
      compare_with_cpu(hp, kShapes, spec, label(hp));
    }
}

// ---- properties of the GPU update alone --------------------------------------------------------------

// Rank fraction 1 and full-rank M: P P^T B = B, so M - (1 - mu) P R^T = mu M every step:
// M_t = mu (M_{t-1} + G_t), and the error-feedback residual is mu. Tolerance 1e-5 relative.
TEST(CudaDion, FullRankErrorFeedbackLeavesMuTimesMomentum) {
  SKIP_WITHOUT_CUDA();
  for (auto [m, n] : Shapes{{32, 32}, {40, 24}, {24, 40}}) {
    SCOPED_TRACE(testing::Message() << m << " x " << n);
    OptimHParams hp = dion_hp(1.0f);
    hp.diagnostics = true;
    TestGroup host({{m, n}}, 5);
    DeviceGroup dev(host);
    auto gpu = make_cuda_optimizer(hp, dev.slots);
    std::vector<double> expect((size_t)(m * n), 0.0);
    for (int64_t t = 1; t <= 3; ++t) {
      host.new_grads(300 + (uint64_t)t);
      dev.upload(host);
      for (size_t i = 0; i < expect.size(); ++i) expect[i] = hp.mu * (expect[i] + host.g[0][i]);
      gpu->step({t, 0.01f});
      const std::vector<float> M = state_values(gpu->state()[0]);
      double d = 0.0, ref = 0.0;
      for (size_t i = 0; i < M.size(); ++i) {
        d = std::max(d, std::fabs(M[i] - expect[i]));
        ref = std::max(ref, std::fabs(expect[i]));
      }
      EXPECT_LT(d / ref, 1e-5);
      EXPECT_NEAR(gpu->stats().at("dion_ef_residual"), hp.mu, 1e-5);
    }
  }
}

// G = u v^T (rank 1) with r = 8: P = B Q is rank 1 up to rounding; whichever method succeeds (or
// the QR fallback), the update is still P Q^T with orthonormal P: U^T U = Q Q^T for
// U = -ΔW / lr_eff in B's orientation (W = 0, wd = 0, lr = 1), Q's columns have norm <= 1, and
// error feedback leaves mu G. Tolerances 1e-5 (as the CPU's test of the same property).
TEST(CudaDion, RankDeficientGradientGivesOrthonormalUpdate) {
  SKIP_WITHOUT_CUDA();
  for (auto [m, n] : Shapes{{64, 32}, {32, 64}}) {
    SCOPED_TRACE(testing::Message() << m << " x " << n);
    OptimHParams hp = dion_hp(0.25f);
    hp.weight_decay = 0.0f;
    TestGroup host({{m, n}}, 6);
    std::fill(host.w[0].begin(), host.w[0].end(), 0.0f);
    Rng rng(61);
    std::vector<float> u((size_t)m), v((size_t)n);
    for (float& x : u) x = (float)rng.normal();
    for (float& x : v) x = (float)rng.normal();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) host.g[0][i * n + j] = u[i] * v[j];
    DeviceGroup dev(host);
    dev.upload(host);
    auto gpu = make_cuda_optimizer(hp, dev.slots);
    gpu->step({1, 1.0f});
    const std::vector<float> w = dev.download_w()[0];
    const std::vector<StateTensor> st = gpu->state();
    const std::vector<float> M = state_values(st[0]), Q = state_values(st[1]);
    const dion::DionShape sh = dion::dion_shape(m, n, 0.25f);
    const int64_t rb = sh.rows_b, cb = sh.cols_b, r = sh.r;
    const double lr_eff = std::sqrt((double)m / (double)n);
    std::vector<double> U((size_t)(rb * cb));
    for (float x : w) ASSERT_TRUE(std::isfinite(x));
    for (int64_t i = 0; i < rb; ++i)
      for (int64_t k = 0; k < cb; ++k) U[i * cb + k] = -(double)w[sh.transposed ? k * n + i : i * n + k] / lr_eff;
    double err = 0.0;
    for (int64_t a = 0; a < cb; ++a)
      for (int64_t b = 0; b < cb; ++b) {
        double utu = 0.0, qq = 0.0;
        for (int64_t i = 0; i < rb; ++i) utu += U[i * cb + a] * U[i * cb + b];
        for (int64_t j = 0; j < r; ++j) qq += (double)Q[a * r + j] * Q[b * r + j];
        err = std::max(err, std::fabs(utu - qq));
      }
    EXPECT_LT(err, 1e-5);
    for (int64_t j = 0; j < r; ++j) {
      double nrm = 0.0;
      for (int64_t k = 0; k < cb; ++k) nrm += (double)Q[k * r + j] * Q[k * r + j];
      EXPECT_LE(std::sqrt(nrm), 1.0 + 1e-6);
    }
    double d = 0.0, ref = 0.0;
    for (size_t i = 0; i < M.size(); ++i) {
      d = std::max(d, std::fabs(M[i] - hp.mu * (double)host.g[0][i]));
      ref = std::max(ref, (double)std::fabs(host.g[0][i]));
    }
    EXPECT_LT(d / ref, 1e-5);
  }
}

// ---- state: names, checkpoints across backends, determinism, errors ----------------------------------

// State moved CPU -> GPU after 2 steps (as a checkpoint written by one backend and resumed on the
// other), then GPU -> CPU after 2 more: the runs continue to agree.
TEST(CudaDion, StateMovesBetweenBackends) {
  SKIP_WITHOUT_CUDA();
  for (StateDtype dt : {StateDtype::F32, StateDtype::BF16}) {
    OptimHParams hp = dion_hp(0.5f, dt);
    hp.cqr_warmup_steps = 3;
    const Shapes shapes = {{64, 64}, {48, 80}, {96, 40}};
    TestGroup host(shapes, 8);
    DeviceGroup dev(host);
    auto cpu = make_optimizer(hp, host.slots, Device::CPU);
    for (int64_t t = 1; t <= 2; ++t) {
      host.new_grads(80 + (uint64_t)t);
      cpu->step({t, 0.02f});
    }
    auto gpu = make_cuda_optimizer(hp, dev.slots);
    copy_state(*cpu, *gpu);
    CompareSpec spec;
    spec.first_step = 3;
    spec.steps = 2;
    if (dt == StateDtype::BF16) spec.dw_tol = kBf16DwTol, spec.momentum_tol = kBf16MomentumTol, spec.q_tol = kBf16QTol;
    run_side_by_side(*cpu, *gpu, host, dev, spec, std::string("resumed on the GPU, ") + name_of(dt));
    auto cpu2 = make_optimizer(hp, host.slots, Device::CPU);
    copy_state(*gpu, *cpu2);
    spec.first_step = 5;
    run_side_by_side(*cpu2, *gpu, host, dev, spec, std::string("resumed on the CPU, ") + name_of(dt));
  }
}

// Two instances on the same inputs give bit-identical weights and state, one of them on its own
// non-blocking stream (set at construction) and the other moved there by set_stream.
TEST(CudaDion, DeterministicAcrossInstancesAndStreams) {
  SKIP_WITHOUT_CUDA();
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  OptimHParams hp = dion_hp(0.25f);
  hp.cqr_warmup_steps = 2;
  TestGroup host(kShapes, 11);
  DeviceGroup a(host), b(host);
  CudaOptimOptions on_stream;
  on_stream.stream = stream;
  auto oa = make_cuda_optimizer(hp, a.slots);
  auto ob = make_cuda_optimizer(hp, b.slots, on_stream);
  EXPECT_EQ(ob->stream(), stream);
  a.upload(host);
  b.upload(host);
  for (int64_t t = 1; t <= 4; ++t) {
    if (t == 3) {
      CUDA_CHECK(cudaDeviceSynchronize());
      oa->set_stream(stream);
    }
    oa->step({t, 0.01f});
    ob->step({t, 0.01f});
  }
  CUDA_CHECK(cudaStreamSynchronize(stream));
  const auto wa = a.download_w(), wb = b.download_w();
  for (size_t p = 0; p < wa.size(); ++p)
    EXPECT_EQ(std::memcmp(wa[p].data(), wb[p].data(), wa[p].size() * 4), 0) << "param " << p;
  const auto sa = oa->state(), sb = ob->state();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_EQ(state_values(sa[i]), state_values(sb[i])) << sa[i].name;
  CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST(CudaDion, RejectsBadInput) {
  SKIP_WITHOUT_CUDA();
  TestGroup host({{8, 8}}, 3);
  DeviceGroup dev(host);
  TestGroup emb({{16, 8}}, 3, ParamRole::Embedding);
  DeviceGroup demb(emb);
  EXPECT_THROW(make_cuda_optimizer(dion_hp(0.25f), demb.slots), Error);
  for (float bad : {0.0f, 1.5f, NAN}) EXPECT_THROW(make_cuda_optimizer(dion_hp(bad), dev.slots), Error) << bad;
  OptimHParams hp = dion_hp(0.25f);
  hp.cqr_warmup_steps = -1;
  EXPECT_THROW(make_cuda_optimizer(hp, dev.slots), Error);
  auto ok = make_cuda_optimizer(dion_hp(0.25f), dev.slots);
  EXPECT_EQ(ok->algorithm(), Algorithm::Dion);
  EXPECT_THROW(ok->step({0, 0.01f}), Error);  // steps start at 1
  EXPECT_THROW(ok->step({1, NAN}), Error);
}

// The hidden matrices of the 160M model (12 layers x [4 of 768 x 768, 3072 x 768, 768 x 3072]),
// Gaussian gradients: 8 steps with no orthonormalization fallback and finite weights, with and
// without Cholesky-QR. Prints the median step time (CUDA events on the optimizer's stream) as a
// first performance reading; bench/bench_optim does not cover Dion.
TEST(CudaDion, StepOnThe160MMatrixSet) {
  SKIP_WITHOUT_CUDA();
  Shapes shapes;
  for (int l = 0; l < 12; ++l) {
    for (int i = 0; i < 4; ++i) shapes.push_back({768, 768});
    shapes.push_back({3072, 768});
    shapes.push_back({768, 3072});
  }
  for (int warmup : {0, 1}) {
    OptimHParams hp = dion_hp(0.25f);
    hp.cqr_warmup_steps = warmup;
    hp.diagnostics = true;
    TestGroup host(shapes, 12);
    DeviceGroup dev(host);
    dev.upload(host);
    auto gpu = make_cuda_optimizer(hp, dev.slots);
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int64_t t = 1; t <= 8; ++t) {
      CUDA_CHECK(cudaEventRecord(e0, gpu->stream()));
      gpu->step({t, 0.02f});
      CUDA_CHECK(cudaEventRecord(e1, gpu->stream()));
      CUDA_CHECK(cudaEventSynchronize(e1));
      float x = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&x, e0, e1));
      if (t > 2) ms.push_back(x);
      EXPECT_EQ(gpu->stats().at("dion_ortho_fallbacks"), 0.0) << "step " << t;
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    std::sort(ms.begin(), ms.end());
    std::printf("  160M matrix set, rank 0.25, %s, diagnostics on: median step %.2f ms (min %.2f)\n",
                warmup ? "Cholesky-QR" : "RCQR", ms[ms.size() / 2], ms[0]);
    const auto w = dev.download_w();
    for (size_t p = 0; p < w.size(); ++p)
      for (float x : w[p]) ASSERT_TRUE(std::isfinite(x)) << "param " << p;
  }
}

// ---- the batched orthonormalization alone ------------------------------------------------------------

namespace {

struct OrthoOut {
  std::vector<std::vector<float>> p;
  std::vector<int32_t> fallbacks, method;
};

// Orthonormalize `in` (count matrices rows x r, row-major) as one batch on the GPU.
OrthoOut run_ortho(int64_t rows, int64_t r, const std::vector<std::vector<float>>& in, bool try_cqr,
                   std::vector<int32_t> active = {}) {
  const int count = (int)in.size();
  const int64_t per = rows * r;
  if (active.empty()) active.assign((size_t)count, 1);
  std::vector<float> all;
  for (const auto& x : in) all.insert(all.end(), x.begin(), x.end());
  DeviceBuffer<float> p(all.size());
  DeviceBuffer<int32_t> act((size_t)count), fb((size_t)count), meth((size_t)count);
  CUDA_CHECK(cudaMemcpy(p.data(), all.data(), all.size() * 4, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(act.data(), active.data(), active.size() * 4, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemset(fb.data(), 0, fb.bytes()));
  cuda::BlasContext blas;
  cuda::SolverContext solver;
  solver.set_stream(nullptr);
  cuda::DionOrtho ortho;
  const int id = ortho.add_batch(rows, r, count, p.data());
  ortho.finalize(solver);
  ortho.run(id, blas, solver, try_cqr, 99, act.data(), fb.data(), meth.data());
  CUDA_CHECK(cudaDeviceSynchronize());
  OrthoOut out;
  CUDA_CHECK(cudaMemcpy(all.data(), p.data(), all.size() * 4, cudaMemcpyDeviceToHost));
  for (int i = 0; i < count; ++i) out.p.emplace_back(all.begin() + i * per, all.begin() + (i + 1) * per);
  out.fallbacks.resize((size_t)count);
  out.method.resize((size_t)count);
  CUDA_CHECK(cudaMemcpy(out.fallbacks.data(), fb.data(), fb.bytes(), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(out.method.data(), meth.data(), meth.bytes(), cudaMemcpyDeviceToHost));
  return out;
}

std::vector<float> gaussian(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x((size_t)n);
  for (float& v : x) v = (float)rng.normal();
  return x;
}

// max |got - Q| with Q the CPU's fp64 Householder factor of `a` (diag(R) >= 0).
double diff_to_householder(int64_t rows, int64_t r, const std::vector<float>& a, const std::vector<float>& got) {
  std::vector<float> q((size_t)(rows * r));
  dion::householder_qr(rows, r, a.data(), q.data(), nullptr);
  double d = 0.0;
  for (size_t i = 0; i < q.size(); ++i) d = std::max(d, (double)std::fabs(got[i] - q[i]));
  return d;
}

}  // namespace

// Random Gaussian P (well-conditioned): every method gives the CPU's Householder factor.
TEST(CudaDionOrtho, MatchesHouseholderQrOnRandomMatrices) {
  SKIP_WITHOUT_CUDA();
  const Shapes shapes = {{64, 64}, {64, 16}, {200, 40}, {17, 3}, {24, 1}, {1, 1}, {300, 300}, {600, 300}};
  for (auto [rows, r] : shapes)
    for (bool try_cqr : {false, true}) {
      SCOPED_TRACE(testing::Message() << rows << " x " << r << (try_cqr ? " cqr" : ""));
      std::vector<std::vector<float>> in;
      for (int i = 0; i < 3; ++i) in.push_back(gaussian(rows * r, 1000 * rows + 10 * r + i));
      const OrthoOut out = run_ortho(rows, r, in, try_cqr);
      const int32_t want = try_cqr ? cuda::kOrthoCholeskyQr : rows == r ? cuda::kOrthoQr : cuda::kOrthoRcqr;
      for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(out.method[i], want) << "matrix " << i;
        EXPECT_EQ(out.fallbacks[i], 0) << "matrix " << i;
        EXPECT_LT(diff_to_householder(rows, r, in[i], out.p[i]), 1e-5) << "matrix " << i;
      }
    }
}

// Columns 0 and 1 differ by 2^-24 in one entry (small integers elsewhere, all exact in fp32):
// full rank, but the Gram pivot of column 1 is at rounding level, below the relative tolerance,
// so Cholesky-QR fails and the fallback QR runs; its result is the CPU's Householder factor.
TEST(CudaDionOrtho, CholeskyFailureFallsBackToQr) {
  SKIP_WITHOUT_CUDA();
  for (auto [rows, r] : Shapes{{40, 6}, {12, 12}}) {
    SCOPED_TRACE(testing::Message() << rows << " x " << r);
    Rng rng(17);
    std::vector<float> a((size_t)(rows * r));
    for (float& x : a) x = (float)((int)rng.below(7) - 3);
    const int64_t k = rows / 2;
    a[k * r + 0] = 0.0f;
    a[0] = 2.0f;  // column 0 is not zero
    for (int64_t i = 0; i < rows; ++i) a[i * r + 1] = a[i * r + 0];
    a[k * r + 1] = 0x1.0p-24f;
    const OrthoOut out = run_ortho(rows, r, {a, a}, true);
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(out.method[i], cuda::kOrthoQr);
      EXPECT_EQ(out.fallbacks[i], 1);
      EXPECT_LT(diff_to_householder(rows, r, a, out.p[i]), 1e-5);
    }
  }
}

// A zero first column: the sketch's R has a zero pivot, so RCQR's solve gives NaN and its
// Cholesky check fails (and plain Cholesky-QR fails on the zero Gram pivot); the fallback QR
// gives the CPU's factor (first column e_0). Covers r <= 32 (batched potrf / trsm) and r > 32, and
// a large fallback QR.
TEST(CudaDionOrtho, RcqrFailureFallsBackToQr) {
  SKIP_WITHOUT_CUDA();
  for (auto [rows, r] : Shapes{{64, 8}, {600, 300}})
    for (bool try_cqr : {false, true}) {
      SCOPED_TRACE(testing::Message() << rows << " x " << r << (try_cqr ? " cqr" : ""));
      std::vector<float> a = gaussian(rows * r, 23 + r);
      for (int64_t i = 0; i < rows; ++i) a[i * r] = 0.0f;
      const std::vector<float> b = gaussian(rows * r, 24 + r);  // a healthy matrix in the same batch
      const OrthoOut out = run_ortho(rows, r, {a, b}, try_cqr);
      EXPECT_EQ(out.method[0], cuda::kOrthoQr);
      EXPECT_EQ(out.fallbacks[0], 1);
      EXPECT_LT(diff_to_householder(rows, r, a, out.p[0]), 1e-5);
      EXPECT_EQ(out.method[1], try_cqr ? cuda::kOrthoCholeskyQr : cuda::kOrthoRcqr);
      EXPECT_EQ(out.fallbacks[1], 0);
      EXPECT_LT(diff_to_householder(rows, r, b, out.p[1]), 1e-5);
    }
}

// Inactive matrices (all-zero momentum in the optimizer) are left exactly as they are.
TEST(CudaDionOrtho, InactiveMatricesAreLeftAlone) {
  SKIP_WITHOUT_CUDA();
  for (auto [rows, r] : Shapes{{32, 32}, {48, 12}})
    for (bool try_cqr : {false, true}) {
      std::vector<std::vector<float>> in;
      for (int i = 0; i < 3; ++i) in.push_back(gaussian(rows * r, 70 + i));
      const OrthoOut out = run_ortho(rows, r, in, try_cqr, {1, 0, 1});
      EXPECT_EQ(out.p[1], in[1]);
      EXPECT_EQ(out.method[1], cuda::kOrthoNone);
      EXPECT_EQ(out.fallbacks[1], 0);
      for (int i : {0, 2}) EXPECT_LT(diff_to_householder(rows, r, in[i], out.p[i]), 1e-5);
    }
}
