// PTX primitives of the attention kernels (sm_80+): the warp-level bf16 MMA m16n8k16 with fp32
// accumulation, ldmatrix loads from shared memory, bf16 packing, and cp.async (asynchronous
// 16-byte global -> shared copies, used to load the next tile while computing on the current).
//
// Fragment layouts (PTX ISA, "mma.m16n8k16" for .bf16), with g = lane / 4, t = lane % 4:
//   A (16x16, row-major)  a[0] = (row g,   cols 2t, 2t+1)   a[1] = (row g+8, cols 2t, 2t+1)
//                         a[2] = (row g,   cols 2t+8, +9)   a[3] = (row g+8, cols 2t+8, +9)
//   B (16x8,  "col")      b[0] = (rows 2t, 2t+1, col g)     b[1] = (rows 2t+8, 2t+9, col g)
//   C/D (16x8, fp32)      c[0], c[1] = (row g, cols 2t, 2t+1)   c[2], c[3] = (row g+8, same cols)
// Each 32-bit register holds two bf16, the lower column/row index in the low 16 bits.
// So the C fragments of two adjacent n-tiles of S = Q·Kᵀ are, once packed to bf16, exactly the
// A fragment of P for the next MMA (P·V) — the register reuse of FlashAttention-2.
//
// ldmatrix.x4 loads four 8x8 bf16 matrices; lanes 8i..8i+7 give the addresses of the 8 rows
// (16 contiguous bytes each, 16-byte aligned) of matrix i, and register i of every lane receives
// matrix i's elements (row g, cols 2t, 2t+1) — or, with .trans, (rows 2t, 2t+1, col g).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace og::gpu {

// d += a·b  (m16n8k16, bf16 inputs, fp32 accumulators)
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b0, const uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// Two floats -> one register of two bf16 (lo in the low half), round to nearest even.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

// Asynchronous 16-byte copy global -> shared (L2 only, .cg). With valid == false nothing is read
// and the 16 destination bytes are zero-filled (src-size 0); gmem must still be a valid address.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(src_bytes) : "memory");
}
// Close the group of copies issued so far by this thread.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Wait until at most N of this thread's committed groups are still in flight (then
// __syncthreads() to see the other threads' copies).
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace og::gpu
