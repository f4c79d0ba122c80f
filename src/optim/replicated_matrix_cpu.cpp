// Muon / NorMuon / Dion2 / NorDion2 across data-parallel ranks on replicated parameters (DDP),
// CPU path. Per step, every rank:
//   1. updates every momentum (identical on all ranks: the gradients were averaged) and, for
//      Dion2 / NorDion2, selects the slices (ℓ1 of the identical momentum, or the shared random
//      draw: the same indices everywhere);
//      compressed sync: the gradients were NOT averaged; the selected slices of every momentum
//      are all-reduced (averaged) in one call and written back, so they agree on all ranks;
//   2. orthonormalizes the matrices it owns (distributed_plan.h: owners balanced by NS FLOPs)
//      into its block of the gather buffer: the whole U (Muon) or only M[K] (Dion2, k x L);
//   3. all-gathers the blocks (one collective per step);
//   4. applies every update: NorMuon / NorDion2 normalization (on every rank, so V stays
//      identical), the selective decay, W ← W·(1 − lr·wd) − lr_eff·O.
// The arithmetic of each step is that of the single-process CPU optimizers (muon.cpp, dion2.cpp,
// normuon.cpp, nordion2.cpp) on the same building blocks, so results match one process up to
// the summation order of the gradient average.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/counting_communicator.h"
#include "optim/cpu_optimizers.h"
#include "optim/distributed_cpu.h"
#include "optim/distributed_plan.h"
#include "optim/matrix_ops.h"
#include "optim/newton_schulz.h"
#include "optim/normuon_normalize.h"
#include "optim/slice_select.h"

namespace og {
namespace {

class ReplicatedMatrixCpu final : public Optimizer {
 public:
  ReplicatedMatrixCpu(const OptimHParams& hp, std::vector<ParamSlot> params, Communicator& comm, bool compressed)
      : hp_(hp), params_(std::move(params)), comm_(comm), compressed_(compressed) {
    const Algorithm a = hp_.algorithm;
    selective_ = a == Algorithm::Dion2 || a == Algorithm::NorDion2;
    normalized_ = a == Algorithm::NorMuon || a == Algorithm::NorDion2;
    OG_CHECK(a == Algorithm::Muon || a == Algorithm::NorMuon || selective_,
             "internal: replicated matrix optimizer for {}", name_of(a));
    OG_CHECK(!compressed_ || (a == Algorithm::Dion2 && hp_.select == Select::Random),
             "dist.compressed_sync: needs dion2 with select random (got {}{})", name_of(a),
             selective_ ? fmt::format(" with select {}", name_of(hp_.select)) : std::string());
    std::vector<double> cost;
    std::vector<size_t> payload;
    for (const ParamSlot& p : params_) {
      momentum_.emplace_back(p.numel(), 0.0f);
      if (normalized_) variance_.emplace_back(p.rows, 0.0f);
      axis_.push_back(selective_ ? slice_axis(p) : SliceAxis::Rows);
      const int64_t n = axis_.back() == SliceAxis::Rows ? p.rows : p.cols;
      const int64_t len = axis_.back() == SliceAxis::Rows ? p.cols : p.rows;
      const int64_t k = selective_ ? select_count(hp_.fraction, n) : n;
      // The NS input is k x len (Dion2) or the whole matrix (Muon): its cost and its payload.
      cost.push_back(ns_cost(k, len));
      payload.push_back((size_t)k * (size_t)len);
    }
    index_.resize(params_.size());
    plan_ = plan_owners(cost, payload, comm_.size());
  }

  Algorithm algorithm() const override { return hp_.algorithm; }

  void step(const StepContext& ctx) override {
    check_step_context(ctx, hp_.algorithm);
    comm_.reset();
    const int me = comm_.rank(), W = comm_.size();
    const bool bf16 = hp_.state_dtype == StateDtype::BF16;
    const double decay_w = 1.0 - (double)ctx.lr * (double)hp_.weight_decay;
    gather_.assign((size_t)W * plan_.block, 0.0f);
    float* mine = gather_.data() + (size_t)me * plan_.block;

    // 1. momenta (and selections)
    if (selective_)
      accumulate_and_select(ctx, bf16);
    else
      update_muon_momenta(bf16, mine);

    // 2. orthonormalize the owned matrices into this rank's block
    std::vector<NsJob> jobs;
    for (size_t p : plan_.owned[me]) {
      const ParamSlot& s = params_[p];
      NsJob job;
      float* out = mine + plan_.offset[p];
      if (selective_) {
        job.src = NsSource{momentum_[p].data(),       s.rows,  s.cols, s.cols, index_[p].data(),
                           (int64_t)index_[p].size(), axis_[p]};
      } else {
        job.src = NsSource{out, s.rows, s.cols, s.cols};  // U was written there in step 1
      }
      job.out = out;
      job.ld_out = job.src.out_cols();
      jobs.push_back(job);
    }
    orthonormalize_batch(hp_.ortho, jobs, hp_.eps);

    // 3. every rank gets every result (in place: this rank's block is already in gather_)
    if (W > 1) comm_.all_gather(mine, gather_.data(), plan_.block, DType::F32);

    // 4. apply
    for (size_t p = 0; p < params_.size(); ++p) {
      const ParamSlot& s = params_[p];
      float* o = gather_.data() + (size_t)plan_.owner[p] * plan_.block + plan_.offset[p];
      const float lr_eff = adjusted_lr(ctx.lr, hp_.adjust_lr, s.rows, s.cols);
      if (!selective_) {
        if (normalized_) normuon_normalize(o, s.rows, s.cols, variance_[p].data(), nullptr, hp_.beta2, bf16);
        decay_and_add(s.w, o, s.numel(), decay_w, lr_eff);
        continue;
      }
      float* m = momentum_[p].data();
      if (normalized_)
        normuon_normalize(o, (int64_t)index_[p].size(), s.cols, variance_[p].data(), index_[p].data(), hp_.beta2, bf16);
      if (hp_.ef) scale_slices(m, s.rows, s.cols, axis_[p], index_[p], decay_m(), bf16);
      decay_and_add_slices(s.w, s.rows, s.cols, axis_[p], index_[p], o, decay_w, lr_eff);
      if (!hp_.ef) {
        const size_t numel = s.numel();
        for (size_t j = 0; j < numel; ++j) {
          const float v = (float)((double)m[j] * decay_m());
          m[j] = bf16 ? round_bf16(v) : v;
        }
      }
    }
    stats_["comm_bytes"] = comm_.total_bytes();
  }

  std::vector<StateTensor> state() override {
    std::vector<StateTensor> out;
    for (size_t p = 0; p < params_.size(); ++p) {
      out.push_back(host_state(params_[p].name, "momentum", momentum_[p]));
      if (normalized_) out.push_back(host_state(params_[p].name, "variance_neuron", variance_[p]));
    }
    return out;
  }

  // Compressed sync: the unselected momentum slices differ between ranks; their average is the
  // fully-synced momentum (every step is linear in the local gradients), so averaging them makes
  // every rank hold that momentum (before checkpoints). Otherwise the state is identical already.
  void synchronize_state() override {
    if (!compressed_ || comm_.size() == 1) return;
    for (auto& m : momentum_) {
      comm_.all_reduce(m.data(), m.size(), DType::F32, ReduceOp::Avg);
      if (hp_.state_dtype == StateDtype::BF16) round_bf16_inplace(m.data(), m.size());
    }
  }

  std::map<std::string, double> stats() const override { return stats_; }

 private:
  SliceAxis slice_axis(const ParamSlot& p) const {
    return hp_.algorithm == Algorithm::NorDion2 ? SliceAxis::Rows : selection_axis(hp_.select_dim, p.rows, p.cols);
  }
  double decay_m() const { return hp_.algorithm == Algorithm::NorDion2 ? hp_.mu : hp_.ef_decay; }

  // Muon: M ← mu·M + G on every matrix; U = nesterov ? mu·M + G : M only for the owned ones,
  // written straight into their slots of this rank's gather block (NS runs in place there).
  void update_muon_momenta(bool bf16, float* mine) {
    const double mu = hp_.mu;
    const int me = comm_.rank();
    for (size_t p = 0; p < params_.size(); ++p) {
      const ParamSlot& s = params_[p];
      const size_t n = s.numel();
      float* m = momentum_[p].data();
      float* u = plan_.owner[p] == me ? mine + plan_.offset[p] : nullptr;
      muon_momentum_update(m, u, s.g, n, mu, hp_.nesterov, bf16);
    }
  }

  // Dion2: M ← M + G, then the k slices of every matrix; compressed sync averages M[K] here.
  void accumulate_and_select(const StepContext& ctx, bool bf16) {
    // diagnostics of this rank's momentum (under compressed sync: before the average)
    SelectionStats select_stats;
    for (size_t p = 0; p < params_.size(); ++p) {
      const ParamSlot& s = params_[p];
      float* m = momentum_[p].data();
      const size_t numel = s.numel();
      accumulate_momentum(m, s.g, numel, bf16);
      const int64_t n = axis_[p] == SliceAxis::Rows ? s.rows : s.cols;
      const int64_t k = select_count(hp_.fraction, n);
      select_slices(hp_, ctx.step, (int64_t)p, m, s.rows, s.cols, axis_[p], k, score_, index_[p],
                    hp_.diagnostics ? &select_stats : nullptr);
    }
    select_stats.write(stats_);
    if (compressed_ && comm_.size() > 1) average_selected(bf16);
  }

  // M[K] ← mean over ranks of M[K], for every matrix, in one all-reduce.
  void average_selected(bool bf16) {
    size_t total = 0;
    for (size_t p = 0; p < params_.size(); ++p) total += index_[p].size() * (size_t)slice_len(p);
    sync_.resize(total);
    auto each_entry = [&](auto fn) {
      size_t off = 0;
      for (size_t p = 0; p < params_.size(); ++p) {
        const ParamSlot& s = params_[p];
        float* m = momentum_[p].data();
        for (int64_t i : index_[p]) {
          if (axis_[p] == SliceAxis::Rows)
            for (int64_t j = 0; j < s.cols; ++j) fn(m[i * s.cols + j], sync_[off++]);
          else
            for (int64_t r = 0; r < s.rows; ++r) fn(m[r * s.cols + i], sync_[off++]);
        }
      }
    };
    each_entry([](float& m, float& buf) { buf = m; });
    comm_.all_reduce(sync_.data(), sync_.size(), DType::F32, ReduceOp::Avg);
    each_entry([bf16](float& m, float& buf) { m = bf16 ? round_bf16(buf) : buf; });
  }

  int64_t slice_len(size_t p) const { return axis_[p] == SliceAxis::Rows ? params_[p].cols : params_[p].rows; }

  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  CountingCommunicator comm_;
  bool compressed_ = false, selective_ = false, normalized_ = false;
  OwnerPlan plan_;
  std::vector<std::vector<float>> momentum_, variance_;
  std::vector<SliceAxis> axis_;
  std::vector<std::vector<int64_t>> index_;
  std::vector<double> score_;
  std::vector<float> gather_, sync_;
  std::map<std::string, double> stats_;
};

}  // namespace

std::unique_ptr<Optimizer> make_replicated_matrix_cpu(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                      Communicator& comm, bool compressed) {
  return std::make_unique<ReplicatedMatrixCpu>(hp, std::move(params), comm, compressed);
}

}  // namespace og
