// Muon and NorMuon on the GPU (OPTIMIZERS.md "Muon", "NorMuon").
//
// Parameters are grouped by shape; per group and step, five launches plus the NS engine:
//   1. momentum:   M ← mu·M + G;  U = nesterov ? mu·M + G : M;  X₀ ← bf16(U) into the group's
//                  batched NS buffer; per-block partial sums of X₀² (deterministic, no atomics)
//   2. normalize:  X₀ ← X₀ / (mult·‖X₀‖_F + eps), ‖X₀‖ summed from its blocks' partials
//   3. NS / Polar Express on the whole group (newton_schulz.h)
//   4. NorMuon only: neuron-wise factors (neuron_norm.h)
//   5. update:     W ← W·(1 − lr·wd) − lr_eff·f_row·O
// Bytes per element: 14 (1) + 4 (2) + 10 (5). With concurrent_groups, each group runs on its own
// stream (forked from and joined into the step stream) with its own workspace, so one group's
// memory-bound passes overlap another's GEMMs; otherwise the groups run in sequence and share
// one workspace.
// Across DDP ranks (CudaOptimOptions::ddp_comm, owner_split.h): step 1 runs on every matrix but
// writes X₀ only for the matrices this rank owns; 2 and 3 run on those only, the NS result lands
// in this rank's block of the gather buffer; one all-gather; then 4 and 5 on every matrix.
#include <cmath>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "optim/cpu_optimizers.h"
#include "optim/cuda/chunk_table.h"
#include "optim/cuda/device_math.cuh"
#include "optim/cuda/matrix_rules.h"
#include "optim/cuda/muon_kernels.cuh"
#include "optim/cuda/muon_optimizer.h"
#include "optim/cuda/neuron_norm.h"
#include "optim/cuda/newton_schulz.h"
#include "optim/cuda/owner_split.h"
#include "optim/cuda/phase_timer.h"
#include "optim/cuda/state_arena.h"
#include "optim/cuda/step_graph.h"

namespace og::cuda {
namespace {

class CudaMuon final : public CudaOptimizer {
 public:
  CudaMuon(const OptimHParams& hp, std::vector<ParamSlot> params, const CudaOptimOptions& opt)
      : hp_(hp), params_(std::move(params)), normuon_(hp.algorithm == Algorithm::NorMuon) {
    check_matrix_params(hp_, params_);
    std::vector<int64_t> numel, rows;
    for (const auto& p : params_) {
      names_.push_back(p.name);
      numel.push_back((int64_t)p.numel());
      rows.push_back(p.rows);
    }
    momentum_.init(numel, hp_.state_dtype);
    if (normuon_) variance_.init(rows, hp_.state_dtype);
    main_ = opt.stream;
    profile_ = opt.profile_phases;
    use_graph_ = opt.cuda_graph && !profile_;

    // Shape groups in first-seen order.
    std::map<std::pair<int64_t, int64_t>, size_t> index;
    for (size_t i = 0; i < params_.size(); ++i) {
      const auto key = std::make_pair(params_[i].rows, params_[i].cols);
      auto it = index.find(key);
      if (it == index.end()) {
        it = index.emplace(key, groups_.size()).first;
        groups_.push_back(std::make_unique<Group>());
        groups_.back()->shape.rows = key.first;
        groups_.back()->shape.cols = key.second;
      }
      groups_[it->second]->members.push_back((int)i);
    }
    if (opt.ddp_comm && opt.ddp_comm->size() > 1) {
      std::vector<std::vector<int32_t>> lists;
      std::vector<int64_t> grows, gcols;
      for (auto& g : groups_) {
        lists.emplace_back(g->members.begin(), g->members.end());
        grows.push_back(g->shape.rows);
        gcols.push_back(g->shape.cols);
      }
      split_ = std::make_unique<OwnerSplit>(*opt.ddp_comm, lists, grows, gcols);
      use_graph_ = false;  // collectives inside the step (and the staged backend synchronizes)
    }
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      Group& g = *groups_[gi];
      g.size = (int)g.members.size();
      if (split_) {
        g.members.assign(split_->members((int)gi).begin(), split_->members((int)gi).end());
        g.mine_first = split_->first((int)gi, split_->rank());
        g.shape.count = split_->count((int)gi, split_->rank());
      } else {
        g.shape.count = g.size;
      }
    }
    concurrent_ = opt.concurrent_groups && groups_.size() > 1;
    scalars_.resize(1 + groups_.size());
    // Workspaces: one per group (concurrent) or one of the largest size shared in sequence.
    int64_t max_x = 0, max_gram = 0, max_rows = 0;
    for (auto& g : groups_) {
      max_x = std::max(max_x, g->shape.x_elems());
      max_gram = std::max(max_gram, g->shape.gram_elems());
      max_rows = std::max(max_rows, (int64_t)g->size * g->shape.rows);
    }
    auto alloc_ws = [&](Workspace& w, int64_t x, int64_t gram, int64_t nrows) {
      for (auto* b : {&w.x[0], &w.x[1]}) {
        b->resize((size_t)x);
        if (b->bytes()) CUDA_CHECK(cudaMemset(b->data(), 0, b->bytes()));  // autotuning reads them
      }
      for (auto* b : {&w.a, &w.b}) {
        b->resize((size_t)gram);
        if (b->bytes()) CUDA_CHECK(cudaMemset(b->data(), 0, b->bytes()));
      }
      if (normuon_) {
        w.rowsq.resize((size_t)nrows);
        w.factors.resize((size_t)nrows);
      }
    };
    if (!concurrent_) alloc_ws(shared_ws_, max_x, max_gram, max_rows);

    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      Group* g = groups_[gi].get();
      if (concurrent_) {
        alloc_ws(g->own_ws, g->shape.x_elems(), g->shape.gram_elems(), (int64_t)g->size * g->shape.rows);
        g->ws = &g->own_ws;
      } else {
        g->ws = &shared_ws_;
      }
      Workspace& ws = *g->ws;
      g->blas = std::make_unique<BlasContext>();
      if (concurrent_ && gi > 0) {
        g->side.create();
        g->blas->set_stream(g->side.s);
      } else {
        g->blas->set_stream(main_);
      }
      NsBuffers buf;
      buf.x[0] = ws.x[0].data();
      buf.x[1] = ws.x[1].data();
      buf.a = ws.a.data();
      buf.b = ws.b.data();
      if (split_)  // the result goes straight into this rank's run of the gather buffer
        buf.x[NsBatch::result_in_input(g->shape, opt) ? 0 : 1] = split_->run((int)gi, split_->rank());
      if (g->shape.count > 0) g->ns.plan(*g->blas, hp_.ortho, g->shape, buf, opt);

      const int64_t per = g->shape.rows * g->shape.cols;
      std::vector<int64_t> gnumel;
      for (int q : g->members) gnumel.push_back((int64_t)params_[q].numel());
      g->chunks.build(gnumel);
      g->vec4 = g->shape.cols % 4 == 0;
      std::vector<MuonDesc> descs;
      std::vector<NeuronNormDesc> ndescs;
      for (size_t j = 0; j < g->members.size(); ++j) {
        const int q = g->members[j];
        const ParamSlot& p = params_[q];
        const int64_t mine = (int64_t)j - g->mine_first;  // position in this rank's NS sub-batch
        const bool owned = mine >= 0 && mine < g->shape.count;
        MuonDesc d{};
        d.w = p.w;
        d.g = p.g;
        d.m = momentum_.ptr(q);
        d.x = owned ? buf.x[0] + mine * per : nullptr;
        d.o = split_ ? split_->result((int)gi, (int)j) : g->ns.result() + (int64_t)j * per;
        d.row_factor = normuon_ ? ws.factors.data() + (int64_t)j * g->shape.rows : nullptr;
        d.numel = (int64_t)p.numel();
        d.cols = p.cols;
        d.first_chunk = g->chunks.first_chunk[j];
        d.end_chunk = g->chunks.first_chunk[j + 1];
        descs.push_back(d);
        if (normuon_) ndescs.push_back({variance_.ptr(q), nullptr});
        g->vec4 =
            g->vec4 && aligned_to(p.w, 16) && aligned_to(p.g, 16) && (!d.x || aligned_to(d.x, 8)) && aligned_to(d.o, 8);
      }
      upload(g->descs, descs);
      g->mine_chunks[0] = g->chunks.first_chunk[g->mine_first];
      g->mine_chunks[1] = g->chunks.first_chunk[g->mine_first + g->shape.count];
      if (normuon_) upload(g->ndescs, ndescs);
      g->partials.resize((size_t)std::max<int64_t>(g->chunks.count(), 1));
    }
    if (concurrent_) CUDA_CHECK(cudaEventCreateWithFlags(&fork_.e, cudaEventDisableTiming));
    // Descriptor uploads and memsets ran on the legacy stream, asynchronously: finish them before
    // any step can run on another stream.
    CUDA_CHECK(cudaDeviceSynchronize());
  }

  Algorithm algorithm() const override { return hp_.algorithm; }
  void set_stream(cudaStream_t s) override {
    main_ = s;
    for (auto& g : groups_)
      if (!g->side.s) g->blas->set_stream(s);
  }
  cudaStream_t stream() const override { return main_; }

  void step(const StepContext& ctx) override {
    check_step_context(ctx, hp_.algorithm);
    // Step scalars: decay, then per group lr_eff (computed on the host as before).
    std::vector<float> sc{1.0f - ctx.lr * hp_.weight_decay};
    for (auto& g : groups_) sc.push_back(adjusted_lr(ctx.lr, hp_.adjust_lr, g->shape.rows, g->shape.cols));
    set_step_scalars(main_, scalars_.data(), sc);
    if (profile_ || !use_graph_) {
      enqueue_step(main_, profile_ ? &timer_ : nullptr);
      return;
    }
    graph_.run(
        main_, [&](cudaStream_t s) { set_stream(s); }, [&](cudaStream_t s) { enqueue_step(s, nullptr); });
  }

  std::vector<std::pair<std::string, double>> last_phase_ms() override {
    if (!profile_) return {};
    return timer_.results();
  }

  // Owner split: the bytes this rank sent in the last step (all-gather of the NS results).
  std::map<std::string, double> stats() const override {
    if (!split_) return {};
    return {{"comm_bytes", split_->last_bytes()}};
  }

  // Per parameter, as the CPU reference: momentum, and for NorMuon variance_neuron (rows).
  std::vector<StateTensor> state() override {
    std::vector<StateTensor> out;
    for (size_t i = 0; i < params_.size(); ++i) {
      out.push_back(momentum_.view(i, names_[i], "momentum"));
      if (normuon_) out.push_back(variance_.view(i, names_[i], "variance_neuron"));
    }
    return out;
  }

 private:
  struct Group;
  // The step after the scalars are written, on stream s and the group streams forked from it
  // (joined back into s). With a timer: the groups in sequence on s, marks between the phases.
  // Owner split: each group's momentum, normalize and NS on its stream, join, one all-gather,
  // then the NorMuon factors and updates on s.
  void enqueue_step(cudaStream_t s0, PhaseTimer* timer) {
    if (timer) timer->begin(s0);
    const bool fork = fork_.e && !timer;
    if (fork) CUDA_CHECK(cudaEventRecord(fork_.e, s0));
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      Group* g = groups_[gi].get();
      const bool own = g->side.s && !timer;
      cudaStream_t s = own ? g->side.s : s0;
      if (own) g->side.fork(fork_.e);
      if (g->side.s && timer) g->blas->set_stream(s0);
      launch_momentum(*g, s);
      if (timer) timer->mark(s, "momentum+normalize");
      if (g->shape.count > 0) {
        bf16* out = g->ns.run(*g->blas);
        OG_CHECK(out == g->ns.result(), "internal: NS result not where planned");
      }
      if (!split_) neuron_factors(*g, (int)gi, s);
      if (timer) timer->mark(s, "newton-schulz");
      if (!split_) {
        update(*g, (int)gi, s);
        if (timer) timer->mark(s, "update");
      }
      if (own) g->side.join(s0);
      if (g->side.s && timer) g->blas->set_stream(g->side.s);
    }
    if (!split_) return;
    split_->all_gather(s0);
    if (timer) timer->mark(s0, "all-gather");
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      neuron_factors(*groups_[gi], (int)gi, s0);
      update(*groups_[gi], (int)gi, s0);
    }
    if (timer) timer->mark(s0, "update");
  }

  // Step 1 on every member, step 2 on this rank's NS sub-batch (all members without a split).
  void launch_momentum(Group& g, cudaStream_t s) {
    const bool bf16_state = hp_.state_dtype == StateDtype::BF16;
    const unsigned nblocks = (unsigned)g.chunks.count();
    const ChunkRef* ch = g.chunks.chunks.data();
    const MuonDesc* ds = g.descs.data();
    float* partials = g.partials.data();
    const unsigned c0 = (unsigned)g.mine_chunks[0], c1 = (unsigned)g.mine_chunks[1];
    with_constant<1, 4>(g.vec4 ? 4 : 1, [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      if (bf16_state)
        muon_momentum_kernel<V, bf16><<<nblocks, kChunkThreads, 0, s>>>(ch, ds, hp_.mu, hp_.nesterov, partials);
      else
        muon_momentum_kernel<V, float><<<nblocks, kChunkThreads, 0, s>>>(ch, ds, hp_.mu, hp_.nesterov, partials);
      CUDA_CHECK_LAUNCH();
      if (c1 > c0) {
        muon_normalize_kernel<V>
            <<<c1 - c0, kChunkThreads, 0, s>>>(ch + c0, ds, partials, ns_norm_multiplier(hp_.ortho), hp_.eps);
        CUDA_CHECK_LAUNCH();
      }
    });
  }

  // Step 4 (NorMuon) on every member; the NS results are in place (this rank's, or all after the
  // all-gather).
  void neuron_factors(Group& g, int gi, cudaStream_t s) {
    if (!normuon_) return;
    neuron_norm_factors_by_run(split_.get(), gi, g.size, split_ ? nullptr : g.ns.result(), s, g.shape.rows,
                               g.shape.cols, g.ndescs.data(), hp_.state_dtype, hp_.beta2, g.ws->rowsq.data(),
                               g.ws->factors.data());
  }

  // Step 5 on every member.
  void update(Group& g, int gi, cudaStream_t s) {
    const unsigned nblocks = (unsigned)g.chunks.count();
    with_constant<1, 4>(g.vec4 ? 4 : 1, [&](auto vec) {
      constexpr int V = decltype(vec)::value;
      muon_update_kernel<V>
          <<<nblocks, kChunkThreads, 0, s>>>(g.chunks.chunks.data(), g.descs.data(), scalars_.data(), gi);
      CUDA_CHECK_LAUNCH();
    });
  }

  // The NS batch buffers (input x[0], the other x[1], Gram products a, b) and NorMuon's rows.
  struct Workspace {
    DeviceBuffer<bf16> x[2], a, b;
    DeviceBuffer<float> rowsq, factors;
  };
  // Members are destroyed in reverse order: the cuBLAS context before its stream.
  struct Group {
    SideStream side;           // CudaOptimOptions::concurrent_groups: groups after the first (first: destroyed last)
    NsShape shape;             // count: this rank's NS sub-batch (all members without a split)
    std::vector<int> members;  // indices into params_ (owner split: ordered by owner)
    int size = 0;              // members
    int mine_first = 0;        // position of this rank's first member (owner split)
    int64_t mine_chunks[2] = {0, 0};  // the chunks of this rank's members
    ChunkTable chunks;
    DeviceBuffer<MuonDesc> descs;
    DeviceBuffer<NeuronNormDesc> ndescs;
    DeviceBuffer<float> partials;  // per chunk: Σ X₀²
    Workspace own_ws;              // concurrent groups only
    Workspace* ws = nullptr;       // own_ws or the shared one
    std::unique_ptr<BlasContext> blas;
    NsBatch ns;
    bool vec4 = false;
  };

  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  std::vector<std::string> names_;
  bool normuon_;
  cudaStream_t main_ = nullptr;
  bool concurrent_ = false;
  OwnedEvent fork_;
  bool profile_ = false, use_graph_ = false;
  PhaseTimer timer_;
  StepGraph graph_;              // the captured step (cuda_graph); holds no reference to the streams or events
  DeviceBuffer<float> scalars_;  // decay, then lr_eff per group
  StateArena momentum_, variance_;
  Workspace shared_ws_;
  std::vector<std::unique_ptr<Group>> groups_;
  std::unique_ptr<OwnerSplit> split_;  // DDP owner split (CudaOptimOptions::ddp_comm), or nullptr
};

}  // namespace

std::unique_ptr<CudaOptimizer> make_cuda_muon(const OptimHParams& hp, std::vector<ParamSlot> params,
                                              const CudaOptimOptions& options) {
  return std::make_unique<CudaMuon>(hp, std::move(params), options);
}

}  // namespace og::cuda
