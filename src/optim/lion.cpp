// Lion, CPU reference (OPTIMIZERS.md "Scalar optimizers"):
//   U ← sign(β1·M + (1−β1)·G)   (sign(0) = 0);   M ← β2·M + (1−β2)·G
//   W ← W·(1 − lr·wd) − lr·U
// Arithmetic in double per entry, momentum stored fp32 (or rounded to bf16).
#include <cmath>

#include "optim/cpu_optimizers.h"
#include "optim/matrix_ops.h"

namespace og {
namespace {

class LionCpu final : public Optimizer {
 public:
  LionCpu(const OptimHParams& hp, std::vector<ParamSlot> params) : hp_(hp), params_(std::move(params)) {
    for (const ParamSlot& p : params_) m_.emplace_back(p.numel(), 0.0f);
  }
  Algorithm algorithm() const override { return Algorithm::Lion; }

  void step(const StepContext& ctx) override {
    check_step_context(ctx, Algorithm::Lion);
    const double lr = ctx.lr, b1 = hp_.betas[0], b2 = hp_.betas[1];
    const double decay = 1.0 - lr * (double)hp_.weight_decay;
    const bool bf16 = hp_.state_dtype == StateDtype::BF16;
    for (size_t p = 0; p < params_.size(); ++p) {
      const ParamSlot& s = params_[p];
      float* w = s.w;
      const float* g = s.g;
      float* m = m_[p].data();
      const size_t n = s.numel();
#pragma omp parallel for schedule(static) if (n > (1u << 16))
      for (size_t i = 0; i < n; ++i) {
        const double gi = g[i];
        const double c = b1 * m[i] + (1.0 - b1) * gi;
        const double u = c > 0.0 ? 1.0 : (c < 0.0 ? -1.0 : c);  // sign; 0 stays 0, NaN stays NaN
        const float mi = (float)(b2 * m[i] + (1.0 - b2) * gi);
        m[i] = bf16 ? round_bf16(mi) : mi;
        w[i] = (float)((double)w[i] * decay - lr * u);
      }
    }
  }

  std::vector<StateTensor> state() override {
    std::vector<StateTensor> out;
    for (size_t p = 0; p < params_.size(); ++p) out.push_back(host_state(params_[p].name, "momentum", m_[p]));
    return out;
  }

 private:
  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  std::vector<std::vector<float>> m_;
};

}  // namespace

std::unique_ptr<Optimizer> make_lion_cpu(const OptimHParams& hp, std::vector<ParamSlot> params) {
  return std::make_unique<LionCpu>(hp, std::move(params));
}

}  // namespace og
