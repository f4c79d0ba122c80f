// Dion on the CPU (fp32 reference): low-rank power iteration with error feedback.
// Per matrix, in the tall-or-square orientation B (B = M, or M^T for a wide parameter):
//   M <- M + G;  P <- orthonormalize(B Q);  R <- B^T P
//   (B all zero: P = 0, R = Q_old; otherwise non-finite entries of P, R become 0)
//   M <- M - (1 - mu) P R^T;  Q <- R / (column norms + 1e-8)
//   W <- W (1 - lr wd) - lr_eff P Q^T
// See OPTIMIZERS.md "Dion" and notes/dion-reference-spec.md §3.5. Every random draw comes from
// (hp.seed, step, parameter index) (optim/dion_shape.h), so state() is the whole state.
//
// Row shards (FSDP, make_dion_cpu with a communicator): rank r holds rows [row0, row0 + m_r) of M,
// G and W, and everything stays local except sums over the rows, all-reduced:
//   B = M (tall):  P_r = M_r Q (local rows of P); orthonormalize P with its Gram / sketch sums
//                  all-reduced (dion_linalg.h RowSplit); R = sum_r M_r^T P_r (all-reduce, n x r);
//                  Q = R / norms is replicated; M_r -= (1-mu) P_r R^T; W_r -= lr_eff P_r Q^T.
//   B = M^T (wide): Q's rows follow M's (Q_r local); P = sum_r M_r^T Q_r (all-reduce, n x r) is
//                  orthonormalized identically on every rank; R_r = M_r P; the column norms of R
//                  are all-reduced; M_r -= (1-mu) R_r P^T; W_r -= lr_eff Q_r P^T.
// Per matrix and step that is O((n + sketch rows) r) floats, never M itself; the result equals
// one process's up to the order of the sums.
#include "optim/dion.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/gemm_cpu.h"
#include "core/rng.h"
#include "dist/counting_communicator.h"
#include "optim/dion_linalg.h"
#include "optim/dion_shape.h"
#include "optim/distributed_plan.h"

namespace og {
namespace {

using dion::DionShape;

constexpr float kColumnNormEps = 1e-8f;  // Q <- R / (||R_j|| + eps), as the reference

struct DionMatrix {
  ParamSlot slot;
  size_t index = 0;          // position in the group: seeds Q's init and the sketches
  DionShape shape;           // of the whole parameter
  int64_t row0 = 0, mr = 0;  // this rank's rows of M (all of them in one process)
  dion::RowSplit split;      // P's rows over the ranks (B = M, sharded only)
  // The state, in exactly one of the two storages (hp.state_dtype).
  std::vector<float> momentum, q;         // F32: mr*n, and Q's rows here (cols_b*r, or mr*r for B = M^T)
  std::vector<uint16_t> momentum16, q16;  // BF16
  size_t local_numel() const { return (size_t)mr * (size_t)shape.n; }
  int64_t q_rows() const { return shape.transposed ? mr : shape.cols_b; }
};

class DionCpu final : public Optimizer {
 public:
  DionCpu(const OptimHParams& hp, std::vector<ParamSlot> params, Communicator* comm) : hp_(hp) {
    if (comm) comm_ = std::make_unique<CountingCommunicator>(*comm);
    OG_CHECK(hp.algorithm == Algorithm::Dion, "make_dion_cpu called for algorithm {}", name_of(hp.algorithm));
    OG_CHECK(hp.rank_fraction > 0.0f && hp.rank_fraction <= 1.0f, "dion: rank_fraction must be in (0, 1], got {}",
             hp.rank_fraction);
    OG_CHECK(hp.cqr_warmup_steps >= 0, "dion: cqr_warmup_steps must be >= 0, got {}", hp.cqr_warmup_steps);
    OG_CHECK(std::isfinite(hp.mu), "dion: mu must be finite, got {}", hp.mu);
    const bool bf16 = hp.state_dtype == StateDtype::BF16;
    for (size_t i = 0; i < params.size(); ++i) {
      const ParamSlot& p = params[i];
      OG_CHECK(p.role == ParamRole::Matrix,
               "dion: parameter {} has role {}; only matrix parameters can use dion (give embedding, "
               "lm_head and vectors to adamw or lion)",
               p.name, role_name(p.role));
      OG_CHECK(p.rows > 0 && p.cols > 0, "dion: parameter {} has an empty shape ({}, {})", p.name, p.rows, p.cols);
      OG_CHECK((p.w && p.g) || p.shard_rows() == 0, "dion: parameter {} has no weight or gradient buffer", p.name);
      OG_CHECK(comm || (p.row0 == 0 && p.shard_rows() == p.rows),
               "dion: parameter {} is a row shard, which needs a communicator", p.name);
      DionMatrix d;
      d.slot = p;
      d.index = i;
      d.shape = dion::dion_shape(p.rows, p.cols, hp.rank_fraction);
      d.row0 = p.row0;
      d.mr = p.shard_rows();
      const int64_t r = d.shape.r;
      // Q's initial draw is of the whole cols_b x r matrix on every rank; B = M^T keeps its rows here.
      std::vector<float> q0((size_t)d.shape.cols_b * r);
      Rng rng(dion::dion_q_init_seed(hp.seed, i));
      for (auto& x : q0) x = (float)rng.normal();
      if (d.shape.transposed) q0 = std::vector<float>(q0.begin() + d.row0 * r, q0.begin() + (d.row0 + d.mr) * r);
      const size_t qn = q0.size();
      if (bf16) {
        d.momentum16.assign(d.local_numel(), 0);
        d.q16.resize(qn);
        for (size_t k = 0; k < qn; ++k) d.q16[k] = bf16_bits_from_float(q0[k]);
      } else {
        d.momentum.assign(d.local_numel(), 0.0f);
        d.q = std::move(q0);
      }
      max_numel_ = std::max(max_numel_, d.local_numel());
      // P: rows_b x r (B = M^T: whole; B = M: this rank's rows); R: cols_b x r (B = M^T: this rank's rows)
      max_p_ = std::max(max_p_, (size_t)(d.shape.transposed ? d.shape.rows_b : d.mr) * r);
      max_q_ = std::max(max_q_, (size_t)(d.shape.transposed ? d.mr : d.shape.cols_b) * r);
      mats_.push_back(std::move(d));
    }
    if (comm_) {
      // P's row blocks (B = M): sums of the Gram / sketch products, and the whole P on the
      // Householder path, gathered in rank order and laid out by row0.
      const ShardMap map = gather_shard_map(*comm_, params);
      for (size_t i = 0; i < mats_.size(); ++i) {
        DionMatrix& d = mats_[i];
        d.split.m_global = d.shape.m;
        d.split.row0 = d.row0;
        d.split.sum = [this](double* x, size_t count) { comm_->all_reduce(x, count, DType::F64, ReduceOp::Sum); };
        const int64_t r = d.shape.r;
        std::vector<int64_t> row0 = map.row0[i], nrows = map.nrows[i];
        d.split.gather_rows = [this, row0, nrows, r](const float* mine, float* whole) {
          std::vector<size_t> counts;
          size_t total = 0;
          for (int64_t n : nrows) counts.push_back((size_t)(n * r)), total += (size_t)(n * r);
          std::vector<float> by_rank(total);
          comm_->all_gatherv(mine, by_rank.data(), counts, DType::F32);
          size_t off = 0;
          for (size_t k = 0; k < nrows.size(); ++k) {
            std::copy(by_rank.begin() + off, by_rank.begin() + off + counts[k], whole + row0[k] * r);
            off += counts[k];
          }
        };
      }
    }
  }

  Algorithm algorithm() const override { return Algorithm::Dion; }

  void step(const StepContext& ctx) override {
    if (comm_) comm_->reset();
    step_count_ += 1.0f;
    const int64_t step = std::llround(step_count_);
    const bool bf16 = hp_.state_dtype == StateDtype::BF16;
    p_.resize(max_p_);
    r_.resize(max_q_);
    if (bf16) {
      m32_.resize(max_numel_);
      q32_.resize(max_q_);
    }
    double ef_ratio_sum = 0.0;
    int ef_count = 0, fallbacks = 0;
    for (DionMatrix& d : mats_) {
      const size_t mn = d.local_numel(), qn = (size_t)d.q_rows() * d.shape.r;
      float* M = bf16 ? m32_.data() : d.momentum.data();
      float* Q = bf16 ? q32_.data() : d.q.data();
      if (bf16) {
        for (size_t k = 0; k < mn; ++k) M[k] = float_from_bf16_bits(d.momentum16[k]);
        for (size_t k = 0; k < qn; ++k) Q[k] = float_from_bf16_bits(d.q16[k]);
      }
      const MatrixStats s = step_matrix(d, M, Q, ctx.lr, step);
      if (s.ef_ratio >= 0.0) {
        ef_ratio_sum += s.ef_ratio;
        ++ef_count;
      }
      fallbacks += s.fallbacks;
      if (bf16) {
        for (size_t k = 0; k < mn; ++k) d.momentum16[k] = bf16_bits_from_float(M[k]);
        for (size_t k = 0; k < qn; ++k) d.q16[k] = bf16_bits_from_float(Q[k]);
      }
    }
    stats_.clear();
    if (comm_) stats_["comm_bytes"] = comm_->total_bytes();
    if (hp_.diagnostics) {
      stats_["dion_ef_residual"] = ef_count ? ef_ratio_sum / ef_count : 0.0;
      stats_["dion_ortho_fallbacks"] = (double)fallbacks;
    }
  }

  std::vector<StateTensor> state() override {
    std::vector<StateTensor> out;
    const bool bf16 = hp_.state_dtype == StateDtype::BF16;
    // Q's rows follow M's rows for a wide matrix (row-sharded under FSDP); a tall one's Q is replicated.
    for (DionMatrix& d : mats_) {
      const bool q_replicated = !d.shape.transposed;
      if (bf16) {
        out.push_back(
            {d.slot.name + "/momentum", d.momentum16.data(), d.momentum16.size(), StateDtype::BF16, Device::CPU});
        out.push_back({d.slot.name + "/Q", d.q16.data(), d.q16.size(), StateDtype::BF16, Device::CPU, q_replicated});
      } else {
        out.push_back({d.slot.name + "/momentum", d.momentum.data(), d.momentum.size(), StateDtype::F32, Device::CPU});
        out.push_back({d.slot.name + "/Q", d.q.data(), d.q.size(), StateDtype::F32, Device::CPU, q_replicated});
      }
    }
    out.push_back({"dion/step", &step_count_, 1, StateDtype::F32, Device::CPU, true});
    return out;
  }

  std::map<std::string, double> stats() const override { return stats_; }

 private:
  struct MatrixStats {
    double ef_ratio = -1.0;  // ||M after error feedback||_F / ||M before||_F; < 0: not computed
    int fallbacks = 0;
  };

  // One Dion step of one matrix; M (this rank's mr x n rows) and Q (q_rows() x r) are fp32
  // working copies. In one process (no comm_) every sum below is over local rows only.
  MatrixStats step_matrix(DionMatrix& d, float* M, float* Q, float lr, int64_t step) {
    const DionShape& sh = d.shape;
    const int64_t m = sh.m, n = sh.n, mr = d.mr, r = sh.r;
    const size_t mn = d.local_numel();
    const bool tr = sh.transposed;
    float* P = p_.data();  // B = M: mr x r (this rank's rows); B = M^T: n x r (all of P)
    float* R = r_.data();  // B = M: n x r (all of R);          B = M^T: mr x r (this rank's rows)
    const int64_t p_rows = tr ? n : mr, r_rows = tr ? mr : n;
    MatrixStats st;

    double nonzero = 0.0;
    for (size_t k = 0; k < mn; ++k) {
      M[k] += d.slot.g[k];
      nonzero += M[k] != 0.0f ? 1.0 : 0.0;
    }
    double sums[2] = {nonzero, hp_.diagnostics ? sum_squares(M, mn) : 0.0};
    if (comm_) comm_->all_reduce(sums, 2, DType::F64, ReduceOp::Sum);
    const bool all_zero = sums[0] == 0.0;
    const double norm_before = std::sqrt(sums[1]);

    if (all_zero) {
      // Nothing to approximate: P = 0 (no error feedback, no update) and R = Q_old.
      std::fill(P, P + p_rows * r, 0.0f);
      std::copy(Q, Q + r_rows * r, R);
    } else {
      const bool try_cqr = hp_.cqr_warmup_steps > 0 && step > hp_.cqr_warmup_steps;
      const uint64_t sketch_seed = dion::dion_sketch_seed(hp_.seed, step, d.index);
      if (!tr) {
        // P = M Q (rows local); orthonormalize across the row blocks; R = M^T P, summed.
        cpu::gemm<float>(false, false, mr, r, n, 1.0f, M, n, Q, r, 0.0f, P, r);
        st.fallbacks =
            dion::orthonormalize_columns(mr, r, P, try_cqr, sketch_seed, comm_ ? &d.split : nullptr).fallbacks;
        cpu::gemm<float>(true, false, n, r, mr, 1.0f, M, n, P, r, 0.0f, R, r);
        if (comm_) comm_->all_reduce(R, (size_t)(n * r), DType::F32, ReduceOp::Sum);
      } else {
        // P = M^T Q (a sum over the row blocks), orthonormalized alike everywhere; R = M P (rows local).
        cpu::gemm<float>(true, false, n, r, mr, 1.0f, M, n, Q, r, 0.0f, P, r);
        if (comm_) comm_->all_reduce(P, (size_t)(n * r), DType::F32, ReduceOp::Sum);
        st.fallbacks = dion::orthonormalize_columns(n, r, P, try_cqr, sketch_seed).fallbacks;
        cpu::gemm<float>(false, false, mr, r, n, 1.0f, M, n, P, r, 0.0f, R, r);
      }
      zero_non_finite(P, p_rows * r);
      zero_non_finite(R, r_rows * r);
    }

    // Error feedback M -= (1 - mu) P R^T in B's orientation: M = B (P R^T) or B^T (R P^T).
    const float ef_alpha = -(1.0f - hp_.mu);
    if (!tr)
      cpu::gemm<float>(false, true, mr, n, r, ef_alpha, P, r, R, r, 1.0f, M, n);
    else
      cpu::gemm<float>(false, true, mr, n, r, ef_alpha, R, r, P, r, 1.0f, M, n);
    if (hp_.diagnostics) {
      double after = sum_squares(M, mn);
      if (comm_) comm_->all_reduce(&after, 1, DType::F64, ReduceOp::Sum);
      if (norm_before > 0.0) st.ef_ratio = std::sqrt(after) / norm_before;
    }

    // Q <- R with unit columns (norms in double, over all cols_b rows of R).
    std::vector<double>& ss = colsq_;
    ss.assign(r, 0.0);
    for (int64_t i = 0; i < r_rows; ++i)
      for (int64_t j = 0; j < r; ++j) ss[j] += (double)R[i * r + j] * R[i * r + j];
    if (comm_ && tr) comm_->all_reduce(ss.data(), ss.size(), DType::F64, ReduceOp::Sum);
    for (int64_t j = 0; j < r; ++j) {
      const float denom = (float)std::sqrt(ss[j]) + kColumnNormEps;
      for (int64_t i = 0; i < r_rows; ++i) Q[i * r + j] = R[i * r + j] / denom;
    }

    // W <- W (1 - lr wd) - lr_eff (P Q^T), transposed back for a wide parameter (Q P^T).
    const float lr_eff = adjusted_lr(lr, hp_.adjust_lr, m, n);
    const float decay = 1.0f - lr * hp_.weight_decay;
    float* W = d.slot.w;
    if (!tr)
      cpu::gemm<float>(false, true, mr, n, r, -lr_eff, P, r, Q, r, decay, W, n);
    else
      cpu::gemm<float>(false, true, mr, n, r, -lr_eff, Q, r, P, r, decay, W, n);
    return st;
  }

  static double sum_squares(const float* x, size_t n) {
    double s = 0.0;
    for (size_t k = 0; k < n; ++k) s += (double)x[k] * x[k];
    return s;
  }
  static void zero_non_finite(float* x, int64_t n) {
    for (int64_t k = 0; k < n; ++k)
      if (!std::isfinite(x[k])) x[k] = 0.0f;
  }

  OptimHParams hp_;
  std::vector<DionMatrix> mats_;
  float step_count_ = 0.0f;  // steps taken; a float so it checkpoints like every other state
  size_t max_numel_ = 0, max_p_ = 0, max_q_ = 0;
  std::vector<float> p_, r_, m32_, q32_;  // scratch
  std::vector<double> colsq_;             // scratch: R's column sums of squares
  std::map<std::string, double> stats_;
  std::unique_ptr<CountingCommunicator> comm_;  // row shards only
};

}  // namespace

std::unique_ptr<Optimizer> make_dion_cpu(const OptimHParams& hp, std::vector<ParamSlot> params, Communicator* comm) {
  return std::make_unique<DionCpu>(hp, std::move(params), comm);
}

}  // namespace og
