// Causal attention kernels (model/cuda/kernels.h) against og::cpu::attention_forward/backward,
// for every GPU path: the tensor-core flash kernels (hd 64 and 128), the simple fp32 kernels
// (any even hd) and cuDNN's fused attention (model/cuda/attention_cudnn.h), on random bf16-exact
// q, k, v, dout at ragged sequence lengths (T not a multiple of the 64-row tiles, T = 1). The
// logsumexp is checked against a double-precision host sum.
// Outputs are poisoned with NaN before each launch; every element must be written.
// Tolerances (relative L2): out, dq, dk, dv 1e-2 (bf16 outputs; the flash kernels also round
//   P and dS to bf16 for the tensor-core products, as FlashAttention-2 does: expect ~2-5e-3);
//   lse 1e-4 (fp32). Flash against simple at T = 1024: 1e-2 on everything but lse. cuDNN: the
//   same tolerances against the reference, and against the flash kernels at the 160M model's
//   shapes (B 4, T 1024, H 6, hd 128).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include "model/cpu/ops.h"
#include "model/cuda/attention_cudnn.h"
#include "model/cuda/attention_internal.h"
#include "model/cuda/kernels.h"
#include "test_cuda_ops_common.h"

namespace og::test {
namespace {

namespace gpu = og::gpu;

struct AttnShape {
  int B, T, H, hd;
  float input_scale = 1.0f;  // > 1: peaky softmax
};

enum class Path { Flash, Simple, Cudnn };

const char* path_name(Path p) { return p == Path::Flash ? " flash" : p == Path::Simple ? " simple" : " cudnn"; }

#define SKIP_WITHOUT_CUDNN()                                                                                    \
  do {                                                                                                          \
    if (!gpu::CudnnAttention::built_with_cudnn()) GTEST_SKIP() << "this build has no cuDNN (cmake found none)"; \
  } while (0)

// Warps per block of the flash kernels (forward, dK/dV, dQ); 0 = the public entry points'
// choice (attn::kForwardWarps, ...).
struct Warps {
  int fwd = 0, dkdv = 0, dq = 0;
};

struct AttnCase {
  AttnShape s;
  std::vector<float> q, k, v, dout;
  std::vector<float> out, lse, dq, dk, dv;  // reference
};

AttnCase make_reference(const AttnShape& s, uint64_t seed) {
  AttnCase c{s};
  const int64_t n = (int64_t)s.B * s.T * s.H * s.hd;
  c.q = randn(n, seed, s.input_scale);
  c.k = randn(n, seed + 1, s.input_scale);
  c.v = randn(n, seed + 2);
  c.dout = randn(n, seed + 3);
  std::vector<float> probs((size_t)s.B * s.H * s.T * s.T);
  c.out.resize(n);
  og::cpu::attention_forward(c.out.data(), probs.data(), c.q.data(), c.k.data(), c.v.data(), s.B, s.T, s.H, s.hd);
  c.dq.assign(n, 0.0f);
  c.dk.assign(n, 0.0f);
  c.dv.assign(n, 0.0f);
  og::cpu::attention_backward(c.dq.data(), c.dk.data(), c.dv.data(), c.dout.data(), probs.data(), c.q.data(),
                              c.k.data(), c.v.data(), s.B, s.T, s.H, s.hd);
  // lse[b, h, t] = log Σ_{j<=t} exp(q_t·k_j / sqrt(hd)), in double
  c.lse.resize((size_t)s.B * s.H * s.T);
  const int64_t C = (int64_t)s.H * s.hd;
  const double scale = 1.0 / std::sqrt((double)s.hd);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h)
      for (int t = 0; t < s.T; ++t) {
        std::vector<double> sc(t + 1);
        double mx = -INFINITY;
        for (int j = 0; j <= t; ++j) {
          double d = 0;
          for (int i = 0; i < s.hd; ++i)
            d += (double)c.q[b * s.T * C + t * C + h * s.hd + i] * c.k[b * s.T * C + j * C + h * s.hd + i];
          sc[j] = d * scale;
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (double x : sc) sum += std::exp(x - mx);
        c.lse[((size_t)b * s.H + h) * s.T + t] = (float)(mx + std::log(sum));
      }
  return c;
}

void check_attention(const AttnCase& c, Path path, Warps w = {}) {
  const AttnShape& s = c.s;
  SCOPED_TRACE(testing::Message() << "B=" << s.B << " T=" << s.T << " H=" << s.H << " hd=" << s.hd
                                  << " scale=" << s.input_scale << path_name(path) << " warps=" << w.fwd << "/"
                                  << w.dkdv << "/" << w.dq);
  const int64_t n = c.q.size(), rows = c.lse.size();
  auto d_q = upload(to_bf16(c.q)), d_k = upload(to_bf16(c.k)), d_v = upload(to_bf16(c.v));
  auto d_dout = upload(to_bf16(c.dout));
  og::DeviceBuffer<bf16> d_out(n), d_dq(n), d_dk(n), d_dv(n);
  og::DeviceBuffer<float> d_lse(rows), d_delta(rows);
  for (auto* b : {&d_out, &d_dq, &d_dk, &d_dv}) poison(*b);
  poison(d_lse);
  poison(d_delta);

  std::unique_ptr<gpu::CudnnAttention> cudnn;
  if (path == Path::Cudnn) {
    cudnn = std::make_unique<gpu::CudnnAttention>(s.B, s.T, s.H, s.hd);
    cudnn->forward(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s.B, 0);
  } else if (path == Path::Flash) {
    ASSERT_TRUE(gpu::attention_uses_tensor_cores(s.hd, d_q.data(), d_k.data(), d_v.data(), d_out.data()));
    if (w.fwd)
      gpu::attn::attention_forward_flash(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H,
                                         s.hd, w.fwd, 0);
    else
      gpu::attention_forward(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H, s.hd, 0);
  } else {
    gpu::attention_forward_simple(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H, s.hd,
                                  0);
  }
  EXPECT_CLOSE(download(d_out), c.out, 1e-2);
  EXPECT_CLOSE(download(d_lse), c.lse, 1e-4);

  const double grad_tol = 1e-2;
  if (path == Path::Cudnn)
    cudnn->backward(d_dq.data(), d_dk.data(), d_dv.data(), d_dout.data(), d_out.data(), d_lse.data(), d_q.data(),
                    d_k.data(), d_v.data(), s.B, 0);
  else if (path == Path::Flash && w.dkdv)
    gpu::attn::attention_backward_flash(d_dq.data(), d_dk.data(), d_dv.data(), d_delta.data(), d_dout.data(),
                                        d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H,
                                        s.hd, w.dkdv, w.dq, 0);
  else if (path == Path::Flash)
    gpu::attention_backward(d_dq.data(), d_dk.data(), d_dv.data(), d_delta.data(), d_dout.data(), d_out.data(),
                            d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H, s.hd, 0);
  else
    gpu::attention_backward_simple(d_dq.data(), d_dk.data(), d_dv.data(), d_delta.data(), d_dout.data(), d_out.data(),
                                   d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H, s.hd, 0);
  EXPECT_CLOSE(download(d_dq), c.dq, grad_tol);
  EXPECT_CLOSE(download(d_dk), c.dk, grad_tol);
  EXPECT_CLOSE(download(d_dv), c.dv, grad_tol);
}

// Every block size of the flash kernels (64- and 128-row blocks, mixed), and the public entry
// points; T covers partial blocks of both sizes and T < one block.
TEST(CudaAttention, FlashMatchesReference) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 100;
  for (int hd : {64, 128}) {
    for (AttnShape s :
         {AttnShape{2, 64, 2, hd}, AttnShape{1, 200, 3, hd}, AttnShape{2, 130, 1, hd}, AttnShape{1, 1, 2, hd},
          AttnShape{1, 17, 1, hd}, AttnShape{1, 333, 2, hd}, AttnShape{1, 96, 2, hd, 3.0f}}) {
      const AttnCase c = make_reference(s, seed);
      for (Warps w : {Warps{}, Warps{4, 4, 4}, Warps{8, 8, 8}, Warps{8, 4, 8}, Warps{4, 8, 4}})
        check_attention(c, Path::Flash, w);
      seed += 10;
    }
  }
}

// Sizes without a CPU reference: random bf16 inputs, and the outputs of two paths (poisoned
// before use) compared with each other.
struct TwoPaths {
  int64_t n, rows;
  og::DeviceBuffer<bf16> q, k, v, dout, out[2], dq[2], dk[2], dv[2];
  og::DeviceBuffer<float> lse[2], delta;
  TwoPaths(int B, int T, int H, int hd, uint64_t seed)
      : n((int64_t)B * T * H * hd),
        rows((int64_t)B * H * T),
        q(upload(to_bf16(randn(n, seed)))),
        k(upload(to_bf16(randn(n, seed + 1)))),
        v(upload(to_bf16(randn(n, seed + 2)))),
        dout(upload(to_bf16(randn(n, seed + 3)))),
        delta(rows) {
    for (int p = 0; p < 2; ++p) {
      out[p].resize(n), dq[p].resize(n), dk[p].resize(n), dv[p].resize(n), lse[p].resize(rows);
      for (auto* b : {&out[p], &dq[p], &dk[p], &dv[p]}) poison(*b);
      poison(lse[p]);
    }
  }
  // path 0 (the one checked against the reference elsewhere) through the public entry points
  void run_flash(int B, int T, int H, int hd) {
    gpu::attention_forward(out[0].data(), lse[0].data(), q.data(), k.data(), v.data(), B, T, H, hd, 0);
    gpu::attention_backward(dq[0].data(), dk[0].data(), dv[0].data(), delta.data(), dout.data(), out[0].data(),
                            lse[0].data(), q.data(), k.data(), v.data(), B, T, H, hd, 0);
  }
  void expect_close() {  // path 1 against path 0
    EXPECT_CLOSE(download(out[1]), download(out[0]), 1e-2);
    EXPECT_CLOSE(download(lse[1]), download(lse[0]), 1e-4);
    EXPECT_CLOSE(download(dq[1]), download(dq[0]), 1e-2);
    EXPECT_CLOSE(download(dk[1]), download(dk[0]), 1e-2);
    EXPECT_CLOSE(download(dv[1]), download(dv[0]), 1e-2);
  }
};

// cuDNN's fused attention (built from the composite graph) on the same shapes as the flash
// kernels. A build with cuDNN must find an engine for every one of them: failing to is a failure
// here, not a skip (train.attention: auto would silently fall back to the flash kernels).
TEST(CudaAttention, CudnnMatchesReference) {
  SKIP_WITHOUT_CUDA();
  SKIP_WITHOUT_CUDNN();
  uint64_t seed = 500;
  for (int hd : {64, 128}) {
    for (AttnShape s : {AttnShape{2, 64, 2, hd}, AttnShape{1, 200, 3, hd}, AttnShape{2, 130, 1, hd},
                        AttnShape{1, 17, 1, hd}, AttnShape{1, 333, 2, hd}, AttnShape{1, 96, 2, hd, 3.0f}}) {
      check_attention(make_reference(s, seed), Path::Cudnn);
      seed += 10;
    }
  }
}

// At the 160M model's shapes, against the flash kernels (tested above against the reference);
// also a second batch size on the same object (its own plans) and a repeat of the backward (the
// dQ accumulator is zeroed per call: the result must not grow).
TEST(CudaAttention, CudnnMatchesFlashAt160MShapes) {
  SKIP_WITHOUT_CUDA();
  SKIP_WITHOUT_CUDNN();
  const int T = 1024, H = 6, hd = 128;
  gpu::CudnnAttention cudnn(4, T, H, hd);
  std::printf("  %s\n", cudnn.describe().c_str());
  for (int B : {4, 2}) {
    SCOPED_TRACE(testing::Message() << "B=" << B);
    TwoPaths t(B, T, H, hd, 600);
    t.run_flash(B, T, H, hd);
    cudnn.forward(t.out[1].data(), t.lse[1].data(), t.q.data(), t.k.data(), t.v.data(), B, 0);
    for (int rep = 0; rep < 2; ++rep)
      cudnn.backward(t.dq[1].data(), t.dk[1].data(), t.dv[1].data(), t.dout.data(), t.out[1].data(), t.lse[1].data(),
                     t.q.data(), t.k.data(), t.v.data(), B, 0);
    t.expect_close();
  }
}

TEST(CudaAttention, SimpleMatchesReference) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 200;
  for (AttnShape s :
       {AttnShape{2, 37, 2, 32}, AttnShape{1, 70, 3, 96}, AttnShape{2, 19, 1, 34}, AttnShape{1, 65, 2, 64},
        AttnShape{1, 40, 1, 128}, AttnShape{1, 1, 1, 2}, AttnShape{1, 50, 1, 64, 3.0f}}) {
    check_attention(make_reference(s, seed), Path::Simple);
    seed += 10;
  }
}

TEST(CudaAttention, DispatchFallsBackForOtherHeadDimsAndUnalignedPointers) {
  SKIP_WITHOUT_CUDA();
  // hd = 96 has no tensor-core kernel: attention_forward/backward must still be right.
  {
    const AttnShape s{1, 45, 2, 96};
    const AttnCase c = make_reference(s, 300);
    const int64_t n = c.q.size();
    auto d_q = upload(to_bf16(c.q)), d_k = upload(to_bf16(c.k)), d_v = upload(to_bf16(c.v));
    auto d_dout = upload(to_bf16(c.dout));
    og::DeviceBuffer<bf16> d_out(n), d_dq(n), d_dk(n), d_dv(n);
    og::DeviceBuffer<float> d_lse(c.lse.size()), d_delta(c.lse.size());
    EXPECT_FALSE(gpu::attention_uses_tensor_cores(s.hd, d_q.data(), d_k.data(), d_v.data(), d_out.data()));
    gpu::attention_forward(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H, s.hd, 0);
    gpu::attention_backward(d_dq.data(), d_dk.data(), d_dv.data(), d_delta.data(), d_dout.data(), d_out.data(),
                            d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H, s.hd, 0);
    EXPECT_CLOSE(download(d_out), c.out, 1e-2);
    EXPECT_CLOSE(download(d_dq), c.dq, 1e-2);
    EXPECT_CLOSE(download(d_dk), c.dk, 1e-2);
    EXPECT_CLOSE(download(d_dv), c.dv, 1e-2);
  }
  // hd = 64 but q starts one element into its buffer (not 16-byte aligned): simple path.
  {
    const AttnShape s{1, 33, 1, 64};
    const AttnCase c = make_reference(s, 310);
    const int64_t n = c.q.size();
    std::vector<float> qp(1, 0.0f);
    qp.insert(qp.end(), c.q.begin(), c.q.end());
    auto d_qp = upload(to_bf16(qp)), d_k = upload(to_bf16(c.k)), d_v = upload(to_bf16(c.v));
    og::DeviceBuffer<bf16> d_out(n);
    og::DeviceBuffer<float> d_lse(c.lse.size());
    poison(d_out);
    EXPECT_FALSE(gpu::attention_uses_tensor_cores(s.hd, d_qp.data() + 1, d_k.data(), d_v.data(), d_out.data()));
    gpu::attention_forward(d_out.data(), d_lse.data(), d_qp.data() + 1, d_k.data(), d_v.data(), s.B, s.T, s.H, s.hd, 0);
    EXPECT_CLOSE(download(d_out), c.out, 1e-2);
  }
}

// Long sequences (no CPU reference at this size): the flash kernels against the simple ones.
TEST(CudaAttention, FlashMatchesSimpleAtT1024) {
  SKIP_WITHOUT_CUDA();
  for (int hd : {64, 128}) {
    SCOPED_TRACE(testing::Message() << "hd=" << hd);
    const int B = 1, T = 1024, H = 2;
    TwoPaths t(B, T, H, hd, 400);
    t.run_flash(B, T, H, hd);
    gpu::attention_forward_simple(t.out[1].data(), t.lse[1].data(), t.q.data(), t.k.data(), t.v.data(), B, T, H, hd, 0);
    gpu::attention_backward_simple(t.dq[1].data(), t.dk[1].data(), t.dv[1].data(), t.delta.data(), t.dout.data(),
                                   t.out[1].data(), t.lse[1].data(), t.q.data(), t.k.data(), t.v.data(), B, T, H, hd,
                                   0);
    t.expect_close();
  }
}

}  // namespace
}  // namespace og::test
