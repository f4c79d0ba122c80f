// Helpers shared by the CUDA op tests (tests/gpu/test_cuda_ops*.cpp): random host data rounded
// to bf16 (so the CPU reference sees exactly the GPU's inputs and only compute error remains),
// device upload/download, NaN poisoning of outputs, and error metrics.
#pragma once
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/cuda_utils.h"
#include "core/rng.h"

// Every GPU test starts with this: without a device it is skipped with the reason.
#define SKIP_WITHOUT_CUDA() \
  if (!::og::cuda_available()) GTEST_SKIP() << "no CUDA device"

namespace og::test {

using bf16 = __nv_bfloat16;

inline float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

// n normal(0, scale²) values; rounded to bf16 precision when `bf16_exact` (the default).
inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f, bool bf16_exact = true) {
  og::Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = (float)(rng.normal() * scale);
    if (bf16_exact) x = round_bf16(x);
  }
  return v;
}

inline std::vector<int32_t> random_tokens(size_t n, int32_t V, uint64_t seed) {
  og::Rng rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = (int32_t)rng.below((uint64_t)V);
  return t;
}

inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16(v[i]);
  return out;
}

inline std::vector<float> to_f32(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}
inline std::vector<float> to_f32(const std::vector<float>& v) { return v; }

template <typename T> og::DeviceBuffer<T> upload(const std::vector<T>& h) {
  og::DeviceBuffer<T> d(h.size());
  if (!h.empty()) CUDA_CHECK(cudaMemcpy(d.data(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// Waits for the device (surfacing asynchronous kernel errors) and copies back.
template <typename T> std::vector<T> download(const og::DeviceBuffer<T>& d, size_t n = SIZE_MAX) {
  if (n == SIZE_MAX) n = d.size();
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> h(n);
  if (n) CUDA_CHECK(cudaMemcpy(h.data(), d.data(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
template <typename T> std::vector<T> download(const T* d, size_t n) {
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<T> h(n);
  if (n) CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// Fill with all-ones bytes: a NaN for both fp32 and bf16, so any element a kernel fails to write
// shows up as non-finite.
template <typename T> void poison(og::DeviceBuffer<T>& d) {
  if (d.size()) CUDA_CHECK(cudaMemset(d.data(), 0xFF, d.bytes()));
}

struct ErrorStats {
  double rel_l2 = 0;      // ||got − want|| / ||want||
  double max_abs = 0;     // max |got − want| over finite entries
  int64_t nonfinite = 0;  // entries of got that are NaN/Inf (unwritten or blown up)
  std::string str() const {
    return "rel_l2=" + std::to_string(rel_l2) + " max_abs=" + std::to_string(max_abs) +
           " nonfinite=" + std::to_string(nonfinite);
  }
};

template <typename A, typename B> ErrorStats compare(const std::vector<A>& got_in, const std::vector<B>& want_in) {
  const std::vector<float> got = to_f32(got_in), want = to_f32(want_in);
  EXPECT_EQ(got.size(), want.size());
  ErrorStats s;
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    if (!std::isfinite(got[i])) {
      ++s.nonfinite;
      continue;
    }
    const double d = (double)got[i] - (double)want[i];
    num += d * d;
    den += (double)want[i] * want[i];
    s.max_abs = std::max(s.max_abs, std::fabs(d));
  }
  s.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return s;
}

// OG_TEST_VERBOSE=1 in the environment prints every comparison (to see the margins).
inline bool verbose() {
  static const bool v = std::getenv("OG_TEST_VERBOSE") != nullptr;
  return v;
}

// Every element written (finite) and relative L2 error within tol.
#define EXPECT_CLOSE(got, want, tol)                                                                         \
  do {                                                                                                       \
    const ::og::test::ErrorStats es_ = ::og::test::compare(got, want);                                       \
    if (::og::test::verbose()) std::printf("  %-28s %s (tol %g)\n", #got, es_.str().c_str(), (double)(tol)); \
    EXPECT_EQ(es_.nonfinite, 0) << #got << ": " << es_.str();                                                \
    EXPECT_LE(es_.rel_l2, tol) << #got << ": " << es_.str();                                                 \
  } while (0)

// Elapsed milliseconds of `fn` on the default stream, averaged over `iters` runs after one warmup.
template <typename F> double time_ms(F&& fn, int iters = 10) {
  fn();
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  CUDA_CHECK(cudaEventRecord(a));
  for (int i = 0; i < iters; ++i) fn();
  CUDA_CHECK(cudaEventRecord(b));
  CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  return ms / iters;
}

}  // namespace og::test
