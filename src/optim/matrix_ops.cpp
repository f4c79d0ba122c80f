// Per-matrix building blocks of the CPU optimizers (see matrix_ops.h).
#include "optim/matrix_ops.h"

#include "core/bf16.h"

#include <cmath>
#include <cstring>

namespace og {

float round_bf16(float x) { return round_to_bf16(x); }

void round_bf16_inplace(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = round_bf16(x[i]);
}

void muon_momentum_update(float* m, float* u, const float* g, size_t n, double mu, bool nesterov, bool bf16) {
#pragma omp parallel for schedule(static) if (n > (1u << 16))
  for (size_t i = 0; i < n; ++i) {
    float mi = (float)(mu * m[i] + (double)g[i]);
    if (bf16) mi = round_bf16(mi);
    m[i] = mi;
    if (u) u[i] = nesterov ? (float)(mu * mi + (double)g[i]) : mi;
  }
}

void accumulate_momentum(float* m, const float* g, size_t n, bool bf16) {
#pragma omp parallel for schedule(static) if (n > (1u << 16))
  for (size_t i = 0; i < n; ++i) {
    const float v = m[i] + g[i];
    m[i] = bf16 ? round_bf16(v) : v;
  }
}

double frobenius_norm(const float* x, size_t n) {
  double s = 0.0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (n > (1u << 16))
  for (size_t i = 0; i < n; ++i) s += (double)x[i] * (double)x[i];
  return std::sqrt(s);
}

void decay_and_add(float* w, const float* u, size_t n, double decay, double scale) {
#pragma omp parallel for schedule(static) if (n > (1u << 16))
  for (size_t i = 0; i < n; ++i) w[i] = (float)((double)w[i] * decay - scale * (double)u[i]);
}

void decay_and_add_slices(float* w, int64_t rows, int64_t cols, SliceAxis axis, const std::vector<int64_t>& index,
                          const float* o, double decay, double scale) {
  const size_t n = (size_t)rows * (size_t)cols;
#pragma omp parallel for schedule(static) if (n > (1u << 16))
  for (size_t i = 0; i < n; ++i) w[i] = (float)((double)w[i] * decay);
  const int64_t k = (int64_t)index.size();
  if (axis == SliceAxis::Rows) {
    for (int64_t s = 0; s < k; ++s) {
      float* wr = w + index[s] * cols;
      const float* orow = o + s * cols;
      for (int64_t j = 0; j < cols; ++j) wr[j] = (float)((double)wr[j] - scale * (double)orow[j]);
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      float* wr = w + r * cols;
      const float* orow = o + r * k;
      for (int64_t s = 0; s < k; ++s) wr[index[s]] = (float)((double)wr[index[s]] - scale * (double)orow[s]);
    }
  }
}

void scale_slices(float* m, int64_t rows, int64_t cols, SliceAxis axis, const std::vector<int64_t>& index,
                  double factor, bool bf16) {
  auto apply = [&](float& x) {
    const float y = (float)((double)x * factor);
    x = bf16 ? round_bf16(y) : y;
  };
  if (axis == SliceAxis::Rows) {
    for (int64_t r : index)
      for (int64_t j = 0; j < cols; ++j) apply(m[r * cols + j]);
  } else {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c : index) apply(m[r * cols + c]);
  }
}

}  // namespace og
