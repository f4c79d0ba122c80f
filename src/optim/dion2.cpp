// Dion2, CPU reference (see dion2_cpu.h).
#include "optim/dion2_cpu.h"

#include "optim/cpu_optimizers.h"
#include "optim/slice_select.h"

namespace og {

namespace {
constexpr size_t kChunkFloats = size_t{1} << 24;  // parameters per batch of NS jobs (by size)
}

Dion2Cpu::Dion2Cpu(const OptimHParams& hp, std::vector<ParamSlot> params) : hp_(hp), params_(std::move(params)) {
  for (const ParamSlot& p : params_) momentum_.emplace_back(p.numel(), 0.0f);
  index_.resize(params_.size());
}

SliceAxis Dion2Cpu::axis_of(const ParamSlot& p) const { return selection_axis(hp_.select_dim, p.rows, p.cols); }

void Dion2Cpu::step(const StepContext& ctx) {
  check_step_context(ctx, algorithm());
  const double decay_w = 1.0 - (double)ctx.lr * (double)hp_.weight_decay;
  const double decay_m = decay_factor();
  const bool bf16 = hp_.state_dtype == StateDtype::BF16;
  SelectionStats select_stats;

  for (auto [begin, end] : param_chunks(params_, kChunkFloats)) {
    // Accumulate and select.
    size_t total = 0;
    for (size_t p = begin; p < end; ++p) {
      const ParamSlot& s = params_[p];
      float* m = momentum_[p].data();
      const size_t numel = s.numel();
      accumulate_momentum(m, s.g, numel, bf16);
      const SliceAxis axis = axis_of(s);
      const int64_t n = axis == SliceAxis::Rows ? s.rows : s.cols;
      const int64_t k = select_count(hp_.fraction, n);
      select_slices(hp_, ctx.step, (int64_t)p, m, s.rows, s.cols, axis, k, score_, index_[p],
                    hp_.diagnostics ? &select_stats : nullptr);
      total += (size_t)k * (size_t)(axis == SliceAxis::Rows ? s.cols : s.rows);
    }
    // Orthonormalize every selected submatrix of the chunk (before the momentum decay).
    work_.resize(total);
    std::vector<NsJob> jobs;
    size_t off = 0;
    for (size_t p = begin; p < end; ++p) {
      const ParamSlot& s = params_[p];
      const SliceAxis axis = axis_of(s);
      NsJob job;
      job.src =
          NsSource{momentum_[p].data(), s.rows, s.cols, s.cols, index_[p].data(), (int64_t)index_[p].size(), axis};
      job.out = work_.data() + off;
      job.ld_out = job.src.out_cols();
      jobs.push_back(job);
      off += (size_t)job.src.out_rows() * (size_t)job.src.out_cols();
    }
    orthonormalize_batch(hp_.ortho, jobs, hp_.eps);
    // Decay the momentum and apply the update.
    for (size_t i = 0; i < jobs.size(); ++i) {
      const size_t p = begin + i;
      const ParamSlot& s = params_[p];
      const SliceAxis axis = axis_of(s);
      float* m = momentum_[p].data();
      post_ortho(p, jobs[i].out);
      if (hp_.ef) scale_slices(m, s.rows, s.cols, axis, index_[p], decay_m, bf16);
      decay_and_add_slices(s.w, s.rows, s.cols, axis, index_[p], jobs[i].out, decay_w,
                           adjusted_lr(ctx.lr, hp_.adjust_lr, s.rows, s.cols));
      if (!hp_.ef) {
        const size_t numel = s.numel();
        for (size_t j = 0; j < numel; ++j) {
          const float v = (float)((double)m[j] * decay_m);
          m[j] = bf16 ? round_bf16(v) : v;
        }
      }
    }
  }

  stats_.clear();
  select_stats.write(stats_);
}

std::vector<StateTensor> Dion2Cpu::state() {
  std::vector<StateTensor> out;
  for (size_t p = 0; p < params_.size(); ++p) out.push_back(host_state(params_[p].name, "momentum", momentum_[p]));
  return out;
}

std::unique_ptr<Optimizer> make_dion2_cpu(const OptimHParams& hp, std::vector<ParamSlot> params) {
  return std::make_unique<Dion2Cpu>(hp, std::move(params));
}

}  // namespace og
