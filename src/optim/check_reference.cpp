// check-reference (see check_reference.h).
#include "optim/check_reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include <fmt/format.h>

#include "core/error.h"
#include "optim/matrix_ops.h"
#ifdef ORTHOGPT_CUDA
#include "core/cuda_utils.h"
#endif

namespace og {
namespace {

double relative_error(const double* ours, const double* ref, size_t n) {
  double d2 = 0.0, r2 = 0.0;
  for (size_t i = 0; i < n; ++i) {
    d2 += (ours[i] - ref[i]) * (ours[i] - ref[i]);
    r2 += ref[i] * ref[i];
  }
  return r2 > 0.0 ? std::sqrt(d2 / r2) : std::sqrt(d2);
}

// Host copies of a state tensor, wherever it lives and whatever its storage dtype.
std::vector<double> state_to_host(const StateTensor& s) {
  std::vector<double> out(s.count);
  const size_t bytes = s.count * (s.dtype == StateDtype::BF16 ? 2 : 4);
  std::vector<unsigned char> raw(bytes);
  if (s.device == Device::CPU) {
    std::memcpy(raw.data(), s.data, bytes);
  } else {
#ifdef ORTHOGPT_CUDA
    CUDA_CHECK(cudaMemcpy(raw.data(), s.data, bytes, cudaMemcpyDeviceToHost));
#else
    fail("state tensor '{}' is on a CUDA device but orthogpt was built without CUDA", s.name);
#endif
  }
  for (size_t i = 0; i < s.count; ++i) {
    if (s.dtype == StateDtype::BF16) {
      uint16_t h;
      std::memcpy(&h, raw.data() + 2 * i, 2);
      const uint32_t u = (uint32_t)h << 16;
      float f;
      std::memcpy(&f, &u, 4);
      out[i] = f;
    } else {
      float f;
      std::memcpy(&f, raw.data() + 4 * i, 4);
      out[i] = f;
    }
  }
  return out;
}

// The weights and gradients the optimizer works on: host vectors, mirrored on the GPU for CUDA.
class ParamBuffers {
 public:
  ParamBuffers(const ReferenceCase& c, Device device) : device_(device) {
#ifndef ORTHOGPT_CUDA
    OG_CHECK(device == Device::CPU, "check-reference: device cuda requested but orthogpt was built without CUDA");
#endif
    for (const ReferenceParam& p : c.params) {
      const size_t n = (size_t)p.rows * (size_t)p.cols;
      host_w_.emplace_back(n);
      host_g_.emplace_back(n);
#ifdef ORTHOGPT_CUDA
      if (device == Device::CUDA) {
        dev_w_.emplace_back(n);
        dev_g_.emplace_back(n);
      }
#endif
    }
  }
  // W and G of parameter p on the optimizer's device.
  float* w(size_t p) {
#ifdef ORTHOGPT_CUDA
    if (device_ == Device::CUDA) return dev_w_[p].data();
#endif
    return host_w_[p].data();
  }
  const float* g(size_t p) {
#ifdef ORTHOGPT_CUDA
    if (device_ == Device::CUDA) return dev_g_[p].data();
#endif
    return host_g_[p].data();
  }
  // Before a step: W <- w_prev, G <- g.
  void load(size_t p, const float* w_prev, const float* g) {
    const size_t n = host_w_[p].size();
    std::copy(w_prev, w_prev + n, host_w_[p].begin());
    std::copy(g, g + n, host_g_[p].begin());
#ifdef ORTHOGPT_CUDA
    if (device_ == Device::CUDA) {
      CUDA_CHECK(cudaMemcpy(dev_w_[p].data(), w_prev, n * 4, cudaMemcpyHostToDevice));
      CUDA_CHECK(cudaMemcpy(dev_g_[p].data(), g, n * 4, cudaMemcpyHostToDevice));
    }
#endif
  }
  // After a step: our W, on the host.
  const std::vector<float>& fetch(size_t p) {
#ifdef ORTHOGPT_CUDA
    if (device_ == Device::CUDA) {
      CUDA_CHECK(cudaDeviceSynchronize());
      CUDA_CHECK(cudaMemcpy(host_w_[p].data(), dev_w_[p].data(), host_w_[p].size() * 4, cudaMemcpyDeviceToHost));
    }
#endif
    return host_w_[p];
  }

 private:
  [[maybe_unused]] Device device_;  // read only in CUDA builds
  std::vector<std::vector<float>> host_w_, host_g_;
#ifdef ORTHOGPT_CUDA
  std::vector<DeviceBuffer<float>> dev_w_, dev_g_;
#endif
};

}  // namespace

double update_tolerance(const OptimHParams& hp) {
  if (hp.algorithm == Algorithm::AdamW || hp.algorithm == Algorithm::Lion) return 1e-4;
  return hp.ortho == Ortho::PolarExpress ? 6e-2 : 5e-2;
}

double state_tolerance(const OptimHParams& hp) { return hp.state_dtype == StateDtype::BF16 ? 1e-2 : 1e-4; }

ReferenceCheck check_reference_case(const ReferenceCase& c, Device device) {
  ReferenceCheck r;
  r.name = c.name;
  r.algorithm = c.hp.algorithm;
  r.update_tol = update_tolerance(c.hp);
  r.state_tol = state_tolerance(c.hp);

  const size_t np = c.params.size();
  ParamBuffers buf(c, device);
  std::vector<ParamSlot> slots;
  for (size_t p = 0; p < np; ++p) {
    ParamSlot s;
    s.name = fmt::format("p{}", p);
    s.role = c.params[p].role;
    s.rows = c.params[p].rows;
    s.cols = c.params[p].cols;
    s.w = buf.w(p);
    s.g = buf.g(p);
    slots.push_back(s);
  }
  std::unique_ptr<Optimizer> opt = make_optimizer(c.hp, slots, device);

  std::vector<double> ours, ref;
  for (int64_t t = 1; t <= c.steps; ++t) {
    for (size_t p = 0; p < np; ++p) {
      const size_t n = slots[p].numel();
      const float* w_prev = c.array(fmt::format("W{}_{}", t - 1, p), n);
      const float* g = c.array(fmt::format("G{}_{}", t, p), n);
      buf.load(p, w_prev, g);
    }
    opt->step(StepContext{t, c.lr});
    for (size_t p = 0; p < np; ++p) {
      const size_t n = slots[p].numel();
      const float* w_prev = c.array(fmt::format("W{}_{}", t - 1, p), n);
      const float* w_ref = c.array(fmt::format("W{}_{}", t, p), n);
      const std::vector<float>& w = buf.fetch(p);
      ours.resize(n);
      ref.resize(n);
      for (size_t i = 0; i < n; ++i) {
        ours[i] = (double)w[i] - (double)w_prev[i];
        ref[i] = (double)w_ref[i] - (double)w_prev[i];
      }
      const double e = relative_error(ours.data(), ref.data(), n);
      if (!(e <= r.worst_update) && !(r.worst_update > e)) {  // first, larger, or NaN
        r.worst_update = e;
        r.worst_step = t;
        r.worst_param = (int)p;
      }
    }
    // State arrays the case holds for this step.
    std::map<std::string, StateTensor> state;
    for (const StateTensor& s : opt->state()) state[s.name] = s;
    for (size_t p = 0; p < np; ++p) {
      for (const char* what : {"momentum", "variance"}) {
        const std::string key = fmt::format("{}{}_{}", what, t, p);
        if (!c.has(key)) continue;
        const std::string pname = slots[p].name;
        auto it = state.find(pname + "/" + what);
        if (it == state.end() && std::string(what) == "variance") it = state.find(pname + "/variance_neuron");
        OG_CHECK(it != state.end(), "reference case {}: array '{}' has no counterpart in the {} state", c.dir, key,
                 name_of(c.hp.algorithm));
        const std::vector<double> mine = state_to_host(it->second);
        const float* theirs = c.array(key, mine.size());
        ref.assign(theirs, theirs + mine.size());
        const double e = relative_error(mine.data(), ref.data(), mine.size());
        if (r.worst_state < 0.0 || !(e <= r.worst_state)) {
          r.worst_state = e;
          r.worst_state_array = key;
        }
      }
    }
  }
  r.pass = r.worst_update <= r.update_tol && (r.worst_state < 0.0 || r.worst_state <= r.state_tol);
  return r;
}

int run_check_reference(const std::vector<std::string>& args, Device device, std::FILE* out) {
  // A folder without a manifest.yaml but with case sub-folders stands for all of them, so
  // `check-reference tests/data/reference` runs the whole set.
  namespace fs = std::filesystem;
  std::vector<std::string> case_dirs;
  for (const std::string& a : args) {
    if (fs::is_directory(a) && !fs::exists(fs::path(a) / "manifest.yaml")) {
      std::vector<std::string> sub;
      for (const auto& e : fs::directory_iterator(a))
        if (e.is_directory() && fs::exists(e.path() / "manifest.yaml")) sub.push_back(e.path().string());
      std::sort(sub.begin(), sub.end());
      if (!sub.empty()) {
        case_dirs.insert(case_dirs.end(), sub.begin(), sub.end());
        continue;
      }
    }
    case_dirs.push_back(a);
  }
  int failed = 0;
  for (const std::string& dir : case_dirs) {
    try {
      const ReferenceCase c = load_reference_case(dir);
      const ReferenceCheck r = check_reference_case(c, device);
      std::string state = r.worst_state < 0.0 ? std::string("no state arrays")
                                              : fmt::format("state {:.2e} (tol {:.0e}, {})", r.worst_state, r.state_tol,
                                                            r.worst_state_array);
      fmt::print(out, "{:<24} {:<9} worst dW rel err {:.3e} (step {}, param {})  tol {:.0e}  {}  {}\n", r.name,
                 name_of(r.algorithm), r.worst_update, r.worst_step, r.worst_param, r.update_tol, state,
                 r.pass ? "PASS" : "FAIL");
      failed += r.pass ? 0 : 1;
    } catch (const Error& e) {
      fmt::print(out, "{:<24} FAIL  {}\n", dir, e.what());
      ++failed;
    }
  }
  std::fflush(out);
  return failed == 0 ? 0 : 1;
}

}  // namespace og
