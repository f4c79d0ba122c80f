// Batched Newton–Schulz / Polar Express (see newton_schulz.h).
//
// Storage (column-major, as cuBLAS sees a row-major rows×cols matrix): with m ≤ n the short and
// long sides, a wide matrix X (m×n) is stored as Z = Xᵀ (n×m, ld n), and a tall one, whose wide
// transpose we call X (m×n), is stored as X itself (ld m). Hence
//   wide:  A = ZᵀZ  (T,N)      X' = a·X + B·X  ⇔  Z' = a·Z + Z·B   (B symmetric)
//   tall:  A = XXᵀ  (N,T)      X' = a·X + B·X
// The symmetric path splits A (m×m) into (m/b)² blocks of b×b and computes the blocks (I, J)
// with I ≤ J only: X·Xᵀ as one pointer-array GEMM over count·T blocks (T = nb(nb+1)/2), then a
// mirror kernel; A·A likewise, on B pre-filled with A's upper blocks (β = b in place).
#include <algorithm>
#include <utility>
#include <vector>

#include "optim/cuda/newton_schulz.h"

namespace og::cuda {
namespace {

constexpr float kNsCoeffs[5][3] = {{4.0848f, -6.8946f, 2.9270f},
                                   {3.9505f, -6.3029f, 2.6377f},
                                   {3.7418f, -5.5913f, 2.3037f},
                                   {2.8769f, -3.1427f, 1.2046f},
                                   {2.8366f, -3.0525f, 1.2012f}};
constexpr double kPolarExpressCoeffs[5][3] = {{8.156554524902461, -22.48329292557795, 15.878769915207462},
                                              {4.042929935166739, -2.808917465908714, 0.5000178451051316},
                                              {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
                                              {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
                                              {2.3465413258596377, -1.7097828382687081, 0.42323551169305323}};

// Mirror the upper block triangle (b×b blocks) of each column-major m×m matrix at `a` into its
// strictly lower blocks; with copy_to, also copy the upper block triangle (diagonal blocks
// included) to the same place in copy_to. Requires m % b == 0 and b % 32 == 0.
// grid (m/32, m/32, count), block (32, 8): one 32×32 tile per block, transposed through smem.
__global__ void mirror_upper_blocks_kernel(bf16* __restrict__ a, bf16* __restrict__ copy_to, int64_t m, int b) {
  __shared__ bf16 tile[32][33];
  const int64_t r0 = (int64_t)blockIdx.x * 32, c0 = (int64_t)blockIdx.y * 32;
  const int64_t off = (int64_t)blockIdx.z * m * m;
  bf16* A = a + off;
  const int tx = threadIdx.x, ty = threadIdx.y;
  if (r0 / b > c0 / b) {
    // tile[j][i] = A(c0+i, r0+j), read down columns of the upper tile (coalesced over i)
    for (int j = ty; j < 32; j += 8) tile[j][tx] = A[(c0 + tx) + (r0 + j) * m];
    __syncthreads();
    // A(r0+i, c0+j) = A(c0+j, r0+i) = tile[i][j]
    for (int j = ty; j < 32; j += 8) A[(r0 + tx) + (c0 + j) * m] = tile[tx][j];
  } else if (copy_to != nullptr) {
    bf16* B = copy_to + off;
    for (int j = ty; j < 32; j += 8) B[(r0 + tx) + (c0 + j) * m] = A[(r0 + tx) + (c0 + j) * m];
  }
}

void mirror_upper_blocks(BlasContext& ctx, bf16* a, bf16* copy_to, int64_t m, int b, int count) {
  dim3 grid((unsigned)(m / 32), (unsigned)(m / 32), (unsigned)count), block(32, 8);
  mirror_upper_blocks_kernel<<<grid, block, 0, ctx.stream()>>>(a, copy_to, m, b);
  CUDA_CHECK_LAUNCH();
}

// Q ← Q + a·I for each of the count m×m matrices: only the count·m diagonal elements (one thread
// each, block 256), rounded to bf16 as a full-matrix add would round them.
__global__ void add_diagonal_kernel(bf16* __restrict__ q, int64_t m, int64_t total, float a) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  bf16* d = q + (i / m) * m * m + (i % m) * (m + 1);
  *d = __float2bfloat16_rn(__bfloat162float(*d) + a);
}

void add_diagonal(BlasContext& ctx, bf16* q, int64_t m, int count, float a) {
  const int64_t total = (int64_t)count * m;
  add_diagonal_kernel<<<(unsigned)((total + 255) / 256), 256, 0, ctx.stream()>>>(q, m, total, a);
  CUDA_CHECK_LAUNCH();
}

void ns_coeffs(Ortho o, int it, float& a, float& b, float& c) {
  if (o == Ortho::PolarExpress) {
    a = (float)kPolarExpressCoeffs[it][0], b = (float)kPolarExpressCoeffs[it][1], c = (float)kPolarExpressCoeffs[it][2];
  } else {
    a = kNsCoeffs[it][0], b = kNsCoeffs[it][1], c = kNsCoeffs[it][2];
  }
}

constexpr int kGramRestart = 2;  // X is materialized after this many iterations (and at the end)

}  // namespace

double ns_gram_flops(int64_t rows, int64_t cols) {
  const double m = (double)std::min(rows, cols), n = (double)std::max(rows, cols);
  return 4.0 * 2.0 * m * m * n + 14.0 * 2.0 * m * m * m;
}

float ns_norm_multiplier(Ortho o) { return o == Ortho::PolarExpress ? 1.02f : 1.0f; }

double ns_flops(int64_t rows, int64_t cols) {
  const double m = (double)std::min(rows, cols), n = (double)std::max(rows, cols);
  return 5.0 * (2.0 * m * m * n + 2.0 * m * m * m + 2.0 * m * m * n);
}

void NsBatch::plan(BlasContext& ctx, Ortho ortho, const NsShape& shape, const NsBuffers& buf,
                   const CudaOptimOptions& opt) {
  OG_CHECK(shape.rows > 0 && shape.cols > 0 && shape.count > 0, "NS batch of {} {}x{} matrices", shape.count,
           shape.rows, shape.cols);
  OG_CHECK(opt.symmetric_block >= 32 && opt.symmetric_block % 32 == 0,
           "symmetric_block must be a positive multiple of 32 (got {})", opt.symmetric_block);
  ortho_ = ortho;
  shape_ = shape;
  buf_ = buf;
  wide_ = shape.rows <= shape.cols;
  const int64_t m = shape.m(), n = shape.n(), mn = m * n, mm = m * m;
  const int count = shape.count;

  // Gram variant: full products only (the m×m GEMMs all reuse the plan of A·A).
  gram_ = result_in_input(shape, opt);
  if (gram_) {
    gram_q_.resize((size_t)shape.gram_elems());
    gram_t_.resize((size_t)shape.gram_elems());
  }

  // Where the block-triangle products pay (see CudaOptimOptions::Symmetric): the saved FLOPs of
  // X·Xᵀ are ∝ m²·n·(nb−1)/(2nb), the mirror pass costs ∝ m² bytes; break-even is near
  // n·(nb−1)/nb ≈ 450 on an H100; ask for 1024 to stay clear of block-GEMM inefficiency.
  block_ = opt.symmetric_block;
  const int64_t nb = m / block_;
  const bool blockable = !gram_ && m % block_ == 0 && nb >= 2;
  switch (opt.symmetric) {
    case CudaOptimOptions::Symmetric::Off: sym_xxt_ = sym_aa_ = false; break;
    case CudaOptimOptions::Symmetric::On: sym_xxt_ = sym_aa_ = blockable; break;
    case CudaOptimOptions::Symmetric::Auto:
      sym_xxt_ = blockable && n * (nb - 1) / nb >= 1024;
      sym_aa_ = sym_xxt_ && m * (nb - 1) / nb >= 1024;
      break;
  }

  // X·Xᵀ
  if (sym_xxt_) {
    for (int xi = 0; xi < 2; ++xi) {
      std::vector<const bf16*> pa, pb;
      std::vector<bf16*> pc;
      for (int q = 0; q < count; ++q) {
        const bf16* x = buf.x[xi] + (int64_t)q * mn;
        bf16* a = buf.a + (int64_t)q * mm;
        for (int64_t I = 0; I < nb; ++I)
          for (int64_t J = I; J < nb; ++J) {
            pa.push_back(wide_ ? x + I * block_ * n : x + I * block_);
            pb.push_back(wide_ ? x + J * block_ * n : x + J * block_);
            pc.push_back(a + I * block_ + J * block_ * m);
          }
      }
      GemmDims d;
      d.ta = wide_ ? CUBLAS_OP_T : CUBLAS_OP_N;
      d.tb = wide_ ? CUBLAS_OP_N : CUBLAS_OP_T;
      d.m = d.n = block_;
      d.k = n;
      d.lda = d.ldb = wide_ ? n : m;
      d.ldc = m;
      d.batch = (int)pa.size();
      xxt_blocks_[xi].plan(d, pa, pb, pc);
    }
  } else {
    GemmDims d;
    d.ta = wide_ ? CUBLAS_OP_T : CUBLAS_OP_N;
    d.tb = wide_ ? CUBLAS_OP_N : CUBLAS_OP_T;
    d.m = d.n = m;
    d.k = n;
    d.lda = d.ldb = wide_ ? n : m;
    d.ldc = m;
    d.stride_a = d.stride_b = mn;
    d.stride_c = mm;
    d.batch = count;
    xxt_.plan(ctx, d, opt.autotune_gemm, buf.x[0], buf.x[0], buf.a);
  }

  // B = c·A·A + b·A
  if (sym_aa_) {
    std::vector<const bf16*> pa, pb;
    std::vector<bf16*> pc;
    for (int q = 0; q < count; ++q) {
      const bf16* a = buf.a + (int64_t)q * mm;
      bf16* b = buf.b + (int64_t)q * mm;
      for (int64_t I = 0; I < nb; ++I)
        for (int64_t J = I; J < nb; ++J) {
          pa.push_back(a + I * block_);      // rows I of A (m-long row block)
          pb.push_back(a + J * block_ * m);  // columns J of A
          pc.push_back(b + I * block_ + J * block_ * m);
        }
    }
    GemmDims d;
    d.m = d.n = block_;
    d.k = m;
    d.lda = d.ldb = d.ldc = m;
    d.batch = (int)pa.size();
    aa_blocks_.plan(d, pa, pb, pc);
  } else {
    GemmDims d;
    d.m = d.n = d.k = m;
    d.lda = d.ldb = d.ldc = m;
    d.stride_a = d.stride_b = d.stride_c = mm;
    d.batch = count;
    aa_.plan(ctx, d, opt.autotune_gemm, buf.a, buf.a, buf.b);
  }

  // X' = B·X + a·X
  {
    GemmDims d;
    d.batch = count;
    if (wide_) {  // Z' = Z·B + a·Z, Z n×m
      d.m = n, d.n = m, d.k = m;
      d.lda = n, d.ldb = m, d.ldc = n;
      d.stride_a = mn, d.stride_b = mm, d.stride_c = mn;
      bx_.plan(ctx, d, opt.autotune_gemm, buf.x[0], buf.b, buf.x[1]);
    } else {  // X' = B·X + a·X, X m×n
      d.m = m, d.n = n, d.k = m;
      d.lda = m, d.ldb = m, d.ldc = m;
      d.stride_a = mm, d.stride_b = mn, d.stride_c = mn;
      bx_.plan(ctx, d, opt.autotune_gemm, buf.b, buf.x[0], buf.x[1]);
    }
  }
}

bf16* NsBatch::run(BlasContext& ctx) {
  if (gram_) return run_gram(ctx);
  const int64_t m = shape_.m();
  int cur = 0;
  for (int it = 0; it < 5; ++it) {
    float a, b, c;
    ns_coeffs(ortho_, it, a, b, c);
    bf16* src = buf_.x[cur];
    bf16* dst = buf_.x[cur ^ 1];
    // A = X·Xᵀ
    if (sym_xxt_) {
      xxt_blocks_[cur].run(ctx, 1.0f, 0.0f);
      mirror_upper_blocks(ctx, buf_.a, sym_aa_ ? buf_.b : nullptr, m, block_, shape_.count);
    } else {
      xxt_.run(ctx, 1.0f, src, src, 0.0f, nullptr, buf_.a);
    }
    // B = c·A·A + b·A
    if (sym_aa_) {
      aa_blocks_.run(ctx, c, b);
      mirror_upper_blocks(ctx, buf_.b, nullptr, m, block_, shape_.count);
    } else {
      aa_.run(ctx, c, buf_.a, buf_.a, b, buf_.a, buf_.b);
    }
    // X' = B·X + a·X
    if (wide_)
      bx_.run(ctx, 1.0f, src, buf_.b, a, src, dst);
    else
      bx_.run(ctx, 1.0f, buf_.b, src, a, src, dst);
    cur ^= 1;
  }
  return buf_.x[cur];
}

// Gram variant (see newton_schulz.h). Buffers: A = buf_.a, B = buf_.b, Q and T ping-pong.
bf16* NsBatch::run_gram(BlasContext& ctx) {
  const int64_t m = shape_.m();
  bf16 *A = buf_.a, *B = buf_.b, *Q = gram_q_.data(), *T = gram_t_.data();
  int cur = 0;
  auto gram_of_x = [&] {
    const bf16* x = buf_.x[cur];
    xxt_.run(ctx, 1.0f, x, x, 0.0f, nullptr, A);
  };
  auto apply_q = [&] {  // X ← Q·X into the other buffer
    const bf16* src = buf_.x[cur];
    bf16* dst = buf_.x[cur ^ 1];
    if (wide_)
      bx_.run(ctx, 1.0f, src, Q, 0.0f, nullptr, dst);  // Z' = Z·Q
    else
      bx_.run(ctx, 1.0f, Q, src, 0.0f, nullptr, dst);  // X' = Q·X
    cur ^= 1;
  };
  gram_of_x();
  for (int it = 0; it < 5; ++it) {
    float a, b, c;
    ns_coeffs(ortho_, it, a, b, c);
    const bool first = it == 0 || it == kGramRestart;
    const bool last = it == kGramRestart - 1 || it == 4;
    aa_.run(ctx, c, A, A, b, A, B);  // B = c·A·A + b·A  (P = B + a·I)
    if (first) {
      if (!last) {
        aa_.run(ctx, 1.0f, B, A, a, A, T);  // T = B·A + a·A = P·A
        aa_.run(ctx, 1.0f, B, T, a, T, A);  // A ← B·T + a·T = P·A·P
      }
      // Q = B + a·I in B's own buffer: a·I touches only the diagonal (a full-matrix copy-and-add
      // was a pass over count·m² elements; same bf16 values); B's old buffer becomes Q's.
      add_diagonal(ctx, B, m, shape_.count, a);
      std::swap(B, Q);
    } else {
      aa_.run(ctx, 1.0f, B, Q, a, Q, T);  // Q ← B·Q + a·Q = P·Q
      std::swap(Q, T);
      if (!last) {
        aa_.run(ctx, 1.0f, B, A, a, A, T);  // T = B·A + a·A = P·A
        aa_.run(ctx, 1.0f, B, T, a, T, A);  // A ← B·T + a·T = P·A·P
      }
    }
    if (last) {
      apply_q();
      if (it != 4) gram_of_x();
    }
  }
  OG_CHECK(buf_.x[cur] == result(), "internal: Gram NS result expected in the first buffer");
  return buf_.x[cur];
}

}  // namespace og::cuda
