// Checks shared by the CUDA matrix optimizers (Muon, NorMuon, Dion2, NorDion2) on the parameters
// they accept. (The shape rules themselves — adjusted_lr, select_count, selection_axis — are the
// CPU reference's, so both backends agree by construction.)
#pragma once
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "optim/optimizer.h"

namespace og::cuda {

inline void check_matrix_params(const OptimHParams& hp, const std::vector<ParamSlot>& params) {
  for (const ParamSlot& p : params) {
    OG_CHECK(p.role == ParamRole::Matrix, "{}: parameter '{}' has role {}; only matrix parameters can use it",
             name_of(hp.algorithm), p.name, role_name(p.role));
    OG_CHECK(p.rows >= 1 && p.cols >= 1, "{}: parameter '{}' has shape {}x{}", name_of(hp.algorithm), p.name, p.rows,
             p.cols);
    OG_CHECK((p.w != nullptr && p.g != nullptr) || p.shard_rows() == 0,
             "{}: parameter '{}' has no weight or gradient pointer", name_of(hp.algorithm), p.name);
    OG_CHECK(p.rows <= INT32_MAX && p.cols <= INT32_MAX, "{}: parameter '{}' is too large ({}x{})",
             name_of(hp.algorithm), p.name, p.rows, p.cols);
  }
}

}  // namespace og::cuda
