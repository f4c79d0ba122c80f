// Rules shared by the CUDA matrix optimizers (Muon, NorMuon, Dion2, NorDion2): the learning-rate
// shape factor of OPTIMIZERS.md "adjust_lr" and the checks on the parameters they accept.
#pragma once
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "optim/optimizer.h"

namespace og::cuda {

// lr_eff / lr for a whole (rows, cols) = (fan_out, fan_in) parameter.
inline float lr_shape_factor(AdjustLr rule, int64_t rows, int64_t cols) {
  switch (rule) {
    case AdjustLr::SpectralNorm: return (float)std::sqrt((double)rows / (double)cols);
    case AdjustLr::RmsNorm: return (float)(0.2 * std::sqrt((double)std::max(rows, cols)));
    case AdjustLr::None: return 1.0f;
  }
  return 1.0f;
}

// Dion2's k = max(1, ceil(fraction·n)), at most n. The product is formed in double from the float
// fraction, whose representation error (e.g. 0.1f·100 = 10.0000001) must not add a slice: a
// product within 1e-6 relative above an integer counts as that integer.
inline int64_t dion2_slices(float fraction, int64_t n) {
  const double x = (double)fraction * (double)n;
  int64_t k = (int64_t)std::ceil(x * (1.0 - 1e-6));
  return std::min<int64_t>(std::max<int64_t>(k, 1), n);
}

inline void check_matrix_params(const OptimHParams& hp, const std::vector<ParamSlot>& params) {
  for (const ParamSlot& p : params) {
    OG_CHECK(p.role == ParamRole::Matrix, "{}: parameter '{}' has role {}; only matrix parameters can use it",
             name_of(hp.algorithm), p.name, role_name(p.role));
    OG_CHECK(p.rows >= 1 && p.cols >= 1, "{}: parameter '{}' has shape {}x{}", name_of(hp.algorithm), p.name, p.rows,
             p.cols);
    OG_CHECK(p.w != nullptr && p.g != nullptr, "{}: parameter '{}' has no weight or gradient pointer",
             name_of(hp.algorithm), p.name);
    OG_CHECK(p.rows <= INT32_MAX && p.cols <= INT32_MAX, "{}: parameter '{}' is too large ({}x{})",
             name_of(hp.algorithm), p.name, p.rows, p.cols);
  }
}

}  // namespace og::cuda
