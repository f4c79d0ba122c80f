// Token embedding lookup and its deterministic backward (scatter-add into fp32 dwte).
//
// Backward without atomics: tokens are first mapped to sort keys (out-of-range -> sentinel V),
// then a stable radix sort of (key, position) pairs groups the positions of each token in
// increasing position order; a pass over the sorted keys records where each token's segment
// begins and ends, and one block per vocabulary row sums dout over its segment in that order.
// The result is bitwise reproducible for given inputs, independent of scheduling.
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

// seg_begin[k], seg_end[k] = the range of sorted positions holding key k (both left 0 for keys
// that do not occur: the caller zeroes them). Each entry is written by exactly one thread.
// Grid-stride over N, block 256.
__global__ void embedding_segments_kernel(int32_t* seg_begin, int32_t* seg_end, const uint32_t* sorted_keys,
                                          int64_t N) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N; i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t k = sorted_keys[i];
    if (i == 0 || sorted_keys[i - 1] != k) seg_begin[k] = (int32_t)i;
    if (i == N - 1 || sorted_keys[i + 1] != k) seg_end[k] = (int32_t)(i + 1);
  }
}

// One block per vocabulary row v (grid = V, block = 256): dwte[v, c] += sum over the positions
// of token v (in increasing order) of dout[pos, c]. Rows of tokens absent from the batch exit.
template <typename Tgrad>
__global__ void embedding_backward_kernel(float* __restrict__ dwte, const Tgrad* __restrict__ dout,
                                          const int32_t* __restrict__ seg_begin, const int32_t* __restrict__ seg_end,
                                          const int32_t* __restrict__ sorted_pos, int64_t C) {
  const int64_t v = blockIdx.x;
  const int32_t begin = seg_begin[v], end = seg_end[v];
  if (begin == end) return;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.0f;
    for (int32_t i = begin; i < end; ++i) acc += load_f32(dout[(int64_t)sorted_pos[i] * C + c]);
    dwte[v * C + c] += acc;
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
  // keys in/out, positions in/out, segment begin/end per key (V + 1 keys with the sentinel),
  // then the radix sort's temporary storage
  return 4 * align256(4 * (size_t)N) + 2 * align256(4 * (size_t)(V + 1)) + align256(sort_temp_bytes(N, V));
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
  const size_t seg = align256(4 * (size_t)(V + 1));
  auto* seg_begin = reinterpret_cast<int32_t*>(ws + 4 * arr);
  auto* seg_end = reinterpret_cast<int32_t*>(ws + 4 * arr + seg);
  void* sort_tmp = ws + 4 * arr + 2 * seg;
  size_t sort_bytes = workspace_bytes - 4 * arr - 2 * seg;

  const int blocks = (int)std::min<int64_t>((N + 255) / 256, 4096);
  embedding_sort_keys_kernel<<<blocks, 256, 0, stream>>>(keys_in, pos_in, tokens, N, V);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, keys_in, keys_out, pos_in, pos_out, (int)N, 0,
                                             key_bits(V), stream));
  CUDA_CHECK(cudaMemsetAsync(seg_begin, 0, 2 * seg, stream));  // both arrays (contiguous)
  embedding_segments_kernel<<<blocks, 256, 0, stream>>>(seg_begin, seg_end, keys_out, N);
  CUDA_CHECK_LAUNCH();
  embedding_backward_kernel<<<(unsigned)V, 256, 0, stream>>>(dwte, dout, seg_begin, seg_end, pos_out, C);
  CUDA_CHECK_LAUNCH();
}

template void embedding_forward<float, float>(float*, const int32_t*, const float*, int64_t, int64_t, int64_t,
                                              cudaStream_t);
template void embedding_forward<bf16, float>(bf16*, const int32_t*, const float*, int64_t, int64_t, int64_t,
                                             cudaStream_t);
template void embedding_forward<float, bf16>(float*, const int32_t*, const bf16*, int64_t, int64_t, int64_t,
                                             cudaStream_t);
template void embedding_forward<bf16, bf16>(bf16*, const int32_t*, const bf16*, int64_t, int64_t, int64_t,
                                            cudaStream_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t, void*, size_t,
                                        cudaStream_t);
template void embedding_backward<bf16>(float*, const bf16*, const int32_t*, int64_t, int64_t, int64_t, void*, size_t,
                                       cudaStream_t);

}  // namespace og::gpu
