// The orthonormalization engine against an independent fp64 implementation (ns_double.h) on
// random inputs: NS5 and Polar Express, wide/tall/square, selected-slice inputs, batches.
// Tolerance 2e-5 relative (the engine runs fp32 products; measured ~1e-6).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "ns_double.h"
#include "optim/newton_schulz.h"

using namespace og;

namespace {

std::vector<float> randn(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = (float)rng.normal();
  return v;
}

double rel_err(const std::vector<float>& a, const std::vector<double>& b) {
  double d = 0.0, n = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += (a[i] - b[i]) * (a[i] - b[i]);
    n += b[i] * b[i];
  }
  return std::sqrt(d / n);
}

}  // namespace

TEST(NewtonSchulz, MatchesFp64Reference) {
  const std::pair<int64_t, int64_t> shapes[] = {{8, 8}, {16, 48}, {48, 16}, {1, 20}, {20, 1}, {150, 300}, {300, 150}};
  for (Ortho kind : {Ortho::NewtonSchulz, Ortho::PolarExpress}) {
    NsWorkspace ws;
    for (auto [r, c] : shapes) {
      const std::vector<float> x = randn(r * c, r * 1000 + c);
      std::vector<float> out(r * c);
      orthonormalize(kind, NsSource{x.data(), r, c, c}, out.data(), c, 1e-8f, ws);
      const std::vector<double> want =
          test::ns_double(std::vector<double>(x.begin(), x.end()), r, c, kind == Ortho::PolarExpress, 1e-8);
      EXPECT_LT(rel_err(out, want), 2e-5) << name_of(kind) << " " << r << "x" << c;
    }
  }
}

TEST(NewtonSchulz, OutputIsNearlyOrthonormal) {
  // Rows of a wide output are nearly orthonormal: O·Oᵀ ~ I. Neither iteration converges exactly
  // in five steps (measured worst |O·Oᵀ − I| entry on this input: NS5 0.026, Polar Express 0.16,
  // whose five-step truncation of its schedule leaves a wider band); an unnormalized or
  // wrong-coefficient iteration is off by far more.
  const int64_t r = 16, c = 64;
  const std::vector<float> x = randn(r * c, 5);
  for (Ortho kind : {Ortho::NewtonSchulz, Ortho::PolarExpress}) {
    NsWorkspace ws;
    std::vector<float> o(r * c);
    orthonormalize(kind, NsSource{x.data(), r, c, c}, o.data(), c, 1e-8f, ws);
    double worst = 0.0;
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < r; ++j) {
        double s = 0.0;
        for (int64_t k = 0; k < c; ++k) s += (double)o[i * c + k] * o[j * c + k];
        worst = std::max(worst, std::fabs(s - (i == j ? 1.0 : 0.0)));
      }
    EXPECT_LT(worst, 0.3) << name_of(kind);
    EXPECT_GT(worst, 0.0);
  }
  // Scale invariance: NS(s·X) = NS(X).
  std::vector<float> xs(x), o1(r * c), o2(r * c);
  for (float& v : xs) v *= 1000.0f;
  NsWorkspace ws;
  orthonormalize(Ortho::NewtonSchulz, NsSource{x.data(), r, c, c}, o1.data(), c, 1e-8f, ws);
  orthonormalize(Ortho::NewtonSchulz, NsSource{xs.data(), r, c, c}, o2.data(), c, 1e-8f, ws);
  for (size_t i = 0; i < o1.size(); ++i) EXPECT_NEAR(o1[i], o2[i], 1e-5);
}

TEST(NewtonSchulz, SelectedSlicesEqualTheGatheredMatrix) {
  const int64_t r = 30, c = 20;
  const std::vector<float> m = randn(r * c, 9);
  const std::vector<int64_t> rows = {2, 5, 6, 17, 29}, cols = {0, 3, 19};
  for (Ortho kind : {Ortho::NewtonSchulz, Ortho::PolarExpress}) {
    NsWorkspace ws;
    // Rows: a 5 x 20 submatrix.
    std::vector<float> g(rows.size() * c), o1(g.size()), o2(g.size());
    for (size_t i = 0; i < rows.size(); ++i)
      for (int64_t j = 0; j < c; ++j) g[i * c + j] = m[rows[i] * c + j];
    orthonormalize(kind, NsSource{g.data(), (int64_t)rows.size(), c, c}, o1.data(), c, 1e-8f, ws);
    orthonormalize(kind, NsSource{m.data(), r, c, c, rows.data(), (int64_t)rows.size(), SliceAxis::Rows}, o2.data(), c,
                   1e-8f, ws);
    EXPECT_EQ(o1, o2);
    // Columns: a 30 x 3 (tall) submatrix.
    const int64_t k = (int64_t)cols.size();
    std::vector<float> h(r * k), p1(h.size()), p2(h.size());
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < k; ++j) h[i * k + j] = m[i * c + cols[j]];
    orthonormalize(kind, NsSource{h.data(), r, k, k}, p1.data(), k, 1e-8f, ws);
    orthonormalize(kind, NsSource{m.data(), r, c, c, cols.data(), k, SliceAxis::Cols}, p2.data(), k, 1e-8f, ws);
    EXPECT_EQ(p1, p2);
  }
}

TEST(NewtonSchulz, BatchEqualsOneByOne) {
  // Small jobs (threaded over the batch) and a large one (threaded inside the products).
  for (int64_t big : {0, 1}) {
    std::vector<std::pair<int64_t, int64_t>> shapes = {{8, 24}, {24, 8}, {12, 12}, {5, 40}};
    if (big) shapes.push_back({260, 300});
    std::vector<std::vector<float>> in, single, batched;
    std::vector<NsJob> jobs;
    NsWorkspace ws;
    for (size_t i = 0; i < shapes.size(); ++i) {
      auto [r, c] = shapes[i];
      in.push_back(randn(r * c, 77 + i));
      single.emplace_back(r * c);
      batched.emplace_back(r * c);
    }
    for (size_t i = 0; i < shapes.size(); ++i) {
      auto [r, c] = shapes[i];
      orthonormalize(Ortho::PolarExpress, NsSource{in[i].data(), r, c, c}, single[i].data(), c, 1e-8f, ws);
      jobs.push_back(NsJob{NsSource{in[i].data(), r, c, c}, batched[i].data(), c});
    }
    orthonormalize_batch(Ortho::PolarExpress, jobs, 1e-8f);
    for (size_t i = 0; i < shapes.size(); ++i) EXPECT_EQ(single[i], batched[i]) << i;
  }
}

TEST(NewtonSchulz, ZeroInputGivesZeroAndInPlaceWorks) {
  NsWorkspace ws;
  std::vector<float> z(6 * 9, 0.0f), o(6 * 9, 1.0f);
  orthonormalize(Ortho::NewtonSchulz, NsSource{z.data(), 6, 9, 9}, o.data(), 9, 1e-8f, ws);
  for (float v : o) EXPECT_EQ(v, 0.0f);
  std::vector<float> x = randn(7 * 11, 3), y(x.size());
  orthonormalize(Ortho::NewtonSchulz, NsSource{x.data(), 7, 11, 11}, y.data(), 11, 1e-8f, ws);
  orthonormalize(Ortho::NewtonSchulz, NsSource{x.data(), 7, 11, 11}, x.data(), 11, 1e-8f, ws);
  EXPECT_EQ(x, y);
  EXPECT_THROW(orthonormalize(Ortho::NewtonSchulz, NsSource{x.data(), 0, 11, 11}, y.data(), 11, 1e-8f, ws), Error);
}
