// Cross-entropy from logits[N, V] (fp32 logits in training; double in gradient checks):
//   forward  losses[n]     = logsumexp(logits[n, :]) - logits[n, target[n]]        (writes)
//   backward dlogits[n, :] = dlosses[n] * (softmax(logits[n, :]) - onehot(target[n]))  (writes)
// A target of -1 is ignored (the reference's ignore_index): its loss and gradient row are 0.
// Any other target outside [0, V) is an og::Error.
// The backward reads a row completely before writing it, so dlogits may alias logits: the model
// turns its one [N, V] logits buffer into dlogits in place.
// Rows are independent and handled by one thread each. The per-row sums accumulate in double;
// the float version uses a branch-free polynomial exp the compiler vectorizes (the exp of the
// V = 50304 logits of every token is otherwise the most expensive part after the lm_head gemm).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "model/cpu/ops.h"

namespace og::cpu {
namespace {

// exp(x) for x <= 88 (softmax arguments are <= 0), relative error < 2e-7 (about 2 ulp);
// arguments below -87.3 return exp(-87.3) ~ 1e-38 rather than a denormal or 0, which is
// invisible next to the softmax denominator (>= 1).
inline float exp_poly(float x) {
  x = std::min(std::max(x, -87.3f), 88.0f);
  // x = n ln2 + r with |r| <= ln2/2; n by the round-to-nearest magic-number trick.
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;     // ln2 split hi/lo so n*ln2 is exact in the hi part
  r = r - n * -2.12194440e-4f;
  // exp(r) by its Taylor series to degree 7 (truncation error < 6e-9 on |r| <= 0.347).
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;  // 2^n, n in [-126, 127]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float exp_fast(float x) { return exp_poly(x); }
inline double exp_fast(double x) { return std::exp(x); }

// A row's logsumexp as max + log(sum exp(x - max)); the sum accumulates in double. Keeping the
// two parts apart lets the backward form (x - max) - log_sum in T with only log_sum rounded
// (|log_sum| <= log V), instead of rounding the whole logsumexp.
template <typename T> struct RowLse {
  T max;
  double log_sum;
};
template <typename T> RowLse<T> row_logsumexp(const T* row, int64_t V) {
  T m = row[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < V; ++j) m = std::max(m, row[j]);
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < V; ++j) s += (double)exp_fast(row[j] - m);
  return {m, std::log(s)};
}

void check_targets(const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; ++n)
    OG_CHECK(targets[n] == -1 || (targets[n] >= 0 && targets[n] < V),
             "cross-entropy: target {} at row {} is outside [0, {}) (and is not the ignore index -1)", targets[n], n,
             V);
}

}  // namespace

template <typename T> void crossentropy_forward(T* losses, const T* logits, const int32_t* targets, int64_t N, int64_t V) {
  check_targets(targets, N, V);
#pragma omp parallel for schedule(static) if (N * V > 65536)
  for (int64_t n = 0; n < N; ++n) {
    const T* row = logits + n * V;
    if (targets[n] < 0) {
      losses[n] = T(0);
      continue;
    }
    const RowLse<T> lse = row_logsumexp(row, V);
    losses[n] = (T)((double)lse.max - (double)row[targets[n]] + lse.log_sum);
  }
}

template <typename T>
void crossentropy_backward(T* dlogits, const T* logits, const int32_t* targets, const T* dlosses, int64_t N, int64_t V) {
  check_targets(targets, N, V);
#pragma omp parallel for schedule(static) if (N * V > 65536)
  for (int64_t n = 0; n < N; ++n) {
    const T* row = logits + n * V;
    T* drow = dlogits + n * V;
    const int32_t tgt = targets[n];
    if (tgt < 0) {
      std::fill(drow, drow + V, T(0));
      continue;
    }
    const RowLse<T> lse = row_logsumexp(row, V);
    const T m = lse.max, log_sum = (T)lse.log_sum;
    const T dl = dlosses[n];
    const T row_tgt = row[tgt];  // read before the row is overwritten (aliasing)
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) drow[j] = dl * exp_fast((row[j] - m) - log_sum);
    drow[tgt] = dl * (exp_fast((row_tgt - m) - log_sum) - T(1));
  }
}

template void crossentropy_forward<float>(float*, const float*, const int32_t*, int64_t, int64_t);
template void crossentropy_forward<double>(double*, const double*, const int32_t*, int64_t, int64_t);
template void crossentropy_backward<float>(float*, const float*, const int32_t*, const float*, int64_t, int64_t);
template void crossentropy_backward<double>(double*, const double*, const int32_t*, const double*, int64_t, int64_t);

}  // namespace og::cpu
