// Cross-entropy from logits[N, V] (fp32 logits in training; double in gradient checks):
//   forward  losses[n]     = logsumexp(logits[n, :]) - logits[n, target[n]]        (writes)
//   backward dlogits[n, :] = dlosses[n] * (softmax(logits[n, :]) - onehot(target[n]))  (writes)
// A target of -1 is ignored (the reference's ignore_index): its loss and gradient row are 0.
// Any other target outside [0, V) is an og::Error.
// The backward reads a row completely before writing it, so dlogits may alias logits: the model
// turns its one [N, V] logits buffer into dlogits in place.
// Rows are independent and handled by one thread each. The per-row sums accumulate in double;
// the float version uses a branch-free polynomial exp on float vectors (the exps of the
// V = 50304 logits of every token are otherwise the most expensive part after the lm_head gemm).
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
// invisible next to the softmax denominator (>= 1). Written once for a scalar float and for a
// vector of floats (GCC vector extensions, one register of the target: 16 floats on AVX-512).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
constexpr int kLanes = kVecBytes / 4;
typedef float vf __attribute__((vector_size(kVecBytes)));
typedef int32_t vi __attribute__((vector_size(kVecBytes)));
typedef float vf_u __attribute__((vector_size(kVecBytes), aligned(4)));  // unaligned load/store

inline int32_t to_int(float n) { return (int32_t)n; }
inline vi to_int(vf n) { return __builtin_convertvector(n, vi); }
inline float as_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
}
inline vf as_float(vi i) { return (vf)i; }
inline float clamp(float x, float lo, float hi) { return std::min(std::max(x, lo), hi); }
inline vf clamp(vf x, float lo, float hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

template <typename F> inline F exp_poly(F x) {
  x = clamp(x, -87.3f, 88.0f);
  // x = n ln2 + r with |r| <= ln2/2; n by the round-to-nearest magic-number trick.
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const F n = (x * 1.44269504088896341f + magic) - magic;
  F r = x - n * 0.693359375f;  // ln2 split hi/lo so n*ln2 is exact in the hi part
  r = r - n * -2.12194440e-4f;
  // exp(r) by its Taylor series to degree 7 (truncation error < 6e-9 on |r| <= 0.347).
  F p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * as_float((to_int(n) + 127) << 23);  // times 2^n, n in [-126, 127]
}

// The three passes over a row: max, sum of exp(x - max), and the gradient write
// d[j] = dl * exp(x[j] - shift). Generic versions (double: std::exp) and float ones on vectors.
template <typename T> T row_max(const T* x, int64_t V) {
  T m = x[0];
  for (int64_t j = 1; j < V; ++j) m = x[j] > m ? x[j] : m;
  return m;
}
template <typename T> double row_sum_exp(const T* x, int64_t V, T m) {
  double s = 0.0;
  for (int64_t j = 0; j < V; ++j) s += std::exp((double)(x[j] - m));
  return s;
}
template <typename T> void row_write_grad(T* d, const T* x, int64_t V, T shift, T dl) {
  for (int64_t j = 0; j < V; ++j) d[j] = dl * (T)std::exp((double)(x[j] - shift));
}

template <> float row_max<float>(const float* x, int64_t V) {
  int64_t j = 0;
  float m = x[0];
  if (V >= kLanes) {
    vf mv = *(const vf_u*)x;
    for (j = kLanes; j + kLanes <= V; j += kLanes) {
      const vf xv = *(const vf_u*)(x + j);
      mv = xv > mv ? xv : mv;
    }
    for (int i = 0; i < kLanes; ++i) m = std::max(m, mv[i]);
  }
  for (; j < V; ++j) m = std::max(m, x[j]);
  return m;
}
template <> double row_sum_exp<float>(const float* x, int64_t V, float m) {
  // Float lanes summed over blocks of 64 vectors, each block's lanes then added in double:
  // float rounding only within 64 terms per lane.
  double s = 0.0;
  int64_t j = 0;
  for (; j + kLanes <= V;) {
    vf acc = {};
    const int64_t end = std::min(V, j + 64 * kLanes);
    for (; j + kLanes <= end; j += kLanes) acc += exp_poly(*(const vf_u*)(x + j) - m);
    for (int i = 0; i < kLanes; ++i) s += (double)acc[i];
  }
  for (; j < V; ++j) s += (double)exp_poly(x[j] - m);
  return s;
}
template <> void row_write_grad<float>(float* d, const float* x, int64_t V, float shift, float dl) {
  int64_t j = 0;
  for (; j + kLanes <= V; j += kLanes) *(vf_u*)(d + j) = dl * exp_poly(*(const vf_u*)(x + j) - shift);
  for (; j < V; ++j) d[j] = dl * exp_poly(x[j] - shift);
}
inline float exp_one(float x) { return exp_poly(x); }
inline double exp_one(double x) { return std::exp(x); }

// A row's logsumexp as max + log(sum exp(x - max)). Keeping the two parts apart lets the
// backward form exp(x - (max + log_sum)) with the shift rounded once to T.
template <typename T> struct RowLse {
  T max;
  double log_sum;
};
template <typename T> RowLse<T> row_logsumexp(const T* row, int64_t V) {
  const T m = row_max(row, V);
  return {m, std::log(row_sum_exp(row, V, m))};
}

void check_targets(const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; ++n)
    OG_CHECK(targets[n] == -1 || (targets[n] >= 0 && targets[n] < V),
             "cross-entropy: target {} at row {} is outside [0, {}) (and is not the ignore index -1)", targets[n], n,
             V);
}

}  // namespace

template <typename T>
void crossentropy_forward(T* losses, const T* logits, const int32_t* targets, int64_t N, int64_t V) {
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
void crossentropy_backward(T* dlogits, const T* logits, const int32_t* targets, const T* dlosses, int64_t N,
                           int64_t V) {
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
    const T shift = (T)((double)lse.max + lse.log_sum);
    const T dl = dlosses[n];
    const T row_tgt = row[tgt];  // read before the row is overwritten (aliasing)
    row_write_grad(drow, row, V, shift, dl);
    drow[tgt] = dl * (exp_one(row_tgt - shift) - T(1));
  }
}

template void crossentropy_forward<float>(float*, const float*, const int32_t*, int64_t, int64_t);
template void crossentropy_forward<double>(double*, const double*, const int32_t*, int64_t, int64_t);
template void crossentropy_backward<float>(float*, const float*, const int32_t*, const float*, int64_t, int64_t);
template void crossentropy_backward<double>(double*, const double*, const int32_t*, const double*, int64_t, int64_t);

}  // namespace og::cpu
