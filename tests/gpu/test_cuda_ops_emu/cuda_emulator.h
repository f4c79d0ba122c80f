// A host emulation of the CUDA execution model, to run the CUDA op tests on a machine without a
// GPU and check the kernels' logic (indexing, masking, fragment layouts, barriers):
//  - every CUDA thread of a block is a cooperative fiber (ucontext); blocks run one after the
//    other; __syncthreads() and warp collectives (__shfl_xor_sync, ldmatrix, mma) are barriers
//    that yield to the other fibers;
//  - `__shared__` variables become function statics (one block at a time), dynamic shared
//    memory is a per-block buffer poisoned with 0xFF (NaN) before each block;
//  - cp.async copies are deferred until the issuing thread waits for their group, so a read
//    without the right wait + barrier sees poison;
//  - device memory is host memory (cudaMalloc = aligned_alloc), cub's radix sort is a host
//    stable sort, and cuBLASLt is not emulated (the matmul tests are not built here).
// It is force-included (-include) before every translation unit of the emulated build;
// rewrite_launches.py turns `kernel<<<grid, block, smem, stream>>>(args)` into emu::launch calls.
// What it cannot check: the hardware's own semantics (it trusts the PTX-documented layouts
// encoded in include/model/cuda/mma_bf16.cuh), data races beyond barrier placement, speed.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

namespace emu {
extern uint3 g_threadIdx, g_blockIdx;
extern dim3 g_blockDim, g_gridDim;
extern unsigned char* g_dyn_smem;

// Run `body` as a kernel: every block of `grid`, every thread of `block`, with `smem` bytes of
// dynamic shared memory.
void launch(dim3 grid, dim3 block, size_t smem, std::function<void()> body);
void syncthreads();
void warp_barrier();  // all (live) lanes of the calling thread's warp
int lane();
int warp();

// Per-warp exchange slots for warp collectives.
struct WarpExchange {
  float f[32];
  uint32_t u[32][8];
  const void* p[32];
};
WarpExchange& warp_exchange();
float shfl_xor(float v, int lane_mask);

// Abort unless [p, p + bytes) lies inside the current block's dynamic shared memory.
void check_dynamic_smem(const void* p, size_t bytes);

// Deferred 16-byte cp.async copies of the calling thread.
void cp_async(void* dst, const void* src, bool valid);
void cp_commit();
void cp_wait(int max_pending_groups);

cudaError_t device_malloc(void** p, size_t n);
cudaError_t device_free(void* p);
}  // namespace emu

// ---- CUDA language and runtime, mapped onto the emulator --------------------------------------
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ static
#define threadIdx (::emu::g_threadIdx)
#define blockIdx (::emu::g_blockIdx)
#define blockDim (::emu::g_blockDim)
#define gridDim (::emu::g_gridDim)
#define __syncthreads() ::emu::syncthreads()
#define cudaFuncSetAttribute(...) cudaSuccess
#define cudaGetLastError() cudaSuccess
#define cudaMalloc(pp, n) (::emu::device_malloc((void**)(pp), (n)))
#define cudaFree(p) (::emu::device_free(p))
#define cudaMemcpy(d, s, n, k) (std::memcpy((d), (s), (n)), cudaSuccess)
#define cudaMemset(d, v, n) (std::memset((d), (v), (n)), cudaSuccess)
#define cudaMemsetAsync(d, v, n, s) (std::memset((d), (v), (n)), cudaSuccess)
#define cudaDeviceSynchronize() cudaSuccess
#define cudaMemGetInfo(a, b) cudaSuccess

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) { return emu::shfl_xor(v, lane_mask); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// cub's stable radix sort of (key, value) pairs on key bits [begin_bit, end_bit), on the host.
namespace cub {
struct DeviceRadixSort {
  template <class K, class V>
  static cudaError_t SortPairs(void* tmp, size_t& bytes, const K* kin, K* kout, const V* vin, V* vout, int n,
                               int begin_bit = 0, int end_bit = sizeof(K) * 8, cudaStream_t = 0) {
    if (!tmp) {
      bytes = 64;
      return cudaSuccess;
    }
    const unsigned long long hi = end_bit >= 64 ? ~0ull : ((1ull << end_bit) - 1);
    const unsigned long long mask = hi & ~((1ull << begin_bit) - 1);
    std::vector<int> idx(n);
    for (int i = 0; i < n; ++i) idx[i] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) {
      return ((unsigned long long)kin[a] & mask) < ((unsigned long long)kin[b] & mask);
    });
    for (int i = 0; i < n; ++i) {
      kout[i] = kin[idx[i]];
      vout[i] = vin[idx[i]];
    }
    return cudaSuccess;
  }
};
}  // namespace cub
