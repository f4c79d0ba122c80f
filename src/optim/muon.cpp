// Muon, CPU reference (see muon_cpu.h).
#include "optim/muon_cpu.h"

#include "optim/cpu_optimizers.h"
#include "optim/matrix_ops.h"

namespace og {

namespace {
constexpr size_t kChunkFloats = size_t{1} << 24;  // scratch bound: 64 MiB of U/O per batch
}

MuonCpu::MuonCpu(const OptimHParams& hp, std::vector<ParamSlot> params) : hp_(hp), params_(std::move(params)) {
  for (const ParamSlot& p : params_) momentum_.emplace_back(p.numel(), 0.0f);
}

void MuonCpu::step(const StepContext& ctx) {
  check_step_context(ctx, algorithm());
  const double mu = hp_.mu;
  const double decay = 1.0 - (double)ctx.lr * (double)hp_.weight_decay;
  const bool bf16 = hp_.state_dtype == StateDtype::BF16;
  for (auto [begin, end] : param_chunks(params_, kChunkFloats)) {
    size_t total = 0;
    for (size_t p = begin; p < end; ++p) total += params_[p].numel();
    work_.resize(total);
    // Momentum and the NS input U of every matrix of the chunk.
    std::vector<NsJob> jobs;
    size_t off = 0;
    for (size_t p = begin; p < end; ++p) {
      const ParamSlot& s = params_[p];
      const size_t n = s.numel();
      float* m = momentum_[p].data();
      float* u = work_.data() + off;
      muon_momentum_update(m, u, s.g, n, mu, hp_.nesterov, bf16);
      NsJob job;
      job.src = NsSource{u, s.rows, s.cols, s.cols};
      job.out = u;  // in place
      job.ld_out = s.cols;
      jobs.push_back(job);
      off += n;
    }
    orthonormalize_batch(hp_.ortho, jobs, hp_.eps);
    off = 0;
    for (size_t p = begin; p < end; ++p) {
      const ParamSlot& s = params_[p];
      float* o = work_.data() + off;
      post_ortho(p, o);
      decay_and_add(s.w, o, s.numel(), decay, adjusted_lr(ctx.lr, hp_.adjust_lr, s.rows, s.cols));
      off += s.numel();
    }
  }
}

std::vector<StateTensor> MuonCpu::state() {
  std::vector<StateTensor> out;
  for (size_t p = 0; p < params_.size(); ++p) out.push_back(host_state(params_[p].name, "momentum", momentum_[p]));
  return out;
}

std::unique_ptr<Optimizer> make_muon_cpu(const OptimHParams& hp, std::vector<ParamSlot> params) {
  return std::make_unique<MuonCpu>(hp, std::move(params));
}

}  // namespace og
