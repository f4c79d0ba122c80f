// Dion's orthonormalization kernels on the CPU (see dion_linalg.h): Householder QR, Cholesky,
// triangular solves, Cholesky-QR and randomized Cholesky-QR.
#include "optim/dion_linalg.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/gemm_cpu.h"
#include "core/rng.h"
#include "optim/dion_shape.h"

namespace og::dion {
namespace {

// Apply the Householder reflector H = I - tau v v^T (v has length `len`, v[0] = 1) to rows
// [row0, row0 + len) and columns [col0, col1) of X (row-major, leading dimension ldx):
//   w = v^T X_block;  X_block -= tau v w.
// Columns are processed in blocks so each thread streams contiguous row segments.
void apply_reflector(const double* v, int64_t len, double tau, double* X, int64_t ldx, int64_t row0, int64_t col0,
                     int64_t col1) {
  if (tau == 0.0 || col1 <= col0) return;
  constexpr int64_t kBlock = 64;
  const int64_t nblocks = (col1 - col0 + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (len * (col1 - col0) > (1 << 15))
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t c0 = col0 + b * kBlock, c1 = std::min(col1, c0 + kBlock), nc = c1 - c0;
    double w[kBlock];
    for (int64_t c = 0; c < nc; ++c) w[c] = 0.0;
    for (int64_t i = 0; i < len; ++i) {
      const double vi = v[i];
      const double* x = X + (row0 + i) * ldx + c0;
      for (int64_t c = 0; c < nc; ++c) w[c] += vi * x[c];
    }
    for (int64_t c = 0; c < nc; ++c) w[c] *= tau;
    for (int64_t i = 0; i < len; ++i) {
      const double vi = v[i];
      double* x = X + (row0 + i) * ldx + c0;
      for (int64_t c = 0; c < nc; ++c) x[c] -= vi * w[c];
    }
  }
}

// G = X^T X (n x n) for X (m x n) in double.
void gram(int64_t m, int64_t n, const double* X, double* G) {
  cpu::gemm<double>(true, false, n, n, m, 1.0, X, n, X, n, 0.0, G, n);
}

}  // namespace

const char* name_of(OrthoMethod m) {
  switch (m) {
    case OrthoMethod::HouseholderQR: return "householder_qr";
    case OrthoMethod::RandomizedCholeskyQR: return "rcqr";
    case OrthoMethod::CholeskyQR: return "cqr";
  }
  return "?";
}

void householder_qr(int64_t m, int64_t n, const float* A, float* Q, double* R) {
  OG_CHECK(n >= 1 && m >= n, "householder_qr needs a tall-or-square matrix, got {} x {}", m, n);
  std::vector<double> a(A, A + m * n);  // overwritten by R (upper) and the reflectors (below)
  std::vector<double> tau(n, 0.0), v(m);
  for (int64_t j = 0; j < n; ++j) {
    double below = 0.0;  // squared norm of the column below the diagonal
    for (int64_t i = j + 1; i < m; ++i) below += a[i * n + j] * a[i * n + j];
    const double alpha = a[j * n + j];
    if (below == 0.0) continue;  // already upper triangular in this column: H = I (tau = 0)
    // Reflect the column onto beta e_1 with beta of opposite sign to alpha (no cancellation);
    // scale v so v_0 = 1 (LAPACK's convention).
    const double norm = std::sqrt(alpha * alpha + below);
    const double beta = alpha >= 0.0 ? -norm : norm;
    tau[j] = (beta - alpha) / beta;
    const double scale = 1.0 / (alpha - beta);
    v[0] = 1.0;
    for (int64_t i = j + 1; i < m; ++i) v[i - j] = a[i * n + j] *= scale;
    a[j * n + j] = beta;
    apply_reflector(v.data(), m - j, tau[j], a.data(), n, j, j + 1, n);
  }
  // Signs: make diag(R) >= 0 by flipping rows of R and the matching columns of Q.
  std::vector<double> sign(n);
  for (int64_t j = 0; j < n; ++j) sign[j] = a[j * n + j] < 0.0 ? -1.0 : 1.0;
  if (R) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < n; ++c) R[i * n + c] = c >= i ? sign[i] * a[i * n + c] : 0.0;
  }
  if (Q) {
    // Q = H_0 H_1 ... H_{n-1} I[:, :n], applied from the last reflector; H_j leaves the
    // columns before j alone (they are still unit vectors above row j at that point).
    std::vector<double> q((size_t)m * n, 0.0);
    for (int64_t j = 0; j < n; ++j) q[j * n + j] = 1.0;
    for (int64_t j = n - 1; j >= 0; --j) {
      if (tau[j] == 0.0) continue;
      v[0] = 1.0;
      for (int64_t i = j + 1; i < m; ++i) v[i - j] = a[i * n + j];
      apply_reflector(v.data(), m - j, tau[j], q.data(), n, j, j, n);
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < n; ++c) Q[i * n + c] = (float)(sign[c] * q[i * n + c]);
  }
}

bool cholesky_upper(int64_t n, const double* A, double* R) {
  // Right-looking: row j of R is finished at step j, then the trailing upper triangle is
  // updated, A_ic -= R_ji R_jc (i, c > j), walking rows contiguously.
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < n; ++c) R[i * n + c] = c >= i ? A[i * n + c] : 0.0;
  const double rel_tol = (double)n * DBL_EPSILON;
  for (int64_t j = 0; j < n; ++j) {
    const double pivot = R[j * n + j];
    const double diag = A[j * n + j];
    if (!std::isfinite(pivot) || !(pivot > 0.0) || pivot <= rel_tol * diag) return false;
    const double rjj = std::sqrt(pivot);
    double* rj = R + j * n;
    rj[j] = rjj;
    for (int64_t c = j + 1; c < n; ++c) rj[c] /= rjj;
#pragma omp parallel for schedule(static) if ((n - j) * (n - j) > (1 << 16))
    for (int64_t i = j + 1; i < n; ++i) {
      const double rji = rj[i];
      double* ri = R + i * n;
      for (int64_t c = i; c < n; ++c) ri[c] -= rji * rj[c];
    }
  }
  return true;
}

template <typename In, typename Out>
void solve_upper_right(int64_t m, int64_t n, const double* R, const In* X, Out* Y) {
  // Row y of Y solves y R = x: y_j = (x_j - sum_{i<j} y_i R_ij) / R_jj. Eliminating forward,
  // acc_c -= y_j R_jc for c > j, walks R by rows (contiguous).
#pragma omp parallel
  {
    std::vector<double> acc(n);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < m; ++row) {
      const In* x = X + row * n;
      for (int64_t c = 0; c < n; ++c) acc[c] = (double)x[c];
      for (int64_t j = 0; j < n; ++j) {
        const double yj = acc[j] / R[j * n + j];
        acc[j] = yj;
        const double* rj = R + j * n;
        for (int64_t c = j + 1; c < n; ++c) acc[c] -= yj * rj[c];
      }
      Out* y = Y + row * n;
      for (int64_t c = 0; c < n; ++c) y[c] = (Out)acc[c];
    }
  }
}

template void solve_upper_right<float, float>(int64_t, int64_t, const double*, const float*, float*);
template void solve_upper_right<float, double>(int64_t, int64_t, const double*, const float*, double*);
template void solve_upper_right<double, float>(int64_t, int64_t, const double*, const double*, float*);
template void solve_upper_right<double, double>(int64_t, int64_t, const double*, const double*, double*);

void gaussian_sketch(int64_t k, int64_t m, uint64_t seed, float* S) {
  Rng rng(seed);
  const double stddev = std::sqrt(1.0 / (double)k);
  for (int64_t i = 0; i < k * m; ++i) S[i] = (float)(rng.normal() * stddev);
}

bool cholesky_qr(int64_t m, int64_t n, float* P, const RowSplit* split) {
  std::vector<double> p(P, P + m * n), g((size_t)n * n), r((size_t)n * n);
  gram(m, n, p.data(), g.data());
  if (split) split->sum(g.data(), g.size());
  if (!cholesky_upper(n, g.data(), r.data())) return false;
  solve_upper_right(m, n, r.data(), p.data(), P);
  return true;
}

bool randomized_cholesky_qr(int64_t m, int64_t n, float* P, uint64_t sketch_seed, const RowSplit* split) {
  const int64_t mg = split ? split->m_global : m, row0 = split ? split->row0 : 0;
  OG_CHECK(mg > n && n >= 1 && row0 + m <= mg, "randomized_cholesky_qr needs a tall matrix, got {} x {}", mg, n);
  const int64_t k = dion_sketch_rows(n);
  // R1 from the QR of the small sketch S P (k x n): P R1^{-1} is already close to orthonormal,
  // so one Cholesky-QR pass finishes it without squaring P's condition number.
  std::vector<float> S((size_t)k * mg), SP((size_t)k * n);
  gaussian_sketch(k, mg, sketch_seed, S.data());
  // this rank's columns of S times its rows of P (all of them in one process)
  cpu::gemm<float>(false, false, k, n, m, 1.0f, S.data() + row0, mg, P, n, 0.0f, SP.data(), n);
  if (split) {
    std::vector<double> sp(SP.begin(), SP.end());
    split->sum(sp.data(), sp.size());
    std::copy(sp.begin(), sp.end(), SP.begin());
  }
  std::vector<double> r1((size_t)n * n), p1((size_t)m * n), g((size_t)n * n), r2((size_t)n * n);
  householder_qr(k, n, SP.data(), nullptr, r1.data());
  solve_upper_right(m, n, r1.data(), P, p1.data());  // a zero pivot of R1 gives inf/NaN here...
  gram(m, n, p1.data(), g.data());
  if (split) split->sum(g.data(), g.size());
  if (!cholesky_upper(n, g.data(), r2.data())) return false;  // ...which the Cholesky rejects
  solve_upper_right(m, n, r2.data(), p1.data(), P);
  return true;
}

OrthoResult orthonormalize_columns(int64_t m, int64_t n, float* P, bool try_cqr, uint64_t sketch_seed,
                                   const RowSplit* split) {
  const int64_t mg = split ? split->m_global : m;
  OG_CHECK(n >= 1 && mg >= n && m >= 0 && m <= mg,
           "orthonormalize_columns needs a tall-or-square matrix, got {} x {} ({} rows here)", mg, n, m);
  OrthoResult res;
  if (try_cqr) {
    if (cholesky_qr(m, n, P, split)) {
      res.method = OrthoMethod::CholeskyQR;
      return res;
    }
    ++res.fallbacks;
  }
  if (mg > n) {
    if (randomized_cholesky_qr(m, n, P, sketch_seed, split)) {
      res.method = OrthoMethod::RandomizedCholeskyQR;
      return res;
    }
    ++res.fallbacks;
  }
  // Householder QR of the whole P (gathered from the ranks when split: the rare, square or
  // rank-deficient case), then this rank's rows of Q.
  std::vector<float> whole;
  const float* A = P;
  if (split) {
    whole.resize((size_t)mg * n);
    split->gather_rows(P, whole.data());
    A = whole.data();
  }
  std::vector<float> q((size_t)mg * n);
  householder_qr(mg, n, A, q.data(), nullptr);
  const int64_t row0 = split ? split->row0 : 0;
  std::copy(q.begin() + row0 * n, q.begin() + (row0 + m) * n, P);
  res.method = OrthoMethod::HouseholderQR;
  return res;
}

}  // namespace og::dion
