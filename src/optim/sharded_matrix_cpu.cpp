// Muon / NorMuon / Dion2 / NorDion2 on row-sharded parameters (FSDP), CPU path. Rank r holds rows
// [row0_r, row0_r + n_r) of every matrix, and the momentum (and V) of those rows only. Per step:
//   1. local: M ← mu·M + G and U (Muon), or M ← M + G and the selected rows (Dion2, below);
//   2. all-to-all #1: every rank sends its U shard (Muon) or its selected rows (Dion2) of matrix p
//      to p's owner (distributed_plan.h, balanced by NS FLOPs), padded to the longest rank's part;
//   3. the owner stacks the parts in row order — the whole U, or M[K] with K ascending — and
//      orthonormalizes them (one batch per owner);
//   4. all-to-all #2 returns each rank its rows of the result;
//   5. local: NorMuon / NorDion2 normalization of the returned rows with the local V (the two
//      Frobenius sums of the restore are all-reduced, so it is the whole matrix's), selective
//      decay of the selected momentum rows, W ← W·(1 − lr·wd) − lr_eff·O on the shard.
// Dion2 selects rows (the sharded dimension, so the ℓ1 norms are local):
//   local scope:  k_local = max(1, ceil(fraction·ceil(rows/W))) rows of each shard (all of a
//                 shorter shard): the ℓ1 top rows of the shard, or for random selection the shard
//                 rows with the smallest hash_u64(seed, step, p, global row) — every shard gives
//                 the same number of rows whatever their norms, so K differs from one process's.
//   global scope: the rows' ℓ1 norms are all-gathered (fp64) and every rank takes the same top-k
//                 of all rows with k = max(1, ceil(fraction·rows)), ties to the lower row: exactly
//                 the single-process selection along rows; random selection is the single-process
//                 draw (random_k_indices), with no communication at all.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "dist/counting_communicator.h"
#include "optim/cpu_optimizers.h"
#include "optim/distributed_cpu.h"
#include "optim/distributed_plan.h"
#include "optim/matrix_ops.h"
#include "optim/newton_schulz.h"
#include "optim/slice_select.h"

namespace og {
namespace {

class ShardedMatrixCpu final : public Optimizer {
 public:
  ShardedMatrixCpu(const OptimHParams& hp, std::vector<ParamSlot> params, Communicator& comm, bool global_scope)
      : hp_(hp), params_(std::move(params)), comm_(comm), global_(global_scope) {
    const Algorithm a = hp_.algorithm;
    selective_ = a == Algorithm::Dion2 || a == Algorithm::NorDion2;
    normalized_ = a == Algorithm::NorMuon || a == Algorithm::NorDion2;
    OG_CHECK(a == Algorithm::Muon || a == Algorithm::NorMuon || selective_, "internal: sharded matrix optimizer for {}",
             name_of(a));
    map_ = gather_shard_map(comm_, params_);
    const int W = comm_.size();
    std::vector<double> cost;
    std::vector<size_t> payload;
    for (size_t p = 0; p < params_.size(); ++p) {
      const ParamSlot& s = params_[p];
      const size_t local = (size_t)s.shard_rows() * (size_t)s.cols;
      momentum_.emplace_back(local, 0.0f);
      if (normalized_) variance_.emplace_back(s.shard_rows(), 0.0f);
      int64_t k = s.rows;  // rows the owner orthonormalizes
      if (selective_) {
        if (global_) {
          k = select_count(hp_.fraction, s.rows);
        } else {
          k = 0;
          for (int r = 0; r < W; ++r) k += std::min(local_select_count(hp_.fraction, s.rows, W), map_.nrows[p][r]);
        }
      }
      cost.push_back(ns_cost(k, s.cols));
      payload.push_back((size_t)map_.max_rows[p] * (size_t)s.cols);  // Muon's; Dion2 re-lays out per step
    }
    plan_ = plan_owners(cost, payload, W);
    count_.assign(params_.size(), std::vector<int64_t>(W, 0));
    sel_.resize(params_.size());
  }

  Algorithm algorithm() const override { return hp_.algorithm; }

  void step(const StepContext& ctx) override {
    check_step_context(ctx, hp_.algorithm);
    comm_.reset();
    const bool bf16 = hp_.state_dtype == StateDtype::BF16;
    const int me = comm_.rank(), W = comm_.size();
    const size_t np = params_.size();

    // 1. local momentum; `part` = the rows of each matrix this rank sends (U shard, or M[K_mine])
    std::vector<const float*> part(np);
    std::vector<std::vector<float>> u(np);
    if (selective_) {
      accumulate(bf16);
      select(ctx);
      std::vector<size_t> payload(np);
      for (size_t p = 0; p < np; ++p)
        payload[p] = (size_t)*std::max_element(count_[p].begin(), count_[p].end()) * (size_t)params_[p].cols;
      relayout(plan_, payload);
    } else {
      for (size_t p = 0; p < np; ++p) {
        u[p].resize(momentum_[p].size());
        muon_momentum(p, bf16, u[p].data());
        part[p] = u[p].data();
        for (int r = 0; r < W; ++r) count_[p][r] = map_.nrows[p][r];
      }
    }

    // 2. parts to the owners
    const size_t B = plan_.block;
    send_.assign((size_t)W * B, 0.0f);
    recv_.assign((size_t)W * B, 0.0f);
    for (size_t p = 0; p < np; ++p) {
      const ParamSlot& s = params_[p];
      float* dst = send_.data() + (size_t)plan_.owner[p] * B + plan_.offset[p];
      if (selective_) {
        for (size_t i = 0; i < sel_[p].size(); ++i)
          std::memcpy(dst + i * s.cols, momentum_[p].data() + sel_[p][i] * s.cols, s.cols * sizeof(float));
      } else if (!u[p].empty()) {
        std::memcpy(dst, part[p], u[p].size() * sizeof(float));
      }
    }
    comm_.all_to_all(send_.data(), recv_.data(), B, DType::F32);

    // 3. the owner stacks the parts in row order and orthonormalizes
    std::vector<std::vector<float>> whole(np);
    std::vector<NsJob> jobs;
    for (size_t p : plan_.owned[me]) {
      const ParamSlot& s = params_[p];
      int64_t total = 0;
      for (int r = 0; r < W; ++r) total += count_[p][r];
      whole[p].resize((size_t)total * s.cols);
      int64_t row = 0;
      for (int r : map_.order[p]) {
        const size_t n = (size_t)count_[p][r] * s.cols;
        std::memcpy(whole[p].data() + row * s.cols, recv_.data() + (size_t)r * B + plan_.offset[p], n * sizeof(float));
        row += count_[p][r];
      }
      NsJob job;
      job.src = NsSource{whole[p].data(), total, s.cols, s.cols};
      job.out = whole[p].data();
      job.ld_out = s.cols;
      jobs.push_back(job);
    }
    orthonormalize_batch(hp_.ortho, jobs, hp_.eps);

    // 4. every rank's rows of the result go back
    std::fill(send_.begin(), send_.end(), 0.0f);
    for (size_t p : plan_.owned[me]) {
      const ParamSlot& s = params_[p];
      int64_t row = 0;
      for (int r : map_.order[p]) {
        const size_t n = (size_t)count_[p][r] * s.cols;
        std::memcpy(send_.data() + (size_t)r * B + plan_.offset[p], whole[p].data() + row * s.cols, n * sizeof(float));
        row += count_[p][r];
      }
    }
    comm_.all_to_all(send_.data(), recv_.data(), B, DType::F32);

    // 5. apply on the shard
    std::vector<float*> o(np);
    for (size_t p = 0; p < np; ++p) o[p] = recv_.data() + (size_t)plan_.owner[p] * B + plan_.offset[p];
    if (normalized_) normalize(o, bf16);
    const double decay_w = 1.0 - (double)ctx.lr * (double)hp_.weight_decay;
    for (size_t p = 0; p < np; ++p) {
      const ParamSlot& s = params_[p];
      const int64_t n = s.shard_rows();
      if (n == 0) continue;
      const float lr_eff = adjusted_lr(ctx.lr, hp_.adjust_lr, s.rows, s.cols);  // the WHOLE shape
      if (!selective_) {
        decay_and_add(s.w, o[p], (size_t)n * s.cols, decay_w, lr_eff);
        continue;
      }
      float* m = momentum_[p].data();
      if (hp_.ef) scale_slices(m, n, s.cols, SliceAxis::Rows, sel_[p], decay_m(), bf16);
      decay_and_add_slices(s.w, n, s.cols, SliceAxis::Rows, sel_[p], o[p], decay_w, lr_eff);
      if (!hp_.ef)
        for (float& x : momentum_[p]) {
          const float v = (float)((double)x * decay_m());
          x = bf16 ? round_bf16(v) : v;
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

  std::map<std::string, double> stats() const override { return stats_; }

  // The selected rows of parameter p at the last step, as rows of the WHOLE matrix (tests).
  std::vector<int64_t> selected_global(size_t p) const {
    std::vector<int64_t> out;
    for (int64_t i : sel_[p]) out.push_back(params_[p].row0 + i);
    return out;
  }

 private:
  double decay_m() const { return hp_.algorithm == Algorithm::NorDion2 ? hp_.mu : hp_.ef_decay; }

  void muon_momentum(size_t p, bool bf16, float* u) {
    const ParamSlot& s = params_[p];
    const double mu = hp_.mu;
    float* m = momentum_[p].data();
    const size_t n = momentum_[p].size();
    muon_momentum_update(m, u, s.g, n, mu, hp_.nesterov, bf16);
  }

  void accumulate(bool bf16) {
    for (size_t p = 0; p < params_.size(); ++p) {
      const ParamSlot& s = params_[p];
      float* m = momentum_[p].data();
      const size_t n = momentum_[p].size();
      accumulate_momentum(m, s.g, n, bf16);
    }
  }

  // sel_[p]: this rank's selected rows (shard-local, ascending); count_[p][r]: every rank's count.
  void select(const StepContext& ctx) {
    const int me = comm_.rank(), W = comm_.size();
    const size_t np = params_.size();
    if (!global_) {
      for (size_t p = 0; p < np; ++p) {
        const ParamSlot& s = params_[p];
        const int64_t k_local = local_select_count(hp_.fraction, s.rows, W);
        for (int r = 0; r < W; ++r) count_[p][r] = std::min(k_local, map_.nrows[p][r]);
        const int64_t n = s.shard_rows(), k = count_[p][me];
        sel_[p].clear();
        if (n == 0) continue;
        if (hp_.select == Select::L1) {
          l1_slice_norms(momentum_[p].data(), n, s.cols, SliceAxis::Rows, score_);
          top_k_indices(score_, k, sel_[p]);
        } else {  // the shard rows with the smallest keys of the global rows
          std::vector<uint64_t> key(n);
          for (int64_t i = 0; i < n; ++i)
            key[i] = hash_u64(hp_.seed, (uint64_t)ctx.step, (uint64_t)p, (uint64_t)(s.row0 + i));
          std::vector<int64_t> idx(n);
          for (int64_t i = 0; i < n; ++i) idx[i] = i;
          std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(),
                           [&](int64_t a, int64_t b) { return key[a] < key[b] || (key[a] == key[b] && a < b); });
          idx.resize(k);
          std::sort(idx.begin(), idx.end());
          sel_[p] = idx;
        }
      }
      return;
    }
    // Global scope: the single-process selection over all rows.
    std::vector<double> all_scores;
    if (hp_.select == Select::L1) {
      size_t per_rank = 0;
      for (size_t p = 0; p < np; ++p) per_rank += (size_t)map_.max_rows[p];
      std::vector<double> mine(per_rank, 0.0);
      size_t off = 0;
      for (size_t p = 0; p < np; ++p) {
        const ParamSlot& s = params_[p];
        if (s.shard_rows() > 0) {
          l1_slice_norms(momentum_[p].data(), s.shard_rows(), s.cols, SliceAxis::Rows, score_);
          std::copy(score_.begin(), score_.end(), mine.begin() + off);
        }
        off += (size_t)map_.max_rows[p];
      }
      all_scores.resize(per_rank * W);
      comm_.all_gather(mine.data(), all_scores.data(), per_rank, DType::F64);
      std::vector<double> whole;
      std::vector<int64_t> global;
      off = 0;
      for (size_t p = 0; p < np; ++p) {
        const ParamSlot& s = params_[p];
        whole.assign(s.rows, 0.0);
        for (int r = 0; r < W; ++r)
          for (int64_t i = 0; i < map_.nrows[p][r]; ++i)
            whole[map_.row0[p][r] + i] = all_scores[r * per_rank + off + i];
        off += (size_t)map_.max_rows[p];
        top_k_indices(whole, select_count(hp_.fraction, s.rows), global);
        split_global(p, global);
      }
    } else {
      std::vector<int64_t> global;
      for (size_t p = 0; p < np; ++p) {
        const ParamSlot& s = params_[p];
        random_k_indices(hp_.seed, ctx.step, (int64_t)p, s.rows, select_count(hp_.fraction, s.rows), global);
        split_global(p, global);
      }
    }
  }

  // From the global selection (ascending rows of the whole matrix): every rank's count, and
  // this rank's rows as shard-local indices.
  void split_global(size_t p, const std::vector<int64_t>& global) {
    const int me = comm_.rank(), W = comm_.size();
    sel_[p].clear();
    for (int r = 0; r < W; ++r) {
      const int64_t lo = map_.row0[p][r], hi = lo + map_.nrows[p][r];
      int64_t c = 0;
      for (int64_t g : global)
        if (g >= lo && g < hi) {
          ++c;
          if (r == me) sel_[p].push_back(g - lo);
        }
      count_[p][r] = c;
    }
  }

  // NorMuon's rule (normuon_normalize.h) on this rank's rows of every O, with V sharded: the row
  // statistics and V are local, the Frobenius restore needs the sums over all rows of the
  // matrix — ‖O‖² and ‖O/(√V+ε)‖² — which one all-reduce provides.
  void normalize(const std::vector<float*>& o, bool bf16) {
    constexpr double kEps = 1e-8;
    const size_t np = params_.size();
    std::vector<double> sums(2 * np, 0.0);
    std::vector<std::vector<double>> inv(np);
    for (size_t p = 0; p < np; ++p) {
      const ParamSlot& s = params_[p];
      const int64_t k = selective_ ? (int64_t)sel_[p].size() : s.shard_rows();
      inv[p].resize(k);
      for (int64_t i = 0; i < k; ++i) {
        const float* row = o[p] + i * s.cols;
        double sq = 0.0;
        for (int64_t j = 0; j < s.cols; ++j) sq += (double)row[j] * (double)row[j];
        float& v = variance_[p][selective_ ? sel_[p][i] : i];
        const double vr = (double)v + (1.0 - hp_.beta2) * (sq / (double)s.cols - (double)v);
        v = bf16 ? round_bf16((float)vr) : (float)vr;
        inv[p][i] = 1.0 / (std::sqrt(vr) + kEps);
        sums[2 * p] += sq;
        sums[2 * p + 1] += sq * inv[p][i] * inv[p][i];
      }
    }
    comm_.all_reduce(sums.data(), sums.size(), DType::F64, ReduceOp::Sum);
    for (size_t p = 0; p < np; ++p) {
      const double restore = std::sqrt(sums[2 * p]) / std::max(std::sqrt(sums[2 * p + 1]), kEps);
      for (size_t i = 0; i < inv[p].size(); ++i) {
        float* row = o[p] + i * params_[p].cols;
        const double f = inv[p][i] * restore;
        for (int64_t j = 0; j < params_[p].cols; ++j) row[j] = (float)((double)row[j] * f);
      }
    }
  }

  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  CountingCommunicator comm_;
  bool global_ = false, selective_ = false, normalized_ = false;
  ShardMap map_;
  OwnerPlan plan_;
  std::vector<std::vector<float>> momentum_, variance_;
  std::vector<std::vector<int64_t>> count_, sel_;
  std::vector<double> score_;
  std::vector<float> send_, recv_;
  std::map<std::string, double> stats_;
};

}  // namespace

std::unique_ptr<Optimizer> make_sharded_matrix_cpu(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                   Communicator& comm, bool global_scope) {
  return std::make_unique<ShardedMatrixCpu>(hp, std::move(params), comm, global_scope);
}

}  // namespace og
