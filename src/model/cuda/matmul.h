// The GPT's matmuls through cuBLASLt: bf16 inputs, fp32 accumulation (CUBLAS_COMPUTE_32F).
// Row-major shapes as in the CPU reference: inp [N, C], weight w [OC, C] = (fan_out, fan_in),
// out [N, OC]:
//   forward          out  = inp · wᵀ                         (bf16 out)
//   backward_input   dinp (=|+=) dout · w                    (bf16 out)
//   backward_weight  dw   (=|+=) doutᵀ · inp                 (fp32 out: the fp32 gradient buffer)
// "accumulate" adds into the existing output (beta = 1) instead of overwriting it (beta = 0).
// One object owns the cuBLASLt handle, a workspace and a cache of plans (descriptors and the
// heuristic's algorithm per shape/alignment), all created once; a call is then one
// cublasLtMatmul. Not thread-safe; use one object per device and thread. cuBLASLt has a RELU
// epilogue but no ReLU², so the activation is a separate elementwise kernel (kernels.h).
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

#include "core/cuda_utils.h"

namespace og::gpu {

class Matmul {
 public:
  // 32 MiB is what cuBLAS recommends for Hopper.
  explicit Matmul(size_t workspace_bytes = size_t(32) << 20);
  ~Matmul();
  Matmul(const Matmul&) = delete;
  Matmul& operator=(const Matmul&) = delete;

  void forward(__nv_bfloat16* out, const __nv_bfloat16* inp, const __nv_bfloat16* w, int64_t N, int64_t C, int64_t OC,
               cudaStream_t stream);
  void backward_input(__nv_bfloat16* dinp, const __nv_bfloat16* dout, const __nv_bfloat16* w, int64_t N, int64_t C,
                      int64_t OC, bool accumulate, cudaStream_t stream);
  void backward_weight(float* dw, const __nv_bfloat16* dout, const __nv_bfloat16* inp, int64_t N, int64_t C, int64_t OC,
                       bool accumulate, cudaStream_t stream);

  size_t num_plans() const { return plans_.size(); }

 private:
  // Column-major problem D[m, n] = op(A)[m, k] · op(B)[k, n] (+ beta·D), as cuBLASLt sees it.
  struct Problem {
    bool trans_a, trans_b;
    int64_t m, n, k, lda, ldb, ldd;
    cudaDataType_t d_type;
    int align_a, align_b, align_d;  // byte alignment of the pointers (<= 256), part of the plan
    auto key() const { return std::tie(trans_a, trans_b, m, n, k, lda, ldb, ldd, d_type, align_a, align_b, align_d); }
    bool operator<(const Problem& o) const { return key() < o.key(); }
  };
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& plan_for(const Problem& p);
  void run(const Problem& p, const void* A, const void* B, void* D, bool accumulate, cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer<char> workspace_;
  std::map<Problem, Plan> plans_;
};

}  // namespace og::gpu
