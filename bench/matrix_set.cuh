// The benchmarks' hidden-matrix sets: the matrices of a GPT (per layer q, k, v, o (d×d), fc
// (4d×d), proj (d×4d)) with fp32 master weights and random gradients in one contiguous buffer
// each, as the trainer lays them out (256-byte aligned views, as ParamLayout).
#pragma once
#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "core/cuda_utils.h"
#include "core/rng.h"
#include "optim/optimizer.h"

namespace og::bench {

// x[i] = scale · (uniform in [-1, 1)) from a counter hash. grid-stride, block 256.
__global__ void fill_uniform_kernel(float* x, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] = scale * (float)(2.0 * counter_uniform(seed, (uint64_t)i) - 1.0);
}

inline void fill_uniform(float* x, int64_t n, uint64_t seed, float scale) {
  fill_uniform_kernel<<<4096, 256>>>(x, n, seed, scale);
  CUDA_CHECK_LAUNCH();
}

// The hidden matrices of a GPT: per layer q, k, v, o (d×d), fc (4d×d), proj (d×4d).
struct MatrixSet {
  std::string name;
  std::vector<ParamSlot> slots;
  DeviceBuffer<float> w, g;
  int64_t elems = 0;

  MatrixSet(std::string n, int layers, int64_t d) : name(std::move(n)) {
    std::vector<std::pair<int64_t, int64_t>> shapes;
    for (int l = 0; l < layers; ++l) {
      for (int i = 0; i < 4; ++i) shapes.push_back({d, d});
      shapes.push_back({4 * d, d});
      shapes.push_back({d, 4 * d});
    }
    std::vector<size_t> off;
    size_t total = 0;
    for (auto [r, c] : shapes) {
      off.push_back(total);
      total += ((size_t)(r * c) + 63) / 64 * 64;  // 256-byte aligned views, as ParamLayout
      elems += r * c;
    }
    w.resize(total);
    g.resize(total);
    fill_uniform(w.data(), (int64_t)total, 1, 0.02f);
    fill_uniform(g.data(), (int64_t)total, 2, 1e-3f);
    const char* names[6] = {"q", "k", "v", "o", "fc", "proj"};
    for (size_t i = 0; i < shapes.size(); ++i) {
      ParamSlot s;
      s.name = fmt::format("h.{}.{}", i / 6, names[i % 6]);
      s.rows = shapes[i].first;
      s.cols = shapes[i].second;
      s.w = w.data() + off[i];
      s.g = g.data() + off[i];
      slots.push_back(s);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
  }
};

// The median of v.
inline double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace og::bench
