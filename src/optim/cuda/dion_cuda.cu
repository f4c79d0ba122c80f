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
// Row shards (FSDP, make_cuda_dion_sharded): rank k holds rows [row0_k, row0_k + m_k) of M, G, W,
// as the CPU path (optim/dion.cpp), and M never moves; per matrix and step only O((m + n) r) floats
// travel over the device communicator:
//   B = M (tall):  P_k = M_k Q (Q replicated); the row blocks P_k are all-gathered into the whole P,
//                  which every rank orthonormalizes alike (the one-process DionOrtho on the same
//                  input: the same method, flags and result on every rank); R = sum_k M_k^T P_k
//                  (all-reduce); M_k -= (1-mu) P_k R^T; Q = R / norms; W_k -= lr_eff P_k Q^T.
//   B = M^T (wide): Q's rows follow M's (Q_k local); P = sum_k M_k^T Q_k (all-reduce), orthonormalized
//                  alike everywhere; R_k = M_k P; R's column sums of squares all-reduced;
//                  M_k -= (1-mu) R_k P^T; W_k -= lr_eff Q_k P^T.
// The all-zero flags and the diagnostics' sums are all-reduced too. The CPU path orthonormalizes a
// tall P from summed r x r Gram / sketch products instead of gathering it (r^2 instead of m r
// floats): here the gather keeps DionOrtho whole, and m r is the size of R's all-reduce anyway.
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
#include "dist/counting_communicator.h"
#include "optim/cpu_optimizers.h"
#include "optim/cuda/blas.h"
#include "optim/cuda/chunk_table.h"
#include "optim/cuda/comm_order.h"
#include "optim/cuda/dion_cuda.h"
#include "optim/cuda/dion_cuda_kernels.h"
#include "optim/cuda/dion_cuda_ortho.h"
#include "optim/cuda/matrix_rules.h"
#include "optim/cuda/state_arena.h"
#include "optim/dion_shape.h"
#include "optim/distributed_plan.h"

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

// This rank's rows of one group's matrices (all rows in one process) and, for row shards, every
// rank's: the groups are formed from the shard map, which every rank holds alike, so all ranks
// form the same groups in the same order and call the same collectives.
struct RowBlocks {
  int64_t row0 = 0, rows = 0;               // this rank's
  std::vector<int64_t> all_row0, all_rows;  // per rank (sharded only)
};

class CudaDion final : public CudaOptimizer {
 public:
  // comm / map: row shards over comm's ranks (device buffers); nullptr: one process, whole matrices.
  CudaDion(const OptimHParams& hp, std::vector<ParamSlot> params, const CudaOptimOptions& opt,
           Communicator* comm = nullptr, const ShardMap* map = nullptr)
      : hp_(hp), params_(std::move(params)) {
    OG_CHECK(hp_.algorithm == Algorithm::Dion, "make_cuda_dion called for algorithm {}", name_of(hp_.algorithm));
    check_matrix_params(hp_, params_);
    OG_CHECK(hp_.rank_fraction > 0.0f && hp_.rank_fraction <= 1.0f, "dion: rank_fraction must be in (0, 1], got {}",
             hp_.rank_fraction);
    OG_CHECK(hp_.cqr_warmup_steps >= 0, "dion: cqr_warmup_steps must be >= 0, got {}", hp_.cqr_warmup_steps);
    OG_CHECK(std::isfinite(hp_.mu), "dion: mu must be finite, got {}", hp_.mu);
    if (comm) {
      OG_CHECK(map != nullptr, "internal: sharded dion without a shard map");
      OG_CHECK(comm->device_buffers(), "dion under fsdp on cuda needs a device communicator (nccl), got '{}'",
               comm->backend());
      comm_ = std::make_unique<CountingCommunicator>(*comm);
    } else {
      for (const ParamSlot& p : params_)
        OG_CHECK(p.row0 == 0 && p.shard_rows() == p.rows,
                 "dion: parameter '{}' is a row shard, which needs a communicator (make_distributed_optimizer)",
                 p.name);
    }
    CUBLAS_CHECK(cublasSetMathMode(blas_.blas(), CUBLAS_DEFAULT_MATH));  // fp32 SGEMM, no TF32
    set_stream(opt.stream);
    const bool bf16_state = hp_.state_dtype == StateDtype::BF16;
    const size_t nm = params_.size();

    // State: momentum zero (this rank's rows), Q from the CPU reference's draws (a wide matrix's Q
    // rows follow M's: this rank's rows of the whole draw).
    std::vector<int64_t> numel, qnumel;
    std::vector<DionShape> shapes;
    for (const ParamSlot& p : params_) {
      shapes.push_back(dion::dion_shape(p.rows, p.cols, hp_.rank_fraction));
      const DionShape& sh = shapes.back();
      numel.push_back(p.shard_rows() * p.cols);
      qnumel.push_back((sh.transposed ? p.shard_rows() : sh.cols_b) * sh.r);
    }
    momentum_.init(numel, hp_.state_dtype);
    q_.init(qnumel, hp_.state_dtype);
    for (size_t i = 0; i < nm; ++i) {
      Rng rng(dion::dion_q_init_seed(hp_.seed, i));
      std::vector<float> q0((size_t)(shapes[i].cols_b * shapes[i].r));
      for (float& x : q0) x = (float)rng.normal();
      const int64_t first = shapes[i].transposed ? params_[i].row0 * shapes[i].r : 0;
      if (bf16_state) {
        std::vector<uint16_t> bits((size_t)qnumel[i]);
        for (size_t k = 0; k < bits.size(); ++k) bits[k] = bf16_bits_from_float(q0[(size_t)first + k]);
        if (!bits.empty()) CUDA_CHECK(cudaMemcpy(q_.ptr(i), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
      } else if (qnumel[i] > 0) {
        CUDA_CHECK(cudaMemcpy(q_.ptr(i), q0.data() + first, (size_t)qnumel[i] * 4, cudaMemcpyHostToDevice));
      }
    }

    // Shape groups (whole shape and, for shards, every rank's row blocks) in first-seen order; the
    // per-matrix flags are laid out group after group.
    using Key = std::pair<std::pair<int64_t, int64_t>, std::vector<int64_t>>;
    std::map<Key, size_t> index;
    for (size_t i = 0; i < nm; ++i) {
      RowBlocks rb{params_[i].row0, params_[i].shard_rows(), {}, {}};
      if (comm_) rb.all_row0 = map->row0[i], rb.all_rows = map->nrows[i];
      Key key{{params_[i].rows, params_[i].cols}, rb.all_row0};
      key.second.insert(key.second.end(), rb.all_rows.begin(), rb.all_rows.end());
      auto it = index.find(key);
      if (it == index.end()) {
        it = index.emplace(key, groups_.size()).first;
        groups_.push_back(std::make_unique<Group>());
        groups_.back()->shape = shapes[i];
        groups_.back()->blocks = rb;
      }
      groups_[it->second]->members.push_back((int)i);
    }
    int64_t max_p = 1, max_r = 1, max_m = 1, max_cols = 1, first = 0;
    for (auto& g : groups_) {
      const DionShape& sh = g->shape;
      g->first = first;
      first += (int64_t)g->members.size();
      const int64_t cnt = (int64_t)g->members.size(), mine = g->blocks.rows;
      g->rows_b = sh.transposed ? sh.rows_b : mine;  // P_k = B_k Q: this rank's product
      g->cols_b = sh.transposed ? mine : sh.cols_b;  // R_k = B_k^T P
      max_p = std::max(max_p, cnt * sh.rows_b * sh.r);
      max_r = std::max(max_r, cnt * g->cols_b * sh.r);
      max_m = std::max(max_m, cnt * mine * sh.n);
      max_cols = std::max(max_cols, cnt * sh.r);
    }
    p_.resize((size_t)max_p);
    r_.resize((size_t)max_r);
    if (comm_) {
      p_send_.resize((size_t)max_p);  // a tall group's blocks: this rank's, then every rank's (<= whole P)
      gathered_.resize((size_t)max_p);
      colsq_.resize((size_t)max_cols);
    }
    if (bf16_state) {
      m32_.resize((size_t)max_m);
      q32_.resize((size_t)max_r);  // Q is cols_b x r, as R
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
      const int64_t mine = g->blocks.rows;
      const bool gather = comm_ && !sh.transposed;  // the whole P from the row blocks
      std::vector<DionMatrixDesc> descs;
      std::vector<float*> ptrs(kPtrArrays * (size_t)cnt);
      auto ptr = [&](PtrArray a, int j) -> float*& { return ptrs[(size_t)a * (size_t)cnt + (size_t)j]; };
      g->vec4 = mine * sh.n % 4 == 0;
      for (int j = 0; j < cnt; ++j) {
        const int i = g->members[(size_t)j];
        DionMatrixDesc d{};
        d.g = params_[(size_t)i].g;
        d.m_state = momentum_.ptr((size_t)i);
        d.q_state = q_.ptr((size_t)i);
        d.m = bf16_state ? m32_.data() + (int64_t)j * mine * sh.n : static_cast<float*>(d.m_state);
        d.q = bf16_state ? q32_.data() + (int64_t)j * g->cols_b * sh.r : static_cast<float*>(d.q_state);
        d.p = p_.data() + (int64_t)j * sh.rows_b * sh.r;
        d.r = r_.data() + (int64_t)j * g->cols_b * sh.r;
        descs.push_back(d);
        ptr(kM, j) = d.m;
        ptr(kQ, j) = d.q;
        ptr(kP, j) = d.p;
        ptr(kR, j) = d.r;
        ptr(kW, j) = params_[(size_t)i].w;
        ptr(kPSend, j) = gather ? p_send_.data() + (int64_t)j * mine * sh.r : d.p;
        ptr(kPMine, j) = gather ? d.p + g->blocks.row0 * sh.r : d.p;
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
    if (comm_) comm_->reset();
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
      // mine: this rank's rows of M; rb, cb: the rows of its products P_k = B_k Q and R_k = B_k^T P
      // (in one process: rows_b and cols_b)
      const int64_t mine = g.blocks.rows, n = sh.n, rb = g.rows_b, cb = g.cols_b, r = sh.r;
      const bool tr = sh.transposed;
      float* const* M = g.array(kM);
      float* const* Q = g.array(kQ);
      float* const* P = g.array(kP);  // the whole P (rows_b x r)
      float* const* R = g.array(kR);
      float* const* W = g.array(kW);
      float* const* P_send = g.array(kPSend);  // where B_k Q goes (tall shards: this rank's block, then gathered)
      float* const* P_mine = g.array(kPMine);  // this rank's rows of the whole P (tall shards)
      int32_t* nonzero = nonzero_.data() + g.first;
      double* before = sumsq_before_.data() + g.first;
      double* after = sumsq_after_.data() + g.first;

      dion_accumulate(s, g.descs.data(), cnt, mine * n, cb * r, hp_.state_dtype, g.vec4, nonzero);
      if (hp_.diagnostics) dion_momentum_sumsq(s, g.descs.data(), cnt, mine * n, before);
      if (comm_) {
        all_reduce(s, nonzero, (size_t)cnt, DType::I32);
        if (hp_.diagnostics) all_reduce(s, before, (size_t)cnt, DType::F64);
      }

      // P = B Q (B = M, or M^T); orthonormalize; R = B^T P. A product over no rows (an empty
      // shard's share of a sum) is zero.
      product(s, tr, rb, r, cb, M, n, Q, P_send, cnt);
      if (comm_ && !tr) gather_p(g, s);
      if (comm_ && tr) all_reduce(s, p_.data(), (size_t)cnt * sh.rows_b * r, DType::F32);
      const uint64_t sketch_seed = dion::dion_sketch_seed(hp_.seed, step, (size_t)g.members[0]);
      ortho_.run(g.ortho_batch, blas_, solver_, try_cqr, sketch_seed, nonzero, fallbacks_.data() + g.first,
                 method_.data() + g.first);
      product(s, !tr, cb, r, rb, M, n, tr ? P : P_mine, R, cnt);
      if (comm_ && !tr) all_reduce(s, r_.data(), (size_t)cnt * cb * r, DType::F32);
      dion_finalize_pr(s, g.descs.data(), cnt, sh.rows_b * r, cb * r, nonzero);

      // Error feedback M -= (1 - mu) P R^T in B's orientation: B (P R^T) or B^T (R P^T).
      if (mine > 0)
        gemm_rm_batched(blas_, false, true, mine, n, r, ef_alpha, tr ? R : P_mine, r, tr ? P : R, r, 1.0f, M, n, cnt);
      if (hp_.diagnostics) {
        dion_momentum_sumsq(s, g.descs.data(), cnt, mine * n, after);
        if (comm_) all_reduce(s, after, (size_t)cnt, DType::F64);
      }

      // Q <- R with unit columns (a wide shard's R rows are spread over the ranks: their sums of
      // squares are all-reduced); W <- W (1 - lr wd) - lr_eff P Q^T (Q P^T for a wide parameter).
      if (comm_ && tr) {
        dion_column_sumsq(s, g.descs.data(), cnt, cb, r, colsq_.data());
        all_reduce(s, colsq_.data(), (size_t)cnt * r, DType::F64);
        dion_normalize_columns(s, g.descs.data(), cnt, cb, r, colsq_.data());
      } else {
        dion_normalize_columns(s, g.descs.data(), cnt, cb, r);
      }
      const float lr_eff = adjusted_lr(ctx.lr, hp_.adjust_lr, sh.m, n);
      if (mine > 0)
        gemm_rm_batched(blas_, false, true, mine, n, r, -lr_eff, tr ? Q : P_mine, r, tr ? P : Q, r, decay, W, n, cnt);
      if (bf16_state) dion_store_bf16_state(s, g.descs.data(), cnt, mine * n, cb * r);
    }
    if (comm_) stats_["comm_bytes"] = comm_->total_bytes();
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
  // ||M after error feedback|| / ||M before|| and the count of failed orthonormalization attempts;
  // row shards: the bytes this rank sent. Synchronizes the stream.
  std::map<std::string, double> stats() const override {
    std::map<std::string, double> out = stats_;
    if (!hp_.diagnostics || !stepped_ || params_.empty()) return out;
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
    out["dion_ef_residual"] = ratio_count ? ratio_sum / ratio_count : 0.0;
    out["dion_ortho_fallbacks"] = fallbacks;
    return out;
  }

 private:
  // The cuBLAS pointer arrays of a group, kPtrArrays arrays of one entry per member each.
  enum PtrArray { kM, kQ, kP, kR, kW, kPSend, kPMine, kPtrArrays };
  struct Group {
    DionShape shape;
    RowBlocks blocks;
    int64_t rows_b = 0, cols_b = 0;  // this rank's rows of P_k = B_k Q and R_k = B_k^T P
    std::vector<int> members;        // indices into params_
    int64_t first = 0;               // offset of the group's flags
    DeviceBuffer<DionMatrixDesc> descs;
    DeviceBuffer<float*> ptrs;
    int ortho_batch = -1;
    bool vec4 = false;
    float* const* array(PtrArray a) const { return ptrs.data() + (size_t)a * members.size(); }
  };

  // Row-major C (m x n) = op(A) op(B) over the batch, or C = 0 when k = 0 (an empty shard's share
  // of a sum; cuBLAS's quick-return rules for k = 0 are not relied on).
  void product(cudaStream_t s, bool ta, int64_t m, int64_t n, int64_t k, float* const* a, int64_t lda, float* const* b,
               float* const* c, int cnt) {
    if (m == 0 || n == 0) return;
    if (k > 0) {
      gemm_rm_batched(blas_, ta, false, m, n, k, 1.0f, a, lda, b, n, 0.0f, c, n, cnt);
    } else {
      dion_zero_batch(s, c, cnt, m * n);
    }
  }

  // In place over the ranks, ordered with the step stream.
  void all_reduce(cudaStream_t s, void* x, size_t count, DType t) {
    order_.run(*comm_, s, [&] { comm_->all_reduce(x, count, t, ReduceOp::Sum); });
  }

  // Tall shards: every rank's blocks P_k (member after member in each rank's send buffer) into the
  // whole P of every member, each rank's rows at its row0.
  void gather_p(Group& g, cudaStream_t s) {
    const int64_t r = g.shape.r, cnt = (int64_t)g.members.size();
    std::vector<size_t> counts;
    for (int64_t rows : g.blocks.all_rows) counts.push_back((size_t)(cnt * rows * r));
    order_.run(*comm_, s, [&] { comm_->all_gatherv(p_send_.data(), gathered_.data(), counts, DType::F32); });
    const float* from = gathered_.data();
    const size_t whole = (size_t)(g.shape.rows_b * r) * 4;
    for (size_t k = 0; k < counts.size(); ++k) {
      const size_t block = (size_t)(g.blocks.all_rows[k] * r) * 4;
      if (block > 0)
        CUDA_CHECK(cudaMemcpy2DAsync(p_.data() + g.blocks.all_row0[k] * r, whole, from, block, block, (size_t)cnt,
                                     cudaMemcpyDeviceToDevice, s));
      from += counts[k];
    }
  }

  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  BlasContext blas_;
  SolverContext solver_;
  DionOrtho ortho_;
  StateArena momentum_, q_;
  std::vector<std::unique_ptr<Group>> groups_;
  // Scratch shared by the groups (they run in sequence; every group's P and R, member after member,
  // from the start of p_ and r_): P, R, and for bf16 state the fp32
  // working copies of M and Q; row shards: a tall P's blocks (sent, then every rank's) and R's
  // column sums of squares.
  DeviceBuffer<float> p_, r_, m32_, q32_, p_send_, gathered_;
  DeviceBuffer<double> colsq_;
  DeviceBuffer<int32_t> nonzero_, fallbacks_, method_;
  DeviceBuffer<double> sumsq_before_, sumsq_after_;
  float step_count_ = 0.0f;  // steps taken; a float so it checkpoints like the CPU's
  bool stepped_ = false;
  std::unique_ptr<CountingCommunicator> comm_;  // row shards only
  CommOrder order_;
  std::map<std::string, double> stats_;
};

}  // namespace

std::unique_ptr<CudaOptimizer> make_cuda_dion(const OptimHParams& hp, std::vector<ParamSlot> params,
                                              const CudaOptimOptions& options) {
  return std::make_unique<CudaDion>(hp, std::move(params), options);
}

std::unique_ptr<CudaOptimizer> make_cuda_dion_sharded(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                      Communicator& device_comm, Communicator& host_comm,
                                                      const CudaOptimOptions& options) {
  const ShardMap map = gather_shard_map(host_comm, params);
  return std::make_unique<CudaDion>(hp, std::move(params), options, &device_comm, &map);
}

}  // namespace og::cuda
