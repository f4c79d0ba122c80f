// NorMuon neuron-wise normalization (see normuon_normalize.h).
#include "optim/normuon_normalize.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "optim/matrix_ops.h"

namespace og {

void normuon_normalize(float* o, int64_t k, int64_t cols, float* v, const int64_t* rows_of_o, double beta2,
                       bool bf16_state) {
  constexpr double kEps = 1e-8;  // the reference hard-codes both epsilons
  double f2 = 0.0, g2 = 0.0;
  std::vector<double> inv(k);
  for (int64_t i = 0; i < k; ++i) {
    const float* row = o + i * cols;
    double sq = 0.0;
    for (int64_t j = 0; j < cols; ++j) sq += (double)row[j] * (double)row[j];
    f2 += sq;
    const int64_t r = rows_of_o ? rows_of_o[i] : i;
    const double vr = (double)v[r] + (1.0 - beta2) * (sq / (double)cols - (double)v[r]);
    v[r] = bf16_state ? round_bf16((float)vr) : (float)vr;
    inv[i] = 1.0 / (std::sqrt(vr) + kEps);
    g2 += sq * inv[i] * inv[i];
  }
  const double restore = std::sqrt(f2) / std::max(std::sqrt(g2), kEps);
  for (int64_t i = 0; i < k; ++i) {
    float* row = o + i * cols;
    const double s = inv[i] * restore;
    for (int64_t j = 0; j < cols; ++j) row[j] = (float)((double)row[j] * s);
  }
}

}  // namespace og
