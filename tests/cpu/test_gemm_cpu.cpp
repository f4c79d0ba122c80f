// og::cpu::gemm against a naive triple loop in long double: all four transpose combinations, odd
// sizes that exercise every edge tile and cache-block boundary, alpha/beta, leading dimensions
// larger than the row length (with sentinel values that must stay untouched), beta = 0 on a C
// full of NaN (must not be read). The Speed test prints GFLOP/s for the model's shapes (it
// asserts only correctness of what it ran; the numbers are for the report).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "core/gemm_cpu.h"
#include "core/rng.h"
#include "core/timer.h"

namespace {

template <typename T> std::vector<T> random_vec(size_t n, uint64_t seed) {
  og::Rng rng(seed);
  std::vector<T> v(n);
  for (auto& x : v) x = (T)rng.normal();
  return v;
}

struct Case {
  bool ta, tb;
  int64_t M, N, K;
  double alpha, beta;
  int64_t pad;  // extra columns in every leading dimension
};

// Check og::cpu::gemm<T> on one case against the naive product; rel_tol is relative to the
// magnitude sum_k |a||b| of each entry (the natural scale of its rounding error).
template <typename T> void check_case(const Case& c, double rel_tol, uint64_t seed) {
  const int64_t a_rows = c.ta ? c.K : c.M, a_cols = c.ta ? c.M : c.K;
  const int64_t b_rows = c.tb ? c.N : c.K, b_cols = c.tb ? c.K : c.N;
  const int64_t lda = a_cols + c.pad, ldb = b_cols + c.pad, ldc = c.N + c.pad;
  auto A = random_vec<T>(a_rows * lda, seed);
  auto B = random_vec<T>(b_rows * ldb, seed + 1);
  auto C = random_vec<T>(c.M * ldc, seed + 2);
  const T sentinel = (T)12345.0;
  for (int64_t i = 0; i < c.M; ++i)
    for (int64_t j = c.N; j < ldc; ++j) C[i * ldc + j] = sentinel;
  if (c.beta == 0.0)  // beta = 0 must not read C
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) C[i * ldc + j] = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> C0 = C;
  og::cpu::gemm<T>(c.ta, c.tb, c.M, c.N, c.K, (T)c.alpha, A.data(), lda, B.data(), ldb, (T)c.beta, C.data(), ldc);
  auto a_at = [&](int64_t i, int64_t k) { return (long double)(c.ta ? A[k * lda + i] : A[i * lda + k]); };
  auto b_at = [&](int64_t k, int64_t j) { return (long double)(c.tb ? B[j * ldb + k] : B[k * ldb + j]); };
  double worst = 0.0;
  for (int64_t i = 0; i < c.M; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      if (j >= c.N) {
        ASSERT_EQ(C[i * ldc + j], sentinel) << "wrote past N at " << i << "," << j;
        continue;
      }
      long double s = 0, mag = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        s += a_at(i, k) * b_at(k, j);
        mag += std::fabs(a_at(i, k) * b_at(k, j));
      }
      long double ref = (long double)c.alpha * s;
      if (c.beta != 0.0) ref += (long double)c.beta * C0[i * ldc + j];
      const double c_mag = c.beta != 0.0 ? std::fabs(c.beta * C0[i * ldc + j]) : 0.0;
      const double scale = std::fabs(c.alpha) * (double)mag + c_mag + 1e-30;
      const double err = std::fabs((double)(C[i * ldc + j] - ref)) / scale;
      worst = std::max(worst, err);
      ASSERT_LT(err, rel_tol) << "ta=" << c.ta << " tb=" << c.tb << " M=" << c.M << " N=" << c.N << " K=" << c.K
                              << " at (" << i << "," << j << ") got " << C[i * ldc + j] << " want " << (double)ref;
    }
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  // Sizes straddle the register tile (AVX-512: 12 x 32 floats / 12 x 16 doubles; else 6 x 2 vectors)
  // and the cache blocks (KC = 256 floats, MC = 16 tiles, NC = 3072).
  const int64_t shapes[][3] = {{1, 1, 1},      {3, 5, 7},     {13, 33, 17},  {12, 32, 256}, {25, 47, 300},
                               {193, 65, 513}, {37, 3100, 9}, {200, 19, 31}, {7, 1, 1025}};
  int n = 0;
  for (auto& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        const double alpha = (n % 3 == 0) ? 1.0 : -0.75;
        const double beta = (n % 4 == 0) ? 0.0 : (n % 4 == 1 ? 1.0 : 0.5);
        out.push_back({(bool)ta, (bool)tb, s[0], s[1], s[2], alpha, beta, (int64_t)(n % 3) * 5});
        ++n;
      }
  return out;
}

TEST(GemmCpu, FloatMatchesNaiveAllTransposes) {
  uint64_t seed = 100;
  for (const Case& c : cases()) check_case<float>(c, 1e-5, seed += 3);  // fp32: ~K*eps worst case, seen ~1e-7
}

TEST(GemmCpu, DoubleMatchesNaiveAllTransposes) {
  uint64_t seed = 200;
  for (const Case& c : cases()) check_case<double>(c, 1e-13, seed += 3);
}

TEST(GemmCpu, ZeroKScalesC) {
  std::vector<float> C = {1, 2, 3, 4};
  og::cpu::gemm<float>(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.5f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{0.5f, 1.0f, 1.5f, 2.0f}));
  std::vector<float> D(4, std::numeric_limits<float>::quiet_NaN());
  og::cpu::gemm<float>(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.0f, D.data(), 2);
  EXPECT_EQ(D, (std::vector<float>(4, 0.0f)));
}

// The model's matmul shapes in the three orientations of matmul_forward / matmul_backward, for
// N = 1024 tokens: forward out = inp w^T (nt), dinp = dout w (nn), dw = dout^T inp (tn).
TEST(GemmCpu, SpeedOfModelShapes) {
  struct Shape {
    const char* name;
    int64_t N, C, OC;
  };
  const Shape shapes[] = {{"lm_head d128", 1024, 128, 50304}, {"lm_head d256", 1024, 256, 50304},
                          {"attn d128", 1024, 128, 128},      {"mlp.fc d128", 1024, 128, 512},
                          {"mlp.proj d128", 1024, 512, 128},  {"attn d768", 1024, 768, 768}};
  for (const Shape& s : shapes) {
    auto inp = random_vec<float>(s.N * s.C, 1), w = random_vec<float>(s.OC * s.C, 2);
    auto out = random_vec<float>(s.N * s.OC, 3);
    auto dinp = random_vec<float>(s.N * s.C, 4), dw = random_vec<float>(s.OC * s.C, 5);
    const double flops = 2.0 * s.N * s.C * s.OC;
    auto time_it = [&](auto&& fn) {
      fn();  // warm-up (page faults, scratch growth)
      int reps = 0;
      og::Timer t;
      do {
        fn();
        ++reps;
      } while (t.seconds() < 0.3);
      return t.seconds() / reps;
    };
    const double t_fwd = time_it([&] {
      og::cpu::gemm<float>(false, true, s.N, s.OC, s.C, 1.0f, inp.data(), s.C, w.data(), s.C, 0.0f, out.data(), s.OC);
    });
    const double t_dinp = time_it([&] {
      og::cpu::gemm<float>(false, false, s.N, s.C, s.OC, 1.0f, out.data(), s.OC, w.data(), s.C, 0.0f, dinp.data(), s.C);
    });
    const double t_dw = time_it([&] {
      og::cpu::gemm<float>(true, false, s.OC, s.C, s.N, 1.0f, out.data(), s.OC, inp.data(), s.C, 0.0f, dw.data(), s.C);
    });
    std::printf("gemm fp32 %-14s N=%-5lld C=%-4lld OC=%-6lld  forward %6.1f  dinp %6.1f  dw %6.1f GFLOP/s\n", s.name,
                (long long)s.N, (long long)s.C, (long long)s.OC, flops / t_fwd * 1e-9, flops / t_dinp * 1e-9,
                flops / t_dw * 1e-9);
    // Spot-check one entry of each product so the timed runs are verified results.
    double ref = 0;
    for (int64_t c = 0; c < s.C; ++c) ref += (double)inp[5 * s.C + c] * w[7 * s.C + c];
    EXPECT_NEAR(out[5 * s.OC + 7], ref, 1e-4 * std::sqrt((double)s.C));
  }
}

}  // namespace
