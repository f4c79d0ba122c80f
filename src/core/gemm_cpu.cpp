// CPU gemm: C[M, N] = alpha * op(A) * op(B) + beta * C, row-major (see gemm_cpu.h).
//
// A packed, cache-blocked, register-blocked GEMM in the style of BLIS / GotoBLAS:
//   for each chunk of C (cut along M or N; chunks are handed to threads dynamically):
//     for jc in N step NC:            B block [KC x NC] packed into NR-wide panels (stays in L2/L3)
//       for pc in K step KC:
//         for ic in M step MC:        A block [MC x KC] packed into MR-tall panels (stays in L2)
//           for jr, ir:               MR x NR micro-kernel, the tile of C lives in registers
// (or, when all of K fits, pc innermost: see gemm_chunk).
// Packing absorbs the transposes (every orientation runs the same micro-kernel on contiguous
// data) and zero-pads edge panels, so the kernel has no edge cases; only the write-back of a
// partial tile does. The micro-kernel uses GCC vector extensions sized to the target (see kVecBytes):
// with -march=native on an AVX-512 machine each vector is one zmm register and each update one
// FMA (12 x 32 floats per tile). C must not overlap A or B.
#include "core/gemm_cpu.h"

#include "core/error.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace og::cpu {
namespace {

// The vector width and register tile follow the instruction set compiled for, so the tile of C
// fits the register file: AVX-512 has 32 registers of 64 bytes (a 12 x 2-vector tile is 24
// accumulators + 2 B vectors + 1 broadcast); AVX/AVX2 and SSE/NEON baselines have 16 (6 x 2).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kMR = 12;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
constexpr int kMR = 6;
#else
constexpr int kVecBytes = 16;
constexpr int kMR = 6;
#endif
// Vectors of kVecBytes; the unaligned flavour is for rows of C.
template <typename T> struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  typedef T utype __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));
};
constexpr int kNV = 2;  // vectors per tile row
template <typename T> constexpr int kLanes = kVecBytes / sizeof(T);
// (parenthesized: clang-format 14 reads `kNV * kLanes<T>` here as a declaration `kNV* kLanes<T>`)
template <typename T> constexpr int kNR = (kNV * kLanes<T>);

// Cache blocks. KC x NR of B (one micro-panel) should stay in L1, MC x KC of A in L2, and
// KC x NC of B in L2/L3. Sizes in elements; MC is a multiple of MR, NC of NR.
template <typename T> constexpr int64_t kKC = 256 * 4 / (int64_t)sizeof(T);
constexpr int64_t kMC = 16 * kMR;
constexpr int64_t kNC = 3072;

// Growable 64-byte-aligned scratch, one per thread and kind (no allocation in steady state).
struct Scratch {
  void* ptr = nullptr;
  size_t bytes = 0;
  ~Scratch() { std::free(ptr); }
  template <typename T> T* get(size_t count) {
    const size_t need = (count * sizeof(T) + 63) / 64 * 64;
    if (need > bytes) {
      std::free(ptr);
      ptr = std::aligned_alloc(64, need);
      if (!ptr) throw std::bad_alloc();
      bytes = need;
    }
    return static_cast<T*>(ptr);
  }
};

// Pack op(A)[i0 : i0+mc, k0 : k0+kc] into panels of MR rows: Ap[p][k][ii] = op(A)(i0+p*MR+ii, k0+k),
// rows past mc zero-filled.
template <typename T>
void pack_a(T* Ap, bool trans_a, const T* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc) {
  for (int64_t p = 0; p < mc; p += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, mc - p);
    T* dst = Ap + p * kc;
    if (trans_a) {  // op(A)(i, k) = A[k, i]: MR contiguous values per k
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = A + (k0 + k) * lda + i0 + p;
        T* d = dst + k * kMR;
        int64_t ii = 0;
        for (; ii < rows; ++ii) d[ii] = src[ii];
        for (; ii < kMR; ++ii) d[ii] = T(0);
      }
    } else if (rows == kMR) {  // op(A)(i, k) = A[i, k]: MR row streams, contiguous writes
      const T* src[kMR];
      for (int ii = 0; ii < kMR; ++ii) src[ii] = A + (i0 + p + ii) * lda + k0;
      for (int64_t k = 0; k < kc; ++k) {
        T* d = dst + k * kMR;
        for (int ii = 0; ii < kMR; ++ii) d[ii] = src[ii][k];
      }
    } else {  // partial panel: read rows, write with stride MR
      for (int64_t ii = 0; ii < rows; ++ii) {
        const T* src = A + (i0 + p + ii) * lda + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * kMR + ii] = src[k];
      }
      for (int64_t ii = rows; ii < kMR; ++ii)
        for (int64_t k = 0; k < kc; ++k) dst[k * kMR + ii] = T(0);
    }
  }
}

// Pack op(B)[k0 : k0+kc, j0 : j0+nc] into panels of NR columns: Bp[p][k][jj] = op(B)(k0+k, j0+p*NR+jj),
// columns past nc zero-filled.
template <typename T>
void pack_b(T* Bp, bool trans_b, const T* B, int64_t ldb, int64_t k0, int64_t kc, int64_t j0, int64_t nc) {
  constexpr int NR = kNR<T>;
  for (int64_t p = 0; p < nc; p += NR) {
    const int64_t cols = std::min<int64_t>(NR, nc - p);
    T* dst = Bp + p * kc;
    if (!trans_b) {  // op(B)(k, j) = B[k, j]: NR contiguous values per k
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = B + (k0 + k) * ldb + j0 + p;
        T* d = dst + k * NR;
        if (cols == NR) {
          std::memcpy(d, src, NR * sizeof(T));
        } else {
          int64_t jj = 0;
          for (; jj < cols; ++jj) d[jj] = src[jj];
          for (; jj < NR; ++jj) d[jj] = T(0);
        }
      }
    } else {  // op(B)(k, j) = B[j, k]: read rows of B, write with stride NR
      for (int64_t jj = 0; jj < cols; ++jj) {
        const T* src = B + (j0 + p + jj) * ldb + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + jj] = src[k];
      }
      for (int64_t jj = cols; jj < NR; ++jj)
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + jj] = T(0);
    }
  }
}

// The micro-kernel: acc[MR x NR] = sum_k Ap[k][:] (outer) Bp[k][:], then
// C[0:m, 0:n] = alpha * acc + beta * C (C not read when beta == 0).
template <typename T>
void micro_kernel(int64_t kc, const T* __restrict Ap, const T* __restrict Bp, T* __restrict C, int64_t ldc, int64_t m,
                  int64_t n, T alpha, T beta) {
  using V = typename Vec<T>::type;
  using VU = typename Vec<T>::utype;
  constexpr int L = kLanes<T>;
  constexpr int NR = kNR<T>;
  V acc[kMR][kNV];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) acc[i][v] = V{};
  for (int64_t k = 0; k < kc; ++k) {
    V b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = *reinterpret_cast<const V*>(Bp + k * NR + v * L);
    const T* a = Ap + k * kMR;
    for (int i = 0; i < kMR; ++i) {
      const T ai = a[i];
      for (int v = 0; v < kNV; ++v) acc[i][v] += ai * b[v];
    }
  }
  if (m == kMR && n == NR) {
    for (int i = 0; i < kMR; ++i) {
      T* c = C + i * ldc;
      for (int v = 0; v < kNV; ++v) {
        VU* cv = reinterpret_cast<VU*>(c + v * L);
        if (beta == T(0)) {
          *cv = alpha * acc[i][v];
        } else {
          *cv = alpha * acc[i][v] + beta * (*cv);
        }
      }
    }
    return;
  }
  alignas(64) T tile[kMR][NR];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < kNV; ++v) *reinterpret_cast<V*>(&tile[i][v * L]) = acc[i][v];
  for (int64_t i = 0; i < m; ++i) {
    T* c = C + i * ldc;
    if (beta == T(0)) {
      for (int64_t j = 0; j < n; ++j) c[j] = alpha * tile[i][j];
    } else {
      for (int64_t j = 0; j < n; ++j) c[j] = alpha * tile[i][j] + beta * c[j];
    }
  }
}

// nc rounded up to whole NR panels: the packed size of nc columns.
template <typename T> int64_t padded_cols(int64_t nc) { return (nc + kNR<T> - 1) / kNR<T> * kNR<T>; }

// Pack op(B)[0 : K, jc : jc+nc] block by block along K: block pc (of KC) starts at
// Bp + pc * padded_cols(nc).
template <typename T>
void pack_b_all_k(T* Bp, bool trans_b, const T* B, int64_t ldb, int64_t K, int64_t jc, int64_t nc) {
  for (int64_t pc = 0; pc < K; pc += kKC<T>)
    pack_b(Bp + pc * padded_cols<T>(nc), trans_b, B, ldb, pc, std::min(kKC<T>, K - pc), jc, nc);
}

// The tiles of one packed A block against one packed B block, into C (already offset to (ic, jc)).
template <typename T>
void macro_kernel(int64_t mc, int64_t nc, int64_t kc, const T* Ap, const T* Bp, T* C, int64_t ldc, T alpha, T beta) {
  constexpr int NR = kNR<T>;
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const int64_t n = std::min<int64_t>(NR, nc - jr);
    for (int64_t ir = 0; ir < mc; ir += kMR) {
      const int64_t m = std::min<int64_t>(kMR, mc - ir);
      micro_kernel(kc, Ap + ir * kc, Bp + jr * kc, C + ir * ldc + jr, ldc, m, n, alpha, beta);
    }
  }
}

// Largest op(B) block (elements) packed whole along K; 2 MiB of floats, half of a core's L2+L3 share.
constexpr int64_t kWholeKBudget = 512 * 1024;

// One work chunk: C[m0 : m1, n0 : n1], all of K. Two loop orders:
//  - whole-K (when op(B)[K, NC block] fits kWholeKBudget, e.g. K = 1024, N = 128 for the lm_head's
//    dw): B is packed once per NC block and the K loop runs innermost, so a block of C stays in
//    cache across all of K instead of being re-read from memory once per KC block;
//  - classic (K large, e.g. the lm_head's dinp with K = 50304): the K loop outside the M loop,
//    B packed one KC x NC block at a time and reused by every block of M.
template <typename T>
void gemm_chunk(bool trans_a, bool trans_b, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, T alpha,
                const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  constexpr int64_t KC = kKC<T>;
  thread_local Scratch a_scratch, b_scratch;
  T* Ap = a_scratch.get<T>((size_t)kMC * KC);
  const int64_t nc_max = padded_cols<T>(std::min(kNC, n1 - n0));
  const bool whole_k = K <= KC || K * nc_max <= kWholeKBudget;
  T* Bp = b_scratch.get<T>(whole_k ? (size_t)(K * nc_max) : (size_t)(KC * nc_max));
  for (int64_t jc = n0; jc < n1; jc += kNC) {
    const int64_t nc = std::min(kNC, n1 - jc);
    if (whole_k) {
      pack_b_all_k(Bp, trans_b, B, ldb, K, jc, nc);
      for (int64_t ic = m0; ic < m1; ic += kMC) {
        const int64_t mc = std::min(kMC, m1 - ic);
        for (int64_t pc = 0; pc < K; pc += KC) {
          const int64_t kc = std::min(KC, K - pc);
          pack_a(Ap, trans_a, A, lda, ic, mc, pc, kc);
          macro_kernel(mc, nc, kc, Ap, Bp + pc * padded_cols<T>(nc), C + ic * ldc + jc, ldc, alpha,
                       pc == 0 ? beta : T(1));
        }
      }
    } else {
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        pack_b(Bp, trans_b, B, ldb, pc, kc, jc, nc);
        for (int64_t ic = m0; ic < m1; ic += kMC) {
          const int64_t mc = std::min(kMC, m1 - ic);
          pack_a(Ap, trans_a, A, lda, ic, mc, pc, kc);
          macro_kernel(mc, nc, kc, Ap, Bp, C + ic * ldc + jc, ldc, alpha, pc == 0 ? beta : T(1));
        }
      }
    }
  }
}

// C = beta * C (the K == 0 case); beta == 0 writes zeros without reading C.
template <typename T> void scale_c(int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  OG_CHECK(ldc >= N && (K <= 0 || (lda >= (trans_a ? M : K) && ldb >= (trans_b ? K : N))),
           "gemm: leading dimension too small (M={} N={} K={} trans_a={} trans_b={} lda={} ldb={} ldc={})", M, N, K,
           trans_a, trans_b, lda, ldb, ldc);
  if (K <= 0) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  // C is cut along its longer side into chunks of whole register tiles, a few per thread, handed
  // out dynamically: the machine may be shared, and a thread that loses its core should not hold
  // the whole product back. Each chunk packs its own B (a small cost next to its flops). Small
  // products run on one thread (a parallel region costs more than they do), as do calls from
  // inside a parallel region.
  const double flops = 2.0 * (double)M * (double)N * (double)K;
  int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (flops < 4.0e6) threads = 1;
  const bool split_m = (double)M / kMR >= (double)N / kNR<T>;
  const int64_t total = split_m ? M : N;
  const int64_t unit = split_m ? kMR : kNR<T>;
  const int64_t units = (total + unit - 1) / unit;
  const int64_t chunks = std::min<int64_t>(units, threads == 1 ? 1 : 4 * (int64_t)threads);
  if (chunks <= 1) {
    gemm_chunk(trans_a, trans_b, 0, M, 0, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = std::min(total, units * c / chunks * unit);
    const int64_t hi = std::min(total, units * (c + 1) / chunks * unit);
    if (lo >= hi) continue;
    if (split_m) {
      gemm_chunk(trans_a, trans_b, lo, hi, 0, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    } else {
      gemm_chunk(trans_a, trans_b, 0, M, lo, hi, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

}  // namespace og::cpu
