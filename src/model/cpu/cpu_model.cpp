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
        grads_(alloc_floats(gpt_.layout().total(), "gradients")),
        own_(gpt_.units(), params_.get(), grads_.get(), sizeof(float)) {
    gpt_init_params(gpt_.layout(), params_.get(), 0);
  }

  Device device() const override { return Device::CPU; }
  const GPTConfig& config() const override { return gpt_.config(); }
  const ParamLayout& layout() const override { return gpt_.layout(); }
  float* params() override { return params_.get(); }
  float* grads() override { return grads_.get(); }
  void zero_grad() override {
    if (grads_) std::memset(grads_.get(), 0, layout().total() * sizeof(float));
  }

  float forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T, float grad_scale) override {
    OG_CHECK(targets != nullptr, "cpu model: forward_backward needs targets");
    const float loss = gpt_.forward(*src_, inputs, targets, B, T);
    gpt_.backward(*src_, grad_scale);
    return loss;
  }

  float forward_loss(const int32_t* inputs, const int32_t* targets, int B, int T) override {
    OG_CHECK(targets != nullptr, "cpu model: forward_loss needs targets");
    return gpt_.forward(*src_, inputs, targets, B, T);
  }

  std::vector<float> last_logits(const int32_t* tokens, int T) override {
    gpt_.forward(*src_, tokens, nullptr, 1, T);
    const float* l = gpt_.last_logits(0);
    return std::vector<float>(l, l + config().vocab_size);
  }

  void upload_params(const float* host) override {
    check_own("upload_params");
    std::memcpy(params_.get(), host, layout().total() * sizeof(float));
  }
  void download_params(float* host) override {
    check_own("download_params");
    std::memcpy(host, params_.get(), layout().total() * sizeof(float));
  }

  const std::vector<ParamUnit>& units() const override { return gpt_.units(); }
  WeightType unit_weight_type(int) const override { return WeightType::F32; }
  UnitSource& own_units() override { return own_; }
  void route_units(UnitSource* src) override {
    check_own("route_units");
    src_ = src ? src : &own_;
  }
  void attach_units(UnitSource* src) override {
    OG_CHECK(src != nullptr, "internal: cpu model: attach_units(nullptr)");
    src_ = src;
    params_.reset();
    grads_.reset();
    attached_ = true;
  }

  double grad_norm_sq() override {
    check_own("grad_norm_sq");
    const float* g = grads_.get();
    const int64_t n = (int64_t)layout().total();
    double s = 0.0;
#pragma omp parallel for simd reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < n; ++i) s += (double)g[i] * (double)g[i];
    return s;
  }

 private:
  void check_own(const char* what) const {
    OG_CHECK(!attached_, "internal: cpu model: {} on a model whose weights are held by a unit source (fsdp)", what);
  }

  cpu::GptCpu<float> gpt_;
  AlignedFloats params_, grads_;
  WholeBufferUnits own_;
  UnitSource* src_ = &own_;
};

}  // namespace

std::unique_ptr<Model> make_cpu_model(const GPTConfig& cfg, int max_batch) {
  return std::make_unique<CpuModel>(cfg, max_batch);
}

}  // namespace og
