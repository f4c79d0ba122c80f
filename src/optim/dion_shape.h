// Dion's per-matrix plan: the working orientation, the rank r, and the seeds of its random draws.
// Header-only so the CPU reference and the CUDA path derive exactly the same numbers.
//
// A parameter of shape (m, n) is worked on as B = M (m >= n) or B = M^T (m < n), so B is always
// tall-or-square with rows_b >= cols_b; Q is cols_b x r; P is rows_b x r.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "core/rng.h"

namespace og::dion {

struct DionShape {
  int64_t m = 0, n = 0;     // the whole parameter, (rows, cols) = (fan_out, fan_in)
  bool transposed = false;  // B = M^T (the parameter is wide)
  int64_t rows_b = 0, cols_b = 0;
  int64_t r = 0;  // rank of the low-rank factorization
};

// r = clamp(ceil(rank_fraction * min(m, n)), 1, min(m, n)).
// A float fraction is slightly off its decimal value (0.3f = 0.30000001...), and ceil(0.3f * 10)
// would be 4, not 3: a relative slack of 1e-6 (above float's 6e-8 rounding) absorbs that.
inline int64_t dion_rank(float rank_fraction, int64_t m, int64_t n) {
  const int64_t k = std::min(m, n);
  const double x = (double)rank_fraction * (double)k;
  const int64_t r = (int64_t)std::ceil(x * (1.0 - 1e-6));
  return std::clamp<int64_t>(r, 1, k);
}

inline DionShape dion_shape(int64_t m, int64_t n, float rank_fraction) {
  DionShape s;
  s.m = m;
  s.n = n;
  s.transposed = m < n;
  s.rows_b = s.transposed ? n : m;
  s.cols_b = s.transposed ? m : n;
  s.r = dion_rank(rank_fraction, m, n);
  return s;
}

// Rows of the randomized Cholesky-QR sketch: 1.25 r rounded up to a multiple of 128.
inline int64_t dion_sketch_rows(int64_t r) { return 128 * (int64_t)std::ceil(1.25 * (double)r / 128.0); }

// Distinct tags keep the Q-init stream and the sketch streams apart.
inline constexpr uint64_t kDionQInitTag = 0x44696F6E51496E69ull;   // "DionQIni"
inline constexpr uint64_t kDionSketchTag = 0x44696F6E536B6368ull;  // "DionSkch"

// Seed of the og::Rng that draws Q's initial N(0, 1) entries (row-major, cols_b x r) for the
// param_index-th parameter of the group: the same on every rank.
inline uint64_t dion_q_init_seed(uint64_t seed, size_t param_index) {
  return hash_u64(seed, kDionQInitTag, (uint64_t)param_index);
}

// Seed of the og::Rng that draws the sketch of the param_index-th parameter at (1-based) step
// `step`: derived from counters only, so nothing but the seed and step need checkpointing.
inline uint64_t dion_sketch_seed(uint64_t seed, int64_t step, size_t param_index) {
  return hash_u64(seed, kDionSketchTag, (uint64_t)step, (uint64_t)param_index);
}

}  // namespace og::dion
