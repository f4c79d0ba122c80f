// og::Model on the CPU: GptCpu<float> plus the parameter and gradient buffers it owns
// (layout().total() floats each, 64-byte aligned, padding kept at zero).
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"
#include "model/cpu/gpt_cpu.h"
#include "model/model.h"

namespace og {
namespace {

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float[], FreeDeleter>;

AlignedFloats alloc_floats(size_t n, const char* what) {
  float* p = static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
  if (!p) fail("cpu model: cannot allocate {:.1f} MiB for {}", n * sizeof(float) / 1048576.0, what);
  std::memset(p, 0, n * sizeof(float));
  return AlignedFloats(p);
}

class CpuModel final : public Model {
 public:
  CpuModel(const GPTConfig& cfg, int max_batch)
      : gpt_(cfg, max_batch),
        params_(alloc_floats(gpt_.layout().total(), "parameters")),
        grads_(alloc_floats(gpt_.layout().total(), "gradients")) {
    gpt_init_params(gpt_.layout(), params_.get(), 0);
  }

  Device device() const override { return Device::CPU; }
  const GPTConfig& config() const override { return gpt_.config(); }
  const ParamLayout& layout() const override { return gpt_.layout(); }
  float* params() override { return params_.get(); }
  float* grads() override { return grads_.get(); }
  void zero_grad() override { std::memset(grads_.get(), 0, layout().total() * sizeof(float)); }

  float forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T, float grad_scale) override {
    OG_CHECK(targets != nullptr, "cpu model: forward_backward needs targets");
    const float loss = gpt_.forward(params_.get(), inputs, targets, B, T);
    gpt_.backward(params_.get(), grads_.get(), grad_scale);
    return loss;
  }

  float forward_loss(const int32_t* inputs, const int32_t* targets, int B, int T) override {
    OG_CHECK(targets != nullptr, "cpu model: forward_loss needs targets");
    return gpt_.forward(params_.get(), inputs, targets, B, T);
  }

  std::vector<float> last_logits(const int32_t* tokens, int T) override {
    gpt_.forward(params_.get(), tokens, nullptr, 1, T);
    const float* l = gpt_.last_logits(0);
    return std::vector<float>(l, l + config().vocab_size);
  }

  void upload_params(const float* host) override { std::memcpy(params_.get(), host, layout().total() * sizeof(float)); }
  void download_params(float* host) override { std::memcpy(host, params_.get(), layout().total() * sizeof(float)); }

  double grad_norm_sq() override {
    const float* g = grads_.get();
    const int64_t n = (int64_t)layout().total();
    double s = 0.0;
#pragma omp parallel for simd reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < n; ++i) s += (double)g[i] * (double)g[i];
    return s;
  }

 private:
  cpu::GptCpu<float> gpt_;
  AlignedFloats params_, grads_;
};

}  // namespace

std::unique_ptr<Model> make_cpu_model(const GPTConfig& cfg, int max_batch) {
  return std::make_unique<CpuModel>(cfg, max_batch);
}

}  // namespace og
