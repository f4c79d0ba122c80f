// Small per-matrix building blocks shared by the CPU optimizers: bf16 rounding of state, norms,
// the decoupled weight-decay-then-update step on a whole matrix or on selected slices.
// Matrices are row-major fp32, (rows, cols) = (fan_out, fan_in).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace og {

// Which slices of a matrix a selection refers to.
enum class SliceAxis { Rows, Cols };

// Round an fp32 value to the nearest bf16 value (round-to-nearest-even), returned as fp32.
// NaN stays NaN; values that round past the largest bf16 become +-inf, as a cast would.
float round_bf16(float x);
void round_bf16_inplace(float* x, size_t n);

// Muon's momentum step over n entries: M <- mu*M + G (rounded to bf16 if asked); when u is not
// null, U <- mu*M + G (nesterov) or U <- M, the matrix that is orthonormalized.
void muon_momentum_update(float* m, float* u, const float* g, size_t n, double mu, bool nesterov, bool bf16);

// Dion2's accumulation over n entries: M <- M + G (rounded to bf16 if asked).
void accumulate_momentum(float* m, const float* g, size_t n, bool bf16);

// Frobenius norm of a dense block (accumulated in double).
double frobenius_norm(const float* x, size_t n);

// W <- W * decay - scale * U, elementwise over n entries (decay = 1 - lr * wd).
void decay_and_add(float* w, const float* u, size_t n, double decay, double scale);

// W <- W * decay over all rows x cols entries, then W[K] <- W[K] - scale * O on the selected
// slices: O is dense (k x cols) for SliceAxis::Rows or (rows x k) for SliceAxis::Cols, its
// slice s belongs to index[s].
void decay_and_add_slices(float* w, int64_t rows, int64_t cols, SliceAxis axis, const std::vector<int64_t>& index,
                          const float* o, double decay, double scale);

// M[K] <- factor * M[K] on the selected slices (rows or columns), rounded to bf16 if asked.
void scale_slices(float* m, int64_t rows, int64_t cols, SliceAxis axis, const std::vector<int64_t>& index,
                  double factor, bool bf16);

}  // namespace og
