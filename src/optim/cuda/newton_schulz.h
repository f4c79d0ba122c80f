// Batched Newton–Schulz / Polar Express orthonormalization (OPTIMIZERS.md) of `count` same-shape
// row-major bf16 matrices, bf16 storage with fp32 accumulation, all GEMMs batched over the count.
//
// Per iteration (a, b, c):   A = X·Xᵀ;   B = b·A + c·A·A;   X' = a·X + B·X
// with X the wide orientation. Tall inputs are never transposed: the row-major storage of a tall
// matrix is the column-major storage of its wide transpose, so only the cuBLAS op flags differ.
// A·A and B·X+a·X use cuBLASLt's D = α·AB + β·C with C ≠ D (no copies). Where it pays, X·Xᵀ and
// A·A compute only the upper triangle of b×b blocks (pointer-array GEMM) and a mirror kernel
// fills the lower one.
//
// Gram variant (CudaOptimOptions::gram_ns, for n ≥ 2m): every X_k is P_k·…·P_1·X with
// P_k = a·I + B_k, B_k = b·A_k + c·A_k², and all of these are polynomials in A_0 = X·Xᵀ (they
// commute), so A_{k+1} = P_k·A_k·P_k and Q_k = P_k·Q_{k−1} live in m×m space:
//   B = c·A·A + b·A;  Q ← B·Q + a·Q (first: Q = B + a·I);  T = B·A + a·A;  A ← B·T + a·T
// X is materialized (X ← Q·X, A = X·Xᵀ) after iteration 2 and at the end: per matrix
// 4·2m²n + 14·2m³ FLOPs instead of 5·(4m²n + 2m³).
#pragma once
#include <cstdint>

#include "optim/cuda/blas.h"
#include "optim/cuda/cuda_optimizer.h"
#include "optim/hparams.h"

namespace og::cuda {

struct NsShape {
  int64_t rows = 0, cols = 0;  // of each matrix, row-major
  int count = 0;               // matrices in the batch
  int64_t m() const { return rows < cols ? rows : cols; }
  int64_t n() const { return rows < cols ? cols : rows; }
  int64_t x_elems() const { return (int64_t)count * rows * cols; }
  int64_t gram_elems() const { return (int64_t)count * m() * m(); }
};

// Buffers of one batch (each 256-byte aligned): x[0] holds the normalized input, x[1] receives
// the result; a and b hold the count m×m Gram products.
struct NsBuffers {
  bf16* x[2] = {nullptr, nullptr};
  bf16* a = nullptr;
  bf16* b = nullptr;
};

// X ← X / (mult·‖X‖_F + eps) before the iteration: mult is 1 (Newton–Schulz) or 1.02 (Polar Express).
float ns_norm_multiplier(Ortho o);

// Floating-point operations of one orthonormalization of one rows×cols matrix as computed
// (full products; the symmetric path does fewer).
double ns_flops(int64_t rows, int64_t cols);

// Floating-point operations of the Gram variant for one rows×cols matrix.
double ns_gram_flops(int64_t rows, int64_t cols);

class NsBatch {
 public:
  void plan(BlasContext& ctx, Ortho ortho, const NsShape& shape, const NsBuffers& buf, const CudaOptimOptions& opt);
  // Run the five iterations on buf.x[0]; returns the buffer holding the result (result()).
  bf16* run(BlasContext& ctx);
  // Where run() leaves the result: buf.x[1], or buf.x[0] for the Gram variant (known at plan time).
  bf16* result() const { return gram_ ? buf_.x[0] : buf_.x[1]; }
  // Whether a batch of this shape under these options will leave its result in buf.x[0] (the
  // Gram variant) rather than buf.x[1]: lets a caller place the result buffer before planning.
  static bool result_in_input(const NsShape& shape, const CudaOptimOptions& opt) {
    return opt.gram_ns && shape.n() >= 2 * shape.m();
  }
  const NsShape& shape() const { return shape_; }
  bool symmetric_xxt() const { return sym_xxt_; }
  bool symmetric_aa() const { return sym_aa_; }
  bool gram() const { return gram_; }

 private:
  bf16* run_gram(BlasContext& ctx);
  bool gram_ = false;
  DeviceBuffer<bf16> gram_q_, gram_t_;  // Gram variant: Q and a temporary, count·m² each

  Ortho ortho_ = Ortho::NewtonSchulz;
  NsShape shape_;
  NsBuffers buf_;
  bool wide_ = true, sym_xxt_ = false, sym_aa_ = false;
  int block_ = 256;
  LtGemm xxt_, aa_, bx_;
  PtrArrayGemm xxt_blocks_[2], aa_blocks_;  // xxt_blocks_[i] reads buf_.x[i]
};

}  // namespace og::cuda
