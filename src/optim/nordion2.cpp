// NorDion2 (the reference also calls it Dion3), CPU reference: Dion2 (dion2_cpu.h) that always
// selects ROWS (one per output neuron), decays the selected momentum rows by mu, and normalizes
// the k x cols orthonormalized update with NorMuon's rule over the k selected rows only: V[K] is
// updated, the other rows of V are unchanged (normuon_normalize.h).
#include "optim/cpu_optimizers.h"
#include "optim/dion2_cpu.h"
#include "optim/normuon_normalize.h"

namespace og {
namespace {

class NorDion2Cpu final : public Dion2Cpu {
 public:
  NorDion2Cpu(const OptimHParams& hp, std::vector<ParamSlot> params) : Dion2Cpu(hp, std::move(params)) {
    for (const ParamSlot& p : params_) variance_neuron_.emplace_back(p.rows, 0.0f);
  }
  Algorithm algorithm() const override { return Algorithm::NorDion2; }
  SliceAxis axis_of(const ParamSlot&) const override { return SliceAxis::Rows; }

  // Per parameter: momentum, variance_neuron.
  std::vector<StateTensor> state() override {
    std::vector<StateTensor> out;
    for (size_t p = 0; p < params_.size(); ++p) {
      out.push_back(host_state(params_[p].name, "momentum", momentum_[p]));
      out.push_back(host_state(params_[p].name, "variance_neuron", variance_neuron_[p]));
    }
    return out;
  }

 protected:
  double decay_factor() const override { return hp_.mu; }
  void post_ortho(size_t p, float* o) override {
    normuon_normalize(o, (int64_t)index_[p].size(), params_[p].cols, variance_neuron_[p].data(), index_[p].data(),
                      hp_.beta2, hp_.state_dtype == StateDtype::BF16);
  }

 private:
  std::vector<std::vector<float>> variance_neuron_;
};

}  // namespace

std::unique_ptr<Optimizer> make_nordion2_cpu(const OptimHParams& hp, std::vector<ParamSlot> params) {
  return std::make_unique<NorDion2Cpu>(hp, std::move(params));
}

}  // namespace og
