// Emulated stand-in for src/model/cuda/mma_bf16.cuh (found first on the include path of the
// emulated build): the same functions, implemented from the PTX ISA's documented semantics
// (fragment layouts of mma.m16n8k16 bf16, ldmatrix .x4 with and without .trans, cp.async groups).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace og::gpu {

inline float bf16_half(uint32_t u, int hi) {
  const uint16_t h = hi ? (uint16_t)(u >> 16) : (uint16_t)(u & 0xffff);
  __nv_bfloat16 b;
  std::memcpy(&b, &h, 2);
  return __bfloat162float(b);
}

// d += a·b with A (16x16) and B (16x8) gathered from the warp's registers (g = lane/4, t = lane%4):
// A(r, c) is in lane (r%8)·4 + (c%8)/2, register (r>=8) + 2·(c>=8), half c%2;
// B(k, n) is in lane n·4 + (k%8)/2, register b0 if k < 8 else b1, half k%2;
// D(g, 2t+j) = d[j], D(g+8, 2t+j) = d[2+j]. Products are exact; sums in double.
inline void mma_16816(float d[4], const uint32_t a[4], const uint32_t b0, const uint32_t b1) {
  emu::WarpExchange& x = emu::warp_exchange();
  const int L = emu::lane();
  for (int i = 0; i < 4; ++i) x.u[L][i] = a[i];
  x.u[L][4] = b0;
  x.u[L][5] = b1;
  emu::warp_barrier();
  const int g = L / 4, t = L % 4;
  auto A = [&](int r, int c) { return bf16_half(x.u[(r % 8) * 4 + (c % 8) / 2][(r >= 8) + 2 * (c >= 8)], c % 2); };
  auto B = [&](int k, int n) { return bf16_half(x.u[n * 4 + (k % 8) / 2][k >= 8 ? 5 : 4], k % 2); };
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int r = g + (e >> 1) * 8, c = 2 * t + (e & 1);
    double acc = d[e];
    for (int k = 0; k < 16; ++k) acc += (double)A(r, k) * (double)B(k, c);
    out[e] = (float)acc;
  }
  emu::warp_barrier();
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

// Lanes 8i..8i+7 address the rows of matrix i; lane L receives in r[i] the elements
// (row L/4, cols 2(L%4), +1) of matrix i, or with trans (rows 2(L%4), +1, col L/4).
inline void ldmatrix_impl(uint32_t r[4], const void* row, bool trans) {
  emu::check_dynamic_smem(row, 16);
  if ((reinterpret_cast<uintptr_t>(row) & 15) != 0) {
    std::fprintf(stderr, "ldmatrix: row address not 16-byte aligned\n");
    std::abort();
  }
  emu::WarpExchange& x = emu::warp_exchange();
  const int L = emu::lane();
  x.p[L] = row;
  emu::warp_barrier();
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const auto* p = static_cast<const uint16_t*>(x.p[8 * i + L / 4]);
      lo = p[2 * (L % 4)];
      hi = p[2 * (L % 4) + 1];
    } else {
      lo = static_cast<const uint16_t*>(x.p[8 * i + 2 * (L % 4)])[L / 4];
      hi = static_cast<const uint16_t*>(x.p[8 * i + 2 * (L % 4) + 1])[L / 4];
    }
    r[i] = (uint32_t)lo | ((uint32_t)hi << 16);
  }
  emu::warp_barrier();
}
inline void ldmatrix_x4(uint32_t r[4], const void* smem_row) { ldmatrix_impl(r, smem_row, false); }
inline void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) { ldmatrix_impl(r, smem_row, true); }

inline uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}

inline void cp_async_16(void* smem, const void* gmem, bool valid) {
  emu::check_dynamic_smem(smem, 16);
  if (((reinterpret_cast<uintptr_t>(smem) | reinterpret_cast<uintptr_t>(gmem)) & 15) != 0) {
    std::fprintf(stderr, "cp.async: address not 16-byte aligned\n");
    std::abort();
  }
  emu::cp_async(smem, gmem, valid);
}
inline void cp_async_commit() { emu::cp_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::cp_wait(N);
}

}  // namespace og::gpu
