// Dion on the CPU (fp32 reference): low-rank power iteration with error feedback.
// Per matrix, in the tall-or-square orientation B (B = M, or M^T for a wide parameter):
//   M <- M + G;  P <- orthonormalize(B Q);  R <- B^T P
//   (B all zero: P = 0, R = Q_old; otherwise non-finite entries of P, R become 0)
//   M <- M - (1 - mu) P R^T;  Q <- R / (column norms + 1e-8)
//   W <- W (1 - lr wd) - lr_eff P Q^T
// See OPTIMIZERS.md "Dion" and notes/dion-reference-spec.md §3.5. Every random draw comes from
// (hp.seed, step, parameter index) (optim/dion_shape.h), so state() is the whole state.
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
#include "optim/dion_linalg.h"
#include "optim/dion_shape.h"

namespace og {
namespace {

using dion::DionShape;

constexpr float kColumnNormEps = 1e-8f;  // Q <- R / (||R_j|| + eps), as the reference

struct DionMatrix {
  ParamSlot slot;
  size_t index = 0;  // position in the group: seeds Q's init and the sketches
  DionShape shape;
  // The state, in exactly one of the two storages (hp.state_dtype).
  std::vector<float> momentum, q;         // F32: m*n and cols_b*r
  std::vector<uint16_t> momentum16, q16;  // BF16
};

class DionCpu final : public Optimizer {
 public:
  DionCpu(const OptimHParams& hp, std::vector<ParamSlot> params) : hp_(hp) {
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
      OG_CHECK(p.w && p.g, "dion: parameter {} has no weight or gradient buffer", p.name);
      DionMatrix d;
      d.slot = p;
      d.index = i;
      d.shape = dion::dion_shape(p.rows, p.cols, hp.rank_fraction);
      const size_t qn = (size_t)d.shape.cols_b * d.shape.r;
      std::vector<float> q0(qn);
      Rng rng(dion::dion_q_init_seed(hp.seed, i));
      for (auto& x : q0) x = (float)rng.normal();
      if (bf16) {
        d.momentum16.assign(p.numel(), 0);
        d.q16.resize(qn);
        for (size_t k = 0; k < qn; ++k) d.q16[k] = bf16_bits_from_float(q0[k]);
      } else {
        d.momentum.assign(p.numel(), 0.0f);
        d.q = std::move(q0);
      }
      max_numel_ = std::max(max_numel_, p.numel());
      max_p_ = std::max(max_p_, (size_t)d.shape.rows_b * d.shape.r);
      max_q_ = std::max(max_q_, qn);
      mats_.push_back(std::move(d));
    }
  }

  Algorithm algorithm() const override { return Algorithm::Dion; }

  void step(const StepContext& ctx) override {
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
      const size_t mn = d.slot.numel(), qn = (size_t)d.shape.cols_b * d.shape.r;
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
    if (hp_.diagnostics) {
      stats_["dion_ef_residual"] = ef_count ? ef_ratio_sum / ef_count : 0.0;
      stats_["dion_ortho_fallbacks"] = (double)fallbacks;
    }
  }

  std::vector<StateTensor> state() override {
    std::vector<StateTensor> out;
    const bool bf16 = hp_.state_dtype == StateDtype::BF16;
    for (DionMatrix& d : mats_) {
      if (bf16) {
        out.push_back(
            {d.slot.name + "/momentum", d.momentum16.data(), d.momentum16.size(), StateDtype::BF16, Device::CPU});
        out.push_back({d.slot.name + "/Q", d.q16.data(), d.q16.size(), StateDtype::BF16, Device::CPU});
      } else {
        out.push_back({d.slot.name + "/momentum", d.momentum.data(), d.momentum.size(), StateDtype::F32, Device::CPU});
        out.push_back({d.slot.name + "/Q", d.q.data(), d.q.size(), StateDtype::F32, Device::CPU});
      }
    }
    out.push_back({"dion/step", &step_count_, 1, StateDtype::F32, Device::CPU});
    return out;
  }

  std::map<std::string, double> stats() const override { return stats_; }

 private:
  struct MatrixStats {
    double ef_ratio = -1.0;  // ||M after error feedback||_F / ||M before||_F; < 0: not computed
    int fallbacks = 0;
  };

  // One Dion step of one matrix; M (m x n) and Q (cols_b x r) are fp32 working copies.
  MatrixStats step_matrix(DionMatrix& d, float* M, float* Q, float lr, int64_t step) {
    const DionShape& sh = d.shape;
    const int64_t m = sh.m, n = sh.n, rb = sh.rows_b, cb = sh.cols_b, r = sh.r;
    const size_t mn = d.slot.numel();
    const bool tr = sh.transposed;
    float* P = p_.data();  // rows_b x r
    float* R = r_.data();  // cols_b x r
    MatrixStats st;

    bool all_zero = true;
    for (size_t k = 0; k < mn; ++k) {
      M[k] += d.slot.g[k];
      all_zero = all_zero && M[k] == 0.0f;
    }
    const double norm_before = hp_.diagnostics ? frobenius(M, mn) : 0.0;

    if (all_zero) {
      // Nothing to approximate: P = 0 (no error feedback, no update) and R = Q_old.
      std::fill(P, P + rb * r, 0.0f);
      std::copy(Q, Q + cb * r, R);
    } else {
      // P = B Q; B = M (m x n) or M^T.
      cpu::gemm<float>(tr, false, rb, r, cb, 1.0f, M, n, Q, r, 0.0f, P, r);
      const bool try_cqr = hp_.cqr_warmup_steps > 0 && step > hp_.cqr_warmup_steps;
      const dion::OrthoResult o =
          dion::orthonormalize_columns(rb, r, P, try_cqr, dion::dion_sketch_seed(hp_.seed, step, d.index));
      st.fallbacks = o.fallbacks;
      // R = B^T P: M^T P (cols n) or M P (cols_b = m).
      cpu::gemm<float>(!tr, false, cb, r, rb, 1.0f, M, n, P, r, 0.0f, R, r);
      zero_non_finite(P, rb * r);
      zero_non_finite(R, cb * r);
    }

    // Error feedback M -= (1 - mu) P R^T in B's orientation: M = B (P R^T) or B^T (R P^T).
    const float ef_alpha = -(1.0f - hp_.mu);
    if (!tr)
      cpu::gemm<float>(false, true, m, n, r, ef_alpha, P, r, R, r, 1.0f, M, n);
    else
      cpu::gemm<float>(false, true, m, n, r, ef_alpha, R, r, P, r, 1.0f, M, n);
    if (hp_.diagnostics && norm_before > 0.0) st.ef_ratio = frobenius(M, mn) / norm_before;

    // Q <- R with unit columns (norms in double).
    for (int64_t j = 0; j < r; ++j) {
      double ss = 0.0;
      for (int64_t i = 0; i < cb; ++i) ss += (double)R[i * r + j] * R[i * r + j];
      const float denom = (float)std::sqrt(ss) + kColumnNormEps;
      for (int64_t i = 0; i < cb; ++i) Q[i * r + j] = R[i * r + j] / denom;
    }

    // W <- W (1 - lr wd) - lr_eff (P Q^T), transposed back for a wide parameter (Q P^T).
    const float lr_eff = adjusted_lr(lr, hp_.adjust_lr, m, n);
    const float decay = 1.0f - lr * hp_.weight_decay;
    float* W = d.slot.w;
    if (!tr)
      cpu::gemm<float>(false, true, m, n, r, -lr_eff, P, r, Q, r, decay, W, n);
    else
      cpu::gemm<float>(false, true, m, n, r, -lr_eff, Q, r, P, r, decay, W, n);
    return st;
  }

  static double frobenius(const float* x, size_t n) {
    double s = 0.0;
    for (size_t k = 0; k < n; ++k) s += (double)x[k] * x[k];
    return std::sqrt(s);
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
  std::map<std::string, double> stats_;
};

}  // namespace

std::unique_ptr<Optimizer> make_dion_cpu(const OptimHParams& hp, std::vector<ParamSlot> params) {
  return std::make_unique<DionCpu>(hp, std::move(params));
}

}  // namespace og
