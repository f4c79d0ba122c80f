// CUDA ops (model/cuda/kernels.h) against the CPU reference ops (model/cpu/ops.h): embedding,
// RMSNorm (+ fused residual), rotary + QK-norm, ReLU², cross-entropy, sum of squares and the
// fp32/bf16 conversions. Inputs are random, non-zero, rounded to bf16 on the host so the CPU
// (fp32/fp64) sees exactly the GPU's inputs; outputs are poisoned with NaN before each launch
// and every element must come back finite.
// Tolerances (relative L2 error, ||got − want|| / ||want||):
//   bf16 outputs 1e-2 (one bf16 rounding is 2^-9 ≈ 2e-3 relative per element);
//   fp32 outputs from fp32 math 1e-5; exact operations (copies, conversions, fp32 add) exact.
// Shapes include ragged sizes (rows/columns not multiples of the block or vector width).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "model/cpu/ops.h"
#include "model/cuda/kernels.h"
#include "test_cuda_ops_common.h"

namespace og::test {
namespace {

namespace gpu = og::gpu;
constexpr double kBf16Tol = 1e-2;
constexpr double kF32Tol = 1e-5;

// ---- embedding ----------------------------------------------------------------------------------

template <typename Tout, typename Ttab> void check_embedding_forward(int64_t N, int64_t C, int64_t V) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " C=" << C << " V=" << V);
  const auto wte = randn(V * C, 1);  // bf16-exact, so a bf16 table holds the same values
  const auto tokens = random_tokens(N, (int32_t)V, 2);
  std::vector<float> want(N * C);
  og::cpu::embedding_forward(want.data(), tokens.data(), wte.data(), N, C);

  std::vector<Ttab> wte_t(wte.size());
  for (size_t i = 0; i < wte.size(); ++i) wte_t[i] = Ttab(wte[i]);
  auto d_wte = upload(wte_t);
  auto d_tok = upload(tokens);
  og::DeviceBuffer<Tout> d_out(N * C);
  poison(d_out);
  gpu::embedding_forward(d_out.data(), d_tok.data(), d_wte.data(), N, C, V, 0);
  const ErrorStats e = compare(download(d_out), want);
  EXPECT_EQ(e.nonfinite, 0);
  EXPECT_EQ(e.max_abs, 0.0) << "a lookup is a copy";
}

TEST(CudaEmbedding, ForwardMatchesReference) {
  SKIP_WITHOUT_CUDA();
  check_embedding_forward<float, float>(37, 768, 50304);
  check_embedding_forward<bf16, float>(37, 768, 50304);
  check_embedding_forward<bf16, bf16>(5, 13, 11);
  check_embedding_forward<float, bf16>(300, 129, 7);
}

TEST(CudaEmbedding, ForwardOutOfRangeTokenGivesNaNRow) {
  SKIP_WITHOUT_CUDA();
  const int64_t N = 3, C = 10, V = 5;
  auto d_wte = upload(randn(V * C, 3));
  auto d_tok = upload(std::vector<int32_t>{1, 5, -2});
  og::DeviceBuffer<float> d_out(N * C);
  gpu::embedding_forward(d_out.data(), d_tok.data(), d_wte.data(), N, C, V, 0);
  const auto out = download(d_out);
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_TRUE(std::isfinite(out[c]));
    EXPECT_TRUE(std::isnan(out[C + c]));
    EXPECT_TRUE(std::isnan(out[2 * C + c]));
  }
}

template <typename Tgrad> void check_embedding_backward(int64_t N, int64_t C, int64_t V) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " C=" << C << " V=" << V);
  const auto dout = randn(N * C, 4);
  const auto tokens = random_tokens(N, (int32_t)V, 5);  // V small => many repeated tokens
  const auto dwte0 = randn(V * C, 6, 1.0f, false);
  auto want = dwte0;
  og::cpu::embedding_backward(want.data(), dout.data(), tokens.data(), N, C);

  std::vector<Tgrad> dout_t(dout.size());
  for (size_t i = 0; i < dout.size(); ++i) dout_t[i] = Tgrad(dout[i]);
  auto d_dout = upload(dout_t);
  auto d_tok = upload(tokens);
  const size_t ws = gpu::embedding_backward_workspace_bytes(N, V);
  og::DeviceBuffer<char> d_ws(ws);
  std::vector<float> runs[2];
  for (auto& got : runs) {
    auto d_dwte = upload(dwte0);
    gpu::embedding_backward(d_dwte.data(), d_dout.data(), d_tok.data(), N, C, V, d_ws.data(), ws, 0);
    got = download(d_dwte);
  }
  // compare the accumulated part (fp32 sums in the same token order; only the association differs)
  std::vector<float> got_delta(want.size()), want_delta(want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    got_delta[i] = runs[0][i] - dwte0[i];
    want_delta[i] = want[i] - dwte0[i];
  }
  EXPECT_CLOSE(got_delta, want_delta, kF32Tol);
  EXPECT_TRUE(std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(float)) == 0)
      << "embedding backward must be deterministic";
}

TEST(CudaEmbedding, BackwardMatchesReferenceAndIsDeterministic) {
  SKIP_WITHOUT_CUDA();
  check_embedding_backward<bf16>(1000, 96, 17);
  check_embedding_backward<float>(1000, 96, 17);
  check_embedding_backward<bf16>(2048, 768, 50304);
  check_embedding_backward<bf16>(1, 5, 3);
  check_embedding_backward<float>(333, 257, 1000);
}

// ---- RMSNorm -------------------------------------------------------------------------------------

template <typename T> std::vector<T> as(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = T(v[i]);
  return out;
}

template <typename Tin> void check_rmsnorm_forward(int64_t N, int C) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " C=" << C);
  const auto x = randn(N * C, 7, 3.0f);
  std::vector<float> want(N * C), want_rstd(N);
  og::cpu::rmsnorm_forward(want.data(), want_rstd.data(), x.data(), N, C);
  auto d_x = upload(as<Tin>(x));
  og::DeviceBuffer<bf16> d_out(N * C);
  og::DeviceBuffer<float> d_rstd(N);
  poison(d_out);
  poison(d_rstd);
  gpu::rmsnorm_forward(d_out.data(), d_rstd.data(), d_x.data(), N, C, gpu::kRmsNormEps, 0);
  EXPECT_CLOSE(download(d_out), want, kBf16Tol);
  EXPECT_CLOSE(download(d_rstd), want_rstd, kF32Tol);
}

TEST(CudaRmsNorm, ForwardMatchesReference) {
  SKIP_WITHOUT_CUDA();
  // C = 768, 2048, 1280, 8: the vector path (3, 8, 5 -> 8 and 1 chunks per lane); 100, 3072, 31: scalar
  for (auto [N, C] :
       {std::pair<int64_t, int>{1, 768}, {33, 100}, {1000, 768}, {17, 3072}, {9, 31}, {5, 2048}, {7, 1280}, {11, 8}}) {
    check_rmsnorm_forward<float>(N, C);
    check_rmsnorm_forward<bf16>(N, C);
  }
}

template <typename Tres> void check_rmsnorm_residual(int64_t N, int C, bool in_place) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " C=" << C << " in_place=" << in_place);
  const auto res = randn(N * C, 8, 2.0f), y = randn(N * C, 9);
  // reference: the rounded sum, then the CPU norm of it
  std::vector<float> sum(N * C), want(N * C), want_rstd(N);
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = (float)Tres(res[i] + y[i]);
  og::cpu::rmsnorm_forward(want.data(), want_rstd.data(), sum.data(), N, C);

  auto d_res = upload(as<Tres>(res));
  auto d_y = upload(to_bf16(y));
  og::DeviceBuffer<Tres> d_res_out(in_place ? 0 : N * C);
  if (!in_place) poison(d_res_out);
  Tres* res_out = in_place ? d_res.data() : d_res_out.data();
  og::DeviceBuffer<bf16> d_out(N * C);
  og::DeviceBuffer<float> d_rstd(N);
  poison(d_out);
  poison(d_rstd);
  gpu::rmsnorm_residual_forward(res_out, d_out.data(), d_rstd.data(), d_res.data(), d_y.data(), N, C, gpu::kRmsNormEps,
                                0);
  const ErrorStats e = compare(download(res_out, N * C), sum);
  EXPECT_EQ(e.nonfinite, 0);
  EXPECT_EQ(e.max_abs, 0.0) << "the residual add rounds once, like the reference";
  EXPECT_CLOSE(download(d_out), want, kBf16Tol);
  EXPECT_CLOSE(download(d_rstd), want_rstd, kF32Tol);
  if (!in_place) EXPECT_CLOSE(download(d_res), as<Tres>(res), 0.0);  // input untouched
}

TEST(CudaRmsNorm, FusedResidualForwardMatchesReference) {
  SKIP_WITHOUT_CUDA();
  for (bool in_place : {false, true}) {
    check_rmsnorm_residual<float>(65, 768, in_place);
    check_rmsnorm_residual<bf16>(65, 768, in_place);
    check_rmsnorm_residual<float>(3, 50, in_place);
    check_rmsnorm_residual<float>(9, 2048, in_place);
    check_rmsnorm_residual<bf16>(4, 1280, in_place);
  }
}

template <typename Tin> void check_rmsnorm_backward(int64_t N, int C) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " C=" << C);
  const auto x = randn(N * C, 10, 2.0f), dout = randn(N * C, 11);
  std::vector<float> normed(N * C), rstd(N);
  og::cpu::rmsnorm_forward(normed.data(), rstd.data(), x.data(), N, C);
  const auto dinp0 = randn(N * C, 12, 0.5f);  // accumulate onto this
  auto want = dinp0;
  og::cpu::rmsnorm_backward(want.data(), dout.data(), x.data(), rstd.data(), N, C);

  auto d_x = upload(as<Tin>(x));
  auto d_dout = upload(to_bf16(dout));
  auto d_rstd = upload(rstd);
  auto d_dinp = upload(as<Tin>(dinp0));
  og::DeviceBuffer<bf16> d_dinp_bf16(N * C);
  poison(d_dinp_bf16);
  gpu::rmsnorm_backward(d_dinp.data(), d_dout.data(), d_x.data(), d_rstd.data(), N, C, 0, d_dinp_bf16.data());
  const auto got = to_f32(download(d_dinp));
  // the optional bf16 copy is exactly the updated gradient rounded to bf16
  EXPECT_CLOSE(download(d_dinp_bf16), to_bf16(got), 0.0);
  if constexpr (std::is_same_v<Tin, float>) {  // compare the accumulated contribution itself
    std::vector<float> got_delta(got.size()), want_delta(got.size());
    for (size_t i = 0; i < got.size(); ++i) {
      got_delta[i] = got[i] - dinp0[i];
      want_delta[i] = want[i] - dinp0[i];
    }
    EXPECT_CLOSE(got_delta, want_delta, 1e-4);
  } else {
    EXPECT_CLOSE(got, want, kBf16Tol);
  }
}

TEST(CudaRmsNorm, BackwardAccumulatesReferenceGradient) {
  SKIP_WITHOUT_CUDA();
  for (auto [N, C] : {std::pair<int64_t, int>{1, 768}, {70, 768}, {13, 3072}, {5, 37}, {6, 2048}, {3, 1280}}) {
    check_rmsnorm_backward<float>(N, C);
    check_rmsnorm_backward<bf16>(N, C);
  }
}

// ---- rotary + QK-norm ----------------------------------------------------------------------------

struct HeadShape {
  int B, T, H, hd;
};

TEST(CudaRotaryQkNorm, ForwardAndBackwardMatchReference) {
  SKIP_WITHOUT_CUDA();
  const double base = 10000.0;
  // hd 16..256 (powers of two) take the vector path, 34 the scalar one; T·B not a multiple of the
  // positions per block leaves idle groups in the last block
  for (auto s : {HeadShape{2, 37, 3, 64}, HeadShape{1, 129, 2, 128}, HeadShape{2, 5, 1, 34}, HeadShape{1, 300, 1, 128},
                 HeadShape{3, 11, 2, 16}, HeadShape{1, 9, 4, 256}, HeadShape{2, 7, 5, 32}}) {
    SCOPED_TRACE(testing::Message() << "B=" << s.B << " T=" << s.T << " H=" << s.H << " hd=" << s.hd);
    const int64_t rows = (int64_t)s.B * s.T * s.H, n = rows * s.hd;
    const auto x = randn(n, 13), dout = randn(n, 14);
    // reference: rotate, then per-head rmsnorm; backward through both
    std::vector<float> rot(n), want(n), want_rstd(rows), drot(n, 0.0f), want_dx(n);
    og::cpu::rotary_forward(rot.data(), x.data(), s.B, s.T, s.H, s.hd, base);
    og::cpu::rmsnorm_forward(want.data(), want_rstd.data(), rot.data(), rows, s.hd);
    og::cpu::rmsnorm_backward(drot.data(), dout.data(), rot.data(), want_rstd.data(), rows, s.hd);
    og::cpu::rotary_backward(want_dx.data(), drot.data(), s.B, s.T, s.H, s.hd, base);

    auto d_x = upload(to_bf16(x));
    og::DeviceBuffer<bf16> d_out(n);
    og::DeviceBuffer<float> d_rstd(rows);
    poison(d_out);
    poison(d_rstd);
    gpu::rotary_qknorm_forward(d_out.data(), d_rstd.data(), d_x.data(), s.B, s.T, s.H, s.hd, (float)base,
                               gpu::kRmsNormEps, 0);
    EXPECT_CLOSE(download(d_out), want, kBf16Tol);
    EXPECT_CLOSE(download(d_rstd), want_rstd, 1e-5);

    auto d_dout = upload(to_bf16(dout));
    og::DeviceBuffer<bf16> d_dx(n);
    poison(d_dx);
    gpu::rotary_qknorm_backward(d_dx.data(), d_dout.data(), d_out.data(), d_rstd.data(), s.B, s.T, s.H, s.hd,
                                (float)base, 0);
    EXPECT_CLOSE(download(d_dx), want_dx, kBf16Tol);

    // in place (out aliases inp, dinp aliases dout) gives the same bits
    auto d_inplace = upload(to_bf16(x));
    gpu::rotary_qknorm_forward(d_inplace.data(), d_rstd.data(), d_inplace.data(), s.B, s.T, s.H, s.hd, (float)base,
                               gpu::kRmsNormEps, 0);
    EXPECT_CLOSE(download(d_inplace), download(d_out), 0.0);
    gpu::rotary_qknorm_backward(d_dout.data(), d_dout.data(), d_out.data(), d_rstd.data(), s.B, s.T, s.H, s.hd,
                                (float)base, 0);
    EXPECT_CLOSE(download(d_dout), download(d_dx), 0.0);
  }
}

// ---- ReLU² ---------------------------------------------------------------------------------------

TEST(CudaRelu2, ForwardAndBackwardMatchReference) {
  SKIP_WITHOUT_CUDA();
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(4096), int64_t(100003)}) {
    for (int offset : {0, 1}) {  // offset 1: unaligned pointers take the scalar path
      SCOPED_TRACE(testing::Message() << "n=" << n << " offset=" << offset);
      const auto x = randn(n, 15, 2.0f), dout = randn(n, 16);
      std::vector<float> want(n), want_dx(n, 0.0f);
      og::cpu::relu2_forward(want.data(), x.data(), n);
      og::cpu::relu2_backward(want_dx.data(), dout.data(), x.data(), n);
      std::vector<float> xp(offset, 0.0f), dp(offset, 0.0f);
      xp.insert(xp.end(), x.begin(), x.end());
      dp.insert(dp.end(), dout.begin(), dout.end());
      auto d_x = upload(to_bf16(xp));
      auto d_dout = upload(to_bf16(dp));
      og::DeviceBuffer<bf16> d_out(n + offset), d_dx(n + offset);
      poison(d_out);
      poison(d_dx);
      gpu::relu2_forward(d_out.data() + offset, d_x.data() + offset, n, 0);
      gpu::relu2_backward(d_dx.data() + offset, d_dout.data() + offset, d_x.data() + offset, n, 0);
      const auto out = to_f32(download(d_out)), dx = to_f32(download(d_dx));
      // both are one fp32 product rounded once to bf16: the rounded reference, exactly
      std::vector<float> got(out.begin() + offset, out.end()), got_dx(dx.begin() + offset, dx.end());
      std::vector<float> want_r(n), want_dx_r(n);
      for (int64_t i = 0; i < n; ++i) {
        want_r[i] = round_bf16(want[i]);
        want_dx_r[i] = round_bf16(want_dx[i]);
      }
      EXPECT_CLOSE(got, want_r, 0.0);
      EXPECT_CLOSE(got_dx, want_dx_r, 0.0);
    }
  }
}

// ---- cross-entropy ------------------------------------------------------------------------------

void check_crossentropy(int64_t N, int64_t V) {
  SCOPED_TRACE(testing::Message() << "N=" << N << " V=" << V);
  const auto logits = randn(N * V, 17, 2.0f);
  auto targets = random_tokens(N, (int32_t)V, 18);
  if (N > 2) targets[1] = -1;  // ignore index
  const float dloss = 1.0f / (float)N;
  std::vector<float> want_loss(N), want_dlogits(N * V), dlosses(N, dloss);
  og::cpu::crossentropy_forward(want_loss.data(), logits.data(), targets.data(), N, V);
  og::cpu::crossentropy_backward(want_dlogits.data(), logits.data(), targets.data(), dlosses.data(), N, V);

  auto d_logits = upload(to_bf16(logits));
  auto d_targets = upload(targets);
  og::DeviceBuffer<float> d_loss(N);
  poison(d_loss);
  gpu::crossentropy_forward(d_loss.data(), d_logits.data(), d_targets.data(), N, V, 0);
  EXPECT_CLOSE(download(d_loss), want_loss, kF32Tol);
  EXPECT_CLOSE(download(d_logits), logits, 0.0);  // forward-only leaves the logits alone

  poison(d_loss);
  gpu::crossentropy_forward_backward(d_loss.data(), d_logits.data(), d_targets.data(), N, V, dloss, 0);
  EXPECT_CLOSE(download(d_loss), want_loss, kF32Tol);
  EXPECT_CLOSE(download(d_logits), want_dlogits, kBf16Tol);
  if (N > 2) {
    const auto dl = to_f32(download(d_logits));
    for (int64_t v = 0; v < V; ++v) ASSERT_EQ(dl[V + v], 0.0f) << "ignored row must have a zero gradient";
  }
}

TEST(CudaCrossEntropy, FusedLossAndGradientMatchReference) {
  SKIP_WITHOUT_CUDA();
  check_crossentropy(1, 50304);
  check_crossentropy(19, 50304);
  check_crossentropy(64, 1000);
  check_crossentropy(5, 37);  // V % 8 != 0: scalar path
}

TEST(CudaCrossEntropy, TargetOutOfRangeGivesNaN) {
  SKIP_WITHOUT_CUDA();
  const int64_t N = 2, V = 16;
  auto d_logits = upload(to_bf16(randn(N * V, 19)));
  auto d_targets = upload(std::vector<int32_t>{3, 16});
  og::DeviceBuffer<float> d_loss(N);
  gpu::crossentropy_forward(d_loss.data(), d_logits.data(), d_targets.data(), N, V, 0);
  const auto loss = download(d_loss);
  EXPECT_TRUE(std::isfinite(loss[0]));
  EXPECT_TRUE(std::isnan(loss[1]));
}

// ---- sum of squares, conversions ----------------------------------------------------------------

TEST(CudaReduce, SumSquaresIsExactEnoughAndDeterministic) {
  SKIP_WITHOUT_CUDA();
  og::DeviceBuffer<double> d_partials(gpu::kSumSquaresPartials), d_result(1);
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(1000), int64_t(262145), int64_t(10000003)}) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    const auto x = randn(n, 20, 1.0f, false);
    long double want = 0;
    for (float v : x) want += (long double)v * v;
    auto d_x = upload(x);
    gpu::sum_squares(d_result.data(), d_partials.data(), d_x.data(), n, 0);
    const double got = download(d_result)[0];
    EXPECT_NEAR(got, (double)want, 1e-12 * (double)want + 1e-300);
    gpu::sum_squares(d_result.data(), d_partials.data(), d_x.data(), n, 0);
    EXPECT_EQ(download(d_result)[0], got) << "two runs must agree bitwise";
  }
  // NaN and Inf propagate (that is how the trainer sees a blown-up gradient)
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto x = randn(5000, 21, 1.0f, false);
    x[4321] = bad;
    auto d_x = upload(x);
    gpu::sum_squares(d_result.data(), d_partials.data(), d_x.data(), (int64_t)x.size(), 0);
    EXPECT_FALSE(std::isfinite(download(d_result)[0]));
  }
}

TEST(CudaConvert, Fp32Bf16RoundTrip) {
  SKIP_WITHOUT_CUDA();
  auto x = randn(100003, 22, 10.0f, false);
  // edge cases: signed zeros, denormals, the largest finite values, infinities, halfway cases
  const float specials[] = {0.0f,
                            -0.0f,
                            1e-40f,
                            -1e-40f,
                            3.3895313892515355e38f,
                            -3.3e38f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            1.00390625f /* 1 + 2^-8: tie, rounds to even (1) */,
                            1.01171875f /* tie, to 1.015625 */};
  x.insert(x.end(), std::begin(specials), std::end(specials));
  const int64_t n = (int64_t)x.size();
  auto d_x = upload(x);
  og::DeviceBuffer<bf16> d_b(n);
  og::DeviceBuffer<float> d_back(n);
  poison(d_b);
  poison(d_back);
  gpu::convert_f32_to_bf16(d_b.data(), d_x.data(), n, 0);
  gpu::convert_bf16_to_f32(d_back.data(), d_b.data(), n, 0);
  const auto b = download(d_b);
  const auto back = download(d_back);
  for (int64_t i = 0; i < n; ++i) {
    const float want = round_bf16(x[i]);  // host round-to-nearest-even
    uint16_t got_bits, want_bits;
    const bf16 wb = __float2bfloat16(x[i]);
    std::memcpy(&got_bits, &b[i], 2);
    std::memcpy(&want_bits, &wb, 2);
    ASSERT_EQ(got_bits, want_bits) << "x=" << x[i];
    ASSERT_TRUE(back[i] == want || (std::isnan(back[i]) && std::isnan(want))) << "x=" << x[i];
  }
}

}  // namespace
}  // namespace og::test
