// Dion's batched orthonormalization of P on the GPU (see dion_cuda_ortho.h).
//
// Layout: P_i is row-major rows x r (fp32). Its fp64 working copy X_i has the same layout, which
// cuBLAS and cuSOLVER (column-major) read as P_i^T (r x rows, ld r). In that view
//   Gram  P^T P        = X X^T                       (DGEMM N,T)
//   P <- P U^{-1}      is X <- U^{-T} X              (DTRSM left, upper, transposed)
// with U the upper Cholesky factor (potrf, upper, column-major: G = U^T U) or the sketch's R.
// Only Householder QR of P itself needs P column-major (rows x r, ld rows): the square path and
// the fallback kernel transpose on the way in and out.
#include <algorithm>
#include <cfloat>
#include <cmath>

#include "core/cuda_reduce.cuh"
#include "core/rng.h"
#include "optim/cuda/dion_cuda_ortho.h"
#include "optim/dion_shape.h"

namespace og::cuda {
namespace {

constexpr int kThreads = 256;     // elementwise kernels
constexpr int kQrThreads = 1024;  // the fallback QR kernel: one block per matrix
// Up to this r, the batched cuBLAS / cuSOLVER calls (trsmBatched, potrfBatched: meant for small
// matrices, where launch overhead dominates); above it, one call per matrix (the blocked algorithms).
constexpr int64_t kBatchedMaxR = 32;

// Blocks for a grid-stride loop over n elements (x dimension; y indexes the matrix).
unsigned blocks_for(int64_t n) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 2048));
}

// One thread per matrix: done_i = !active_i (inactive matrices are left alone); no method yet.
__global__ void init_done_kernel(const int32_t* __restrict__ active, int32_t* __restrict__ done,
                                 int32_t* __restrict__ method, int count) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) {
    done[i] = active[i] ? 0 : 1;
    method[i] = kOrthoNone;
  }
}

// Grid-stride over n elements: y = double(x).
__global__ void to_double_kernel(const float* __restrict__ x, double* __restrict__ y, int64_t n) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x)
    y[e] = (double)x[e];
}

// Grid (blocks, count): P_i = float(X_i) for the matrices with take_i set (per elements each).
__global__ void commit_kernel(const double* __restrict__ x, float* __restrict__ p, const int32_t* __restrict__ take,
                              int64_t per) {
  const int64_t b = blockIdx.y;
  if (!take[b]) return;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < per; e += (int64_t)gridDim.x * blockDim.x)
    p[b * per + e] = (float)x[b * per + e];
}

// Grid-stride over n elements: the Gaussian sketch, N(0, scale^2) entries. Elements 2q and 2q+1
// are the Box-Muller pair of counter q: u1 in (0, 1] and u2 in [0, 1) from og::hash_u64.
__global__ void sketch_kernel(float* __restrict__ s, int64_t n, uint64_t seed, double scale) {
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
    const uint64_t q = (uint64_t)e >> 1;
    const double u1 = (double)((hash_u64(seed, q, 0) >> 11) + 1) * 0x1.0p-53;
    const double u2 = (double)(hash_u64(seed, q, 1) >> 11) * 0x1.0p-53;
    const double rad = sqrt(-2.0 * log(u1));
    double sn, cs;
    sincospi(2.0 * u2, &sn, &cs);
    s[e] = (float)(scale * rad * ((e & 1) ? sn : cs));
  }
}

// One block per matrix: keep the Gram diagonal (potrf overwrites it) for the pivot test.
__global__ void save_diag_kernel(const double* __restrict__ gram, double* __restrict__ aux, int64_t r,
                                 int64_t aux_stride) {
  const int64_t b = blockIdx.x;
  for (int64_t j = threadIdx.x; j < r; j += blockDim.x) aux[b * aux_stride + r + j] = gram[b * r * r + j * r + j];
}

// One block per matrix: did its Cholesky succeed? As dion::cholesky_upper: no potrf failure, and
// every pivot u_jj^2 finite, > 0 and > r * DBL_EPSILON * G_jj. Then take_i = it succeeded and
// no earlier method had; done / method / fallbacks follow.
__global__ void cholesky_check_kernel(const double* __restrict__ gram, const double* __restrict__ aux,
                                      const int32_t* __restrict__ info, int64_t r, int64_t aux_stride,
                                      int32_t* __restrict__ done, int32_t* __restrict__ take,
                                      int32_t* __restrict__ fallbacks, int32_t* __restrict__ method, int32_t tag) {
  const int64_t b = blockIdx.x;
  const double rel_tol = (double)r * DBL_EPSILON;
  int bad = 0;
  for (int64_t j = threadIdx.x; j < r; j += blockDim.x) {
    const double u = gram[b * r * r + j * r + j];
    const double pivot = u * u;
    const double diag = aux[b * aux_stride + r + j];
    bad |= !isfinite(u) || !(u > 0.0) || !isfinite(pivot) || pivot <= rel_tol * diag;
  }
  bad = __syncthreads_or(bad);
  if (threadIdx.x == 0) {
    const bool ok = !bad && info[b] == 0;
    const bool was_done = done[b] != 0;
    take[b] = !was_done && ok;
    if (!was_done) {
      if (ok) {
        done[b] = 1;
        method[b] = tag;
      } else {
        fallbacks[b] += 1;
      }
    }
  }
}

// One block per matrix: R (the upper triangle of a column-major matrix, leading dimension ld,
// matrices `per` apart) <- D R with D = sign(diag R) (+1 for a zero), so diag(R) >= 0 as on the
// CPU. Dynamic shared memory: r bytes.
__global__ void normalize_r_signs_kernel(double* __restrict__ a, int64_t ld, int64_t per, int64_t r) {
  extern __shared__ signed char neg[];
  double* m = a + blockIdx.x * per;
  for (int64_t j = threadIdx.x; j < r; j += blockDim.x) neg[j] = m[j * ld + j] < 0.0;
  __syncthreads();
  for (int64_t c = 0; c < r; ++c)
    for (int64_t i = threadIdx.x; i <= c; i += blockDim.x)
      if (neg[i]) m[c * ld + i] = -m[c * ld + i];
}

// Grid (blocks, count): A_i (column-major rows x r) = double(P_i) (row-major rows x r).
__global__ void to_colmajor_kernel(const float* __restrict__ p, double* __restrict__ a, int64_t rows, int64_t r) {
  const int64_t b = blockIdx.y, per = rows * r;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < per; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = e / r, c = e % r;
    a[b * per + c * rows + i] = (double)p[b * per + e];
  }
}

// One block per matrix: signs_j = sign of R_jj (geqrf's output, column-major rows x r).
__global__ void diag_signs_kernel(const double* __restrict__ a, double* __restrict__ aux, int64_t rows, int64_t r,
                                  int64_t aux_stride) {
  const int64_t b = blockIdx.x;
  for (int64_t j = threadIdx.x; j < r; j += blockDim.x)
    aux[b * aux_stride + r + j] = a[b * rows * r + j * rows + j] < 0.0 ? -1.0 : 1.0;
}

// Grid (blocks, count): for matrices not done, P_i = float(Q_i * diag(signs)) from orgqr's Q
// (column-major) back to row-major; method_i = QR.
__global__ void commit_colmajor_kernel(const double* __restrict__ a, const double* __restrict__ aux,
                                       float* __restrict__ p, const int32_t* __restrict__ done,
                                       int32_t* __restrict__ method, int64_t rows, int64_t r, int64_t aux_stride) {
  const int64_t b = blockIdx.y, per = rows * r;
  if (done[b]) return;
  if (blockIdx.x == 0 && threadIdx.x == 0) method[b] = kOrthoQr;
  const double* sgn = aux + b * aux_stride + r;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < per; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = e / r, c = e % r;
    p[b * per + e] = (float)(sgn[c] * a[b * per + c * rows + i]);
  }
}

// One block (kQrThreads) per matrix, skipping matrices already done: Householder QR of P_i in
// fp64, the CPU's dion::householder_qr step for step (reflector H = I - tau v v^T with v_0 = 1
// and beta of sign opposite to alpha; tau = 0 where the column below the diagonal is zero), then
// Q formed in place from the reflectors (LAPACK's org2r), columns signed so diag(R) >= 0, and
// written back to P_i. The trailing updates give one warp per column; reductions are in a fixed
// order. Scratch: A_i (rows x r column-major, `a`), tau and signs (aux, 2r).
// This is the rare fallback path (P numerically rank-deficient): simple rather than fast.
__global__ void __launch_bounds__(kQrThreads)
    fallback_qr_kernel(float* __restrict__ p_all, double* __restrict__ a_all, double* __restrict__ aux_all,
                       int64_t rows, int64_t r, int64_t aux_stride, int32_t* __restrict__ done,
                       int32_t* __restrict__ method) {
  __shared__ double scratch[32];
  const int64_t b = blockIdx.x;
  if (done[b]) return;  // uniform over the block
  const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5, nwarps = nt >> 5;
  const int64_t per = rows * r;
  float* p = p_all + b * per;
  double* a = a_all + b * per;
  double* tau = aux_all + b * aux_stride;
  double* sgn = tau + r;

  for (int64_t e = tid; e < per; e += nt) a[(e % r) * rows + e / r] = (double)p[e];
  __syncthreads();

  // Factorization: reflectors below the diagonal, R on and above it.
  for (int64_t j = 0; j < r; ++j) {
    double* aj = a + j * rows;
    const double alpha = aj[j];
    double part = 0.0;
    for (int64_t i = j + 1 + tid; i < rows; i += nt) part += aj[i] * aj[i];
    const double below = gpu::block_sum(part, scratch);  // also orders every read of alpha before the writes below
    if (below == 0.0) {                                  // the same value in every thread
      if (tid == 0) tau[j] = 0.0;
      continue;
    }
    const double norm = sqrt(alpha * alpha + below);
    const double beta = alpha >= 0.0 ? -norm : norm;
    const double t = (beta - alpha) / beta;
    const double scale = 1.0 / (alpha - beta);
    for (int64_t i = j + 1 + tid; i < rows; i += nt) aj[i] *= scale;
    __syncthreads();
    if (tid == 0) {
      aj[j] = beta;
      tau[j] = t;
    }
    for (int64_t c = j + 1 + warp; c < r; c += nwarps) {  // w = v^T A[:, c]; A[:, c] -= tau v w
      double* ac = a + c * rows;
      const double acj = ac[j];
      double w = 0.0;
      for (int64_t i = j + 1 + lane; i < rows; i += 32) w += aj[i] * ac[i];
      w = (gpu::warp_sum(w) + acj) * t;
      __syncwarp();
      if (lane == 0) ac[j] = acj - w;
      for (int64_t i = j + 1 + lane; i < rows; i += 32) ac[i] -= aj[i] * w;
    }
    __syncthreads();
  }
  for (int64_t j = tid; j < r; j += nt) sgn[j] = a[j * rows + j] < 0.0 ? -1.0 : 1.0;
  __syncthreads();

  // Q = H_0 H_1 ... H_{r-1} I[:, :r], formed in place from the last reflector to the first.
  for (int64_t i = r - 1; i >= 0; --i) {
    double* ai = a + i * rows;
    const double t = tau[i];
    if (i < r - 1 && t != 0.0) {
      for (int64_t c = i + 1 + warp; c < r; c += nwarps) {
        double* ac = a + c * rows;
        const double aci = ac[i];
        double w = 0.0;
        for (int64_t l = i + 1 + lane; l < rows; l += 32) w += ai[l] * ac[l];
        w = (gpu::warp_sum(w) + aci) * t;
        __syncwarp();
        if (lane == 0) ac[i] = aci - w;
        for (int64_t l = i + 1 + lane; l < rows; l += 32) ac[l] -= ai[l] * w;
      }
      __syncthreads();  // every column has read the reflector before it is overwritten
    }
    for (int64_t l = i + 1 + tid; l < rows; l += nt) ai[l] = t == 0.0 ? 0.0 : -t * ai[l];
    for (int64_t l = tid; l < i; l += nt) ai[l] = 0.0;
    if (tid == 0) ai[i] = 1.0 - t;
    __syncthreads();
  }

  for (int64_t e = tid; e < per; e += nt) p[e] = (float)(sgn[e % r] * a[(e % r) * rows + e / r]);
  if (tid == 0) {
    done[b] = 1;
    method[b] = kOrthoQr;
  }
}

}  // namespace

int DionOrtho::add_batch(int64_t rows, int64_t r, int count, float* p) {
  OG_CHECK(!finalized_, "DionOrtho::add_batch after finalize");
  OG_CHECK(rows >= r && r >= 1 && count >= 1, "DionOrtho: bad batch {} x {} (x{})", rows, r, count);
  OG_CHECK(rows <= INT32_MAX && r <= 32768 && count <= 65535, "DionOrtho: batch {} x {} (x{}) too large", rows, r,
           count);
  Batch b;
  b.rows = rows;
  b.r = r;
  b.k = rows > r ? dion::dion_sketch_rows(r) : 0;
  b.count = count;
  b.p = p;
  batches_.push_back(std::move(b));
  return (int)batches_.size() - 1;
}

void DionOrtho::finalize(SolverContext& solver) {
  OG_CHECK(!finalized_, "DionOrtho::finalize called twice");
  finalized_ = true;
  int64_t nx = 1, ngram = 1, nsp = 1, nsketch = 1, naux = 1, ncount = 1;
  for (const Batch& b : batches_) {
    nx = std::max(nx, b.count * b.rows * b.r);
    ngram = std::max(ngram, b.count * b.r * b.r);
    nsp = std::max(nsp, b.count * b.k * b.r);
    nsketch = std::max(nsketch, b.k * b.rows);
    naux = std::max(naux, b.count * 2 * b.r);
    ncount = std::max<int64_t>(ncount, b.count);
  }
  x_.resize((size_t)nx);
  gram_.resize((size_t)ngram);
  sp_d_.resize((size_t)nsp);
  sp_f_.resize((size_t)nsp);
  sketch_.resize((size_t)nsketch);
  aux_.resize((size_t)naux);
  info_.resize((size_t)ncount);
  take_.resize((size_t)ncount);
  done_.resize((size_t)ncount);
  CUDA_CHECK(cudaMemset(x_.data(), 0, x_.bytes()));
  CUDA_CHECK(cudaMemset(aux_.data(), 0, aux_.bytes()));
  CUDA_CHECK(cudaMemset(info_.data(), 0, info_.bytes()));

  // cuSOLVER's workspace: the largest query over the calls each batch can make.
  cusolverDnHandle_t h = solver.get();
  int lwork = 1;
  for (Batch& b : batches_) {
    int lw = 0;
    if (b.rows == b.r) {
      CUSOLVER_CHECK(cusolverDnDgeqrf_bufferSize(h, (int)b.rows, (int)b.r, x_.data(), (int)b.rows, &lw));
      lwork = std::max(lwork, lw);
      CUSOLVER_CHECK(
          cusolverDnDorgqr_bufferSize(h, (int)b.rows, (int)b.r, (int)b.r, x_.data(), (int)b.rows, aux_.data(), &lw));
      lwork = std::max(lwork, lw);
    } else {
      CUSOLVER_CHECK(cusolverDnDgeqrf_bufferSize(h, (int)b.k, (int)b.r, sp_d_.data(), (int)b.k, &lw));
      lwork = std::max(lwork, lw);
    }
    if (b.r > kBatchedMaxR) {
      CUSOLVER_CHECK(cusolverDnDpotrf_bufferSize(h, CUBLAS_FILL_MODE_UPPER, (int)b.r, gram_.data(), (int)b.r, &lw));
      lwork = std::max(lwork, lw);
    }
    std::vector<double*> xs, gs, ss;
    for (int i = 0; i < b.count; ++i) {
      xs.push_back(x_.data() + (int64_t)i * b.rows * b.r);
      gs.push_back(gram_.data() + (int64_t)i * b.r * b.r);
      ss.push_back(sp_d_.data() + (int64_t)i * b.k * b.r);
    }
    b.x_ptrs.resize(xs.size());
    b.gram_ptrs.resize(gs.size());
    b.sp_ptrs.resize(ss.size());
    CUDA_CHECK(cudaMemcpy(b.x_ptrs.data(), xs.data(), xs.size() * sizeof(double*), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(b.gram_ptrs.data(), gs.data(), gs.size() * sizeof(double*), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(b.sp_ptrs.data(), ss.data(), ss.size() * sizeof(double*), cudaMemcpyHostToDevice));
  }
  solver_lwork_ = lwork;
  solver_work_.resize((size_t)lwork);
}

// X_i <- U_i^{-T} X_i (X_i = P_i^T, r x rows; U_i upper triangular r x r, column-major with leading
// dimension ld, given as a pointer array and as base + i * stride).
void DionOrtho::solve_upper_transposed(Batch& b, BlasContext& blas, const double* const* u_ptrs, const double* u_base,
                                       int64_t ld, int64_t stride) {
  const double one = 1.0;
  const int r = (int)b.r, rows = (int)b.rows;
  if (b.r <= kBatchedMaxR) {
    CUBLAS_CHECK(cublasDtrsmBatched(blas.blas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T,
                                    CUBLAS_DIAG_NON_UNIT, r, rows, &one, u_ptrs, (int)ld, b.x_ptrs.data(), r, b.count));
    return;
  }
  for (int i = 0; i < b.count; ++i)
    CUBLAS_CHECK(cublasDtrsm(blas.blas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T, CUBLAS_DIAG_NON_UNIT,
                             r, rows, &one, u_base + i * stride, (int)ld, x_.data() + i * b.rows * b.r, r));
}

// Gram, Cholesky, check, X <- U^{-T} X, commit. X (x_) holds P^T (CQR) or P1^T (RCQR).
void DionOrtho::cholesky_stage(Batch& b, BlasContext& blas, SolverContext& solver, int32_t tag, int32_t* fallbacks,
                               int32_t* method) {
  cudaStream_t s = blas.stream();
  const int r = (int)b.r, rows = (int)b.rows;
  const int64_t per = b.rows * b.r, aux_stride = 2 * b.r;
  const double one = 1.0, zero = 0.0;
  CUBLAS_CHECK(cublasDgemmStridedBatched(blas.blas(), CUBLAS_OP_N, CUBLAS_OP_T, r, r, rows, &one, x_.data(), r, per,
                                         x_.data(), r, per, &zero, gram_.data(), r, b.r * b.r, b.count));
  save_diag_kernel<<<b.count, kThreads, 0, s>>>(gram_.data(), aux_.data(), b.r, aux_stride);
  CUDA_CHECK_LAUNCH();
  if (b.r <= kBatchedMaxR) {
    CUSOLVER_CHECK(
        cusolverDnDpotrfBatched(solver.get(), CUBLAS_FILL_MODE_UPPER, r, b.gram_ptrs.data(), r, info_.data(), b.count));
  } else {
    for (int i = 0; i < b.count; ++i)
      CUSOLVER_CHECK(cusolverDnDpotrf(solver.get(), CUBLAS_FILL_MODE_UPPER, r, gram_.data() + (int64_t)i * b.r * b.r, r,
                                      solver_work_.data(), (int)solver_lwork_, info_.data() + i));
  }
  cholesky_check_kernel<<<b.count, kThreads, 0, s>>>(gram_.data(), aux_.data(), info_.data(), b.r, aux_stride,
                                                     done_.data(), take_.data(), fallbacks, method, tag);
  CUDA_CHECK_LAUNCH();
  solve_upper_transposed(b, blas, b.gram_ptrs.data(), gram_.data(), r, b.r * b.r);
  commit_kernel<<<dim3(blocks_for(per), b.count), kThreads, 0, s>>>(x_.data(), b.p, take_.data(), per);
  CUDA_CHECK_LAUNCH();
}

// RCQR: S P (fp32), R1 = QR_R(S P) (fp64, diag >= 0), X = (P R1^{-1})^T, then the Cholesky stage.
void DionOrtho::rcqr_stage(Batch& b, BlasContext& blas, SolverContext& solver, uint64_t sketch_seed, int32_t* fallbacks,
                           int32_t* method) {
  cudaStream_t s = blas.stream();
  const int r = (int)b.r, rows = (int)b.rows, k = (int)b.k;
  const int64_t per = b.rows * b.r, sp_per = b.k * b.r, aux_stride = 2 * b.r;
  sketch_kernel<<<blocks_for(b.k * b.rows), kThreads, 0, s>>>(sketch_.data(), b.k * b.rows, sketch_seed,
                                                              std::sqrt(1.0 / (double)b.k));
  CUDA_CHECK_LAUNCH();
  // SP_i (k x r, column-major) = S (k x rows, column-major) * P_i, P_i read as the transpose of
  // its column-major view. One sketch for the batch: stride 0.
  const float onef = 1.0f, zerof = 0.0f;
  CUBLAS_CHECK(cublasSgemmStridedBatched(blas.blas(), CUBLAS_OP_N, CUBLAS_OP_T, k, r, rows, &onef, sketch_.data(), k, 0,
                                         b.p, r, per, &zerof, sp_f_.data(), k, sp_per, b.count));
  to_double_kernel<<<blocks_for(b.count * sp_per), kThreads, 0, s>>>(sp_f_.data(), sp_d_.data(), b.count * sp_per);
  CUDA_CHECK_LAUNCH();
  for (int i = 0; i < b.count; ++i)
    CUSOLVER_CHECK(cusolverDnDgeqrf(solver.get(), k, r, sp_d_.data() + i * sp_per, k, aux_.data() + i * aux_stride,
                                    solver_work_.data(), (int)solver_lwork_, info_.data() + i));
  normalize_r_signs_kernel<<<b.count, kThreads, (size_t)b.r, s>>>(sp_d_.data(), b.k, sp_per, b.r);
  CUDA_CHECK_LAUNCH();
  to_double_kernel<<<blocks_for(b.count * per), kThreads, 0, s>>>(b.p, x_.data(), b.count * per);
  CUDA_CHECK_LAUNCH();
  solve_upper_transposed(b, blas, b.sp_ptrs.data(), sp_d_.data(), k, sp_per);
  // A zero pivot of R1 leaves inf / NaN in X, which the Cholesky check rejects (as on the CPU).
  cholesky_stage(b, blas, solver, kOrthoRcqr, fallbacks, method);
}

// Square P, no Cholesky-QR: cuSOLVER geqrf + orgqr per matrix, signs from R's diagonal.
void DionOrtho::qr_primary(Batch& b, SolverContext& solver, cudaStream_t s, int32_t* method) {
  const int r = (int)b.r, rows = (int)b.rows;
  const int64_t per = b.rows * b.r, aux_stride = 2 * b.r;
  to_colmajor_kernel<<<dim3(blocks_for(per), b.count), kThreads, 0, s>>>(b.p, x_.data(), b.rows, b.r);
  CUDA_CHECK_LAUNCH();
  for (int i = 0; i < b.count; ++i)
    CUSOLVER_CHECK(cusolverDnDgeqrf(solver.get(), rows, r, x_.data() + i * per, rows, aux_.data() + i * aux_stride,
                                    solver_work_.data(), (int)solver_lwork_, info_.data() + i));
  diag_signs_kernel<<<b.count, kThreads, 0, s>>>(x_.data(), aux_.data(), b.rows, b.r, aux_stride);
  CUDA_CHECK_LAUNCH();
  for (int i = 0; i < b.count; ++i)
    CUSOLVER_CHECK(cusolverDnDorgqr(solver.get(), rows, r, r, x_.data() + i * per, rows, aux_.data() + i * aux_stride,
                                    solver_work_.data(), (int)solver_lwork_, info_.data() + i));
  commit_colmajor_kernel<<<dim3(blocks_for(per), b.count), kThreads, 0, s>>>(x_.data(), aux_.data(), b.p, done_.data(),
                                                                             method, b.rows, b.r, aux_stride);
  CUDA_CHECK_LAUNCH();
}

void DionOrtho::qr_fallback(Batch& b, cudaStream_t s, int32_t* method) {
  fallback_qr_kernel<<<b.count, kQrThreads, 0, s>>>(b.p, x_.data(), aux_.data(), b.rows, b.r, 2 * b.r, done_.data(),
                                                    method);
  CUDA_CHECK_LAUNCH();
}

void DionOrtho::run(int id, BlasContext& blas, SolverContext& solver, bool try_cqr, uint64_t sketch_seed,
                    const int32_t* active, int32_t* fallbacks, int32_t* method) {
  OG_CHECK(finalized_ && id >= 0 && id < (int)batches_.size(), "DionOrtho::run: bad batch {}", id);
  Batch& b = batches_[(size_t)id];
  cudaStream_t s = blas.stream();
  init_done_kernel<<<(b.count + kThreads - 1) / kThreads, kThreads, 0, s>>>(active, done_.data(), method, b.count);
  CUDA_CHECK_LAUNCH();
  if (try_cqr) {
    to_double_kernel<<<blocks_for(b.count * b.rows * b.r), kThreads, 0, s>>>(b.p, x_.data(), b.count * b.rows * b.r);
    CUDA_CHECK_LAUNCH();
    cholesky_stage(b, blas, solver, kOrthoCholeskyQr, fallbacks, method);
    qr_fallback(b, s, method);
  } else if (b.rows == b.r) {
    qr_primary(b, solver, s, method);
  } else {
    rcqr_stage(b, blas, solver, sketch_seed, fallbacks, method);
    qr_fallback(b, s, method);
  }
}

}  // namespace og::cuda
