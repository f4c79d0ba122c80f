// Causal flash attention forward on tensor cores (FlashAttention-2 style), head_dim 64 or 128:
// out = softmax(q·kᵀ/sqrt(hd) + causal mask)·v without materializing the T×T scores, plus the
// natural-log logsumexp of each row (lse[B, H, T]) for the backward pass.
//
// Launch shape: a 1-D grid of B·H·ceil(T/(16·W)) blocks in block_coords order (groups of (b, h)
// pairs, heaviest query block first), 32·W threads (W warps, 4 or 8). A block owns 16·W query
// rows, each warp 16 of them (its Q fragments stay in registers); it walks the key/value blocks
// of 64 rows up to its last row, staging K and V in shared memory ([64][HD+8] bf16 each) in a
// ring of three stages: the cp.async copies of blocks j+1 and j+2 fly while block j is computed,
// and one barrier per block suffices (the stage refilled at step j was last read at step j−1,
// which every warp has finished once it passes step j's barrier). 102 KiB of dynamic shared
// memory for HD = 128 (opt-in above 48 KiB). More warps per block means each K/V tile read
// serves more query rows. Per key block a warp computes S = Q·Kᵀ (mma m16n8k16, fp32), applies,
// where the block crosses its rows' diagonal, the causal mask, updates its running row max and
// sum (online softmax, the scale into the log2 domain folded into the exponent), rescales its O
// accumulators and adds P·V with P taken straight from the S registers; a key block entirely
// above a warp's rows is skipped by that warp. Rows past T are zero-filled on load and never
// stored, so any T works.
#include <initializer_list>

#include "core/cuda_utils.h"
#include "model/cuda/attention_internal.h"
#include "model/cuda/attention_tiles.cuh"
#include "model/cuda/kernels.h"
#include "model/cuda/mma_bf16.cuh"

namespace og::gpu {
namespace {

using namespace attn;

constexpr int kBc = 64;  // key rows per step

constexpr int kStages = 3;  // ring of (K tile, V tile) stages

template <int HD> constexpr size_t forward_smem_bytes() { return kStages * 2 * kBc * smem_ld<HD>() * sizeof(bf16); }

template <int HD, int W>
__global__ void __launch_bounds__(32 * W)
    flash_forward_kernel(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q,
                         const bf16* __restrict__ k, const bf16* __restrict__ v, int T, int H, float scale_log2) {
  constexpr int LD = smem_ld<HD>(), KS = HD / 16, NO = HD / 8, NS = kBc / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const smem = reinterpret_cast<bf16*>(smem_raw);  // stage s: K at (2s)·kBc·LD, V at (2s+1)·kBc·LD

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int nqb = row_blocks(T, W);
  const BlockCoords bc = block_coords(nqb);
  const int bh_index = bc.bh;  // b·H + h
  const int b = bh_index / H, h = bh_index % H;
  const int qb = nqb - 1 - bc.rank;  // heaviest query blocks first
  const int stride = H * HD;
  const int64_t bh = ((int64_t)b * T * H + h) * HD;             // element offset of (b, 0, h, 0)
  const int r0 = qb * 16 * W + warp * 16;                       // first query row of this warp
  const int last_j = (min(qb * 16 * W + 16 * W, T) - 1) / kBc;  // key block of the block's last row

  auto issue_block = [&](int jj) {  // block jj into stage jj % kStages (one commit group, empty past last_j)
    if (jj <= last_j) {
      bf16* st = smem + 2 * (jj % kStages) * kBc * LD;
      load_tile_async<kBc, HD>(st, k + bh, jj * kBc, T, stride);
      load_tile_async<kBc, HD>(st + kBc * LD, v + bh, jj * kBc, T, stride);
    }
    cp_async_commit();
  };

  // start the copies of key blocks 0 and 1, then fetch Q while they fly
  issue_block(0);
  issue_block(1);
  uint32_t qa[KS][4];
  load_a_fragments<HD>(qa, q + bh, r0, T, stride);

  float o[NO][4];
#pragma unroll
  for (int dt = 0; dt < NO; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY};  // running max, log2 domain, rows g and g+8
  float l[2] = {0.0f, 0.0f};            // running sum of this thread's columns (reduced at the end)

  for (int j = 0; j <= last_j; ++j) {
    const bf16* Ks = smem + 2 * (j % kStages) * kBc * LD;
    const bf16* Vs = Ks + kBc * LD;
    // 2 + j groups committed so far (one per block, in order): at most one (block j+1) may still
    // be in flight once this thread's copies of block j have landed
    cp_async_wait<1>();
    __syncthreads();                  // everyone's copies of block j are visible, and everyone is done with step j−1
    issue_block(j + 2);               // into the stage step j−1 read
    if (j * kBc > r0 + 15) continue;  // every key of this block is above this warp's rows

    // S = Q·Kᵀ for this warp's 16 rows x 64 keys
    float s[NS][4];
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < KS; ks += 2) {
#pragma unroll
      for (int nt = 0; nt < NS; ++nt) {
        uint32_t kb[4];  // B fragments of k-steps ks and ks+1 for keys nt·8..nt·8+7
        ldmatrix_x4(kb, Ks + (nt * 8 + (lane & 7)) * LD + ks * 16 + (lane >> 3) * 8);
        mma_16816(s[nt], qa[ks], kb[0], kb[1]);
        mma_16816(s[nt], qa[ks + 1], kb[2], kb[3]);
      }
    }

    // causal mask where the block crosses the diagonal (key > query -> -inf); the scale into the
    // log2 domain is applied inside the exponent (one FFMA per score)
    const bool diagonal = j * kBc + kBc - 1 > r0;
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (diagonal) {
          const int row = r0 + g + (e >> 1) * 8;
          const int col = j * kBc + nt * 8 + 2 * tq + (e & 1);
          if (col > row) s[nt][e] = -INFINITY;
        }
      }
    }

    // online softmax, per row r (g and g+8); the 4 threads of a quad share a row
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NS; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[r], mx * scale_log2);       // scale_log2 > 0 commutes with max
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a fully masked row stays all-zero
      const float alpha = exp2f(m[r] - m_use);
      float rowsum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < NS; ++nt) {
        s[nt][2 * r] = exp2f(fmaf(s[nt][2 * r], scale_log2, -m_use));
        s[nt][2 * r + 1] = exp2f(fmaf(s[nt][2 * r + 1], scale_log2, -m_use));
        rowsum += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      l[r] = l[r] * alpha + rowsum;
      m[r] = m_new;
#pragma unroll
      for (int dt = 0; dt < NO; ++dt) {
        o[dt][2 * r] *= alpha;
        o[dt][2 * r + 1] *= alpha;
      }
    }

    // O += P·V, P from the S registers (keys kk·16..kk·16+15 form k-step kk)
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      const uint32_t pa[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dt = 0; dt < NO; dt += 2) {
        uint32_t vb[4];  // B fragments of n-tiles dt and dt+1 (V rows are the k dimension: .trans)
        ldmatrix_x4_trans(vb, Vs + (kk * 16 + (lane & 15)) * LD + (dt + (lane >> 4)) * 8);
        mma_16816(o[dt], pa, vb[0], vb[1]);
        mma_16816(o[dt + 1], pa, vb[2], vb[3]);
      }
    }
  }

  // normalize, store O and the logsumexp (natural log of the scaled scores)
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float lt = l[r];
    lt += __shfl_xor_sync(0xffffffffu, lt, 1);
    lt += __shfl_xor_sync(0xffffffffu, lt, 2);
    inv[r] = 1.0f / lt;
    const int row = r0 + g + r * 8;
    if (tq == 0 && row < T) lse[(int64_t)bh_index * T + row] = (m[r] + log2f(lt)) * kLn2;
  }
  store_c_fragments<HD>(out + bh, o, inv[0], inv[1], r0, T, stride);
}

template <int HD, int W>
void launch_flash_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                          cudaStream_t stream) {
  const size_t smem = forward_smem_bytes<HD>();
  allow_dynamic_smem(flash_forward_kernel<HD, W>, smem);
  const dim3 grid(flash_grid(B, H, T, W));
  const float scale_log2 = kLog2e / sqrtf((float)HD);
  flash_forward_kernel<HD, W><<<grid, 32 * W, smem, stream>>>(out, lse, q, k, v, T, H, scale_log2);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

namespace attn {

void attention_forward_flash(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H,
                             int hd, int warps, cudaStream_t stream) {
  OG_CHECK((hd == 64 || hd == 128) && (warps == 4 || warps == 8),
           "attention_forward_flash: hd {} / warps {} unsupported", hd, warps);
  with_constant<64, 128>(hd, [&](auto HD) {
    with_constant<4, 8>(warps,
                        [&](auto W) { launch_flash_forward<HD.value, W.value>(out, lse, q, k, v, B, T, H, stream); });
  });
}

bool tensor_core_eligible(int hd, std::initializer_list<const void*> ptrs) {
  return (hd == 64 || hd == 128) && all_aligned_to(ptrs, 16);
}

void check_attention_sizes(const char* what, int B, int T, int H, int hd) {
  OG_CHECK(B > 0 && T > 0 && H > 0 && hd > 0 && hd % 2 == 0, "{}: bad sizes B={} T={} H={} hd={} (hd must be even)",
           what, B, T, H, hd);
  OG_CHECK((int64_t)B * H * ((T + 63) / 64) < (int64_t(1) << 31), "{}: B·H·ceil(T/64) = {} blocks: too many", what,
           (int64_t)B * H * ((T + 63) / 64));
}

}  // namespace attn

bool attention_uses_tensor_cores(int hd, const void* q, const void* k, const void* v, const void* out) {
  return attn::tensor_core_eligible(hd, {q, k, v, out});
}

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int hd,
                       cudaStream_t stream) {
  attn::check_attention_sizes("attention_forward", B, T, H, hd);
  if (!attn::tensor_core_eligible(hd, {q, k, v, out}))
    attention_forward_simple(out, lse, q, k, v, B, T, H, hd, stream);
  else
    attn::attention_forward_flash(out, lse, q, k, v, B, T, H, hd, attn::kForwardWarps, stream);
}

}  // namespace og::gpu
