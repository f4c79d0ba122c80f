// Causal flash attention backward on tensor cores (FlashAttention-2 recomputation), head_dim
// 64 or 128. With P = exp(scale·q·kᵀ − lse) recomputed from the saved logsumexp and
// delta = rowsum(dout ∘ out):  dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ∘ (dP − delta),
// dK = scale·dSᵀ·Q,  dQ = scale·dS·K.
// Two kernels, no atomics (deterministic), each warp owning 16 rows of its output, W warps
// (4 or 8) per block, each a 1-D grid of B·H·ceil(T/(16·W)) blocks in block_coords order (groups
// of (b, h) pairs, heaviest row block first):
//  - flash_dkdv_kernel: a block owns 16·W key rows (K and V in shared memory, dK and dV in
//    registers) and walks the query blocks of 32 rows from the diagonal to the end (Q, dO, lse,
//    delta staged in shared memory in a ring of three stages filled by cp.async: tiles j+1 and
//    j+2 load while j is computed, and one barrier per step suffices since the stage refilled
//    at step j was last read at step j−1). Each warp works on the transposed problem
//    Sᵀ = K·Qᵀ, so Pᵀ and dSᵀ sit in registers as the A operands of dV += Pᵀ·dO and
//    dK += dSᵀ·Q; a query block entirely before a warp's keys is skipped by that warp. Dynamic
//    shared memory for HD = 128: 86 KiB at W = 4, 120 KiB at W = 8 (opt-in above 48 KiB).
//  - flash_dq_kernel: a block owns 16·W query rows (Q and dO fragments and the dQ accumulators
//    in registers) and walks the key blocks of 32 rows up to its last row (K and V in shared
//    memory, the same three-stage ring; 51 KiB for HD = 128); a key block entirely above a
//    warp's rows is skipped by that warp.
// The dQ kernel recomputes S and dP (7 MMAs per key/query pair instead of 5 with atomics):
// the price of determinism. Rows past T are zero-filled and never stored.
#include "core/cuda_utils.h"
#include "model/cuda/attention_internal.h"
#include "model/cuda/attention_tiles.cuh"
#include "model/cuda/kernels.h"
#include "model/cuda/mma_bf16.cuh"

namespace og::gpu {
namespace {

using namespace attn;

constexpr int kStep = 32;   // rows of the streamed operand per step, both kernels
constexpr int kStages = 3;  // ring of streamed tiles: tiles j+1 and j+2 load while j is computed

// K, V (16·W rows each), then the stages of (Q, dO) tiles (32 rows each), then the stages of
// (lse, delta) rows.
template <int HD, int W> constexpr size_t dkdv_smem_bytes() {
  return (2 * 16 * W + kStages * 2 * kStep) * smem_ld<HD>() * sizeof(bf16) + kStages * 2 * kStep * sizeof(float);
}
// The stages of (K, V) tiles of 32 rows.
template <int HD> constexpr size_t dq_smem_bytes() { return kStages * 2 * kStep * smem_ld<HD>() * sizeof(bf16); }

// acc[nt] (16 x kStep, C layout) += A(16 x HD rows of `a_smem`, A via ldmatrix) · Bᵀ where the
// B operand is rows of `b_smem` (kStep rows x HD): i.e. acc = A_rows · B_rowsᵀ.
template <int HD>
__device__ __forceinline__ void rows_times_rows_t(float acc[kStep / 8][4], const bf16* a_smem, const bf16* b_smem) {
  constexpr int LD = smem_ld<HD>();
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int ks = 0; ks < HD / 16; ks += 2) {
    uint32_t a0[4], a1[4];  // A fragments of k-steps ks and ks+1
    ldmatrix_x4(a0, a_smem + (lane & 15) * LD + ks * 16 + (lane >> 4) * 8);
    ldmatrix_x4(a1, a_smem + (lane & 15) * LD + (ks + 1) * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int nt = 0; nt < kStep / 8; ++nt) {
      uint32_t bfr[4];
      ldmatrix_x4(bfr, b_smem + (nt * 8 + (lane & 7)) * LD + ks * 16 + (lane >> 3) * 8);
      mma_16816(acc[nt], a0, bfr[0], bfr[1]);
      mma_16816(acc[nt], a1, bfr[2], bfr[3]);
    }
  }
}

// acc[nt] (16 x kStep) += A(16 x HD, fragments in registers) · rows of `b_smem`ᵀ.
template <int HD>
__device__ __forceinline__ void frags_times_rows_t(float acc[kStep / 8][4], const uint32_t a[HD / 16][4],
                                                   const bf16* b_smem) {
  constexpr int LD = smem_ld<HD>();
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int ks = 0; ks < HD / 16; ks += 2) {
#pragma unroll
    for (int nt = 0; nt < kStep / 8; ++nt) {
      uint32_t bfr[4];
      ldmatrix_x4(bfr, b_smem + (nt * 8 + (lane & 7)) * LD + ks * 16 + (lane >> 3) * 8);
      mma_16816(acc[nt], a[ks], bfr[0], bfr[1]);
      mma_16816(acc[nt], a[ks + 1], bfr[2], bfr[3]);
    }
  }
}

// out[dt] (16 x HD) += P(16 x kStep, fp32 C-layout registers, rounded to bf16) · rows of `b_smem`
// (kStep rows x HD, the k dimension of this product: ldmatrix .trans).
template <int HD>
__device__ __forceinline__ void regs_times_rows(float out[HD / 8][4], const float p[kStep / 8][4], const bf16* b_smem) {
  constexpr int LD = smem_ld<HD>();
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int kk = 0; kk < kStep / 16; ++kk) {
    const uint32_t pa[4] = {pack_bf16x2(p[2 * kk][0], p[2 * kk][1]), pack_bf16x2(p[2 * kk][2], p[2 * kk][3]),
                            pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                            pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt += 2) {
      uint32_t bfr[4];
      ldmatrix_x4_trans(bfr, b_smem + (kk * 16 + (lane & 15)) * LD + (dt + (lane >> 4)) * 8);
      mma_16816(out[dt], pa, bfr[0], bfr[1]);
      mma_16816(out[dt + 1], pa, bfr[2], bfr[3]);
    }
  }
}

template <int HD, int W>
__global__ void __launch_bounds__(32 * W)
    flash_dkdv_kernel(bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ dout,
                      const float* __restrict__ lse, const float* __restrict__ delta, const bf16* __restrict__ q,
                      const bf16* __restrict__ k, const bf16* __restrict__ v, int T, int H, float scale,
                      float scale_log2) {
  constexpr int LD = smem_ld<HD>(), NO = HD / 8, NS = kStep / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* const Vs = Ks + 16 * W * LD;
  bf16* const stage0 = Vs + 16 * W * LD;  // stage s: Q at stage0 + 2s·kStep·LD, dO after it
  float* const stats0 = reinterpret_cast<float*>(stage0 + kStages * 2 * kStep * LD);  // stage s: lse, delta at 2s·kStep

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const BlockCoords bc = block_coords(row_blocks(T, W));
  const int bh_index = bc.bh;
  const int b = bh_index / H, h = bh_index % H;
  const int kb = bc.rank;  // heaviest (early keys: every query sees them) first
  const int stride = H * HD;
  const int64_t bh = ((int64_t)b * T * H + h) * HD;
  const int kv0 = kb * 16 * W;
  const int r0 = kv0 + warp * 16;  // first key row of this warp

  const float* lse_bh = lse + (int64_t)bh_index * T;
  const float* delta_bh = delta + (int64_t)bh_index * T;
  // Query tile `it` (rows kv0 + it·kStep ...) into stage it % kStages: copies in flight, stats
  // stored directly; one commit group per tile, empty past T.
  auto issue_tile = [&](int it) {
    const int q0 = kv0 + it * kStep, s = it % kStages;
    if (q0 < T) {
      bf16* Qd = stage0 + 2 * s * kStep * LD;
      load_tile_async<kStep, HD>(Qd, q + bh, q0, T, stride);
      load_tile_async<kStep, HD>(Qd + kStep * LD, dout + bh, q0, T, stride);
      load_row_stats<kStep>(stats0 + 2 * s * kStep, lse_bh, q0, T);
      load_row_stats<kStep>(stats0 + 2 * s * kStep + kStep, delta_bh, q0, T);
    }
    cp_async_commit();
  };

  // queries before kv0 never see these keys: start at the diagonal (K and V join tile 0's group)
  load_tile_async<16 * W, HD>(Ks, k + bh, kv0, T, stride);
  load_tile_async<16 * W, HD>(Vs, v + bh, kv0, T, stride);
  issue_tile(0);
  issue_tile(1);

  float dk_acc[NO][4], dv_acc[NO][4];
#pragma unroll
  for (int dt = 0; dt < NO; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[dt][e] = dv_acc[dt][e] = 0.0f;

  for (int it = 0, q0 = kv0; q0 < T; ++it, q0 += kStep) {
    const int cur = it % kStages;
    cp_async_wait<1>();  // 2 + it groups committed: all but tile it+1's have landed
    __syncthreads();     // everyone's tile it is visible, and everyone is done with step it−1
    issue_tile(it + 2);  // into the stage step it−1 read
    const bf16* Qs = stage0 + 2 * cur * kStep * LD;
    const bf16* dOs = Qs + kStep * LD;
    const float* lse_s = stats0 + 2 * cur * kStep;
    const float* delta_s = lse_s + kStep;
    if (q0 + kStep - 1 < r0) continue;  // every query of this tile is before this warp's keys

    // Sᵀ = K·Qᵀ (16 keys x 32 queries) -> Pᵀ, masked where query < key or query >= T
    float p[NS][4];
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) p[nt][0] = p[nt][1] = p[nt][2] = p[nt][3] = 0.0f;
    rows_times_rows_t<HD>(p, Ks + warp * 16 * LD, Qs);
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = r0 + g + (e >> 1) * 8;
        const int ql = nt * 8 + 2 * tq + (e & 1);
        const int query = q0 + ql;
        p[nt][e] = (query >= key && query < T) ? exp2f(p[nt][e] * scale_log2 - lse_s[ql] * kLog2e) : 0.0f;
      }
    }
    // dV += Pᵀ·dO
    regs_times_rows<HD>(dv_acc, p, dOs);
    // dPᵀ = V·dOᵀ, then dSᵀ = Pᵀ ∘ (dPᵀ − delta)
    float ds[NS][4];
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) ds[nt][0] = ds[nt][1] = ds[nt][2] = ds[nt][3] = 0.0f;
    rows_times_rows_t<HD>(ds, Vs + warp * 16 * LD, dOs);
#pragma unroll
    for (int nt = 0; nt < NS; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) ds[nt][e] = p[nt][e] * (ds[nt][e] - delta_s[nt * 8 + 2 * tq + (e & 1)]);
    // dK += dSᵀ·Q   (scaled at the end)
    regs_times_rows<HD>(dk_acc, ds, Qs);
  }
  store_c_fragments<HD>(dk + bh, dk_acc, scale, scale, r0, T, stride);
  store_c_fragments<HD>(dv + bh, dv_acc, 1.0f, 1.0f, r0, T, stride);
}

template <int HD, int W>
__global__ void __launch_bounds__(32 * W)
    flash_dq_kernel(bf16* __restrict__ dq, const bf16* __restrict__ dout, const float* __restrict__ lse,
                    const float* __restrict__ delta, const bf16* __restrict__ q, const bf16* __restrict__ k,
                    const bf16* __restrict__ v, int T, int H, float scale, float scale_log2) {
  constexpr int LD = smem_ld<HD>(), KS = HD / 16, NO = HD / 8, NS = kStep / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const stage0 = reinterpret_cast<bf16*>(smem_raw);  // stage s: K at 2s·kStep·LD, V after it

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int nqb = row_blocks(T, W);
  const BlockCoords bc = block_coords(nqb);
  const int bh_index = bc.bh;
  const int b = bh_index / H, h = bh_index % H;
  const int qb = nqb - 1 - bc.rank;  // heaviest query blocks first
  const int stride = H * HD;
  const int64_t bh = ((int64_t)b * T * H + h) * HD;
  const int q_block0 = qb * 16 * W;
  const int r0 = q_block0 + warp * 16;  // first query row of this warp

  const int key_end = min(q_block0 + 16 * W, T);  // keys past the block's last query are masked
  // Key tile `it` (rows it·kStep ...) into stage it % kStages; one commit group per tile, empty
  // past key_end.
  auto issue_tile = [&](int it) {
    const int kv0 = it * kStep;
    if (kv0 < key_end) {
      bf16* Kd = stage0 + 2 * (it % kStages) * kStep * LD;
      load_tile_async<kStep, HD>(Kd, k + bh, kv0, T, stride);
      load_tile_async<kStep, HD>(Kd + kStep * LD, v + bh, kv0, T, stride);
    }
    cp_async_commit();
  };
  issue_tile(0);
  issue_tile(1);

  uint32_t qa[KS][4], doa[KS][4];
  load_a_fragments<HD>(qa, q + bh, r0, T, stride);
  load_a_fragments<HD>(doa, dout + bh, r0, T, stride);
  float lse_r[2], delta_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = r0 + g + r * 8;
    lse_r[r] = row < T ? lse[(int64_t)bh_index * T + row] * kLog2e : 0.0f;
    delta_r[r] = row < T ? delta[(int64_t)bh_index * T + row] : 0.0f;
  }

  float dq_acc[NO][4];
#pragma unroll
  for (int dt = 0; dt < NO; ++dt) dq_acc[dt][0] = dq_acc[dt][1] = dq_acc[dt][2] = dq_acc[dt][3] = 0.0f;

  for (int it = 0, kv0 = 0; kv0 < key_end; ++it, kv0 += kStep) {
    cp_async_wait<1>();  // 2 + it groups committed: all but tile it+1's have landed
    __syncthreads();     // everyone's tile it is visible, and everyone is done with step it−1
    issue_tile(it + 2);  // into the stage step it−1 read
    const bf16* Ks = stage0 + 2 * (it % kStages) * kStep * LD;
    const bf16* Vs = Ks + kStep * LD;
    if (kv0 > r0 + 15) continue;  // every key of this tile is above this warp's rows

    // S = Q·Kᵀ -> P (masked where key > query)
    float p[NS][4];
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) p[nt][0] = p[nt][1] = p[nt][2] = p[nt][3] = 0.0f;
    frags_times_rows_t<HD>(p, qa, Ks);
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int query = r0 + g + (e >> 1) * 8;
        const int key = kv0 + nt * 8 + 2 * tq + (e & 1);
        p[nt][e] = key <= query && key < T ? exp2f(p[nt][e] * scale_log2 - lse_r[e >> 1]) : 0.0f;
      }
    }
    // dP = dO·Vᵀ, dS = P ∘ (dP − delta)
    float ds[NS][4];
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) ds[nt][0] = ds[nt][1] = ds[nt][2] = ds[nt][3] = 0.0f;
    frags_times_rows_t<HD>(ds, doa, Vs);
#pragma unroll
    for (int nt = 0; nt < NS; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) ds[nt][e] = p[nt][e] * (ds[nt][e] - delta_r[e >> 1]);
    // dQ += dS·K
    regs_times_rows<HD>(dq_acc, ds, Ks);
  }
  store_c_fragments<HD>(dq + bh, dq_acc, scale, scale, r0, T, stride);
}

template <int HD, int W>
void launch_dkdv(bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* delta, const bf16* q,
                 const bf16* k, const bf16* v, int B, int T, int H, cudaStream_t stream) {
  const float scale = 1.0f / sqrtf((float)HD), scale_log2 = scale * kLog2e;
  const dim3 grid(flash_grid(B, H, T, W));
  const size_t smem = dkdv_smem_bytes<HD, W>();
  allow_dynamic_smem(flash_dkdv_kernel<HD, W>, smem);
  flash_dkdv_kernel<HD, W><<<grid, 32 * W, smem, stream>>>(dk, dv, dout, lse, delta, q, k, v, T, H, scale, scale_log2);
  CUDA_CHECK_LAUNCH();
}

template <int HD, int W>
void launch_dq(bf16* dq, const bf16* dout, const float* lse, const float* delta, const bf16* q, const bf16* k,
               const bf16* v, int B, int T, int H, cudaStream_t stream) {
  const float scale = 1.0f / sqrtf((float)HD), scale_log2 = scale * kLog2e;
  const dim3 grid(flash_grid(B, H, T, W));
  const size_t smem = dq_smem_bytes<HD>();
  allow_dynamic_smem(flash_dq_kernel<HD, W>, smem);
  flash_dq_kernel<HD, W><<<grid, 32 * W, smem, stream>>>(dq, dout, lse, delta, q, k, v, T, H, scale, scale_log2);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

namespace attn {

void attention_backward_flash(bf16* dq, bf16* dk, bf16* dv, float* delta, const bf16* dout, const bf16* out,
                              const float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                              int hd, int dkdv_warps, int dq_warps, cudaStream_t stream) {
  OG_CHECK((hd == 64 || hd == 128) && (dkdv_warps == 4 || dkdv_warps == 8) && (dq_warps == 4 || dq_warps == 8),
           "attention_backward_flash: hd {} / warps {}, {} unsupported", hd, dkdv_warps, dq_warps);
  launch_delta(delta, dout, out, B, T, H, hd, stream);
  with_constant<64, 128>(hd, [&](auto HD) {
    with_constant<4, 8>(dkdv_warps, [&](auto W) {
      launch_dkdv<HD.value, W.value>(dk, dv, dout, lse, delta, q, k, v, B, T, H, stream);
    });
    with_constant<4, 8>(dq_warps,
                        [&](auto W) { launch_dq<HD.value, W.value>(dq, dout, lse, delta, q, k, v, B, T, H, stream); });
  });
}

}  // namespace attn

void attention_backward(bf16* dq, bf16* dk, bf16* dv, float* delta, const bf16* dout, const bf16* out, const float* lse,
                        const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int hd, cudaStream_t stream) {
  attn::check_attention_sizes("attention_backward", B, T, H, hd);
  if (!attn::tensor_core_eligible(hd, {dq, dk, dv, dout, out, q, k, v}))
    attention_backward_simple(dq, dk, dv, delta, dout, out, lse, q, k, v, B, T, H, hd, stream);
  else
    attn::attention_backward_flash(dq, dk, dv, delta, dout, out, lse, q, k, v, B, T, H, hd, attn::kDkdvWarps,
                                   attn::kDqWarps, stream);
}

}  // namespace og::gpu
