// Multi-tensor launches: one kernel launch covers a list of tensors of any sizes by giving each
// thread block one chunk (tensor index, first element) from a table built once on the host.
// Chunks never straddle tensors, so a block's chunk lies in one tensor and its per-tensor data
// (pointers, shape) is uniform over the block.
#pragma once
#include <cstdint>
#include <vector>

#include "core/cuda_utils.h"
#include "core/error.h"

namespace og::cuda {

constexpr int kChunkThreads = 256;      // threads per block of a multi-tensor kernel
constexpr int64_t kChunkElems = 16384;  // elements per chunk (16 float4 per thread)

struct ChunkRef {
  int32_t tensor;  // index into the launch's descriptor array
  int32_t pad;
  int64_t start;  // first element of the chunk inside the tensor
};

// The chunks of `numel[t]` elements for every tensor t, in tensor order; first_chunk[t] is the
// index of tensor t's first chunk (first_chunk has one more entry: the total count).
struct ChunkTable {
  DeviceBuffer<ChunkRef> chunks;
  std::vector<int64_t> first_chunk;
  int64_t count() const { return first_chunk.empty() ? 0 : first_chunk.back(); }

  void build(const std::vector<int64_t>& numel) {
    std::vector<ChunkRef> host;
    first_chunk.assign(1, 0);
    for (size_t t = 0; t < numel.size(); ++t) {
      for (int64_t s = 0; s < numel[t]; s += kChunkElems) host.push_back({(int32_t)t, 0, s});
      first_chunk.push_back((int64_t)host.size());
    }
    OG_CHECK(host.size() < (size_t)INT32_MAX, "too many chunks for one launch: {}", host.size());
    chunks.resize(host.size());
    if (!host.empty())
      CUDA_CHECK(cudaMemcpy(chunks.data(), host.data(), host.size() * sizeof(ChunkRef), cudaMemcpyHostToDevice));
  }
};

// Upload a host vector into a device buffer (construction time only; synchronous).
template <typename T> void upload(DeviceBuffer<T>& dst, const std::vector<T>& src) {
  dst.resize(src.size());
  if (!src.empty()) CUDA_CHECK(cudaMemcpy(dst.data(), src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice));
}

}  // namespace og::cuda
