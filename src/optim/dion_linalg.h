// Small dense linear algebra for Dion's orthonormalization of P (rows x r, rows >= r):
// Householder QR, Cholesky with failure detection, triangular solves, plain Cholesky-QR and
// randomized Cholesky-QR (RCQR). All matrices are row-major. P and the sketch are fp32 (the
// large products go through og::cpu::gemm); the r x r triangular factors, the Gram matrices and
// the QR itself are computed in fp64 internally, which costs little at these sizes.
//
// Sign convention: every factorization returns R with a non-negative diagonal, so the
// orthonormal factor of a full-rank P is unique and all three methods agree (in exact
// arithmetic) with Gram-Schmidt.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

namespace og::dion {

// P split by rows over ranks (Dion under FSDP): this rank holds rows [row0, row0 + m) of the
// m_global rows of P, where m is the row count passed to the functions below. The
// orthonormalization then needs sums over all rows (the Gram matrices, the sketch product) and,
// on its Householder path, the whole P; the two callbacks provide them (optim/dion.cpp wires
// them to a Communicator). Every rank calls the functions for the same matrices in the same
// order; a rank may hold no rows (m = 0). A null RowSplit is one process holding all rows.
struct RowSplit {
  int64_t m_global = 0, row0 = 0;
  std::function<void(double* x, size_t count)> sum;                  // in place, over the ranks
  std::function<void(const float* mine, float* whole)> gather_rows;  // whole: m_global x n
};

// Householder QR of A (m x n, m >= n): A = Q R with Q (m x n) orthonormal columns and R (n x n)
// upper triangular with R_jj >= 0. Q may be null (only R is wanted); R may be null.
void householder_qr(int64_t m, int64_t n, const float* A, float* Q, double* R);

// Upper Cholesky factor of a symmetric n x n matrix (only its upper triangle is read):
// A = R^T R. Returns false, leaving R unspecified, when A is not numerically positive definite:
// a pivot that is non-finite, <= 0, or <= n * DBL_EPSILON times its diagonal entry (the columns
// are linearly dependent to working precision; the factor would be noise).
bool cholesky_upper(int64_t n, const double* A, double* R);

// Y = X R^{-1} for X (m x n) and R (n x n) upper triangular (solve Y R = X from the right).
// Y may alias X. Rows are independent and solved in parallel, accumulating in double.
// Instantiated for every (In, Out) in {float, double}^2.
template <typename In, typename Out> void solve_upper_right(int64_t m, int64_t n, const double* R, const In* X, Out* Y);

// Gaussian sketch S (k x m) with i.i.d. N(0, 1/k) entries drawn row-major from og::Rng(seed).
void gaussian_sketch(int64_t k, int64_t m, uint64_t seed, float* S);

// Plain Cholesky-QR in place: R = chol(P^T P) (Gram in fp64), P <- P R^{-1}.
// Returns false and leaves P untouched when the Cholesky fails.
bool cholesky_qr(int64_t m, int64_t n, float* P, const RowSplit* split = nullptr);

// Randomized Cholesky-QR in place (m > n): sketch S (k x m, k = dion_sketch_rows(n)),
// R1 = QR_R(S P), P1 = P R1^{-1}, R2 = chol(P1^T P1), P <- P1 R2^{-1}.
// Returns false and leaves P untouched when the Cholesky fails (P rank-deficient).
// With a split, S is the whole k x m_global sketch (the same draw) and S P sums the row blocks.
bool randomized_cholesky_qr(int64_t m, int64_t n, float* P, uint64_t sketch_seed, const RowSplit* split = nullptr);

// Which method produced the orthonormal columns.
enum class OrthoMethod { HouseholderQR, RandomizedCholeskyQR, CholeskyQR };
const char* name_of(OrthoMethod m);

struct OrthoResult {
  OrthoMethod method = OrthoMethod::HouseholderQR;
  int fallbacks = 0;  // failed attempts before `method` succeeded (0, 1 or 2)
};

// Dion's orthonormalize(P) for P (m x n, m >= n), in place:
//   try_cqr: plain Cholesky-QR first; on failure continue below.
//   m == n (square): Householder QR.  m > n: RCQR, falling back to Householder QR on failure.
// With a split, P is this rank's row block and "m" in the rules above is m_global; every rank
// takes the same path (the decisions depend only on summed quantities).
OrthoResult orthonormalize_columns(int64_t m, int64_t n, float* P, bool try_cqr, uint64_t sketch_seed,
                                   const RowSplit* split = nullptr);

}  // namespace og::dion
