// Dion2 on the CPU (OPTIMIZERS.md "Dion2", the paper's Algorithm 1), the base of NorDion2.
// Per matrix, with k = max(1, ceil(fraction · n)) slices of the selected dimension (n slices):
//   M ← M + G                                  (no decay here)
//   K ← the k slices of largest l1 norm  [l1]  |  k uniformly random slices  [random]
//   O ← NS(M[K])                               (gathered before the decay below)
//   [hook: O ← post_ortho(O)]
//   ef on:  M[K] ← ef_decay·M[K]               (selective decay, "error feedback")
//   W ← W·(1 − lr·wd);  W[K] ← W[K] − lr_eff·O (lr_eff from the WHOLE shape, decay on all of W)
//   ef off: M ← ef_decay·M                     (the paper's ablation: decay the whole momentum)
#pragma once
#include <map>
#include <string>
#include <vector>

#include "optim/matrix_ops.h"
#include "optim/newton_schulz.h"
#include "optim/optimizer.h"

namespace og {

class Dion2Cpu : public Optimizer {
 public:
  Dion2Cpu(const OptimHParams& hp, std::vector<ParamSlot> params);
  Algorithm algorithm() const override { return Algorithm::Dion2; }
  void step(const StepContext& ctx) override;
  std::vector<StateTensor> state() override;
  // With hp.diagnostics, over the group's matrices at the last step: "select_mass" (mean of
  // l1 mass of the selected slices of M before decay / l1 mass of M), "select_k" (mean k),
  // "select_fraction" (mean k / n).
  std::map<std::string, double> stats() const override { return stats_; }

  // The slices selected for parameter p at the last step (ascending), and along which axis.
  const std::vector<int64_t>& selected(size_t p) const { return index_[p]; }
  virtual SliceAxis axis_of(const ParamSlot& p) const;

 protected:
  virtual double decay_factor() const { return hp_.ef_decay; }
  // Called with parameter p's orthonormalized selection O (k x cols for rows, rows x k for cols).
  virtual void post_ortho(size_t p, float* o) {}

  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  std::vector<std::vector<float>> momentum_;
  std::vector<std::vector<int64_t>> index_;  // selection of the last step, per parameter
  std::vector<float> work_;                  // O of one chunk of parameters
  std::vector<double> score_;
  std::map<std::string, double> stats_;
};

}  // namespace og
