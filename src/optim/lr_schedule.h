// Learning-rate schedule (the reference's LambdaLR): for the 0-based step i of N, with
// w = round(warmup_frac * N) and d = round(warmdown_frac * N):
//   i < w          -> (i + 1) / w
//   i <= N - d     -> 1
//   otherwise      -> (N - i) / d     (the last step uses 1/d, never 0)
#pragma once
#include <cmath>
#include <cstdint>

namespace og {

inline double lr_multiplier(int64_t i, int64_t N, double warmup_frac, double warmdown_frac) {
  const int64_t w = std::llround(warmup_frac * (double)N);
  const int64_t d = std::llround(warmdown_frac * (double)N);
  if (i < w) return (double)(i + 1) / (double)w;
  if (d == 0 || i <= N - d) return 1.0;
  return (double)(N - i) / (double)d;
}

}  // namespace og
