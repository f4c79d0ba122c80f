// Dion2 and NorDion2 on the GPU (OPTIMIZERS.md "Dion2", "NorDion2").
//
// One step, all on the device (dion2_kernels.h):
//   pass 1 over every matrix (M ← M + G, W ← W·(1 − lr·wd), slice norms)  →  partial-norm reduce
//   (column slices)  →  select (one block per matrix)  →  per NS group of same-shape k×L
//   submatrices: gather (with selective decay) → Newton–Schulz → [NorDion2: neuron factors] →
//   scatter update  →  [ef off: M ← ef_decay·M].
// The NS groups are independent and each too small to fill the GPU (k ≪ rows): with
// concurrent_groups they run on their own streams, forked from and joined back into the step stream.
// Pass 1 moves 12 bytes per element (G, M read, M written); gather and NS touch only the k selected
// slices. The weight decay W ← W·(1 − lr·wd) runs where CudaOptimOptions::dion2_decay says:
//  InScatter (default): each group's scatter becomes one pass over its members' whole W
//    (decay_update): 8 bytes per element, the selected slices' update riding along;
//  SplitRows: as InScatter, but the unselected rows of the row-slice members are decayed on a
//    low-priority stream as soon as the selection is known, under the gathers and the NS; after
//    its NS a group's pass covers only its row members' selected rows (and its column members'
//    whole W): the same bytes, most of them meant to be off the critical path; bit-identical, but
//    measured slower (the side pass competes for HBM bandwidth with the gathers and the NS);
//  Overlapped: its own pass on a low-priority stream, forked after pass 1 so that it overlaps the
//    selection / gather / NS chain; every group's scatter waits for it;
//  InPass1: inside pass 1 (20 bytes per element there).
// Column-slice members are gathered over whole-row tiles of M; row-slice members by runs of
// selected rows.
// Submatrices are always stored k×L (slices as rows), so a wide 768×3072 (rows selected) and a
// tall 3072×768 (columns selected) land in the same NS batch.
// Across DDP ranks (CudaOptimOptions::ddp_comm, owner_split.h): pass 1, selection and the
// updates run on every matrix; gather and NS only on the matrices this rank owns, whose k×L
// results land in its block of the gather buffer; one all-gather (bytes ∝ α) between the NS and
// the NorDion2 factors / updates. The selective decay is then always the lazy one (the gather no
// longer visits every matrix).
// Compressed sync (CudaOptimOptions::compressed_sync_comm; random selection, local gradients):
// after the select, M[K] of every matrix is packed into one fp32 buffer, all-reduced (averaged)
// and written back, and the scale recomputed from the averaged slices; the rest is unchanged.
#include <cmath>
#include <map>
#include <memory>
#include <numeric>
#include <utility>

#include "optim/cpu_optimizers.h"
#include "optim/cuda/chunk_table.h"
#include "optim/cuda/comm_order.h"
#include "optim/cuda/dion2_kernels.h"
#include "optim/cuda/dion2_optimizer.h"
#include "optim/cuda/matrix_rules.h"
#include "optim/cuda/neuron_norm.h"
#include "optim/cuda/newton_schulz.h"
#include "optim/cuda/owner_split.h"
#include "optim/cuda/phase_timer.h"
#include "optim/cuda/state_arena.h"
#include "optim/cuda/step_graph.h"
#include "optim/slice_select.h"

namespace og::cuda {
namespace {

class CudaDion2 final : public CudaOptimizer {
 public:
  CudaDion2(const OptimHParams& hp, std::vector<ParamSlot> params, const CudaOptimOptions& opt)
      : hp_(hp), params_(std::move(params)), nordion2_(hp.algorithm == Algorithm::NorDion2) {
    check_matrix_params(hp_, params_);
    OG_CHECK(hp_.fraction > 0.0f && hp_.fraction <= 1.0f, "{}: fraction must be in (0, 1] (got {})",
             name_of(hp_.algorithm), hp_.fraction);
    OG_CHECK(!(nordion2_ && hp_.select_dim == SelectDim::Cols),
             "nordion2 always selects rows (its second moment is per row); select_dim cols is not allowed");
    ef_decay_ = nordion2_ ? hp_.mu : hp_.ef_decay;
    main_ = opt.stream;
    concurrent_ = opt.concurrent_groups;
    overlap_decay_ = opt.dion2_decay == CudaOptimOptions::Dion2Decay::Overlapped;
    decay_in_pass1_ = opt.dion2_decay == CudaOptimOptions::Dion2Decay::InPass1;
    split_rows_ = opt.dion2_decay == CudaOptimOptions::Dion2Decay::SplitRows && hp_.weight_decay != 0.0f;
    decay_in_scatter_ =
        (opt.dion2_decay == CudaOptimOptions::Dion2Decay::InScatter || split_rows_) && hp_.weight_decay != 0.0f;
    const bool split = opt.ddp_comm && opt.ddp_comm->size() > 1;
    const bool sync = opt.compressed_sync_comm && opt.compressed_sync_comm->size() > 1;
    lazy_decay_ = (opt.dion2_lazy_decay || split) && hp_.ef;
    profile_ = opt.profile_phases;
    use_graph_ = opt.cuda_graph && !profile_ && !split && !sync;  // no collectives inside a captured graph
    scalars_.resize(1);
    int prio_low = 0, prio_high = 0;  // numerically: low ≥ high
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&prio_low, &prio_high));
    const size_t nm = params_.size();

    std::vector<int64_t> numel, rows;
    for (const auto& p : params_) {
      names_.push_back(p.name);
      numel.push_back((int64_t)p.numel());
      rows.push_back(p.rows);
    }
    momentum_.init(numel, hp_.state_dtype);
    if (nordion2_) variance_.init(rows, hp_.state_dtype);

    // Per-matrix geometry and buffer offsets.
    struct Geo {
      bool by_cols;
      int64_t n, k, L, nparts, part_off, sel_off, slot_off;
    };
    std::vector<Geo> geo(nm);
    int64_t part_total = 0, sel_total = 0, slot_total = 0;
    npow2_ = 1;
    for (size_t i = 0; i < nm; ++i) {
      const ParamSlot& p = params_[i];
      Geo& g = geo[i];
      g.by_cols = !nordion2_ && selection_axis(hp_.select_dim, p.rows, p.cols) == SliceAxis::Cols;
      g.n = g.by_cols ? p.cols : p.rows;
      g.L = g.by_cols ? p.rows : p.cols;
      g.k = select_count(hp_.fraction, g.n);
      k_sum_ += (double)g.k;
      frac_sum_ += (double)g.k / (double)g.n;
      g.nparts = g.by_cols ? (p.rows + kColChunkRows - 1) / kColChunkRows : 1;
      g.part_off = part_total;
      g.sel_off = sel_total;
      g.slot_off = slot_total;
      slot_total += g.n + 1;
      part_total += g.nparts * g.n;
      sel_total += g.k;
      OG_CHECK(g.n <= kMaxSelectSlices,
               "{}: parameter '{}' has {} slices to select from; the CUDA selection "
               "supports at most {}",
               name_of(hp_.algorithm), p.name, g.n, kMaxSelectSlices);
      while (npow2_ < g.n) npow2_ <<= 1;
    }
    if (sync) {
      OG_CHECK(hp_.algorithm == Algorithm::Dion2 && hp_.select == Select::Random,
               "dist.compressed_sync: needs dion2 with select random (got {} with select {}): the ranks must select "
               "the same slices without seeing each other's momentum",
               name_of(hp_.algorithm), name_of(hp_.select));
      OG_CHECK(opt.compressed_sync_comm->device_buffers(),
               "dist.compressed_sync on cuda needs a device communicator (nccl), got '{}'",
               opt.compressed_sync_comm->backend());
      sync_ = std::make_unique<CountingCommunicator>(*opt.compressed_sync_comm);
      std::vector<int64_t> off;
      for (const Geo& g : geo) {
        off.push_back(sync_total_);
        sync_total_ += g.k * g.L;
      }
      upload(sync_offsets_, off);
      sync_buf_.resize((size_t)std::max<int64_t>(sync_total_, 1));
    }
    part_l1_.resize((size_t)std::max<int64_t>(part_total, 1));
    part_l2_.resize((size_t)std::max<int64_t>(part_total, 1));
    sel_.resize((size_t)std::max<int64_t>(sel_total, 1));
    slot_.resize((size_t)std::max<int64_t>(slot_total, 1));
    CUDA_CHECK(cudaMemset(slot_.data(), 0xff, slot_.bytes()));  // −1: nothing selected before step 1
    scale_.resize(std::max<size_t>(nm, 1));
    mass_.resize(std::max<size_t>(nm, 1));
    CUDA_CHECK(cudaMemset(sel_.data(), 0, sel_.bytes()));
    CUDA_CHECK(cudaMemset(mass_.data(), 0, mass_.bytes()));
    dion2_select_prepare(npow2_);

    // NS groups by submatrix shape (k, L), first-seen order.
    std::map<std::pair<int64_t, int64_t>, size_t> index;
    std::vector<int> slot(nm);
    std::vector<size_t> group_of(nm);
    for (size_t i = 0; i < nm; ++i) {
      const auto key = std::make_pair(geo[i].k, geo[i].L);
      auto it = index.find(key);
      if (it == index.end()) {
        it = index.emplace(key, groups_.size()).first;
        groups_.push_back(std::make_unique<Group>());
        groups_.back()->shape.rows = key.first;
        groups_.back()->shape.cols = key.second;
      }
      Group& g = *groups_[it->second];
      group_of[i] = it->second;
      slot[i] = (int)g.members.size();
      g.members.push_back((int32_t)i);
      (geo[i].by_cols ? g.col_members : g.row_members) += 1;
      g.max_tiles = std::max(g.max_tiles, dion2_tiles(params_[i].rows, params_[i].cols));
    }
    if (split) {
      std::vector<std::vector<int32_t>> lists;
      std::vector<int64_t> ks, ls;
      for (auto& g : groups_) {
        lists.push_back(g->members);
        ks.push_back(g->shape.rows);
        ls.push_back(g->shape.cols);
      }
      split_ = std::make_unique<OwnerSplit>(*opt.ddp_comm, lists, ks, ls);
    }
    // Each group has its own workspace and cuBLAS context; with concurrent_groups, the groups
    // after the first run on their own streams (fork after select, join before the step ends).
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      Group& g = *groups_[gi];
      g.size = (int)g.members.size();
      g.shape.count = g.size;
      if (split_) {
        g.members = split_->members((int)gi);
        g.mine_first = split_->first((int)gi, split_->rank());
        g.shape.count = split_->count((int)gi, split_->rank());
      }
      for (int j = 0; j < g.size; ++j) slot[g.members[j]] = j;
      for (int j = g.mine_first; j < g.mine_first + g.shape.count; ++j)
        (geo[g.members[j]].by_cols ? g.mine_col_members : g.mine_row_members) += 1;
      for (auto* b : {&g.x[0], &g.x[1]}) {
        b->resize((size_t)g.shape.x_elems());
        if (b->bytes()) CUDA_CHECK(cudaMemset(b->data(), 0, b->bytes()));  // autotuning reads them
      }
      for (auto* b : {&g.a, &g.b}) {
        b->resize((size_t)g.shape.gram_elems());
        if (b->bytes()) CUDA_CHECK(cudaMemset(b->data(), 0, b->bytes()));
      }
      if (nordion2_) {
        g.rowsq.resize((size_t)g.size * g.shape.rows);
        g.factors.resize((size_t)g.size * g.shape.rows);
      }
      g.blas = std::make_unique<BlasContext>();
      if (concurrent_ && gi > 0) {
        g.side.create(prio_high);
        g.blas->set_stream(g.side.s);
      } else {
        g.blas->set_stream(main_);
      }
      NsBuffers buf;
      buf.x[0] = g.x[0].data();
      buf.x[1] = g.x[1].data();
      buf.a = g.a.data();
      buf.b = g.b.data();
      if (split_)  // the result goes straight into this rank's run of the gather buffer
        buf.x[NsBatch::result_in_input(g.shape, opt) ? 0 : 1] = split_->run((int)gi, split_->rank());
      g.input = buf.x[0];
      if (g.shape.count > 0) g.ns.plan(*g.blas, hp_.ortho, g.shape, buf, opt);
    }
    if (concurrent_ && groups_.size() > 1) CUDA_CHECK(cudaEventCreateWithFlags(&fork_.e, cudaEventDisableTiming));
    if (overlap_decay_ || split_rows_) {
      CUDA_CHECK(cudaStreamCreateWithPriority(&decay_stream_.s, cudaStreamNonBlocking, prio_low));
      CUDA_CHECK(cudaEventCreateWithFlags(&decay_fork_.e, cudaEventDisableTiming));
      CUDA_CHECK(cudaEventCreateWithFlags(&decay_done_.e, cudaEventDisableTiming));
    }

    // The device matrix table and pass-1 block tables.
    vec4_ = true;
    for (const auto& p : params_) vec4_ = vec4_ && p.cols % 4 == 0 && aligned_to(p.w, 16) && aligned_to(p.g, 16);
    const int vec = vec4_ ? 4 : 1;
    std::vector<Dion2Mat> mats(nm);
    std::vector<Pass1Block> row_blocks, col_blocks;
    std::vector<int32_t> col_mats;
    for (size_t i = 0; i < nm; ++i) {
      const ParamSlot& p = params_[i];
      const Geo& g = geo[i];
      const int64_t per = g.k * g.L;
      Dion2Mat& d = mats[i];
      d.w = p.w;
      d.g = p.g;
      d.m = momentum_.ptr(i);
      d.rows = p.rows;
      d.cols = p.cols;
      d.by_cols = g.by_cols;
      d.n = (int32_t)g.n;
      d.k = (int32_t)g.k;
      d.nparts = (int32_t)g.nparts;
      d.p = (int32_t)i;
      d.lr_factor = adjusted_lr(1.0f, hp_.adjust_lr, p.rows, p.cols);
      d.part_l1 = part_l1_.data() + g.part_off;
      d.part_l2 = part_l2_.data() + g.part_off;
      d.sel = sel_.data() + g.sel_off;
      d.slot = slot_.data() + g.slot_off;
      d.scale = scale_.data() + i;
      d.mass = mass_.data() + i;
      Group& grp = *groups_[group_of[i]];
      const int64_t mine = (int64_t)slot[i] - grp.mine_first;  // position in this rank's NS sub-batch
      d.s = mine >= 0 && mine < grp.shape.count ? grp.input + mine * per : nullptr;
      d.o = split_ ? split_->result((int)group_of[i], slot[i]) : grp.ns.result() + (int64_t)slot[i] * per;
      d.row_factor = nordion2_ ? grp.factors.data() + (int64_t)slot[i] * g.k : nullptr;
      if (!g.by_cols) {
        for (int64_t r0 = 0; r0 < p.rows; r0 += kRowsPerBlock) row_blocks.push_back({(int32_t)i, 0, r0, 0});
      } else {
        col_mats.push_back((int32_t)i);
        max_col_n_ = std::max(max_col_n_, g.n);
        for (int64_t r0 = 0; r0 < p.rows; r0 += kColChunkRows)
          for (int64_t c0 = 0; c0 < p.cols; c0 += 256 * vec) col_blocks.push_back({(int32_t)i, 0, r0, c0});
      }
      sel_host_off_.push_back(g.sel_off);
      k_host_.push_back(g.k);
      max_k_ = std::max(max_k_, g.k);
      max_len_ = std::max(max_len_, g.L);
    }
    OG_CHECK(row_blocks.size() < (size_t)INT32_MAX && col_blocks.size() < (size_t)INT32_MAX,
             "{}: too many blocks for one launch", name_of(hp_.algorithm));
    upload(mats_, mats);
    upload(row_blocks_, row_blocks);
    upload(col_blocks_, col_blocks);
    upload(col_mats_, col_mats);
    n_row_blocks_ = (int64_t)row_blocks.size();
    n_col_blocks_ = (int64_t)col_blocks.size();

    for (auto& g : groups_) {
      upload(g->members_dev, g->members);
      if (nordion2_) {
        std::vector<NeuronNormDesc> nd;
        for (int32_t i : g->members) nd.push_back({variance_.ptr(i), sel_.data() + geo[i].sel_off});
        upload(g->ndescs, nd);
      }
    }
    // The separate weight-decay pass: one chunk table over all weights.
    {
      std::vector<WeightSpan> spans;
      std::vector<int64_t> wnumel;
      for (const auto& p : params_) {
        spans.push_back({p.w, (int64_t)p.numel()});
        wnumel.push_back((int64_t)p.numel());
      }
      upload(weight_spans_, spans);
      decay_chunks_.build(wnumel);
      decay_vec4_ = true;
      for (const auto& p : params_) decay_vec4_ = decay_vec4_ && aligned_to(p.w, 16) && p.numel() % 4 == 0;
    }
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
    if (params_.empty()) return;
    if (sync_) sync_->reset();
    dion2_set_scalars(
        main_, scalars_.data(),
        Dion2Scalars{ctx.lr, 1.0f - ctx.lr * hp_.weight_decay, (int64_t)ctx.step, decay_pending_ ? ef_decay_ : 1.0f});
    decay_pending_ = lazy_decay_;  // this step's selection owes its decay to the next pass 1
    if (profile_) {
      enqueue_step(main_, &timer_);
      return;
    }
    if (!use_graph_) {
      enqueue_step(main_, nullptr);
      return;
    }
    graph_.run(
        main_, [&](cudaStream_t s) { set_stream(s); }, [&](cudaStream_t s) { enqueue_step(s, nullptr); });
  }

  std::vector<std::pair<std::string, double>> last_phase_ms() override {
    if (!profile_) return {};
    return timer_.results();
  }

  // Per parameter, as the CPU reference: momentum, and for NorDion2 variance_neuron (rows).
  std::vector<StateTensor> state() override {
    settle_pending_decay();
    std::vector<StateTensor> out;
    for (size_t i = 0; i < params_.size(); ++i) {
      out.push_back(momentum_.view(i, names_[i], "momentum"));
      if (nordion2_) out.push_back(variance_.view(i, names_[i], "variance_neuron"));
    }
    return out;
  }

  std::map<std::string, double> stats() const override {
    std::map<std::string, double> out;
    if (split_ || sync_)
      out["comm_bytes"] = (split_ ? split_->last_bytes() : 0.0) + (sync_ ? sync_->total_bytes() : 0.0);
    if (!hp_.diagnostics || params_.empty()) return out;
    std::vector<float> mass(params_.size());
    CUDA_CHECK(cudaMemcpyAsync(mass.data(), mass_.data(), mass.size() * sizeof(float), cudaMemcpyDeviceToHost, main_));
    CUDA_CHECK(cudaStreamSynchronize(main_));
    const double np = (double)params_.size();
    out["select_mass"] = std::accumulate(mass.begin(), mass.end(), 0.0) / np;
    out["select_k"] = k_sum_ / np;
    out["select_fraction"] = frac_sum_ / np;
    return out;
  }

  // Compressed sync: every rank's momentum ← the rank average, which is the fully synced momentum
  // (each step is linear in the local gradients); bf16 state is averaged in fp32 and rounded.
  void synchronize_state() override {
    if (!sync_) return;
    settle_pending_decay();
    const int64_t n = momentum_.total();
    if (hp_.state_dtype == StateDtype::F32) {
      sync_order_.run(*sync_, main_, [&] { sync_->all_reduce(momentum_.base(), n, DType::F32, ReduceOp::Avg); });
    } else {
      DeviceBuffer<float> f32((size_t)n);
      convert_state(main_, momentum_.base(), f32.data(), n, hp_.state_dtype, true);
      sync_order_.run(*sync_, main_, [&] { sync_->all_reduce(f32.data(), n, DType::F32, ReduceOp::Avg); });
      convert_state(main_, momentum_.base(), f32.data(), n, hp_.state_dtype, false);
      CUDA_CHECK(cudaStreamSynchronize(main_));  // before f32 is freed
    }
  }

  std::vector<std::vector<int32_t>> last_selection() override {
    std::vector<int32_t> all(sel_.size());
    CUDA_CHECK(cudaMemcpyAsync(all.data(), sel_.data(), sel_.bytes(), cudaMemcpyDeviceToHost, main_));
    CUDA_CHECK(cudaStreamSynchronize(main_));
    std::vector<std::vector<int32_t>> out;
    for (size_t i = 0; i < params_.size(); ++i)
      out.emplace_back(all.begin() + sel_host_off_[i], all.begin() + sel_host_off_[i] + k_host_[i]);
    return out;
  }

 private:
  struct Group;
  // Apply the lazy selective decay still owed by the last selection (see dion2_lazy_decay).
  void settle_pending_decay() {
    if (!decay_pending_) return;
    dion2_apply_pending_decay(main_, mats_.data(), (int)params_.size(), max_k_, max_len_, hp_.state_dtype, ef_decay_);
    decay_pending_ = false;
  }

  // The step after dion2_set_scalars, all on stream s and the streams forked from it (joined back
  // into s). With a timer: the groups in sequence on s, marks between the phases.
  void enqueue_step(cudaStream_t s, PhaseTimer* timer) {
    const Dion2Scalars* sc = scalars_.data();
    const bool overlap = overlap_decay_ && !timer;
    if (timer) timer->begin(s);
    dion2_pass1(s, mats_.data(), row_blocks_.data(), n_row_blocks_, col_blocks_.data(), n_col_blocks_, vec4_,
                hp_.state_dtype, decay_in_pass1_, sc);
    if (timer) timer->mark(s, "pass1");
    if (overlap) {  // fork the weight decay; joined by every group before its scatter
      CUDA_CHECK(cudaEventRecord(decay_fork_.e, s));
      CUDA_CHECK(cudaStreamWaitEvent(decay_stream_.s, decay_fork_.e, 0));
      decay_weights(decay_stream_.s, decay_chunks_.chunks.data(), decay_chunks_.count(), weight_spans_.data(),
                    decay_vec4_, sc);
      CUDA_CHECK(cudaEventRecord(decay_done_.e, decay_stream_.s));
    } else if (overlap_decay_) {  // profiling: the same pass inline
      decay_weights(s, decay_chunks_.chunks.data(), decay_chunks_.count(), weight_spans_.data(), decay_vec4_, sc);
      timer->mark(s, "weight decay");
    }
    dion2_reduce_partials(s, mats_.data(), col_mats_.data(), (int)col_mats_.size(), max_col_n_);
    if (timer) timer->mark(s, "reduce partials");
    dion2_select(s, mats_.data(), (int)params_.size(), npow2_, hp_.select == Select::Random, hp_.seed, sc,
                 ns_norm_multiplier(hp_.ortho), hp_.eps);
    if (timer) timer->mark(s, "select");
    if (sync_) {  // compressed sync: M[K] ← the rank average, and its scale
      dion2_pack_selected(s, mats_.data(), (int)params_.size(), sync_offsets_.data(), sync_buf_.data(), max_k_,
                          max_len_, hp_.state_dtype);
      sync_order_.run(*sync_, s, [&] { sync_->all_reduce(sync_buf_.data(), sync_total_, DType::F32, ReduceOp::Avg); });
      dion2_unpack_selected(s, mats_.data(), (int)params_.size(), sync_offsets_.data(), sync_buf_.data(), max_k_,
                            max_len_, hp_.state_dtype, ns_norm_multiplier(hp_.ortho), hp_.eps);
      if (timer) timer->mark(s, "compressed sync");
    }
    if (split_rows_) {  // the unselected rows' decay (needs only the slot map), under the groups' work
      cudaStream_t ds = timer ? s : decay_stream_.s;
      if (!timer) stream_wait(ds, s, decay_fork_.e);
      for (auto& g : groups_)
        if (g->row_members > 0)
          dion2_decay_update(ds, mats_.data(), g->members_dev.data(), g->size, g->max_tiles, true, false, vec4_, sc,
                             RowSlices::Unselected);
      if (timer)
        timer->mark(s, "decay (unselected rows)");
      else
        CUDA_CHECK(cudaEventRecord(decay_done_.e, ds));
    }
    const bool fork = fork_.e && !timer;
    if (fork) CUDA_CHECK(cudaEventRecord(fork_.e, s));
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      Group* g = groups_[gi].get();
      const bool own = g->side.s && !timer;
      cudaStream_t gs = own ? g->side.s : s;
      if (own) g->side.fork(fork_.e);
      if (g->side.s && timer) g->blas->set_stream(s);
      // this rank's NS sub-batch (every member without a split)
      dion2_gather(gs, mats_.data(), g->members_dev.data() + g->mine_first, g->shape.count, g->shape.rows,
                   g->shape.cols, g->max_tiles, g->mine_row_members > 0, g->mine_col_members > 0, vec4_,
                   hp_.state_dtype, hp_.ef && !lazy_decay_, ef_decay_);
      if (timer) timer->mark(s, "gather");
      if (g->shape.count > 0) {
        bf16* out = g->ns.run(*g->blas);
        OG_CHECK(out == g->ns.result(), "internal: NS result not where planned");
      }
      if (!split_) {
        neuron_factors(*g, (int)gi, gs);
        if (timer) timer->mark(s, "newton-schulz");
        update(*g, gs, overlap, timer);
      } else if (timer) {
        timer->mark(s, "newton-schulz");
      }
      if (own) g->side.join(s);
      if (g->side.s && timer) g->blas->set_stream(g->side.s);
    }
    if (split_) {
      split_->all_gather(s);
      if (timer) timer->mark(s, "all-gather");
      for (size_t gi = 0; gi < groups_.size(); ++gi) {
        neuron_factors(*groups_[gi], (int)gi, s);
        update(*groups_[gi], s, overlap, nullptr);
      }
      if (timer) timer->mark(s, decay_in_scatter_ ? "decay + update" : "scatter update");
    }
    // Overlapped: the decay stream is joined through the groups already; joining it into s directly
    // as well keeps graph capture happy even with no group. SplitRows: the groups' passes touch
    // other rows than the decay stream's, so it is joined only here.
    if (overlap || (split_rows_ && !timer)) CUDA_CHECK(cudaStreamWaitEvent(s, decay_done_.e, 0));
    if (!hp_.ef) scale_state(s, momentum_.base(), momentum_.total(), hp_.state_dtype, ef_decay_);
    if (timer && !hp_.ef) timer->mark(s, "ef decay");
  }

  // NorDion2: the neuron-wise factors of every member of g, from the NS results in place (this
  // rank's, or every rank's after the all-gather).
  void neuron_factors(Group& g, int gi, cudaStream_t s) {
    if (!nordion2_) return;
    neuron_norm_factors_by_run(split_.get(), gi, g.size, split_ ? nullptr : g.ns.result(), s, g.shape.rows,
                               g.shape.cols, g.ndescs.data(), hp_.state_dtype, hp_.beta2, g.rowsq.data(),
                               g.factors.data());
  }

  // The update of every member of g (with the weight decay where it runs in the scatter).
  void update(Group& g, cudaStream_t s, bool overlap, PhaseTimer* timer) {
    const Dion2Scalars* sc = scalars_.data();
    if (overlap) CUDA_CHECK(cudaStreamWaitEvent(s, decay_done_.e, 0));
    if (decay_in_scatter_) {
      dion2_decay_update(s, mats_.data(), g.members_dev.data(), g.size, g.max_tiles, g.row_members > 0,
                         g.col_members > 0, vec4_, sc, split_rows_ ? RowSlices::Selected : RowSlices::All, g.shape.rows,
                         g.shape.cols);
      if (timer) timer->mark(s, "decay + update");
    } else {
      dion2_update(s, mats_.data(), g.members_dev.data(), g.size, g.shape.rows, g.shape.cols, sc);
      if (timer) timer->mark(s, "scatter update");
    }
  }

  // Members are destroyed in reverse order: the cuBLAS context before its stream.
  struct Group {
    SideStream side;  // CudaOptimOptions::concurrent_groups: groups after the first (first: destroyed last)
    NsShape shape;    // rows = k, cols = L; count: this rank's NS sub-batch (all members without a split)
    std::vector<int32_t> members;                    // owner split: ordered by owner
    int size = 0;                                    // members
    int mine_first = 0;                              // position of this rank's first member (owner split)
    bf16* input = nullptr;                           // the NS input of this rank's sub-batch
    int row_members = 0, col_members = 0;            // members with row / column slices
    int mine_row_members = 0, mine_col_members = 0;  // the same among this rank's
    int64_t max_tiles = 0;                           // the most dion2_tiles of any member
    DeviceBuffer<int32_t> members_dev;
    DeviceBuffer<NeuronNormDesc> ndescs;
    DeviceBuffer<bf16> x[2], a, b;       // NS input (gathered submatrices) / output, Gram products
    DeviceBuffer<float> rowsq, factors;  // NorDion2
    std::unique_ptr<BlasContext> blas;
    NsBatch ns;
  };

  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  std::vector<std::string> names_;
  bool nordion2_;
  float ef_decay_ = 0.95f;
  cudaStream_t main_ = nullptr;
  bool concurrent_ = true;
  OwnedEvent fork_;
  bool overlap_decay_ = false, decay_in_pass1_ = false, decay_in_scatter_ = true, split_rows_ = false;
  bool lazy_decay_ = true, decay_pending_ = false;
  int64_t max_k_ = 0, max_len_ = 0;  // the largest k and slice length (settle_pending_decay's grid)
  bool profile_ = false, use_graph_ = false;
  PhaseTimer timer_;
  StepGraph graph_;  // the captured step (cuda_graph); holds no reference to the streams or events
  DeviceBuffer<Dion2Scalars> scalars_;
  OwnedStream decay_stream_;
  OwnedEvent decay_fork_, decay_done_;
  DeviceBuffer<WeightSpan> weight_spans_;
  ChunkTable decay_chunks_;
  bool decay_vec4_ = false;
  StateArena momentum_, variance_;
  std::vector<std::unique_ptr<Group>> groups_;
  std::unique_ptr<OwnerSplit> split_;  // DDP owner split (CudaOptimOptions::ddp_comm), or nullptr
  // compressed sync (CudaOptimOptions::compressed_sync_comm): M[K] of every matrix, fp32, at
  // sync_offsets_[i]
  std::unique_ptr<CountingCommunicator> sync_;
  CommOrder sync_order_;
  DeviceBuffer<int64_t> sync_offsets_;
  DeviceBuffer<float> sync_buf_;
  int64_t sync_total_ = 0;
  DeviceBuffer<Dion2Mat> mats_;
  DeviceBuffer<Pass1Block> row_blocks_, col_blocks_;
  DeviceBuffer<int32_t> col_mats_, sel_, slot_;
  DeviceBuffer<float> part_l1_, part_l2_, scale_, mass_;
  int64_t n_row_blocks_ = 0, n_col_blocks_ = 0, max_col_n_ = 0;
  int npow2_ = 1;
  bool vec4_ = false;
  double k_sum_ = 0.0, frac_sum_ = 0.0;  // diagnostics: Σ k and Σ k/n over the matrices
  std::vector<int64_t> sel_host_off_, k_host_;
};

}  // namespace

std::unique_ptr<CudaOptimizer> make_cuda_dion2(const OptimHParams& hp, std::vector<ParamSlot> params,
                                               const CudaOptimOptions& options) {
  return std::make_unique<CudaDion2>(hp, std::move(params), options);
}

}  // namespace og::cuda
