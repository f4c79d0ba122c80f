// Dion2 slice selection (see slice_select.h).
#include "optim/slice_select.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include <fmt/format.h>

#include "core/error.h"
#include "core/rng.h"

namespace og {

SliceAxis selection_axis(SelectDim dim, int64_t rows, int64_t cols) {
  switch (dim) {
    case SelectDim::Rows: return SliceAxis::Rows;
    case SelectDim::Cols: return SliceAxis::Cols;
    case SelectDim::Shorter: break;
  }
  return rows <= cols ? SliceAxis::Rows : SliceAxis::Cols;
}

int64_t select_count(float fraction, int64_t n) {
  OG_CHECK(fraction > 0.0f && fraction <= 1.0f, "dion2: fraction {} must be in (0, 1]", fraction);
  OG_CHECK(n > 0, "dion2: cannot select from an empty dimension");
  // The shortest decimal that round-trips to this float is what the user wrote.
  const double frac = std::stod(fmt::format("{}", fraction));
  const double x = frac * (double)n;
  // A product like 0.7 * 100 = 70.00000000000001 is an integer up to representation error:
  // do not let that error add a slice.
  const double rounded = std::round(x);
  const double k = std::abs(x - rounded) <= 1e-9 * std::max(1.0, x) ? rounded : std::ceil(x);
  return std::clamp<int64_t>((int64_t)k, 1, n);
}

void l1_slice_norms(const float* m, int64_t rows, int64_t cols, SliceAxis axis, std::vector<double>& out) {
  if (axis == SliceAxis::Rows) {
    out.assign(rows, 0.0);
#pragma omp parallel for schedule(static) if ((size_t)rows * cols > (1u << 16))
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0.0;
      const float* mr = m + r * cols;
      for (int64_t j = 0; j < cols; ++j) s += std::fabs((double)mr[j]);
      out[r] = s;
    }
  } else {
    out.assign(cols, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const float* mr = m + r * cols;
      for (int64_t j = 0; j < cols; ++j) out[j] += std::fabs((double)mr[j]);
    }
  }
}

namespace {

// Pick the k best of n by `before` (a strict total order), return them ascending.
template <typename Before> void pick_k(int64_t n, int64_t k, Before before, std::vector<int64_t>& out) {
  OG_CHECK(k >= 1 && k <= n, "selection: k = {} out of range [1, {}]", k, n);
  out.resize(n);
  std::iota(out.begin(), out.end(), int64_t{0});
  if (k < n) std::nth_element(out.begin(), out.begin() + (k - 1), out.end(), before);
  out.resize(k);
  std::sort(out.begin(), out.end());
}

}  // namespace

void top_k_indices(const std::vector<double>& score, int64_t k, std::vector<int64_t>& out) {
  // A NaN score ranks first (it must not break the ordering, and a NaN momentum should show).
  auto key = [&](int64_t i) { return std::isnan(score[i]) ? INFINITY : score[i]; };
  pick_k((int64_t)score.size(), k, [&](int64_t a, int64_t b) { return key(a) > key(b) || (key(a) == key(b) && a < b); },
         out);
}

void random_k_indices(uint64_t seed, int64_t step, int64_t param_index, int64_t n, int64_t k,
                      std::vector<int64_t>& out) {
  std::vector<uint64_t> key(n);
  for (int64_t i = 0; i < n; ++i) key[i] = hash_u64(seed, (uint64_t)step, (uint64_t)param_index, (uint64_t)i);
  pick_k(
      n, k, [&](int64_t a, int64_t b) { return key[a] < key[b] || (key[a] == key[b] && a < b); }, out);
}

void select_slices(const OptimHParams& hp, int64_t step, int64_t p, const float* m, int64_t rows, int64_t cols,
                   SliceAxis axis, int64_t k, std::vector<double>& score, std::vector<int64_t>& index,
                   SelectionStats* stats) {
  const int64_t n = axis == SliceAxis::Rows ? rows : cols;
  if (hp.select == Select::L1 || stats) l1_slice_norms(m, rows, cols, axis, score);
  if (hp.select == Select::L1)
    top_k_indices(score, k, index);
  else
    random_k_indices(hp.seed, step, p, n, k, index);
  if (stats) stats->add(score, index, k, n);
}

void SelectionStats::add(const std::vector<double>& score, const std::vector<int64_t>& index, int64_t k, int64_t n) {
  double sel = 0.0, all = 0.0;
  for (double x : score) all += x;
  for (int64_t i : index) sel += score[i];
  mass_sum += all > 0.0 ? sel / all : 0.0;
  k_sum += (double)k;
  frac_sum += (double)k / (double)n;
  ++matrices;
}

void SelectionStats::write(std::map<std::string, double>& stats) const {
  if (matrices == 0) return;
  const double np = (double)matrices;
  stats["select_mass"] = mass_sum / np;
  stats["select_k"] = k_sum / np;
  stats["select_fraction"] = frac_sum / np;
}

}  // namespace og
