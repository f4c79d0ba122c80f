// Timed runs of the CUDA ops at the 160M model's shapes (micro-batch B = 32, T = 1024, d = 768,
// H = 6, hd = 128, V = 50304, d_ff = 3072). They PRINT achieved bandwidth (GB/s, counting the
// bytes each kernel must move at least once) or throughput (TFLOP/s) and assert nothing about
// time; they only check the launches succeed and the outputs are finite where cheap to do so.
// Skipped without a GPU. (The benchmark programs proper live in bench/.)
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "model/cuda/attention_cudnn.h"
#include "model/cuda/attention_internal.h"
#include "model/cuda/kernels.h"
#include "model/cuda/matmul.h"
#include "test_cuda_ops_common.h"

namespace og::test {
namespace {

namespace gpu = og::gpu;

constexpr int kB = 32, kT = 1024, kD = 768, kH = 6, kHd = 128, kV = 50304, kFF = 3072;
constexpr int64_t kN = (int64_t)kB * kT;

// n bf16 values: a random block of 2^20 values repeated (host generation of 10^8 normals is slow).
og::DeviceBuffer<bf16> random_bf16(int64_t n, uint64_t seed, float scale = 1.0f) {
  const auto block = to_bf16(randn(std::min<int64_t>(n, 1 << 20), seed, scale));
  std::vector<bf16> h(n);
  for (int64_t i = 0; i < n; ++i) h[i] = block[i % block.size()];
  return upload(h);
}

void report_gbs(const char* what, double ms, double bytes) {
  std::printf("[timing] %-44s %8.3f ms  %8.1f GB/s\n", what, ms, bytes / (ms * 1e-3) / 1e9);
}
void report_tflops(const char* what, double ms, double flops) {
  std::printf("[timing] %-44s %8.3f ms  %8.1f TFLOP/s\n", what, ms, flops / (ms * 1e-3) / 1e12);
}

TEST(CudaTiming, Matmuls160M) {
  SKIP_WITHOUT_CUDA();
  gpu::Matmul mm;
  struct Case {
    const char* name;
    int64_t N, C, OC;
  };
  for (const Case c :
       {Case{"attn q/k/v/o 768x768", kN, kD, kD}, Case{"mlp fc 3072x768", kN, kD, kFF},
        Case{"mlp proj 768x3072", kN, kFF, kD}, Case{"lm_head 50304x768 (8192-row chunk)", 8192, kD, kV}}) {
    auto x = random_bf16(c.N * c.C, 1), w = random_bf16(c.OC * c.C, 2, 0.03f), dy = random_bf16(c.N * c.OC, 3);
    og::DeviceBuffer<bf16> y(c.N * c.OC), dx(c.N * c.C);
    og::DeviceBuffer<float> dw(c.OC * c.C);
    const double flops = 2.0 * c.N * c.C * c.OC;
    char label[128];
    std::snprintf(label, sizeof label, "%s fwd", c.name);
    report_tflops(label, time_ms([&] { mm.forward(y.data(), x.data(), w.data(), c.N, c.C, c.OC, 0); }), flops);
    std::snprintf(label, sizeof label, "%s bwd dX", c.name);
    report_tflops(label, time_ms([&] { mm.backward_input(dx.data(), dy.data(), w.data(), c.N, c.C, c.OC, false, 0); }),
                  flops);
    std::snprintf(label, sizeof label, "%s bwd dW (fp32 +=)", c.name);
    report_tflops(label, time_ms([&] { mm.backward_weight(dw.data(), dy.data(), x.data(), c.N, c.C, c.OC, true, 0); }),
                  flops);
  }
  CUDA_CHECK(cudaDeviceSynchronize());
}

TEST(CudaTiming, Attention160M) {
  SKIP_WITHOUT_CUDA();
  const int64_t n = kN * kD, rows = (int64_t)kB * kH * kT;
  auto q = random_bf16(n, 4), k = random_bf16(n, 5), v = random_bf16(n, 6), dout = random_bf16(n, 7);
  og::DeviceBuffer<bf16> out(n), dq(n), dk(n), dv(n);
  og::DeviceBuffer<float> lse(rows), delta(rows);
  // causal: half of the 4·B·H·T²·hd multiply-adds of full attention; backward = 2.5x forward
  const double fwd_flops = 2.0 * kB * kH * (double)kT * kT * kHd;
  report_tflops("attention fwd flash (B32 T1024 H6 hd128)", time_ms([&] {
                  gpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), kB, kT, kH, kHd, 0);
                }),
                fwd_flops);
  report_tflops("attention bwd flash (incl. delta)", time_ms([&] {
                  gpu::attention_backward(dq.data(), dk.data(), dv.data(), delta.data(), dout.data(), out.data(),
                                          lse.data(), q.data(), k.data(), v.data(), kB, kT, kH, kHd, 0);
                }),
                2.5 * fwd_flops);
  if (gpu::CudnnAttention::built_with_cudnn()) {  // cuDNN's fused attention at the same shapes
    gpu::CudnnAttention cudnn(kB, kT, kH, kHd);
    std::printf("  %s\n", cudnn.describe().c_str());
    report_tflops("attention fwd cudnn",
                  time_ms([&] { cudnn.forward(out.data(), lse.data(), q.data(), k.data(), v.data(), kB, 0); }),
                  fwd_flops);
    report_tflops("attention bwd cudnn (incl. dQ zeroing)", time_ms([&] {
                    cudnn.backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(), q.data(),
                                   k.data(), v.data(), kB, 0);
                  }),
                  2.5 * fwd_flops);
  } else {
    std::printf("  attention cudnn: skipped, this build has no cuDNN\n");
  }
  // every block size (warps per block), to choose attn::kForwardWarps / kDkdvWarps / kDqWarps
  for (int w : {4, 8}) {
    const std::string what = "  fwd, " + std::to_string(w) + " warps/block";
    report_tflops(what.c_str(), time_ms([&] {
                    gpu::attn::attention_forward_flash(out.data(), lse.data(), q.data(), k.data(), v.data(), kB, kT, kH,
                                                       kHd, w, 0);
                  }),
                  fwd_flops);
  }
  for (int wkv : {4, 8})
    for (int wq : {4, 8}) {
      const std::string what = "  bwd, dkdv " + std::to_string(wkv) + " / dq " + std::to_string(wq) + " warps";
      report_tflops(what.c_str(), time_ms([&] {
                      gpu::attn::attention_backward_flash(dq.data(), dk.data(), dv.data(), delta.data(), dout.data(),
                                                          out.data(), lse.data(), q.data(), k.data(), v.data(), kB, kT,
                                                          kH, kHd, wkv, wq, 0);
                    }),
                    2.5 * fwd_flops);
    }
  report_tflops("attention fwd simple (fp32 fallback)",
                time_ms(
                    [&] {
                      gpu::attention_forward_simple(out.data(), lse.data(), q.data(), k.data(), v.data(), kB, kT, kH,
                                                    kHd, 0);
                    },
                    2),
                fwd_flops);
  const auto o = to_f32(download(out));
  for (size_t i = 0; i < o.size(); i += 4099) ASSERT_TRUE(std::isfinite(o[i]));
}

TEST(CudaTiming, Elementwise160M) {
  SKIP_WITHOUT_CUDA();
  const int64_t nd = kN * kD, nff = kN * kFF;
  auto x = random_bf16(nd, 8), y = random_bf16(nd, 9), h = random_bf16(nff, 10), dh = random_bf16(nff, 11);
  og::DeviceBuffer<float> res(nd), dres(nd), rstd(kN), rstd_h((int64_t)kN * kH);
  CUDA_CHECK(cudaMemset(dres.data(), 0, dres.bytes()));
  og::DeviceBuffer<bf16> normed(nd), qk(nd), dqk(nd), a(nff);
  gpu::convert_bf16_to_f32(res.data(), x.data(), nd, 0);

  report_gbs("rmsnorm fwd fp32 residual (N=32768, C=768)", time_ms([&] {
               gpu::rmsnorm_forward(normed.data(), rstd.data(), res.data(), kN, kD, gpu::kRmsNormEps, 0);
             }),
             nd * (4.0 + 2.0));
  report_gbs("rmsnorm + residual add fwd (fp32 residual)", time_ms([&] {
               gpu::rmsnorm_residual_forward(res.data(), normed.data(), rstd.data(), res.data(), y.data(), kN, kD,
                                             gpu::kRmsNormEps, 0);
             }),
             nd * (4.0 + 2.0 + 4.0 + 2.0));
  report_gbs("rmsnorm bwd (fp32 residual grad +=)",
             time_ms([&] { gpu::rmsnorm_backward(dres.data(), normed.data(), res.data(), rstd.data(), kN, kD, 0); }),
             nd * (4.0 + 2.0 + 4.0 + 4.0));
  og::DeviceBuffer<bf16> dres_bf(nd);
  report_gbs("rmsnorm bwd + bf16 copy of the grad", time_ms([&] {
               gpu::rmsnorm_backward(dres.data(), normed.data(), res.data(), rstd.data(), kN, kD, 0, dres_bf.data());
             }),
             nd * (4.0 + 2.0 + 4.0 + 4.0 + 2.0));
  report_gbs("convert fp32 -> bf16 (what the copy replaces)",
             time_ms([&] { gpu::convert_f32_to_bf16(dres_bf.data(), dres.data(), nd, 0); }), nd * 6.0);
  report_gbs("rotary + qk-norm fwd (one of q/k)", time_ms([&] {
               gpu::rotary_qknorm_forward(qk.data(), rstd_h.data(), x.data(), kB, kT, kH, kHd, 10000.0f,
                                          gpu::kRmsNormEps, 0);
             }),
             nd * 4.0);
  report_gbs("rotary + qk-norm bwd (one of q/k)", time_ms([&] {
               gpu::rotary_qknorm_backward(dqk.data(), y.data(), qk.data(), rstd_h.data(), kB, kT, kH, kHd, 10000.0f,
                                           0);
             }),
             nd * 6.0);
  report_gbs("relu2 fwd (N x 3072)", time_ms([&] { gpu::relu2_forward(a.data(), h.data(), nff, 0); }), nff * 4.0);
  report_gbs("relu2 bwd (N x 3072)", time_ms([&] { gpu::relu2_backward(a.data(), dh.data(), h.data(), nff, 0); }),
             nff * 6.0);

  // embedding
  auto tokens = upload(random_tokens(kN, kV, 12));
  og::DeviceBuffer<float> wte((int64_t)kV * kD), dwte((int64_t)kV * kD);
  gpu::convert_bf16_to_f32(wte.data(), random_bf16((int64_t)kV * kD, 13).data(), (int64_t)kV * kD, 0);
  CUDA_CHECK(cudaMemset(dwte.data(), 0, dwte.bytes()));
  report_gbs("embedding fwd (fp32 table -> fp32 residual)",
             time_ms([&] { gpu::embedding_forward(res.data(), tokens.data(), wte.data(), kN, kD, kV, 0); }), nd * 8.0);
  const size_t ws = gpu::embedding_backward_workspace_bytes(kN, kV);
  og::DeviceBuffer<char> d_ws(ws);
  report_gbs("embedding bwd (sorted, deterministic)", time_ms([&] {
               gpu::embedding_backward(dwte.data(), x.data(), tokens.data(), kN, kD, kV, d_ws.data(), ws, 0);
             }),
             nd * (2.0 + 8.0));

  // cross-entropy over one 8192-row chunk of logits (restored from a pristine copy each time
  // would double the traffic; the gradient values are themselves valid logits, so rerun in place)
  const int64_t rows = 8192;
  auto logits = random_bf16(rows * kV, 14, 2.0f);
  auto targets = upload(random_tokens(rows, kV, 15));
  og::DeviceBuffer<float> losses(rows);
  report_gbs("cross-entropy fused fwd+bwd (8192 x 50304)", time_ms([&] {
               gpu::crossentropy_forward_backward(losses.data(), logits.data(), targets.data(), rows, kV, 1.0f / rows,
                                                  0);
             }),
             rows * (double)kV * 2.0 * 3.0);

  // whole-model-sized fp32 buffers
  const int64_t nparams = 162201600;
  og::DeviceBuffer<float> g(nparams);
  og::DeviceBuffer<bf16> gb(nparams);
  og::DeviceBuffer<double> partials(gpu::kSumSquaresPartials), result(1);
  CUDA_CHECK(cudaMemset(g.data(), 0, g.bytes()));
  report_gbs("sum of squares (162M fp32)",
             time_ms([&] { gpu::sum_squares(result.data(), partials.data(), g.data(), nparams, 0); }), nparams * 4.0);
  report_gbs("convert fp32 -> bf16 (162M)", time_ms([&] { gpu::convert_f32_to_bf16(gb.data(), g.data(), nparams, 0); }),
             nparams * 6.0);
  CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace og::test
