// NorMuon, CPU reference: Muon (muon_cpu.h) whose orthonormalized update is normalized per
// output neuron with a second-moment V (rows x 1) before it is applied (normuon_normalize.h).
// Nesterov follows hp.nesterov (the training configs turn it on, as the reference script does).
#include "optim/cpu_optimizers.h"
#include "optim/muon_cpu.h"
#include "optim/normuon_normalize.h"

namespace og {
namespace {

class NorMuonCpu final : public MuonCpu {
 public:
  NorMuonCpu(const OptimHParams& hp, std::vector<ParamSlot> params) : MuonCpu(hp, std::move(params)) {
    for (const ParamSlot& p : params_) variance_neuron_.emplace_back(p.rows, 0.0f);
  }
  Algorithm algorithm() const override { return Algorithm::NorMuon; }

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
  void post_ortho(size_t p, float* o) override {
    normuon_normalize(o, params_[p].rows, params_[p].cols, variance_neuron_[p].data(), nullptr, hp_.beta2,
                      hp_.state_dtype == StateDtype::BF16);
  }

 private:
  std::vector<std::vector<float>> variance_neuron_;
};

}  // namespace

std::unique_ptr<Optimizer> make_normuon_cpu(const OptimHParams& hp, std::vector<ParamSlot> params) {
  return std::make_unique<NorMuonCpu>(hp, std::move(params));
}

}  // namespace og
