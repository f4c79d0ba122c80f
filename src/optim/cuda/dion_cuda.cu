// Dion on the GPU (OPTIMIZERS.md "Dion"), the CPU reference's step (optim/dion.cpp) batched over
// parameters of one shape. Per matrix, in the tall-or-square orientation B (M, or M^T for a
// wide parameter; optim/dion_shape.h):
//   M <- M + G;  P <- B Q;  P <- orthonormalize(P)  (dion_cuda_ortho.h);  R <- B^T P
//   (M all zero: P = 0, R = Q; otherwise non-finite entries of P, R become 0)
//   M <- M - (1 - mu) P R^T;  Q <- R / (column norms + 1e-8);  W <- W (1 - lr wd) - lr_eff P Q^T
//
// Per shape group and step: one accumulate kernel, four batched fp32 SGEMMs (cuBLAS, no TF32;
// row-major products written as their column-major transposes), the orthonormalization, and
// three small kernels. Everything is enqueued on one stream with no host synchronization: the
// all-zero test and the choice between orthonormalization methods are device flags. Of
// CudaOptimOptions only `stream` applies (the groups run one after another on it).
//
// State, as the CPU reference (same names and order, so checkpoints move between backends):
// "<param>/momentum" (rows x cols), "<param>/Q" (cols_b x r) in hp.state_dtype, and "dion/step"
// (a float). Q starts from the same og::Rng draws as on the CPU, so both backends start
// bit-identical. The step counter stays on the host (its StateTensor has device CPU): step()
// needs it to choose Cholesky-QR after the warm-up and to seed the sketch, without reading the
// device.
#include <cmath>
#include <map>
#include <memory>
#include <utility>

#include "core/bf16.h"
#include "core/rng.h"
#include "optim/cpu_optimizers.h"
#include "optim/cuda/blas.h"
#include "optim/cuda/chunk_table.h"
#include "optim/cuda/dion_cuda.h"
#include "optim/cuda/dion_cuda_kernels.h"
#include "optim/cuda/dion_cuda_ortho.h"
#include "optim/cuda/matrix_rules.h"
#include "optim/cuda/state_arena.h"
#include "optim/dion_shape.h"

namespace og::cuda {
namespace {

using dion::DionShape;

// Row-major C (m x n) = alpha op(A) op(B) + beta C for a batch of pointer triples (og::cpu::gemm's
// argument order), computed as the column-major C^T = op(B)^T op(A)^T.
void gemm_rm_batched(BlasContext& ctx, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, float* const* a,
                     int64_t lda, float* const* b, int64_t ldb, float beta, float* const* c, int64_t ldc, int count) {
  CUBLAS_CHECK(cublasSgemmBatched(ctx.blas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n,
                                  (int)m, (int)k, &alpha, (const float* const*)b, (int)ldb, (const float* const*)a,
                                  (int)lda, &beta, c, (int)ldc, count));
}

class CudaDion final : public CudaOptimizer {
 public:
  CudaDion(const OptimHParams& hp, std::vector<ParamSlot> params, const CudaOptimOptions& opt)
      : hp_(hp), params_(std::move(params)) {
    OG_CHECK(hp_.algorithm == Algorithm::Dion, "make_cuda_dion called for algorithm {}", name_of(hp_.algorithm));
    check_matrix_params(hp_, params_);
    OG_CHECK(hp_.rank_fraction > 0.0f && hp_.rank_fraction <= 1.0f, "dion: rank_fraction must be in (0, 1], got {}",
             hp_.rank_fraction);
    OG_CHECK(hp_.cqr_warmup_steps >= 0, "dion: cqr_warmup_steps must be >= 0, got {}", hp_.cqr_warmup_steps);
    OG_CHECK(std::isfinite(hp_.mu), "dion: mu must be finite, got {}", hp_.mu);
    CUBLAS_CHECK(cublasSetMathMode(blas_.blas(), CUBLAS_DEFAULT_MATH));  // fp32 SGEMM, no TF32
    set_stream(opt.stream);
    const bool bf16_state = hp_.state_dtype == StateDtype::BF16;
    const size_t nm = params_.size();

    // State: momentum zero, Q from the CPU reference's draws.
    std::vector<int64_t> numel, qnumel;
    std::vector<DionShape> shapes;
    for (const ParamSlot& p : params_) {
      shapes.push_back(dion::dion_shape(p.rows, p.cols, hp_.rank_fraction));
      numel.push_back((int64_t)p.numel());
      qnumel.push_back(shapes.back().cols_b * shapes.back().r);
    }
    momentum_.init(numel, hp_.state_dtype);
    q_.init(qnumel, hp_.state_dtype);
    for (size_t i = 0; i < nm; ++i) {
      Rng rng(dion::dion_q_init_seed(hp_.seed, i));
      std::vector<float> q0((size_t)qnumel[i]);
      for (float& x : q0) x = (float)rng.normal();
      if (bf16_state) {
        std::vector<uint16_t> bits(q0.size());
        for (size_t k = 0; k < q0.size(); ++k) bits[k] = bf16_bits_from_float(q0[k]);
        CUDA_CHECK(cudaMemcpy(q_.ptr(i), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
      } else {
        CUDA_CHECK(cudaMemcpy(q_.ptr(i), q0.data(), q0.size() * 4, cudaMemcpyHostToDevice));
      }
    }

    // Shape groups in first-seen order; the per-matrix flags are laid out group after group.
    std::map<std::pair<int64_t, int64_t>, size_t> index;
    for (size_t i = 0; i < nm; ++i) {
      const auto key = std::make_pair(params_[i].rows, params_[i].cols);
      auto it = index.find(key);
      if (it == index.end()) {
        it = index.emplace(key, groups_.size()).first;
        groups_.push_back(std::make_unique<Group>());
        groups_.back()->shape = shapes[i];
      }
      groups_[it->second]->members.push_back((int)i);
    }
    int64_t max_p = 1, max_r = 1, max_m = 1, first = 0;
    for (auto& g : groups_) {
      const DionShape& sh = g->shape;
      g->first = first;
      first += (int64_t)g->members.size();
      const int64_t cnt = (int64_t)g->members.size();
      max_p = std::max(max_p, cnt * sh.rows_b * sh.r);
      max_r = std::max(max_r, cnt * sh.cols_b * sh.r);
      max_m = std::max(max_m, cnt * sh.m * sh.n);
    }
    p_.resize((size_t)max_p);
    r_.resize((size_t)max_r);
    if (bf16_state) {
      m32_.resize((size_t)max_m);
      q32_.resize((size_t)max_r);
    }
    const size_t nflags = std::max<size_t>(nm, 1);
    nonzero_.resize(nflags);
    fallbacks_.resize(nflags);
    method_.resize(nflags);
    sumsq_before_.resize(nflags);
    sumsq_after_.resize(nflags);
    for (auto* b : {&nonzero_, &fallbacks_, &method_}) CUDA_CHECK(cudaMemset(b->data(), 0, b->bytes()));
    CUDA_CHECK(cudaMemset(sumsq_before_.data(), 0, sumsq_before_.bytes()));
    CUDA_CHECK(cudaMemset(sumsq_after_.data(), 0, sumsq_after_.bytes()));

    // Descriptor tables, cuBLAS pointer arrays and the orthonormalization batches.
    for (auto& g : groups_) {
      const DionShape& sh = g->shape;
      const int cnt = (int)g->members.size();
      std::vector<DionMatrixDesc> descs;
      std::vector<float*> ptrs(5 * (size_t)cnt);  // [M | Q | P | R | W]
      g->vec4 = sh.m * sh.n % 4 == 0;
      for (int j = 0; j < cnt; ++j) {
        const int i = g->members[(size_t)j];
        DionMatrixDesc d{};
        d.g = params_[(size_t)i].g;
        d.m_state = momentum_.ptr((size_t)i);
        d.q_state = q_.ptr((size_t)i);
        d.m = bf16_state ? m32_.data() + (int64_t)j * sh.m * sh.n : static_cast<float*>(d.m_state);
        d.q = bf16_state ? q32_.data() + (int64_t)j * sh.cols_b * sh.r : static_cast<float*>(d.q_state);
        d.p = p_.data() + (int64_t)j * sh.rows_b * sh.r;
        d.r = r_.data() + (int64_t)j * sh.cols_b * sh.r;
        descs.push_back(d);
        ptrs[(size_t)j] = d.m;
        ptrs[(size_t)(cnt + j)] = d.q;
        ptrs[(size_t)(2 * cnt + j)] = d.p;
        ptrs[(size_t)(3 * cnt + j)] = d.r;
        ptrs[(size_t)(4 * cnt + j)] = params_[(size_t)i].w;
        g->vec4 = g->vec4 && aligned_to(d.g, 16) && aligned_to(d.m, 16);
      }
      upload(g->descs, descs);
      upload(g->ptrs, ptrs);
      g->ortho_batch = ortho_.add_batch(sh.rows_b, sh.r, cnt, p_.data());
    }
    ortho_.finalize(solver_);
    // Uploads and memsets ran on the legacy stream: finish them before a step on another stream.
    CUDA_CHECK(cudaDeviceSynchronize());
  }

  Algorithm algorithm() const override { return Algorithm::Dion; }
  void set_stream(cudaStream_t s) override {
    blas_.set_stream(s);
    solver_.set_stream(s);
  }
  cudaStream_t stream() const override { return blas_.stream(); }

  void step(const StepContext& ctx) override {
    check_step_context(ctx, Algorithm::Dion);
    step_count_ += 1.0f;
    stepped_ = true;
    if (params_.empty()) return;
    const int64_t step = std::llround(step_count_);
    const bool try_cqr = hp_.cqr_warmup_steps > 0 && step > hp_.cqr_warmup_steps;
    const bool bf16_state = hp_.state_dtype == StateDtype::BF16;
    cudaStream_t s = blas_.stream();
    const float decay = 1.0f - ctx.lr * hp_.weight_decay;
    const float ef_alpha = -(1.0f - hp_.mu);
    CUDA_CHECK(cudaMemsetAsync(nonzero_.data(), 0, nonzero_.bytes(), s));
    CUDA_CHECK(cudaMemsetAsync(fallbacks_.data(), 0, fallbacks_.bytes(), s));

    for (auto& gp : groups_) {
      Group& g = *gp;
      const DionShape& sh = g.shape;
      const int cnt = (int)g.members.size();
      const int64_t m = sh.m, n = sh.n, rb = sh.rows_b, cb = sh.cols_b, r = sh.r;
      const bool tr = sh.transposed;
      float* const* M = g.ptrs.data();
      float* const* Q = M + cnt;
      float* const* P = M + 2 * cnt;
      float* const* R = M + 3 * cnt;
      float* const* W = M + 4 * cnt;
      int32_t* nonzero = nonzero_.data() + g.first;

      dion_accumulate(s, g.descs.data(), cnt, m * n, cb * r, hp_.state_dtype, g.vec4, nonzero);
      if (hp_.diagnostics) dion_momentum_sumsq(s, g.descs.data(), cnt, m * n, sumsq_before_.data() + g.first);

      // P = B Q (B = M, or M^T); orthonormalize; R = B^T P.
      gemm_rm_batched(blas_, tr, false, rb, r, cb, 1.0f, M, n, Q, r, 0.0f, P, r, cnt);
      const uint64_t sketch_seed = dion::dion_sketch_seed(hp_.seed, step, (size_t)g.members[0]);
      ortho_.run(g.ortho_batch, blas_, solver_, try_cqr, sketch_seed, nonzero, fallbacks_.data() + g.first,
                 method_.data() + g.first);
      gemm_rm_batched(blas_, !tr, false, cb, r, rb, 1.0f, M, n, P, r, 0.0f, R, r, cnt);
      dion_finalize_pr(s, g.descs.data(), cnt, rb * r, cb * r, nonzero);

      // Error feedback M -= (1 - mu) P R^T in B's orientation: B (P R^T) or B^T (R P^T).
      gemm_rm_batched(blas_, false, true, m, n, r, ef_alpha, tr ? R : P, r, tr ? P : R, r, 1.0f, M, n, cnt);
      if (hp_.diagnostics) dion_momentum_sumsq(s, g.descs.data(), cnt, m * n, sumsq_after_.data() + g.first);

      // Q <- R with unit columns; W <- W (1 - lr wd) - lr_eff P Q^T (Q P^T for a wide parameter).
      dion_normalize_columns(s, g.descs.data(), cnt, cb, r);
      const float lr_eff = adjusted_lr(ctx.lr, hp_.adjust_lr, m, n);
      gemm_rm_batched(blas_, false, true, m, n, r, -lr_eff, tr ? Q : P, r, tr ? P : Q, r, decay, W, n, cnt);
      if (bf16_state) dion_store_bf16_state(s, g.descs.data(), cnt, m * n, cb * r);
    }
  }

  // As the CPU reference: per parameter momentum and Q (replicated, not row-shaped, for a tall
  // matrix), then the step counter (a host float).
  std::vector<StateTensor> state() override {
    std::vector<StateTensor> out;
    for (size_t i = 0; i < params_.size(); ++i) {
      out.push_back(momentum_.view(i, params_[i].name, "momentum"));
      out.push_back(q_.view(i, params_[i].name, "Q"));
      out.back().replicated = !dion::dion_shape(params_[i].rows, params_[i].cols, hp_.rank_fraction).transposed;
    }
    out.push_back({"dion/step", &step_count_, 1, StateDtype::F32, Device::CPU, true});
    return out;
  }

  // Diagnostics of the last step (hp.diagnostics), as the CPU reference: the mean over matrices of
  // ||M after error feedback|| / ||M before|| and the count of failed orthonormalization attempts.
  // Synchronizes the stream.
  std::map<std::string, double> stats() const override {
    if (!hp_.diagnostics || !stepped_ || params_.empty()) return {};
    const size_t nm = params_.size();
    std::vector<double> before(nm), after(nm);
    std::vector<int32_t> fb(nm);
    cudaStream_t s = blas_.stream();
    CUDA_CHECK(cudaMemcpyAsync(before.data(), sumsq_before_.data(), nm * 8, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaMemcpyAsync(after.data(), sumsq_after_.data(), nm * 8, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaMemcpyAsync(fb.data(), fallbacks_.data(), nm * 4, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    double ratio_sum = 0.0, fallbacks = 0.0;
    int ratio_count = 0;
    for (size_t i = 0; i < nm; ++i) {
      fallbacks += fb[i];
      if (before[i] > 0.0) {
        ratio_sum += std::sqrt(after[i]) / std::sqrt(before[i]);
        ++ratio_count;
      }
    }
    return {{"dion_ef_residual", ratio_count ? ratio_sum / ratio_count : 0.0}, {"dion_ortho_fallbacks", fallbacks}};
  }

 private:
  struct Group {
    DionShape shape;
    std::vector<int> members;  // indices into params_
    int64_t first = 0;         // offset of the group's flags
    DeviceBuffer<DionMatrixDesc> descs;
    DeviceBuffer<float*> ptrs;  // cuBLAS pointer arrays [M | Q | P | R | W], one entry per member each
    int ortho_batch = -1;
    bool vec4 = false;
  };

  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  BlasContext blas_;
  SolverContext solver_;
  DionOrtho ortho_;
  StateArena momentum_, q_;
  std::vector<std::unique_ptr<Group>> groups_;
  // Scratch shared by the groups (they run in sequence): P, R, and for bf16 state the fp32
  // working copies of M and Q.
  DeviceBuffer<float> p_, r_, m32_, q32_;
  DeviceBuffer<int32_t> nonzero_, fallbacks_, method_;
  DeviceBuffer<double> sumsq_before_, sumsq_after_;
  float step_count_ = 0.0f;  // steps taken; a float so it checkpoints like the CPU's
  bool stepped_ = false;
};

}  // namespace

std::unique_ptr<CudaOptimizer> make_cuda_dion(const OptimHParams& hp, std::vector<ParamSlot> params,
                                              const CudaOptimOptions& options) {
  return std::make_unique<CudaDion>(hp, std::move(params), options);
}

}  // namespace og::cuda
