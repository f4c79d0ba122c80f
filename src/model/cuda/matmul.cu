// cuBLASLt matmuls of the GPT (see matmul.h for the shapes and the row-/column-major mapping).
#include "model/cuda/matmul.h"

#include <cstdint>

namespace og::gpu {
namespace {

int pointer_alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int align = 256;
  while (align > 1 && (a % align) != 0) align >>= 1;
  return align;
}

}  // namespace

Matmul::Matmul(size_t workspace_bytes) : workspace_(workspace_bytes) { CUBLAS_CHECK(cublasLtCreate(&handle_)); }

Matmul::~Matmul() {
  // Destructors must not throw: release quietly.
  for (auto& [problem, plan] : plans_) {
    if (plan.a) cublasLtMatrixLayoutDestroy(plan.a);
    if (plan.b) cublasLtMatrixLayoutDestroy(plan.b);
    if (plan.d) cublasLtMatrixLayoutDestroy(plan.d);
    if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
  }
  if (handle_) cublasLtDestroy(handle_);
}

const Matmul::Plan& Matmul::plan_for(const Problem& p) {
  auto it = plans_.find(p);
  if (it != plans_.end()) return it->second;
  Plan plan;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  // Layouts describe the matrices as stored (before op): A is k×m if transposed, else m×k.
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_16BF, p.trans_a ? p.k : p.m, p.trans_a ? p.m : p.k, p.lda));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_16BF, p.trans_b ? p.n : p.k, p.trans_b ? p.k : p.n, p.ldb));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.d, p.d_type, p.m, p.n, p.ldd));

  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = workspace_.bytes();
  const uint32_t al_a = p.align_a, al_b = p.align_b, al_d = p.align_d;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
  CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
  CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d)));
  CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.a, plan.b, plan.d, plan.d, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(plan.a);
    cublasLtMatrixLayoutDestroy(plan.b);
    cublasLtMatrixLayoutDestroy(plan.d);
    cublasLtMatmulDescDestroy(plan.desc);
    fail("cuBLASLt found no algorithm for the matmul m={} n={} k={} trans_a={} trans_b={} (alignments {}/{}/{}): {}",
         p.m, p.n, p.k, p.trans_a, p.trans_b, p.align_a, p.align_b, p.align_d, cublasGetStatusString(st));
  }
  plan.algo = result.algo;
  return plans_.emplace(p, plan).first->second;
}

void Matmul::run(const Problem& p, const void* A, const void* B, void* D, bool accumulate, cudaStream_t stream) {
  OG_CHECK(p.m > 0 && p.n > 0 && p.k > 0, "matmul: empty problem m={} n={} k={}", p.m, p.n, p.k);
  const Plan& plan = plan_for(p);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, A, plan.a, B, plan.b, &beta, D, plan.d, D, plan.d, &plan.algo,
                              workspace_.data(), workspace_.bytes(), stream));
}

// out[N, OC] = inp[N, C]·wᵀ. Column-major: out is (OC × N, ld OC) = wᵀ-op(A) · inp-as-(C × N).
void Matmul::forward(__nv_bfloat16* out, const __nv_bfloat16* inp, const __nv_bfloat16* w, int64_t N, int64_t C,
                     int64_t OC, cudaStream_t stream) {
  const Problem p{true,
                  false,
                  OC,
                  N,
                  C,
                  C,
                  C,
                  OC,
                  CUDA_R_16BF,
                  pointer_alignment(w),
                  pointer_alignment(inp),
                  pointer_alignment(out)};
  run(p, w, inp, out, false, stream);
}

// dinp[N, C] = dout[N, OC]·w. Column-major: dinp is (C × N) = w-as-(C × OC) · dout-as-(OC × N).
void Matmul::backward_input(__nv_bfloat16* dinp, const __nv_bfloat16* dout, const __nv_bfloat16* w, int64_t N,
                            int64_t C, int64_t OC, bool accumulate, cudaStream_t stream) {
  const Problem p{false,
                  false,
                  C,
                  N,
                  OC,
                  C,
                  OC,
                  C,
                  CUDA_R_16BF,
                  pointer_alignment(w),
                  pointer_alignment(dout),
                  pointer_alignment(dinp)};
  run(p, w, dout, dinp, accumulate, stream);
}

// dw[OC, C] = dout[N, OC]ᵀ·inp. Column-major: dw is (C × OC) = inp-as-(C × N) · op_T(dout-as-(OC × N)).
void Matmul::backward_weight(float* dw, const __nv_bfloat16* dout, const __nv_bfloat16* inp, int64_t N, int64_t C,
                             int64_t OC, bool accumulate, cudaStream_t stream) {
  const Problem p{false,
                  true,
                  C,
                  OC,
                  N,
                  C,
                  OC,
                  C,
                  CUDA_R_32F,
                  pointer_alignment(inp),
                  pointer_alignment(dout),
                  pointer_alignment(dw)};
  run(p, inp, dout, dw, accumulate, stream);
}

}  // namespace og::gpu
