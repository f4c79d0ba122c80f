// Dion2's slice selection: which dimension to select along, how many slices (k), and which
// ones — the k largest by l1 norm, or k uniformly at random from a counter-based hash so that
// every backend and every data-parallel rank picks the same set from (seed, step) alone.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "optim/hparams.h"
#include "optim/matrix_ops.h"

namespace og {

// Rows or columns of a (rows, cols) matrix: the shorter dimension (rows if rows <= cols) or the
// explicit override.
SliceAxis selection_axis(SelectDim dim, int64_t rows, int64_t cols);

// k = max(1, ceil(fraction * n)), with fraction taken as the decimal it was written as (0.1f is
// read as 0.1, not 0.100000001) so that 0.1 * 10 selects 1 slice, as the reference's Python float
// does.
int64_t select_count(float fraction, int64_t n);

// l1 norm of every slice along `axis` (n = rows for Rows, cols for Cols), in double.
void l1_slice_norms(const float* m, int64_t rows, int64_t cols, SliceAxis axis, std::vector<double>& out);

// The k indices with the largest score; ties go to the smaller index. Returned ascending.
void top_k_indices(const std::vector<double>& score, int64_t k, std::vector<int64_t>& out);

// Uniform k-subset of [0, n) without replacement: slice i gets key og::hash_u64(seed, step,
// param_index, i) and the k smallest keys win (ties, practically impossible, by smaller index).
// Returned ascending. The CUDA backend reproduces this rule bit for bit.
void random_k_indices(uint64_t seed, int64_t step, int64_t param_index, int64_t n, int64_t k,
                      std::vector<int64_t>& out);

// Dion2's selection of one matrix's slices from its (already accumulated) momentum m: the k of n
// slices along `axis` into `index`, by l1 norm or at random (from seed, step and the matrix's
// index p in its group). `score` is scratch; it holds the l1 slice norms afterwards when they were
// needed (l1 selection, or `stats` given).
struct SelectionStats;
void select_slices(const OptimHParams& hp, int64_t step, int64_t p, const float* m, int64_t rows, int64_t cols,
                   SliceAxis axis, int64_t k, std::vector<double>& score, std::vector<int64_t>& index,
                   SelectionStats* stats = nullptr);

// The per-step selection diagnostics (hparams.diagnostics), averaged over a group's matrices:
// select_mass (fraction of the momentum's l1 mass in the selected slices), select_k,
// select_fraction.
struct SelectionStats {
  double mass_sum = 0.0, k_sum = 0.0, frac_sum = 0.0;
  size_t matrices = 0;
  void add(const std::vector<double>& score, const std::vector<int64_t>& index, int64_t k, int64_t n);
  void write(std::map<std::string, double>& stats) const;  // nothing when no matrix was added
};

}  // namespace og
