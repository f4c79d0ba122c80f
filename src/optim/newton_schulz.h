// The orthonormalization engine shared by the matrix optimizers (Muon, NorMuon, Dion2,
// NorDion2): O = NS(X) ~ the polar factor U·Vᵀ of X = U·S·Vᵀ, by five quintic Newton–Schulz steps
//   A = X·Xᵀ;  B = b·A + c·A·A;  X = a·X + B·X
// with the NS5 coefficients (Keller Jordan) or the Polar Express ones (OPTIMIZERS.md).
//
// Precision: fp32 storage and fp32 products through og::cpu::gemm (fp32 accumulation), the
// normalizing Frobenius norm in double. The reference runs the same iteration in bf16, so results
// agree with it to ~1e-2 relative; fp32 keeps the CPU path fast enough for training (NS on
// 768x3072 in well under a second on 2 cores) while staying ~1e-6 from an fp64 evaluation.
//
// Shapes: NS5 transposes a tall input (rows > cols) and iterates on the wide side; Polar Express
// keeps tall inputs as they are and uses A = Xᵀ·X, X = a·X + X·B (the same math). The symmetric
// products A and A·A are computed on their upper block triangle only and mirrored.
//
// The input may be a whole matrix or the submatrix of selected rows (or columns) of one: the
// gather happens while loading the work buffer, so Dion2 never copies the selection itself.
#pragma once
#include <cstdint>
#include <vector>

#include "optim/hparams.h"
#include "optim/matrix_ops.h"

namespace og {

// What to orthonormalize: the (rows x cols) row-major matrix at data (row stride ld), or, when
// index is set, only its slices index[0..count) along axis (a count x cols or rows x count matrix).
struct NsSource {
  const float* data = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
  const int64_t* index = nullptr;
  int64_t count = 0;
  SliceAxis axis = SliceAxis::Rows;

  int64_t out_rows() const { return index && axis == SliceAxis::Rows ? count : rows; }
  int64_t out_cols() const { return index && axis == SliceAxis::Cols ? count : cols; }
};

// Scratch buffers, grown on demand and reused across calls (one per thread).
struct NsWorkspace {
  std::vector<float> x, y, a, b;
};

// out (out_rows x out_cols, row stride ld_out) <- NS(src). eps is the normalization epsilon
// (the optimizers pass their group epsilon, 1e-8 by default). out may alias src.data only when
// no index is set and the strides match.
void orthonormalize(Ortho kind, const NsSource& src, float* out, int64_t ld_out, float eps, NsWorkspace& ws);

// A batch of independent jobs. Small matrices are spread over the OpenMP threads (one per job);
// large ones run one after another with the threads inside each product.
struct NsJob {
  NsSource src;
  float* out = nullptr;
  int64_t ld_out = 0;
};
void orthonormalize_batch(Ortho kind, const std::vector<NsJob>& jobs, float eps);

}  // namespace og
