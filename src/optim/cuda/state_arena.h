// Optimizer state on the GPU: one state family (e.g. every parameter's momentum) in one
// zero-initialized device allocation, fp32 or bf16, each tensor starting on a 256-byte boundary
// so that vectorized kernels can use 16-byte loads.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda_utils.h"
#include "optim/optimizer.h"

namespace og::cuda {

class StateArena {
 public:
  // counts[i]: elements of tensor i.
  void init(const std::vector<int64_t>& counts, StateDtype dtype) {
    dtype_ = dtype;
    counts_ = counts;
    offsets_.clear();
    const int64_t align = 256 / elem_bytes();
    int64_t off = 0;
    for (int64_t c : counts) {
      offsets_.push_back(off);
      off += (c + align - 1) / align * align;
    }
    total_ = off;
    buf_.resize((size_t)off * elem_bytes());
    if (off) CUDA_CHECK(cudaMemset(buf_.data(), 0, buf_.bytes()));
  }
  StateDtype dtype() const { return dtype_; }
  size_t elem_bytes() const { return dtype_ == StateDtype::F32 ? 4 : 2; }
  void* ptr(size_t i) { return buf_.data() + offsets_[i] * (int64_t)elem_bytes(); }
  int64_t count(size_t i) const { return counts_[i]; }
  void* base() { return buf_.data(); }
  int64_t total() const { return total_; }  // elements including alignment padding (zeros)

  // The StateTensor of tensor i, named "<param name>/<what>" (the CPU reference's names).
  StateTensor view(size_t i, const std::string& param, const char* what) {
    return {param + "/" + what, ptr(i), (size_t)counts_[i], dtype_, Device::CUDA};
  }

 private:
  StateDtype dtype_ = StateDtype::F32;
  std::vector<int64_t> counts_, offsets_;
  int64_t total_ = 0;
  DeviceBuffer<uint8_t> buf_;
};

}  // namespace og::cuda
