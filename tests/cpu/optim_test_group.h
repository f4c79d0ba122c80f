// A group of random parameters (weights, gradients and their ParamSlots) for optimizer tests.
#pragma once
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "optim/optimizer.h"

namespace og::test {

struct TestGroup {
  std::vector<std::vector<float>> w, g;
  std::vector<ParamSlot> slots;

  TestGroup(const std::vector<std::pair<int64_t, int64_t>>& shapes, uint64_t seed, ParamRole role = ParamRole::Matrix) {
    Rng rng(seed);
    for (size_t i = 0; i < shapes.size(); ++i) {
      const auto [r, c] = shapes[i];
      w.emplace_back(r * c);
      g.emplace_back(r * c);
      for (float& x : w.back()) x = (float)(0.1 * rng.normal());
    }
    for (size_t i = 0; i < shapes.size(); ++i) {
      ParamSlot s;
      s.name = "m" + std::to_string(i);
      s.role = role;
      s.rows = shapes[i].first;
      s.cols = shapes[i].second;
      s.w = w[i].data();
      s.g = g[i].data();
      slots.push_back(s);
    }
    new_grads(seed * 7919 + 1);
  }
  TestGroup(const TestGroup&) = delete;
  TestGroup& operator=(const TestGroup&) = delete;

  // Fresh standard-normal gradients.
  void new_grads(uint64_t seed) {
    Rng rng(seed);
    for (size_t i = 0; i < g.size(); ++i)
      for (float& x : g[i]) x = (float)rng.normal();
  }
  // Copy weights and gradients from another group of the same shapes.
  void copy_from(const TestGroup& o) {
    w = o.w;
    g = o.g;
    for (size_t i = 0; i < slots.size(); ++i) {
      slots[i].w = w[i].data();
      slots[i].g = g[i].data();
    }
  }
};

// ‖a − b‖ / ‖b‖ in double.
inline double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0.0, n = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    n += (double)b[i] * b[i];
  }
  return std::sqrt(d / (n > 0 ? n : 1.0));
}

}  // namespace og::test
