// Finite-difference helpers for the gradient tests of the CPU reference (double precision).
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"

namespace og::test {

inline std::vector<double> randn(size_t n, uint64_t seed, double scale = 1.0) {
  og::Rng rng(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = scale * rng.normal();
  return v;
}

// Central difference d loss / d x[i] = (loss(x + h e_i) - loss(x - h e_i)) / 2h, for each i in
// `indices` (all of x when empty); x is restored afterwards.
inline std::vector<double> numeric_grad(double* x, size_t n, const std::function<double()>& loss, double h = 1e-5,
                                        const std::vector<size_t>& indices = {}) {
  std::vector<size_t> idx = indices;
  if (idx.empty())
    for (size_t i = 0; i < n; ++i) idx.push_back(i);
  std::vector<double> g(idx.size());
  for (size_t k = 0; k < idx.size(); ++k) {
    const size_t i = idx[k];
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    g[k] = (lp - lm) / (2 * h);
  }
  return g;
}

// Largest |analytic - numeric| relative to the largest |numeric| entry (the gradient's scale).
inline double grad_rel_error(const std::vector<double>& analytic, const std::vector<double>& numeric) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < numeric.size(); ++i) {
    err = std::max(err, std::fabs(analytic[i] - numeric[i]));
    scale = std::max(scale, std::fabs(numeric[i]));
  }
  return err / std::max(scale, 1e-300);
}

// Sum of w[i] * y[i]: the scalar whose gradient w.r.t. y is w (a random projection of an output).
inline double dot(const double* w, const double* y, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += w[i] * y[i];
  return s;
}

}  // namespace og::test
