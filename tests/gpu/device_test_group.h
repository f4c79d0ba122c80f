// A TestGroup (cpu/optim_test_group.h) on the GPU: device copies of its weights and gradients and
// ParamSlots pointing at them, for the CUDA optimizer tests.
#pragma once
#include <vector>

#include "core/cuda_utils.h"
#include "cpu/optim_test_group.h"

namespace og::test {

struct DeviceTestGroup {
  std::vector<DeviceBuffer<float>> w, g;
  std::vector<ParamSlot> slots;

  explicit DeviceTestGroup(const TestGroup& h) {
    for (size_t i = 0; i < h.slots.size(); ++i) {
      w.emplace_back(h.w[i].size());
      g.emplace_back(h.g[i].size());
      CUDA_CHECK(cudaMemcpy(w.back().data(), h.w[i].data(), w.back().bytes(), cudaMemcpyHostToDevice));
      ParamSlot s = h.slots[i];
      s.w = w.back().data();
      s.g = g.back().data();
      slots.push_back(s);
    }
    upload_grads(h);
  }
  // The host group's current gradients into the device copies.
  void upload_grads(const TestGroup& h) {
    for (size_t i = 0; i < g.size(); ++i)
      CUDA_CHECK(cudaMemcpy(g[i].data(), h.g[i].data(), g[i].bytes(), cudaMemcpyHostToDevice));
  }
  // The device weights, per parameter.
  std::vector<std::vector<float>> weights() const {
    std::vector<std::vector<float>> out;
    for (const auto& b : w) {
      out.emplace_back(b.size());
      CUDA_CHECK(cudaMemcpy(out.back().data(), b.data(), b.bytes(), cudaMemcpyDeviceToHost));
    }
    return out;
  }
};

}  // namespace og::test
