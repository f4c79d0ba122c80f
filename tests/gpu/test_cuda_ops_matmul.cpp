// cuBLASLt matmuls (model/cuda/matmul.h) against og::cpu::matmul_forward/backward on random
// bf16-exact inputs: forward y = x·Wᵀ (bf16 out), backward dX = dY·W (bf16 out, written or
// accumulated) and dW += dYᵀ·X (fp32 out). Outputs are poisoned with NaN first when written.
// Tolerances (relative L2): bf16 outputs 1e-2; fp32 dW 1e-4 (exact bf16 products, fp32 sums in
// a different order; the CPU reference also sums in fp32).
#include <gtest/gtest.h>

#include <vector>

#include "model/cpu/ops.h"
#include "model/cuda/matmul.h"
#include "test_cuda_ops_common.h"

namespace og::test {
namespace {

struct MatmulShape {
  int64_t N, C, OC;
};

TEST(CudaMatmul, ForwardAndBackwardMatchReference) {
  SKIP_WITHOUT_CUDA();
  og::gpu::Matmul mm;
  for (auto s : {MatmulShape{64, 768, 768}, MatmulShape{37, 100, 300}, MatmulShape{128, 768, 3072},
                 MatmulShape{5, 3072, 768}, MatmulShape{33, 64, 50304}, MatmulShape{1, 8, 8}, MatmulShape{7, 3, 5}}) {
    SCOPED_TRACE(testing::Message() << "N=" << s.N << " C=" << s.C << " OC=" << s.OC);
    const auto x = randn(s.N * s.C, 1), w = randn(s.OC * s.C, 2, 0.05f), dy = randn(s.N * s.OC, 3);
    std::vector<float> want_y(s.N * s.OC), want_dx(s.N * s.C, 0.0f);
    const auto dw0 = randn(s.OC * s.C, 4, 1.0f, false);
    auto want_dw = dw0;
    og::cpu::matmul_forward(want_y.data(), x.data(), w.data(), s.N, s.C, s.OC);
    og::cpu::matmul_backward(want_dx.data(), want_dw.data(), dy.data(), x.data(), w.data(), s.N, s.C, s.OC);

    auto d_x = upload(to_bf16(x));
    auto d_w = upload(to_bf16(w));
    auto d_dy = upload(to_bf16(dy));
    og::DeviceBuffer<bf16> d_y(s.N * s.OC), d_dx(s.N * s.C);
    poison(d_y);
    poison(d_dx);
    mm.forward(d_y.data(), d_x.data(), d_w.data(), s.N, s.C, s.OC, 0);
    EXPECT_CLOSE(download(d_y), want_y, 1e-2);

    mm.backward_input(d_dx.data(), d_dy.data(), d_w.data(), s.N, s.C, s.OC, /*accumulate=*/false, 0);
    EXPECT_CLOSE(download(d_dx), want_dx, 1e-2);
    // accumulate: dx (= the result above, rounded) + dy·W again ~ 2·dy·W
    const auto dx_once = to_f32(download(d_dx));
    mm.backward_input(d_dx.data(), d_dy.data(), d_w.data(), s.N, s.C, s.OC, /*accumulate=*/true, 0);
    std::vector<float> want_twice(dx_once.size());
    for (size_t i = 0; i < dx_once.size(); ++i) want_twice[i] = dx_once[i] + want_dx[i];
    EXPECT_CLOSE(download(d_dx), want_twice, 1e-2);

    auto d_dw = upload(dw0);
    mm.backward_weight(d_dw.data(), d_dy.data(), d_x.data(), s.N, s.C, s.OC, /*accumulate=*/true, 0);
    const auto got_dw = download(d_dw);
    std::vector<float> got_delta(got_dw.size()), want_delta(got_dw.size());
    for (size_t i = 0; i < got_dw.size(); ++i) {
      got_delta[i] = got_dw[i] - dw0[i];
      want_delta[i] = want_dw[i] - dw0[i];
    }
    EXPECT_CLOSE(got_delta, want_delta, 1e-4);
    og::DeviceBuffer<float> d_dw_w(s.OC * s.C);
    poison(d_dw_w);
    mm.backward_weight(d_dw_w.data(), d_dy.data(), d_x.data(), s.N, s.C, s.OC, /*accumulate=*/false, 0);
    EXPECT_CLOSE(download(d_dw_w), want_delta, 1e-4);
  }
  EXPECT_GT(mm.num_plans(), 0u);
}

TEST(CudaMatmul, UnalignedViewsStillWork) {
  SKIP_WITHOUT_CUDA();
  // A weight view starting 16 bytes into a buffer (alignment 16 instead of 256): the plan cache
  // keys on alignment, so this must pick an algorithm valid for it.
  og::gpu::Matmul mm;
  const int64_t N = 16, C = 24, OC = 40;
  const auto x = randn(N * C, 5), w = randn(OC * C, 6);
  std::vector<float> want(N * OC);
  og::cpu::matmul_forward(want.data(), x.data(), w.data(), N, C, OC);
  std::vector<float> wp(8, 0.0f);
  wp.insert(wp.end(), w.begin(), w.end());
  auto d_x = upload(to_bf16(x));
  auto d_w = upload(to_bf16(wp));
  og::DeviceBuffer<bf16> d_y(N * OC);
  poison(d_y);
  mm.forward(d_y.data(), d_x.data(), d_w.data() + 8, N, C, OC, 0);
  EXPECT_CLOSE(download(d_y), want, 1e-2);
}

}  // namespace
}  // namespace og::test
