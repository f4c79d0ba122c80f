// Tests of Dion on the CPU: its linear algebra (Householder QR, Cholesky, triangular solves,
// Cholesky-QR, randomized Cholesky-QR), the optimizer against an independent double-precision
// implementation written here with Gram-Schmidt and plain loops, and properties of the update.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "optim/dion.h"
#include "optim/dion_linalg.h"
#include "optim/dion_shape.h"

namespace og {
namespace {

using std::vector;

vector<float> randn(int64_t count, uint64_t seed, double scale = 1.0) {
  Rng rng(seed);
  vector<float> x((size_t)count);
  for (auto& v : x) v = (float)(rng.normal() * scale);
  return x;
}

double max_abs(const vector<double>& x) {
  double m = 0.0;
  for (double v : x) m = std::max(m, std::fabs(v));
  return m;
}

// C = A^T B for A (m x p), B (m x q), row-major, in double.
vector<double> atb(int64_t m, int64_t p, int64_t q, const float* A, const float* B) {
  vector<double> C((size_t)p * q, 0.0);
  for (int64_t k = 0; k < m; ++k)
    for (int64_t i = 0; i < p; ++i)
      for (int64_t j = 0; j < q; ++j) C[i * q + j] += (double)A[k * p + i] * B[k * q + j];
  return C;
}

// max |X^T X - I| for X (m x n).
double orthonormality_error(int64_t m, int64_t n, const float* X) {
  vector<double> g = atb(m, n, n, X, X);
  for (int64_t i = 0; i < n; ++i) g[i * n + i] -= 1.0;
  return max_abs(g);
}

// max |X - Q Q^T X| / max |X|: how much of X lies outside the span of Q's orthonormal columns.
double outside_span(int64_t m, int64_t n, const float* Q, const vector<float>& X) {
  vector<double> c = atb(m, n, n, Q, X.data());  // Q^T X
  double err = 0.0, ref = 0.0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double proj = 0.0;
      for (int64_t k = 0; k < n; ++k) proj += (double)Q[i * n + k] * c[k * n + j];
      err = std::max(err, std::fabs(X[i * n + j] - proj));
      ref = std::max(ref, (double)std::fabs(X[i * n + j]));
    }
  return err / ref;
}

// ---------------------------------------------------------------------------------------------
// Linear algebra

TEST(DionLinalg, HouseholderQrFactorsAndIsOrthonormal) {
  // Tolerances: Q and A are fp32, the factorization runs in double, so errors are fp32 rounding
  // accumulated over at most 200 terms: 1e-5 (relative to max |A| for the product).
  const int64_t shapes[][2] = {{7, 7}, {50, 13}, {200, 64}, {1, 1}, {9, 1}};
  for (auto [m, n] : shapes) {
    SCOPED_TRACE(testing::Message() << m << " x " << n);
    vector<float> A = randn(m * n, 11 + m * 7 + n);
    vector<float> Q((size_t)m * n);
    vector<double> R((size_t)n * n);
    dion::householder_qr(m, n, A.data(), Q.data(), R.data());
    EXPECT_LT(orthonormality_error(m, n, Q.data()), 1e-5);
    double err = 0.0, ref = 0.0;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0.0;
        for (int64_t k = 0; k < n; ++k) s += (double)Q[i * n + k] * R[k * n + j];
        err = std::max(err, std::fabs(s - A[i * n + j]));
        ref = std::max(ref, (double)std::fabs(A[i * n + j]));
      }
    EXPECT_LT(err / ref, 1e-5);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_GE(R[i * n + i], 0.0) << "diag(R) must be non-negative (unique factor)";
      for (int64_t j = 0; j < i; ++j) EXPECT_EQ(R[i * n + j], 0.0);
    }
    // R alone (Q = null) is the same R.
    vector<double> R2((size_t)n * n);
    dion::householder_qr(m, n, A.data(), nullptr, R2.data());
    EXPECT_EQ(R, R2);
  }
}

TEST(DionLinalg, HouseholderQrRejectsWideInput) {
  vector<float> A = randn(12, 1);
  EXPECT_THROW(dion::householder_qr(3, 4, A.data(), nullptr, nullptr), Error);
}

TEST(DionLinalg, CholeskyOfRandomSpdMatrix) {
  const int64_t n = 40;
  vector<float> X = randn(60 * n, 21);
  vector<double> A = atb(60, n, n, X.data(), X.data());  // X^T X, SPD (60 > 40 rows)
  vector<double> R((size_t)n * n);
  ASSERT_TRUE(dion::cholesky_upper(n, A.data(), R.data()));
  // R^T R = A to double rounding (1e-12 relative), R upper with a positive diagonal.
  double err = 0.0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t k = 0; k < n; ++k) s += R[k * n + i] * R[k * n + j];
      err = std::max(err, std::fabs(s - A[i * n + j]));
      if (j < i) EXPECT_EQ(R[i * n + j], 0.0);
    }
  EXPECT_LT(err / max_abs(A), 1e-12);
  for (int64_t i = 0; i < n; ++i) EXPECT_GT(R[i * n + i], 0.0);
}

TEST(DionLinalg, CholeskyDetectsNonPositiveDefinite) {
  vector<double> R(16);
  // Indefinite: eigenvalues 3 and -1.
  const vector<double> indefinite = {1.0, 2.0, 2.0, 1.0};
  EXPECT_FALSE(dion::cholesky_upper(2, indefinite.data(), R.data()));
  // Singular Gram matrix: 4 columns of rank 3 (the last column is the sum of the first two).
  vector<float> X = randn(10 * 4, 31);
  for (int64_t i = 0; i < 10; ++i) X[i * 4 + 3] = X[i * 4 + 0] + X[i * 4 + 1];
  vector<double> G = atb(10, 4, 4, X.data(), X.data());
  EXPECT_FALSE(dion::cholesky_upper(4, G.data(), R.data()));
  // Non-finite entries.
  vector<double> spd = {4.0, 1.0, 1.0, 3.0};
  EXPECT_TRUE(dion::cholesky_upper(2, spd.data(), R.data()));
  spd[1] = NAN;
  EXPECT_FALSE(dion::cholesky_upper(2, spd.data(), R.data()));
  spd[1] = 1.0;
  spd[3] = INFINITY;
  EXPECT_FALSE(dion::cholesky_upper(2, spd.data(), R.data()));
}

TEST(DionLinalg, TriangularSolveFromTheRight) {
  const int64_t m = 33, n = 17;
  Rng rng(41);
  vector<double> R((size_t)n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    R[i * n + i] = 1.0 + rng.uniform();
    for (int64_t j = i + 1; j < n; ++j) R[i * n + j] = 0.3 * rng.normal();
  }
  vector<float> X = randn(m * n, 42), Y((size_t)m * n);
  dion::solve_upper_right(m, n, R.data(), X.data(), Y.data());
  double err = 0.0;  // Y R = X; fp32 output, relative 1e-5
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t k = 0; k <= j; ++k) s += (double)Y[i * n + k] * R[k * n + j];
      err = std::max(err, std::fabs(s - X[i * n + j]));
    }
  EXPECT_LT(err, 1e-5);
  // In place (Y aliases X) gives the same result.
  vector<float> Z = X;
  dion::solve_upper_right(m, n, R.data(), Z.data(), Z.data());
  EXPECT_EQ(Z, Y);
}

TEST(DionLinalg, SketchSizeAndDistribution) {
  EXPECT_EQ(dion::dion_sketch_rows(1), 128);
  EXPECT_EQ(dion::dion_sketch_rows(102), 128);  // 127.5 -> 128
  EXPECT_EQ(dion::dion_sketch_rows(103), 256);  // 128.75 -> 256
  EXPECT_EQ(dion::dion_sketch_rows(192), 256);
  EXPECT_EQ(dion::dion_sketch_rows(768), 1024);
  const int64_t k = 256, m = 400;
  vector<float> S((size_t)k * m), S2((size_t)k * m), S3((size_t)k * m);
  dion::gaussian_sketch(k, m, 7, S.data());
  dion::gaussian_sketch(k, m, 7, S2.data());
  dion::gaussian_sketch(k, m, 8, S3.data());
  EXPECT_EQ(S, S2);
  EXPECT_NE(S, S3);
  double mean = 0.0, var = 0.0;
  for (float v : S) mean += v;
  mean /= (double)S.size();
  for (float v : S) var += (v - mean) * (v - mean);
  var /= (double)S.size();
  // 102400 samples: the mean's std is 0.003/sqrt(k)... use 5 sigma bounds.
  EXPECT_NEAR(mean, 0.0, 5.0 * std::sqrt(1.0 / k / S.size()));
  EXPECT_NEAR(var * k, 1.0, 5.0 * std::sqrt(2.0 / S.size()));
}

TEST(DionLinalg, RandomizedCholeskyQrOrthonormalizesAndKeepsTheSpan) {
  // Well conditioned and ill conditioned (columns scaled over 5 decades): RCQR needs only the
  // sketch's R to be a good preconditioner, so both come out orthonormal to fp32 precision.
  const int64_t m = 300, n = 24;
  for (double decades : {0.0, 5.0}) {
    SCOPED_TRACE(testing::Message() << "column scale decades " << decades);
    vector<float> A = randn(m * n, 51);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) A[i * n + j] *= (float)std::pow(10.0, -decades * j / (n - 1));
    vector<float> P = A;
    ASSERT_TRUE(dion::randomized_cholesky_qr(m, n, P.data(), 1234));
    EXPECT_LT(orthonormality_error(m, n, P.data()), 1e-5);
    EXPECT_LT(outside_span(m, n, P.data(), A), 1e-5);
    // Same unique factor as Householder (both have diag(R) > 0): agrees to fp32 error times the
    // conditioning of the leading columns; 1e-4 for the well-conditioned case.
    if (decades == 0.0) {
      vector<float> Q((size_t)m * n);
      dion::householder_qr(m, n, A.data(), Q.data(), nullptr);
      double d = 0.0;
      for (size_t i = 0; i < Q.size(); ++i) d = std::max(d, (double)std::fabs(Q[i] - P[i]));
      EXPECT_LT(d, 1e-4);
    }
  }
}

TEST(DionLinalg, CholeskyQrAndItsFallbacks) {
  const int64_t m = 80, n = 12;
  vector<float> A = randn(m * n, 61);
  // Plain Cholesky-QR of a well-conditioned matrix succeeds.
  vector<float> P = A;
  ASSERT_TRUE(dion::cholesky_qr(m, n, P.data()));
  EXPECT_LT(orthonormality_error(m, n, P.data()), 1e-5);
  EXPECT_LT(outside_span(m, n, P.data(), A), 1e-5);
  P = A;
  dion::OrthoResult res = dion::orthonormalize_columns(m, n, P.data(), true, 5);
  EXPECT_EQ(res.method, dion::OrthoMethod::CholeskyQR);
  EXPECT_EQ(res.fallbacks, 0);
  // Without CQR: tall -> RCQR; square -> Householder.
  P = A;
  res = dion::orthonormalize_columns(m, n, P.data(), false, 5);
  EXPECT_EQ(res.method, dion::OrthoMethod::RandomizedCholeskyQR);
  EXPECT_EQ(res.fallbacks, 0);
  vector<float> Sq = randn(n * n, 62);
  res = dion::orthonormalize_columns(n, n, Sq.data(), false, 5);
  EXPECT_EQ(res.method, dion::OrthoMethod::HouseholderQR);
  EXPECT_LT(orthonormality_error(n, n, Sq.data()), 1e-5);

  // A rank-deficient matrix (column 5 is zero): both Cholesky variants report failure and leave
  // P untouched; orthonormalize_columns falls back CQR -> RCQR -> Householder QR, which still
  // returns orthonormal columns spanning A's columns.
  vector<float> D = A;
  for (int64_t i = 0; i < m; ++i) D[i * n + 5] = 0.0f;
  P = D;
  EXPECT_FALSE(dion::cholesky_qr(m, n, P.data()));
  EXPECT_EQ(P, D);
  EXPECT_FALSE(dion::randomized_cholesky_qr(m, n, P.data(), 5));
  EXPECT_EQ(P, D);
  res = dion::orthonormalize_columns(m, n, P.data(), true, 5);
  EXPECT_EQ(res.method, dion::OrthoMethod::HouseholderQR);
  EXPECT_EQ(res.fallbacks, 2);
  EXPECT_LT(orthonormality_error(m, n, P.data()), 1e-5);
  EXPECT_LT(outside_span(m, n, P.data(), D), 1e-5);
  // Without CQR the same matrix takes one fallback (RCQR -> QR).
  P = D;
  res = dion::orthonormalize_columns(m, n, P.data(), false, 5);
  EXPECT_EQ(res.method, dion::OrthoMethod::HouseholderQR);
  EXPECT_EQ(res.fallbacks, 1);
}

// ---------------------------------------------------------------------------------------------
// An independent Dion in double precision: explicit B, Gram-Schmidt, plain loops.

struct RefDion {
  int64_t m, n, rb, cb, r;
  bool tr;
  double mu, wd, lr_scale;
  vector<double> M, Q;  // M: m x n (the parameter's layout); Q: cb x r

  double& B(int64_t i, int64_t k) { return tr ? M[k * n + i] : M[i * n + k]; }

  void step(vector<double>& W, const vector<float>& G, double lr) {
    for (size_t i = 0; i < M.size(); ++i) M[i] += G[i];
    bool zero = true;
    for (double v : M) zero = zero && v == 0.0;
    vector<double> P((size_t)rb * r, 0.0), R((size_t)cb * r, 0.0);
    if (zero) {
      R = Q;
    } else {
      for (int64_t i = 0; i < rb; ++i)
        for (int64_t j = 0; j < r; ++j)
          for (int64_t k = 0; k < cb; ++k) P[i * r + j] += B(i, k) * Q[k * r + j];
      // Classical Gram-Schmidt applied twice per column; positive diagonal by construction.
      for (int64_t j = 0; j < r; ++j) {
        for (int pass = 0; pass < 2; ++pass)
          for (int64_t c = 0; c < j; ++c) {
            double dot = 0.0;
            for (int64_t i = 0; i < rb; ++i) dot += P[i * r + c] * P[i * r + j];
            for (int64_t i = 0; i < rb; ++i) P[i * r + j] -= dot * P[i * r + c];
          }
        double nrm = 0.0;
        for (int64_t i = 0; i < rb; ++i) nrm += P[i * r + j] * P[i * r + j];
        nrm = std::sqrt(nrm);
        for (int64_t i = 0; i < rb; ++i) P[i * r + j] /= nrm;
      }
      for (int64_t k = 0; k < cb; ++k)
        for (int64_t j = 0; j < r; ++j)
          for (int64_t i = 0; i < rb; ++i) R[k * r + j] += B(i, k) * P[i * r + j];
    }
    for (int64_t i = 0; i < rb; ++i)
      for (int64_t k = 0; k < cb; ++k) {
        double s = 0.0;
        for (int64_t j = 0; j < r; ++j) s += P[i * r + j] * R[k * r + j];
        B(i, k) -= (1.0 - mu) * s;
      }
    for (int64_t j = 0; j < r; ++j) {
      double nrm = 0.0;
      for (int64_t k = 0; k < cb; ++k) nrm += R[k * r + j] * R[k * r + j];
      nrm = std::sqrt(nrm);
      for (int64_t k = 0; k < cb; ++k) Q[k * r + j] = R[k * r + j] / (nrm + 1e-8);
    }
    for (int64_t i = 0; i < rb; ++i)
      for (int64_t k = 0; k < cb; ++k) {
        double u = 0.0;
        for (int64_t j = 0; j < r; ++j) u += P[i * r + j] * Q[k * r + j];
        double& w = tr ? W[k * n + i] : W[i * n + k];
        w = w * (1.0 - lr * wd) - lr * lr_scale * u;
      }
  }
};

OptimHParams dion_hp(float rank_fraction) {
  OptimHParams hp;
  hp.algorithm = Algorithm::Dion;
  hp.rank_fraction = rank_fraction;
  hp.mu = 0.9f;
  hp.weight_decay = 0.1f;
  hp.seed = 2024;
  return hp;
}

// One parameter with its own weight and gradient buffers.
struct Param {
  std::string name;
  int64_t m, n;
  vector<float> w, g;
  ParamRole role = ParamRole::Matrix;
  Param(std::string nm, int64_t rows, int64_t cols, uint64_t seed)
      : name(std::move(nm)), m(rows), n(cols), w(randn(rows * cols, seed, 0.5)), g((size_t)(rows * cols)) {}
  ParamSlot slot() { return ParamSlot{name, role, m, n, w.data(), g.data()}; }
  // Overwrite in place: the optimizer holds pointers into w and g.
  void set_grad(const vector<float>& x) { std::copy(x.begin(), x.end(), g.begin()); }
  void set_weights(const vector<float>& x) { std::copy(x.begin(), x.end(), w.begin()); }
};

const StateTensor& find_state(const vector<StateTensor>& st, const std::string& name) {
  for (const auto& t : st)
    if (t.name == name) return t;
  throw Error("no state tensor " + name);
}
vector<float> state_f32(Optimizer& opt, const std::string& name) {
  const StateTensor t = find_state(opt.state(), name);
  EXPECT_EQ(t.dtype, StateDtype::F32);
  const float* p = (const float*)t.data;
  return vector<float>(p, p + t.count);
}

struct RefCase {
  int64_t m, n;
  float rank_fraction;
  int cqr_warmup;
};

class DionVsReference : public testing::TestWithParam<RefCase> {};

TEST_P(DionVsReference, MatchesDoublePrecisionImplementation) {
  const RefCase c = GetParam();
  OptimHParams hp = dion_hp(c.rank_fraction);
  hp.cqr_warmup_steps = c.cqr_warmup;
  // Two matrices in the group (the case's shape and its transpose) to exercise per-parameter
  // state and seeds.
  vector<Param> ps;
  ps.emplace_back("a", c.m, c.n, 101);
  ps.emplace_back("b", c.n, c.m, 102);
  auto opt = make_dion_cpu(hp, {ps[0].slot(), ps[1].slot()});
  ASSERT_EQ(opt->algorithm(), Algorithm::Dion);

  vector<RefDion> refs;
  vector<vector<double>> wref, w0;
  for (auto& p : ps) {
    const dion::DionShape sh = dion::dion_shape(p.m, p.n, c.rank_fraction);
    RefDion ref{p.m,
                p.n,
                sh.rows_b,
                sh.cols_b,
                sh.r,
                p.m < p.n,
                hp.mu,
                hp.weight_decay,
                std::sqrt((double)p.m / (double)p.n),
                vector<double>(p.w.size(), 0.0),
                {}};
    vector<float> q0 = state_f32(*opt, p.name + "/Q");
    ASSERT_EQ((int64_t)q0.size(), sh.cols_b * sh.r);
    ref.Q.assign(q0.begin(), q0.end());
    refs.push_back(ref);
    wref.emplace_back(p.w.begin(), p.w.end());
    w0.emplace_back(p.w.begin(), p.w.end());
  }
  const float lr = 0.05f;
  for (int64_t step = 1; step <= 6; ++step) {
    for (size_t k = 0; k < ps.size(); ++k) {
      ps[k].set_grad(randn(ps[k].m * ps[k].n, 1000 * step + k));
      refs[k].step(wref[k], ps[k].g, lr);
    }
    opt->step({step, lr});
    // Tolerances (fp32 implementation vs double): 1e-4 relative to the largest entry of the
    // momentum, of the accumulated weight change, and absolute for Q (unit columns).
    for (size_t k = 0; k < ps.size(); ++k) {
      SCOPED_TRACE(testing::Message() << ps[k].name << " (" << ps[k].m << " x " << ps[k].n << ") step " << step);
      vector<float> M = state_f32(*opt, ps[k].name + "/momentum"), Q = state_f32(*opt, ps[k].name + "/Q");
      double dm = 0.0, dq = 0.0, dw = 0.0, wscale = 0.0;
      for (size_t i = 0; i < M.size(); ++i) dm = std::max(dm, std::fabs(M[i] - refs[k].M[i]));
      for (size_t i = 0; i < Q.size(); ++i) dq = std::max(dq, std::fabs(Q[i] - refs[k].Q[i]));
      for (size_t i = 0; i < ps[k].w.size(); ++i) {
        dw = std::max(dw, std::fabs(ps[k].w[i] - wref[k][i]));
        wscale = std::max(wscale, std::fabs(wref[k][i] - w0[k][i]));
      }
      EXPECT_LT(dm / max_abs(refs[k].M), 1e-4);
      EXPECT_LT(dq, 1e-4);
      EXPECT_LT(dw / wscale, 1e-4);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DionVsReference,
                         testing::Values(RefCase{40, 40, 1.0f, 0},   // square, full rank: Householder QR
                                         RefCase{40, 40, 0.25f, 0},  // square, low rank: RCQR
                                         RefCase{48, 32, 0.5f, 0},   // tall / wide pair
                                         RefCase{24, 56, 1.0f, 0},   // full rank of a non-square: RCQR
                                         RefCase{64, 40, 0.25f, 2},  // Cholesky-QR after 2 steps
                                         RefCase{17, 9, 0.3f, 0}),   // odd sizes, r = 3
                         [](const testing::TestParamInfo<RefCase>& info) {
                           const RefCase& c = info.param;
                           return "m" + std::to_string(c.m) + "_n" + std::to_string(c.n) + "_rank" +
                                  std::to_string((int)std::lround(c.rank_fraction * 100)) + "pct_cqr" +
                                  std::to_string(c.cqr_warmup);
                         });

// ---------------------------------------------------------------------------------------------
// Properties

TEST(Dion, RankAndOrientation) {
  struct {
    float f;
    int64_t m, n, r;
  } cases[] = {{0.25f, 768, 768, 192}, {0.25f, 3072, 768, 192}, {0.5f, 768, 3072, 384}, {0.001f, 10, 20, 1},
               {1.0f, 5, 7, 5},        {0.3f, 10, 10, 3},       {0.31f, 10, 10, 4},     {0.5f, 1, 9, 1}};
  for (auto c : cases) {
    EXPECT_EQ(dion::dion_rank(c.f, c.m, c.n), c.r) << c.f << " " << c.m << "x" << c.n;
    const dion::DionShape sh = dion::dion_shape(c.m, c.n, c.f);
    EXPECT_EQ(sh.transposed, c.m < c.n);
    EXPECT_EQ(sh.rows_b, std::max(c.m, c.n));
    EXPECT_EQ(sh.cols_b, std::min(c.m, c.n));
  }
  // Q's state size is cols(B) x r.
  Param tall("tall", 30, 12, 1), wide("wide", 12, 30, 2);
  auto opt = make_dion_cpu(dion_hp(0.5f), {tall.slot(), wide.slot()});
  EXPECT_EQ(state_f32(*opt, "tall/Q").size(), 12u * 6u);
  EXPECT_EQ(state_f32(*opt, "wide/Q").size(), 12u * 6u);
  EXPECT_EQ(state_f32(*opt, "wide/momentum").size(), 12u * 30u);
}

TEST(Dion, FullRankErrorFeedbackLeavesMuTimesMomentum) {
  // rank_fraction 1 and full-rank M: P P^T B = B, so M - (1 - mu) P R^T = mu M every step:
  // M_t = mu (M_{t-1} + G_t). Tolerance 1e-5 relative (fp32 products of size <= 40).
  for (auto [m, n] : {std::pair<int64_t, int64_t>{32, 32}, {40, 24}, {24, 40}}) {
    SCOPED_TRACE(testing::Message() << m << " x " << n);
    OptimHParams hp = dion_hp(1.0f);
    hp.diagnostics = true;
    Param p("w", m, n, 3);
    auto opt = make_dion_cpu(hp, {p.slot()});
    vector<double> expect((size_t)(m * n), 0.0);
    for (int64_t step = 1; step <= 3; ++step) {
      p.set_grad(randn(m * n, 300 + step));
      for (size_t i = 0; i < expect.size(); ++i) expect[i] = hp.mu * (expect[i] + p.g[i]);
      opt->step({step, 0.01f});
      vector<float> M = state_f32(*opt, "w/momentum");
      double d = 0.0;
      for (size_t i = 0; i < M.size(); ++i) d = std::max(d, std::fabs(M[i] - expect[i]));
      EXPECT_LT(d / max_abs(expect), 1e-5);
      EXPECT_NEAR(opt->stats().at("dion_ef_residual"), hp.mu, 1e-5);
    }
  }
}

// U_B = -(W_new - W_old) / lr_eff in B's orientation (W_old = 0, wd = 0, lr = 1, so no
// cancellation). If U_B = P Q^T with orthonormal P, then U_B^T U_B = Q Q^T. Q's columns are R's
// divided by (norm + 1e-8): unit to 1e-6 unless R's column is tiny (rank-deficient M), where
// only norm <= 1 holds (unit_columns = false).
void expect_update_is_orthonormal_p_times_q(Param& p, Optimizer& opt, const vector<float>& w_before,
                                            bool unit_columns = true) {
  const dion::DionShape sh = dion::dion_shape(p.m, p.n, 0.25f);
  const double lr_eff = std::sqrt((double)p.m / (double)p.n);
  vector<float> Q = state_f32(opt, p.name + "/Q");
  const int64_t rb = sh.rows_b, cb = sh.cols_b, r = sh.r;
  vector<float> U((size_t)(rb * cb));
  for (int64_t i = 0; i < rb; ++i)
    for (int64_t k = 0; k < cb; ++k) {
      const size_t idx = sh.transposed ? k * p.n + i : i * p.n + k;
      U[i * cb + k] = (float)(-(p.w[idx] - (double)w_before[idx]) / lr_eff);
    }
  vector<double> UtU = atb(rb, cb, cb, U.data(), U.data());
  double err = 0.0;
  for (int64_t a = 0; a < cb; ++a)
    for (int64_t b = 0; b < cb; ++b) {
      double qq = 0.0;
      for (int64_t j = 0; j < r; ++j) qq += (double)Q[a * r + j] * Q[b * r + j];
      err = std::max(err, std::fabs(UtU[a * cb + b] - qq));
    }
  EXPECT_LT(err, 1e-5);
  for (int64_t j = 0; j < r; ++j) {
    double nrm = 0.0;
    for (int64_t k = 0; k < cb; ++k) nrm += (double)Q[k * r + j] * Q[k * r + j];
    if (unit_columns)
      EXPECT_NEAR(std::sqrt(nrm), 1.0, 1e-6);
    else
      EXPECT_LE(std::sqrt(nrm), 1.0 + 1e-6);
  }
}

TEST(Dion, UpdateIsOrthonormalPTimesUnitColumnQ) {
  for (auto [m, n] : {std::pair<int64_t, int64_t>{64, 24}, {24, 64}, {40, 40}}) {
    SCOPED_TRACE(testing::Message() << m << " x " << n);
    OptimHParams hp = dion_hp(0.25f);
    hp.weight_decay = 0.0f;
    Param p("w", m, n, 4);
    auto opt = make_dion_cpu(hp, {p.slot()});
    for (int64_t step = 1; step <= 3; ++step) {
      std::fill(p.w.begin(), p.w.end(), 0.0f);
      p.set_grad(randn(m * n, 400 + step));
      const vector<float> before = p.w;
      opt->step({step, 1.0f});
      expect_update_is_orthonormal_p_times_q(p, *opt, before);
    }
  }
}

TEST(Dion, RankDeficientGradientStillGivesOrthonormalUpdate) {
  // G = u v^T (rank 1) with r = 8: P = B Q is rank 1 up to fp32 rounding. RCQR still returns
  // orthonormal columns (the first spans u, the others orthonormalized rounding noise), and
  // as P's first column spans u, error feedback removes (1 - mu) of all of M.
  const int64_t m = 64, n = 32;
  OptimHParams hp = dion_hp(0.25f);
  hp.weight_decay = 0.0f;
  hp.diagnostics = true;
  Param p("w", m, n, 5);
  std::fill(p.w.begin(), p.w.end(), 0.0f);
  vector<float> u = randn(m, 51), v = randn(n, 52);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) p.g[i * n + j] = u[i] * v[j];
  auto opt = make_dion_cpu(hp, {p.slot()});
  const vector<float> before = p.w;
  opt->step({1, 1.0f});
  for (float w : p.w) ASSERT_TRUE(std::isfinite(w));
  expect_update_is_orthonormal_p_times_q(p, *opt, before, false);
  vector<float> M = state_f32(*opt, "w/momentum");
  double d = 0.0, ref = 0.0;
  for (size_t i = 0; i < M.size(); ++i) {
    d = std::max(d, std::fabs(M[i] - hp.mu * (double)p.g[i]));
    ref = std::max(ref, (double)std::fabs(p.g[i]));
  }
  EXPECT_LT(d / ref, 1e-5);
}

TEST(Dion, AllZeroMomentumKeepsQAndOnlyDecaysW) {
  const int64_t m = 20, n = 36;
  OptimHParams hp = dion_hp(0.5f);
  Param p("w", m, n, 6);
  auto opt = make_dion_cpu(hp, {p.slot()});
  const vector<float> q0 = state_f32(*opt, "w/Q");
  const int64_t cb = 20, r = 10;
  ASSERT_EQ(q0.size(), (size_t)(cb * r));
  const float lr = 0.1f;
  // Step 1, zero gradient: M stays 0, R = Q_old so Q becomes Q_old with unit columns, and W is
  // only decayed (every entry, the update P Q^T is 0).
  vector<float> w_before = p.w;
  opt->step({1, lr});
  for (float x : state_f32(*opt, "w/momentum")) EXPECT_EQ(x, 0.0f);
  vector<float> q1 = state_f32(*opt, "w/Q");
  for (int64_t j = 0; j < r; ++j) {
    double nrm = 0.0;
    for (int64_t k = 0; k < cb; ++k) nrm += (double)q0[k * r + j] * q0[k * r + j];
    for (int64_t k = 0; k < cb; ++k) EXPECT_NEAR(q1[k * r + j], q0[k * r + j] / (std::sqrt(nrm) + 1e-8), 1e-6);
  }
  const float decay = 1.0f - lr * hp.weight_decay;
  for (size_t i = 0; i < p.w.size(); ++i) EXPECT_FLOAT_EQ(p.w[i], w_before[i] * decay);
  // Step 2, zero gradient again: Q (now unit columns) is kept.
  opt->step({2, lr});
  vector<float> q2 = state_f32(*opt, "w/Q");
  for (size_t i = 0; i < q2.size(); ++i) EXPECT_NEAR(q2[i], q1[i], 1e-6);
  // Step 3, a real gradient moves W away from pure decay.
  p.set_grad(randn(m * n, 61));
  w_before = p.w;
  opt->step({3, lr});
  double moved = 0.0;
  for (size_t i = 0; i < p.w.size(); ++i) moved = std::max(moved, (double)std::fabs(p.w[i] - w_before[i] * decay));
  EXPECT_GT(moved, 1e-3);
}

TEST(Dion, WeightDecayTouchesEveryEntryWithUnadjustedLr) {
  // Same seed and gradients: P and Q do not depend on wd, so W_wd - W_nowd = -lr wd W_0 for
  // every entry (spectral lr_eff = 2 here must not enter the decay). Tolerance 1e-6 absolute.
  const int64_t m = 48, n = 12;
  OptimHParams hp = dion_hp(0.25f);
  hp.weight_decay = 0.5f;
  OptimHParams hp0 = hp;
  hp0.weight_decay = 0.0f;
  Param a("w", m, n, 7), b("w", m, n, 7);
  auto opt_a = make_dion_cpu(hp, {a.slot()});
  auto opt_b = make_dion_cpu(hp0, {b.slot()});
  a.set_grad(randn(m * n, 71));
  b.set_grad(a.g);
  const vector<float> w0 = a.w;
  const float lr = 0.1f;
  opt_a->step({1, lr});
  opt_b->step({1, lr});
  for (size_t i = 0; i < w0.size(); ++i) {
    EXPECT_NEAR(a.w[i] - b.w[i], -lr * hp.weight_decay * w0[i], 1e-6) << i;
    EXPECT_NE(a.w[i], b.w[i]) << i;
  }
}

TEST(Dion, AdjustLrScalesTheUpdate) {
  // W_0 = 0, wd = 0: W after one step is -lr_eff P Q^T, identical P Q^T for every rule.
  const int64_t m = 16, n = 40;
  vector<vector<float>> results;
  for (AdjustLr rule : {AdjustLr::None, AdjustLr::SpectralNorm, AdjustLr::RmsNorm}) {
    OptimHParams hp = dion_hp(0.25f);
    hp.weight_decay = 0.0f;
    hp.adjust_lr = rule;
    Param p("w", m, n, 8);
    std::fill(p.w.begin(), p.w.end(), 0.0f);
    p.set_grad(randn(m * n, 81));
    auto opt = make_dion_cpu(hp, {p.slot()});
    opt->step({1, 0.01f});
    results.push_back(p.w);
  }
  const double spectral = std::sqrt(16.0 / 40.0), rms = 0.2 * std::sqrt(40.0);
  for (size_t i = 0; i < results[0].size(); ++i) {
    EXPECT_NEAR(results[1][i], spectral * results[0][i], 1e-6 * std::fabs(results[0][i]) + 1e-9);
    EXPECT_NEAR(results[2][i], rms * results[0][i], 1e-6 * std::fabs(results[0][i]) + 1e-9);
  }
}

TEST(Dion, ReproducibleFromTheSeed) {
  auto run = [](uint64_t seed, vector<float>* w_out, vector<float>* q_out, vector<float>* q_init) {
    OptimHParams hp = dion_hp(0.25f);
    hp.seed = seed;
    Param a("a", 50, 20, 9), b("b", 50, 20, 9);  // same shape: different Q (parameter index)
    auto opt = make_dion_cpu(hp, {a.slot(), b.slot()});
    *q_init = state_f32(*opt, "a/Q");
    EXPECT_NE(*q_init, state_f32(*opt, "b/Q"));
    for (int64_t step = 1; step <= 3; ++step) {
      a.set_grad(randn(1000, 90 + step));
      b.set_grad(a.g);
      opt->step({step, 0.02f});
    }
    *w_out = a.w;
    *q_out = state_f32(*opt, "a/Q");
  };
  vector<float> w1, q1, i1, w2, q2, i2, w3, q3, i3;
  run(5, &w1, &q1, &i1);
  run(5, &w2, &q2, &i2);
  run(6, &w3, &q3, &i3);
  EXPECT_EQ(i1, i2);
  EXPECT_EQ(w1, w2);  // bitwise
  EXPECT_EQ(q1, q2);
  EXPECT_NE(i1, i3);
  EXPECT_NE(w1, w3);
}

TEST(Dion, StateIsTheWholeStateForResume) {
  // Run 5 steps straight, or 2 steps, copy state() into a fresh optimizer, and 3 more steps:
  // bitwise identical weights (the sketch seeds and the CQR warm-up follow the saved step).
  OptimHParams hp = dion_hp(0.25f);
  hp.cqr_warmup_steps = 3;
  auto grads = [](int64_t step) { return randn(60 * 30, 500 + step); };
  Param a("w", 60, 30, 10);
  auto opt_a = make_dion_cpu(hp, {a.slot()});
  for (int64_t s = 1; s <= 5; ++s) {
    a.set_grad(grads(s));
    opt_a->step({s, 0.02f});
  }
  Param b("w", 60, 30, 10);
  auto opt_b = make_dion_cpu(hp, {b.slot()});
  for (int64_t s = 1; s <= 2; ++s) {
    b.set_grad(grads(s));
    opt_b->step({s, 0.02f});
  }
  Param c("w", 60, 30, 999);
  c.set_weights(b.w);
  auto opt_c = make_dion_cpu(hp, {c.slot()});
  vector<StateTensor> from = opt_b->state(), to = opt_c->state();
  ASSERT_EQ(from.size(), to.size());
  for (size_t i = 0; i < from.size(); ++i) {
    ASSERT_EQ(from[i].name, to[i].name);
    ASSERT_EQ(from[i].count, to[i].count);
    std::memcpy(to[i].data, from[i].data, from[i].count * sizeof(float));
  }
  for (int64_t s = 3; s <= 5; ++s) {
    c.set_grad(grads(s));
    opt_c->step({s, 0.02f});
  }
  EXPECT_EQ(c.w, a.w);
}

TEST(Dion, Bf16StateIsRoundedAndCloseToFp32) {
  const int64_t m = 32, n = 48;
  OptimHParams hp = dion_hp(0.5f);
  OptimHParams hp16 = hp;
  hp16.state_dtype = StateDtype::BF16;
  Param a("w", m, n, 11), b("w", m, n, 11);
  auto opt32 = make_dion_cpu(hp, {a.slot()});
  auto opt16 = make_dion_cpu(hp16, {b.slot()});
  const vector<float> w0 = a.w;
  for (int64_t s = 1; s <= 3; ++s) {
    a.set_grad(randn(m * n, 600 + s));
    b.set_grad(a.g);
    opt32->step({s, 0.05f});
    opt16->step({s, 0.05f});
  }
  const vector<StateTensor> st = opt16->state();
  const StateTensor& mom = find_state(st, "w/momentum");
  const StateTensor& q = find_state(st, "w/Q");
  EXPECT_EQ(mom.dtype, StateDtype::BF16);
  EXPECT_EQ(q.dtype, StateDtype::BF16);
  EXPECT_EQ(mom.count, (size_t)(m * n));
  EXPECT_EQ(q.count, (size_t)(32 * 16));
  // bf16 momentum matches the fp32 run's momentum to bf16 precision (2^-8 relative, a few
  // roundings over 3 steps: 2e-2 of the largest entry).
  vector<float> m32 = state_f32(*opt32, "w/momentum");
  const uint16_t* m16 = (const uint16_t*)mom.data;
  double dm = 0.0, mref = 0.0;
  for (size_t i = 0; i < m32.size(); ++i) {
    uint32_t bits = (uint32_t)m16[i] << 16;
    float v;
    std::memcpy(&v, &bits, 4);
    dm = std::max(dm, (double)std::fabs(v - m32[i]));
    mref = std::max(mref, (double)std::fabs(m32[i]));
  }
  EXPECT_LT(dm / mref, 2e-2);
  EXPECT_GT(dm, 0.0);  // the option does round
  double dw = 0.0, wscale = 0.0;
  for (size_t i = 0; i < a.w.size(); ++i) {
    dw = std::max(dw, (double)std::fabs(a.w[i] - b.w[i]));
    wscale = std::max(wscale, (double)std::fabs(a.w[i] - w0[i]));
  }
  EXPECT_LT(dw / wscale, 5e-2);
}

TEST(Dion, RejectsNonMatrixRolesAndBadSettings) {
  for (ParamRole role : {ParamRole::Embedding, ParamRole::LmHead, ParamRole::Vector}) {
    Param p("wte_or_head", 10, 8, 12);
    p.role = role;
    try {
      make_dion_cpu(dion_hp(0.25f), {p.slot()});
      ADD_FAILURE() << "role " << role_name(role) << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("wte_or_head"), std::string::npos) << e.what();
    }
  }
  Param p("w", 10, 8, 13);
  EXPECT_THROW(make_dion_cpu(dion_hp(0.0f), {p.slot()}), Error);
  EXPECT_THROW(make_dion_cpu(dion_hp(1.5f), {p.slot()}), Error);
  OptimHParams hp = dion_hp(0.5f);
  hp.algorithm = Algorithm::Muon;
  EXPECT_THROW(make_dion_cpu(hp, {p.slot()}), Error);
}

TEST(Dion, DiagnosticsReportErrorFeedbackResidual) {
  // Low rank: error feedback removes part of M, so mu < residual < 1.
  OptimHParams hp = dion_hp(0.25f);
  Param p("w", 40, 40, 14);
  p.set_grad(randn(1600, 141));
  auto quiet = make_dion_cpu(hp, {p.slot()});
  quiet->step({1, 0.01f});
  EXPECT_TRUE(quiet->stats().empty());
  hp.diagnostics = true;
  auto opt = make_dion_cpu(hp, {p.slot()});
  opt->step({1, 0.01f});
  const double res = opt->stats().at("dion_ef_residual");
  EXPECT_GT(res, hp.mu);
  EXPECT_LT(res, 1.0);
  EXPECT_EQ(opt->stats().at("dion_ortho_fallbacks"), 0.0);
}

}  // namespace
}  // namespace og
