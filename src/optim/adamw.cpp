// AdamW, CPU reference (OPTIMIZERS.md "Scalar optimizers"), bias-corrected as the reference's
// fused kernel:
//   W ← W·(1 − lr·wd);  M ← β1·M + (1−β1)·G;  V ← β2·V + (1−β2)·G²
//   W ← W − (lr / (1−β1ᵗ)) · M / (√V / √(1−β2ᵗ) + eps)         t = ctx.step
// Arithmetic in double per entry, state stored fp32 (or rounded to bf16).
#include <cmath>

#include "optim/cpu_optimizers.h"
#include "optim/matrix_ops.h"

namespace og {
namespace {

class AdamWCpu final : public Optimizer {
 public:
  AdamWCpu(const OptimHParams& hp, std::vector<ParamSlot> params) : hp_(hp), params_(std::move(params)) {
    for (const ParamSlot& p : params_) {
      m_.emplace_back(p.numel(), 0.0f);
      v_.emplace_back(p.numel(), 0.0f);
      step_.emplace_back(1, 0.0f);
    }
  }
  Algorithm algorithm() const override { return Algorithm::AdamW; }

  void step(const StepContext& ctx) override {
    check_step_context(ctx, Algorithm::AdamW);
    const double lr = ctx.lr, b1 = hp_.betas[0], b2 = hp_.betas[1], eps = hp_.eps;
    const double decay = 1.0 - lr * (double)hp_.weight_decay;
    const double t = (double)ctx.step;
    const double step_size = lr / (1.0 - std::pow(b1, t));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(b2, t));
    const bool bf16 = hp_.state_dtype == StateDtype::BF16;
    for (size_t p = 0; p < params_.size(); ++p) {
      const ParamSlot& s = params_[p];
      float* w = s.w;
      const float* g = s.g;
      float* m = m_[p].data();
      float* v = v_[p].data();
      const size_t n = s.numel();
#pragma omp parallel for schedule(static) if (n > (1u << 16))
      for (size_t i = 0; i < n; ++i) {
        const double gi = g[i];
        float mi = (float)(b1 * m[i] + (1.0 - b1) * gi);
        float vi = (float)(b2 * v[i] + (1.0 - b2) * gi * gi);
        if (bf16) {
          mi = round_bf16(mi);
          vi = round_bf16(vi);
        }
        m[i] = mi;
        v[i] = vi;
        const double denom = std::sqrt((double)vi) / bc2_sqrt + eps;
        w[i] = (float)((double)w[i] * decay - step_size * (double)mi / denom);
      }
      step_[p][0] = (float)ctx.step;
    }
  }

  // Per parameter: momentum, variance, step (the step the state was last updated at).
  std::vector<StateTensor> state() override {
    std::vector<StateTensor> out;
    for (size_t p = 0; p < params_.size(); ++p) {
      out.push_back(host_state(params_[p].name, "momentum", m_[p]));
      out.push_back(host_state(params_[p].name, "variance", v_[p]));
      out.push_back(host_state(params_[p].name, "step", step_[p]));
    }
    return out;
  }

 private:
  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  std::vector<std::vector<float>> m_, v_, step_;
};

}  // namespace

std::unique_ptr<Optimizer> make_adamw_cpu(const OptimHParams& hp, std::vector<ParamSlot> params) {
  return std::make_unique<AdamWCpu>(hp, std::move(params));
}

}  // namespace og
