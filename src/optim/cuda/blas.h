// cuBLAS / cuBLASLt plumbing for the batched bf16 GEMMs (fp32 accumulation) of Newton–Schulz:
//  - BlasContext: the handles and their workspaces, bound to one stream;
//  - LtGemm: a strided-batched cuBLASLt GEMM D = α·op(A)·op(B) + β·C with C and D distinct
//    buffers, its algorithm chosen once at plan time (heuristic, optionally timed);
//  - PtrArrayGemm: a pointer-array batched cuBLAS GEMM C = α·op(A)·op(B) + β·C, used for the
//    block triangles of symmetric products.
// Everything is column-major, as cuBLAS sees it.
#pragma once
#include <cstdint>
#include <vector>

#include "core/cuda_utils.h"

namespace og::cuda {

using bf16 = __nv_bfloat16;

class BlasContext {
 public:
  BlasContext();
  ~BlasContext();
  BlasContext(const BlasContext&) = delete;
  BlasContext& operator=(const BlasContext&) = delete;

  void set_stream(cudaStream_t s);
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  cublasLtHandle_t lt() const { return lt_; }
  void* lt_workspace() const { return lt_ws_.data() ? (void*)lt_ws_.data() : nullptr; }
  size_t lt_workspace_bytes() const { return lt_ws_.bytes(); }

 private:
  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer<uint8_t> blas_ws_, lt_ws_;
};

struct GemmDims {
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  int64_t m = 0, n = 0, k = 0;                       // op(A) is m×k, op(B) k×n, C and D m×n
  int64_t lda = 0, ldb = 0, ldc = 0;                 // ldc is also D's
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // batch strides in elements (C and D share)
  int batch = 1;
};

class LtGemm {
 public:
  LtGemm() = default;
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Choose the algorithm. Base pointers passed to run() must be 256-byte aligned. With
  // `autotune`, the heuristic's candidates are timed once on the sample buffers (their contents
  // are overwritten: D's, plus C's if C == D) and the fastest kept.
  void plan(BlasContext& ctx, const GemmDims& d, bool autotune, const bf16* a, const bf16* b, bf16* d_sample);
  void run(BlasContext& ctx, float alpha, const bf16* A, const bf16* B, float beta, const bf16* C, bf16* D) const;
  const GemmDims& dims() const { return d_; }

 private:
  void release();
  GemmDims d_;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t la_ = nullptr, lb_ = nullptr, lc_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
  size_t algo_ws_ = 0;
  bool have_algo_ = false;  // false: fall back to cublasGemmStridedBatchedEx
};

class PtrArrayGemm {
 public:
  // d's strides are ignored; d.batch = a.size() = b.size() = c.size().
  void plan(const GemmDims& d, const std::vector<const bf16*>& a, const std::vector<const bf16*>& b,
            const std::vector<bf16*>& c);
  void run(BlasContext& ctx, float alpha, float beta) const;

 private:
  GemmDims d_;
  DeviceBuffer<const void*> a_, b_;
  DeviceBuffer<void*> c_;
};

}  // namespace og::cuda
