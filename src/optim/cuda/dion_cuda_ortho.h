// Dion's orthonormalization of P on the GPU (the CUDA counterpart of dion::orthonormalize_columns
// in optim/dion_linalg.h), batched over matrices of one shape.
//
// A batch is `count` row-major fp32 matrices P_i (rows x r, rows >= r) stored one after another.
// Like the CPU reference, P stays fp32 and the factorizations run in fp64 (on an H100, DGEMM and
// SGEMM have the same peak, so fp64 costs little here). The methods, tried in order:
//   try_cqr:  Cholesky-QR (fp64 Gram, cuSOLVER potrf, cuBLAS trsm)                  [primary]
//             on failure: Householder QR (guarded kernel below)                     [fallback]
//   square (rows == r), no try_cqr: Householder QR (cuSOLVER geqrf + orgqr)         [primary]
//   tall, no try_cqr: randomized Cholesky-QR (sketch S P in fp32, cuSOLVER geqrf of the sketch,
//             trsm, Gram, potrf, trsm)                                              [primary]
//             on failure: Householder QR (guarded kernel)                           [fallback]
// Every R factor is sign-normalized to a non-negative diagonal, so for a full-rank P all methods
// give the same orthonormal factor (the unique one) up to rounding, as on the CPU. For r <= 32 the
// triangular solves and Cholesky factorizations are single batched calls (trsmBatched,
// potrfBatched); above, one call per matrix. cuSOLVER has no batched geqrf/orgqr: one per matrix.
//
// No host synchronization: success is decided on the device. A Cholesky attempt fails, as on
// the CPU (dion::cholesky_upper), when potrf reports failure or a pivot is non-finite, <= 0 or
// <= r * DBL_EPSILON times its Gram diagonal entry; a per-matrix `done` flag then keeps the
// attempt's result out of P, and the fallback QR kernel skips every matrix already done. That
// kernel (one thread block per matrix, fp64) is slow, but it runs only where an attempt failed (P
// numerically rank-deficient); otherwise it costs one launch that returns at once.
//
// Differences from the CPU reference (all leave the result equal up to rounding for full-rank P;
// for a numerically rank-deficient P the surplus columns are orthonormalized rounding noise on
// both backends, and differ):
//  - The Gaussian sketch is drawn on the device from a counter-based hash (og::hash_u64 and
//    Box-Muller), not from og::Rng, and one sketch serves the whole batch (the seed of its first
//    matrix): a sketch only has to be independent of P.
//  - After a failed plain Cholesky-QR the fallback is Householder QR directly (the CPU tries
//    RCQR in between for tall P), so "fallbacks" counts 1 where the CPU may count 2.
#pragma once
#include <cusolverDn.h>

#include <cstdint>
#include <vector>

#include "core/cuda_utils.h"
#include "core/error.h"
#include "optim/cuda/blas.h"

#define CUSOLVER_CHECK(call)                                                             \
  do {                                                                                   \
    cusolverStatus_t st_ = (call);                                                       \
    if (st_ != CUSOLVER_STATUS_SUCCESS)                                                  \
      ::og::fail("cuSOLVER error {} at {}:{}: {}", (int)st_, __FILE__, __LINE__, #call); \
  } while (0)

namespace og::cuda {

// A cuSOLVER dense handle bound to one stream.
class SolverContext {
 public:
  SolverContext() { CUSOLVER_CHECK(cusolverDnCreate(&h_)); }
  ~SolverContext() {
    if (h_) cusolverDnDestroy(h_);
  }
  SolverContext(const SolverContext&) = delete;
  SolverContext& operator=(const SolverContext&) = delete;
  void set_stream(cudaStream_t s) { CUSOLVER_CHECK(cusolverDnSetStream(h_, s)); }
  cusolverDnHandle_t get() const { return h_; }

 private:
  cusolverDnHandle_t h_ = nullptr;
};

// Which method produced P_i (per matrix, on the device; for tests and diagnostics).
enum DionOrthoMethod : int32_t { kOrthoNone = 0, kOrthoCholeskyQr = 1, kOrthoRcqr = 2, kOrthoQr = 3 };

// All batches of one optimizer. They share one workspace (sized for the largest), so batches
// must run one after another on one stream.
class DionOrtho {
 public:
  // Register a batch of `count` matrices rows x r at `p` (device, consecutive); returns its id.
  int add_batch(int64_t rows, int64_t r, int count, float* p);
  // Allocate the workspace and the per-batch tables (after the last add_batch).
  void finalize(SolverContext& solver);

  // Orthonormalize the columns of batch `id` in place on blas.stream() (solver bound to the same
  // stream). active[i] == 0 leaves P_i untouched (the all-zero momentum case). fallbacks[i] is
  // incremented once per failed attempt (0, or 1 when the fallback QR ran). method[i] gets the
  // DionOrthoMethod that produced P_i (kOrthoNone for inactive matrices). All three arrays are
  // device arrays of `count` ints.
  void run(int id, BlasContext& blas, SolverContext& solver, bool try_cqr, uint64_t sketch_seed, const int32_t* active,
           int32_t* fallbacks, int32_t* method);

 private:
  struct Batch {
    int64_t rows = 0, r = 0, k = 0;  // k: sketch rows (tall batches)
    int count = 0;
    float* p = nullptr;
    DeviceBuffer<double*> x_ptrs, gram_ptrs, sp_ptrs;  // per matrix, for the batched cuBLAS / cuSOLVER calls
  };
  void solve_upper_transposed(Batch& b, BlasContext& blas, const double* const* u_ptrs, const double* u_base,
                              int64_t ld, int64_t stride);
  void cholesky_stage(Batch& b, BlasContext& blas, SolverContext& solver, int32_t tag, int32_t* fallbacks,
                      int32_t* method);
  void rcqr_stage(Batch& b, BlasContext& blas, SolverContext& solver, uint64_t sketch_seed, int32_t* fallbacks,
                  int32_t* method);
  void qr_primary(Batch& b, SolverContext& solver, cudaStream_t s, int32_t* method);
  void qr_fallback(Batch& b, cudaStream_t s, int32_t* method);

  std::vector<Batch> batches_;
  bool finalized_ = false;
  // Workspace (sizes in elements): x: the fp64 working copy of P (rows x r per matrix, which is
  // also P^T column-major); gram: r x r per matrix; sp_f / sp_d: the sketch products (k x r,
  // column-major); sketch: k x rows (column-major, one per batch); aux: 2r per matrix (tau |
  // signs or Gram diagonal); solver_work: cuSOLVER's.
  DeviceBuffer<double> x_, gram_, sp_d_, aux_, solver_work_;
  DeviceBuffer<float> sp_f_, sketch_;
  DeviceBuffer<int32_t> info_, take_, done_;
  int64_t solver_lwork_ = 0;
};

}  // namespace og::cuda
