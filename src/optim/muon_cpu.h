// Muon on the CPU (OPTIMIZERS.md "Muon"), the base of NorMuon:
//   M ← mu·M + G;  U ← nesterov ? mu·M + G : M;  O ← NS(U);  [hook: O ← post_ortho(O)]
//   W ← W·(1 − lr·wd) − lr_eff·O                 lr_eff from the whole shape (adjust_lr)
// Matrices are orthonormalized in batches (bounded scratch), see orthonormalize_batch.
#pragma once
#include <vector>

#include "optim/newton_schulz.h"
#include "optim/optimizer.h"

namespace og {

class MuonCpu : public Optimizer {
 public:
  MuonCpu(const OptimHParams& hp, std::vector<ParamSlot> params);
  Algorithm algorithm() const override { return Algorithm::Muon; }
  void step(const StepContext& ctx) override;
  std::vector<StateTensor> state() override;

 protected:
  // Called with parameter p's orthonormalized update O (rows x cols, dense) before it is applied.
  virtual void post_ortho(size_t p, float* o) {}

  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  std::vector<std::vector<float>> momentum_;
  std::vector<float> work_;  // U, then O, for one chunk of parameters
};

}  // namespace og
