// cuBLAS / cuBLASLt plumbing (see blas.h).
#include <algorithm>
#include <cstring>
#include <limits>

#include "optim/cuda/blas.h"

namespace og::cuda {
namespace {

constexpr size_t kBlasWorkspace = 32ull << 20;  // cuBLAS recommends 32 MiB on Hopper
constexpr size_t kLtWorkspace = 64ull << 20;

// Largest power of two (≤ 256) dividing the byte offset between consecutive batch entries.
uint32_t batch_alignment(int64_t stride_elems, int batch) {
  if (batch <= 1 || stride_elems == 0) return 256;
  const uint64_t bytes = (uint64_t)stride_elems * sizeof(bf16);
  return (uint32_t)std::min<uint64_t>(256, bytes & (~bytes + 1));
}

void check_int_range(const GemmDims& d) {
  const int64_t lim = std::numeric_limits<int>::max();
  OG_CHECK(d.m <= lim && d.n <= lim && d.k <= lim && d.lda <= lim && d.ldb <= lim && d.ldc <= lim,
           "GEMM dimensions too large for cuBLAS: {}x{}x{}", d.m, d.n, d.k);
}

}  // namespace

BlasContext::BlasContext() {
  CUBLAS_CHECK(cublasCreate(&blas_));
  CUBLAS_CHECK(cublasLtCreate(&lt_));
  blas_ws_.resize(kBlasWorkspace);
  lt_ws_.resize(kLtWorkspace);
  set_stream(nullptr);
}

BlasContext::~BlasContext() {
  if (lt_) cublasLtDestroy(lt_);
  if (blas_) cublasDestroy(blas_);
}

void BlasContext::set_stream(cudaStream_t s) {
  stream_ = s;
  CUBLAS_CHECK(cublasSetStream(blas_, s));
  // cublasSetStream resets the workspace to cuBLAS's own pool: set ours again, so that no
  // allocation can happen inside a step.
  CUBLAS_CHECK(cublasSetWorkspace(blas_, blas_ws_.data(), blas_ws_.bytes()));
  CUBLAS_CHECK(cublasSetPointerMode(blas_, CUBLAS_POINTER_MODE_HOST));
}

// ---- LtGemm ------------------------------------------------------------------------------------

LtGemm::~LtGemm() { release(); }

void LtGemm::release() {
  if (la_) cublasLtMatrixLayoutDestroy(la_);
  if (lb_) cublasLtMatrixLayoutDestroy(lb_);
  if (lc_) cublasLtMatrixLayoutDestroy(lc_);
  if (desc_) cublasLtMatmulDescDestroy(desc_);
  la_ = lb_ = lc_ = nullptr;
  desc_ = nullptr;
  have_algo_ = false;
}

void LtGemm::plan(BlasContext& ctx, const GemmDims& d, bool autotune, const bf16* a, const bf16* b, bf16* d_sample) {
  release();
  check_int_range(d);
  d_ = d;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const int32_t ta = d.ta, tb = d.tb;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));

  auto make_layout = [&](cublasLtMatrixLayout_t* l, int64_t rows, int64_t cols, int64_t ld, int64_t stride) {
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, CUDA_R_16BF, (uint64_t)rows, (uint64_t)cols, ld));
    const int32_t batch = d.batch;
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch)));
    CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  };
  // Stored shapes: A is m×k (N) or k×m (T); B is k×n (N) or n×k (T).
  make_layout(&la_, d.ta == CUBLAS_OP_N ? d.m : d.k, d.ta == CUBLAS_OP_N ? d.k : d.m, d.lda, d.stride_a);
  make_layout(&lb_, d.tb == CUBLAS_OP_N ? d.k : d.n, d.tb == CUBLAS_OP_N ? d.n : d.k, d.ldb, d.stride_b);
  make_layout(&lc_, d.m, d.n, d.ldc, d.stride_c);

  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = ctx.lt_workspace_bytes();
  const uint32_t al_a = batch_alignment(d.stride_a, d.batch), al_b = batch_alignment(d.stride_b, d.batch),
                 al_c = batch_alignment(d.stride_c, d.batch);
  cublasStatus_t st =
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof(al_c));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof(al_c));
  constexpr int kMaxCandidates = 8;
  cublasLtMatmulHeuristicResult_t results[kMaxCandidates];
  int returned = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(ctx.lt(), desc_, la_, lb_, lc_, lc_, pref, autotune ? kMaxCandidates : 1,
                                        results, &returned);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || returned == 0) {
    have_algo_ = false;  // the cuBLAS fallback in run() handles any shape
    return;
  }

  int best = 0;
  if (autotune && returned > 1) {
    cudaStream_t s = ctx.stream();
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    float best_ms = std::numeric_limits<float>::max();
    best = -1;
    const float alpha = 1.0f, beta = 0.0f;
    for (int i = 0; i < returned; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS || results[i].workspaceSize > ws) continue;
      auto once = [&] {
        return cublasLtMatmul(ctx.lt(), desc_, &alpha, a, la_, b, lb_, &beta, d_sample, lc_, d_sample, lc_,
                              &results[i].algo, ctx.lt_workspace(), ws, s);
      };
      if (once() != CUBLAS_STATUS_SUCCESS) continue;  // warm-up; a failing candidate is skipped
      CUDA_CHECK(cudaEventRecord(e0, s));
      bool ok = true;
      for (int r = 0; r < 3 && ok; ++r) ok = once() == CUBLAS_STATUS_SUCCESS;
      CUDA_CHECK(cudaEventRecord(e1, s));
      CUDA_CHECK(cudaEventSynchronize(e1));
      float ms = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
      if (ok && ms < best_ms) best_ms = ms, best = i;
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    (void)cudaGetLastError();
    if (best < 0) best = 0;
  }
  algo_ = results[best].algo;
  algo_ws_ = results[best].workspaceSize;
  have_algo_ = true;
}

void LtGemm::run(BlasContext& ctx, float alpha, const bf16* A, const bf16* B, float beta, const bf16* C,
                 bf16* D) const {
  if (C == nullptr) C = D;
  if (have_algo_) {
    CUBLAS_CHECK(cublasLtMatmul(ctx.lt(), desc_, &alpha, A, la_, B, lb_, &beta, C, lc_, D, lc_, &algo_,
                                ctx.lt_workspace(), ctx.lt_workspace_bytes(), ctx.stream()));
    return;
  }
  // Fallback: classic cuBLAS, which computes in place on C; give it D pre-filled with C.
  if (beta != 0.0f && C != D) {
    const int64_t span = (int64_t)(d_.batch - 1) * d_.stride_c + d_.ldc * d_.n;
    CUDA_CHECK(cudaMemcpyAsync(D, C, (size_t)span * sizeof(bf16), cudaMemcpyDeviceToDevice, ctx.stream()));
  }
  CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx.blas(), d_.ta, d_.tb, (int)d_.m, (int)d_.n, (int)d_.k, &alpha, A,
                                          CUDA_R_16BF, (int)d_.lda, d_.stride_a, B, CUDA_R_16BF, (int)d_.ldb,
                                          d_.stride_b, &beta, D, CUDA_R_16BF, (int)d_.ldc, d_.stride_c, d_.batch,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// ---- PtrArrayGemm ------------------------------------------------------------------------------

void PtrArrayGemm::plan(const GemmDims& d, const std::vector<const bf16*>& a, const std::vector<const bf16*>& b,
                        const std::vector<bf16*>& c) {
  check_int_range(d);
  OG_CHECK(a.size() == b.size() && b.size() == c.size() && (int64_t)a.size() == d.batch,
           "PtrArrayGemm: pointer arrays of sizes {}, {}, {} for batch {}", a.size(), b.size(), c.size(), d.batch);
  d_ = d;
  std::vector<const void*> av(a.begin(), a.end()), bv(b.begin(), b.end());
  std::vector<void*> cv(c.begin(), c.end());
  a_.resize(av.size());
  b_.resize(bv.size());
  c_.resize(cv.size());
  CUDA_CHECK(cudaMemcpy(a_.data(), av.data(), av.size() * sizeof(void*), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(b_.data(), bv.data(), bv.size() * sizeof(void*), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(c_.data(), cv.data(), cv.size() * sizeof(void*), cudaMemcpyHostToDevice));
}

void PtrArrayGemm::run(BlasContext& ctx, float alpha, float beta) const {
  CUBLAS_CHECK(cublasGemmBatchedEx(
      ctx.blas(), d_.ta, d_.tb, (int)d_.m, (int)d_.n, (int)d_.k, &alpha, (const void* const*)a_.data(), CUDA_R_16BF,
      (int)d_.lda, (const void* const*)b_.data(), CUDA_R_16BF, (int)d_.ldb, &beta, (void* const*)c_.data(), CUDA_R_16BF,
      (int)d_.ldc, d_.batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace og::cuda
