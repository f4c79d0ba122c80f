// Token embedding lookup and its deterministic backward (scatter-add into fp32 dwte).
//
// Backward without atomics: tokens are first mapped to sort keys (out-of-range -> sentinel V),
// then a stable radix sort of (key, position) pairs groups the positions of each token in
// increasing position order; one block per vocabulary row finds its segment by binary search
// and sums dout over the segment in that order. The result is bitwise reproducible for given
// inputs, independent of scheduling.
#include <cub/device/device_radix_sort.cuh>

#include "core/cuda_utils.h"
#include "model/cuda/dtype.cuh"
#include "model/cuda/kernels.h"

namespace og::gpu {
namespace {

// One block per row n (grid = N, block = 256); threads stride over the C columns.
template <typename Tout, typename Ttab>
__global__ void embedding_forward_kernel(Tout* out, const int32_t* tokens, const Ttab* wte, int64_t C, int64_t V) {
  const int64_t n = blockIdx.x;
  const int32_t tok = tokens[n];
  Tout* o = out + n * C;
  if (tok < 0 || tok >= V) {  // invalid input: make it visible as NaN, never read out of bounds
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = store_as<Tout>(__int_as_float(0x7fc00000));
    return;
  }
  const Ttab* w = wte + (int64_t)tok * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = store_as<Tout>(load_f32(w[c]));
}

// keys[n] = tokens[n] if in [0, V) else V (sentinel, sorted last and never summed); pos[n] = n.
// Grid-stride over N, block 256.
__global__ void embedding_sort_keys_kernel(uint32_t* keys, int32_t* pos, const int32_t* tokens, int64_t N, int64_t V) {
  for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x) {
    const int32_t t = tokens[n];
    keys[n] = (t >= 0 && t < V) ? (uint32_t)t : (uint32_t)V;
    pos[n] = (int32_t)n;
  }
}

// First index i in sorted[0, n) with sorted[i] >= key.
__device__ int64_t lower_bound_u32(const uint32_t* sorted, int64_t n, uint32_t key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (sorted[mid] < key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// One block per vocabulary row v (grid = V, block = 256): dwte[v, c] += sum over the positions
// of token v (in increasing order) of dout[pos, c]. Rows of tokens absent from the batch exit.
template <typename Tgrad>
__global__ void embedding_backward_kernel(float* dwte, const Tgrad* dout, const uint32_t* sorted_keys,
                                          const int32_t* sorted_pos, int64_t N, int64_t C) {
  __shared__ int64_t seg[2];
  const uint32_t v = blockIdx.x;
  if (threadIdx.x == 0) {
    seg[0] = lower_bound_u32(sorted_keys, N, v);
    seg[1] = lower_bound_u32(sorted_keys, N, v + 1);
  }
  __syncthreads();
  const int64_t begin = seg[0], end = seg[1];
  if (begin == end) return;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.0f;
    for (int64_t i = begin; i < end; ++i) acc += load_f32(dout[(int64_t)sorted_pos[i] * C + c]);
    dwte[(int64_t)v * C + c] += acc;
  }
}

constexpr size_t align256(size_t b) { return (b + 255) / 256 * 256; }

int key_bits(int64_t V) {  // bits needed for keys in [0, V] (V is the sentinel)
  int bits = 1;
  while (bits < 32 && (int64_t(1) << bits) <= V) ++bits;
  return bits;
}

// Temporary storage of the radix sort (it depends on the number of items and of key bits).
size_t sort_temp_bytes(int64_t N, int64_t V) {
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const uint32_t*)nullptr, (uint32_t*)nullptr,
                                             (const int32_t*)nullptr, (int32_t*)nullptr, (int)N, 0, key_bits(V)));
  return bytes;
}

}  // namespace

template <typename Tout, typename Ttab>
void embedding_forward(Tout* out, const int32_t* tokens, const Ttab* wte, int64_t N, int64_t C, int64_t V,
                       cudaStream_t stream) {
  OG_CHECK(N >= 0 && C > 0 && V > 0 && N < (int64_t(1) << 31), "embedding_forward: bad sizes N={} C={} V={}", N, C, V);
  if (N == 0) return;
  embedding_forward_kernel<<<(unsigned)N, 256, 0, stream>>>(out, tokens, wte, C, V);
  CUDA_CHECK_LAUNCH();
}

size_t embedding_backward_workspace_bytes(int64_t N, int64_t V) {
  OG_CHECK(N > 0 && N < (int64_t(1) << 31) && V > 0 && V < (int64_t(1) << 31),
           "embedding_backward: bad sizes N={} V={}", N, V);
  // keys in/out, positions in/out, then the radix sort's temporary storage
  return 4 * align256(4 * (size_t)N) + align256(sort_temp_bytes(N, V));
}

template <typename Tgrad>
void embedding_backward(float* dwte, const Tgrad* dout, const int32_t* tokens, int64_t N, int64_t C, int64_t V,
                        void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (N == 0) return;
  const size_t need = embedding_backward_workspace_bytes(N, V);
  OG_CHECK(workspace != nullptr && workspace_bytes >= need,
           "embedding_backward: workspace of {} bytes given, {} needed", workspace_bytes, need);
  OG_CHECK(C > 0, "embedding_backward: C={}", C);
  char* ws = static_cast<char*>(workspace);
  const size_t arr = align256(4 * (size_t)N);
  auto* keys_in = reinterpret_cast<uint32_t*>(ws);
  auto* keys_out = reinterpret_cast<uint32_t*>(ws + arr);
  auto* pos_in = reinterpret_cast<int32_t*>(ws + 2 * arr);
  auto* pos_out = reinterpret_cast<int32_t*>(ws + 3 * arr);
  void* sort_tmp = ws + 4 * arr;
  size_t sort_bytes = workspace_bytes - 4 * arr;

  const int blocks = (int)std::min<int64_t>((N + 255) / 256, 4096);
  embedding_sort_keys_kernel<<<blocks, 256, 0, stream>>>(keys_in, pos_in, tokens, N, V);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, keys_in, keys_out, pos_in, pos_out, (int)N, 0,
                                             key_bits(V), stream));
  embedding_backward_kernel<<<(unsigned)V, 256, 0, stream>>>(dwte, dout, keys_out, pos_out, N, C);
  CUDA_CHECK_LAUNCH();
}

template void embedding_forward<float, float>(float*, const int32_t*, const float*, int64_t, int64_t, int64_t, cudaStream_t);
template void embedding_forward<bf16, float>(bf16*, const int32_t*, const float*, int64_t, int64_t, int64_t, cudaStream_t);
template void embedding_forward<float, bf16>(float*, const int32_t*, const bf16*, int64_t, int64_t, int64_t, cudaStream_t);
template void embedding_forward<bf16, bf16>(bf16*, const int32_t*, const bf16*, int64_t, int64_t, int64_t, cudaStream_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t, void*, size_t,
                                        cudaStream_t);
template void embedding_backward<bf16>(float*, const bf16*, const int32_t*, int64_t, int64_t, int64_t, void*, size_t,
                                       cudaStream_t);

}  // namespace og::gpu
