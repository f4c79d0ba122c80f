// The distributed matrix optimizers (optim/distributed_optimizer.h) on CPU ranks against a
// single process: every rank builds the same random matrices (normal entries, never zero) and
// gradients, runs the distributed optimizer for several steps, and compares with
// make_optimizer run on one rank on the same (averaged) gradients. Tolerance: max |Δw| / max |w|
// below 1e-5 (fp32; the NS products may be split differently over threads, everything else is the
// same arithmetic). Row-sharded runs use uneven shards (10 rows over 3 ranks: 4, 3, 3).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "dist/counting_communicator.h"
#include "optim/dion_linalg.h"
#include "optim/distributed_optimizer.h"
#include "optim/distributed_plan.h"
#include "optim/matrix_ops.h"
#include "optim/newton_schulz.h"
#include "optim/slice_select.h"
#include "tests/mpi/mpi_env.h"

using og_test::comm;

namespace {

struct Shape {
  int64_t rows, cols;
};
// wide, tall (Dion2 selects columns), square, and two of one shape (batched on an owner)
const std::vector<Shape> kShapes = {{10, 16}, {16, 10}, {12, 12}, {10, 16}, {10, 24}};
constexpr int kSteps = 4;
constexpr double kTol = 1e-5;

std::vector<float> random_vec(size_t n, uint64_t seed, double scale = 1.0) {
  og::Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = (float)(scale * rng.normal());
  return v;
}

// dst <- src keeping dst's buffer (the optimizers hold pointers into it).
void assign(std::vector<float>& dst, const std::vector<float>& src) { std::copy(src.begin(), src.end(), dst.begin()); }

double rel_diff(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num = std::max(num, (double)std::fabs(a[i] - b[i]));
    den = std::max(den, (double)std::fabs(b[i]));
  }
  return num / den;
}

og::OptimHParams hparams(og::Algorithm a) {
  og::OptimHParams hp;
  hp.algorithm = a;
  hp.weight_decay = 0.1f;
  hp.nesterov = a == og::Algorithm::Muon || a == og::Algorithm::NorMuon;
  hp.fraction = 0.5f;
  hp.seed = 7;
  return hp;
}

// Whole matrices, the same on every rank.
struct Matrices {
  std::vector<std::vector<float>> w, g;
  explicit Matrices(uint64_t seed) {
    for (size_t p = 0; p < kShapes.size(); ++p) {
      w.push_back(random_vec(kShapes[p].rows * kShapes[p].cols, seed + p, 0.1));
      g.emplace_back(w.back().size());
    }
  }
  std::vector<og::ParamSlot> slots() {
    std::vector<og::ParamSlot> s;
    for (size_t p = 0; p < kShapes.size(); ++p)
      s.push_back(
          {"m" + std::to_string(p), og::ParamRole::Matrix, kShapes[p].rows, kShapes[p].cols, w[p].data(), g[p].data()});
    return s;
  }
};

// This rank's gradient of matrix p at step t (different on every rank).
std::vector<float> local_grad(size_t p, int t) {
  return random_vec(kShapes[p].rows * kShapes[p].cols, 1000 + 100 * t + 10 * p + comm().rank());
}

void expect_same_on_all_ranks(const std::vector<float>& v, const char* what) {
  std::vector<float> mx = v, mn = v;
  comm().all_reduce(mx.data(), mx.size(), og::DType::F32, og::ReduceOp::Max);
  comm().all_reduce(mn.data(), mn.size(), og::DType::F32, og::ReduceOp::Min);
  EXPECT_EQ(mx, mn) << what << " differs between ranks";
}

// DDP: the distributed optimizer on averaged gradients == make_optimizer on the same gradients.
// owner_split "off": every rank runs the whole single-process step (bit-identical, no traffic).
void check_replicated(og::OptimHParams hp, const std::string& owner_split = "on") {
  Matrices dist(1), ref(1);
  og::DistributedOptions o;
  o.comm = &comm();
  o.owner_split = owner_split;
  auto opt = og::make_distributed_optimizer(hp, dist.slots(), og::Device::CPU, o);
  auto single = og::make_optimizer(hp, ref.slots());
  for (int t = 1; t <= kSteps; ++t) {
    for (size_t p = 0; p < kShapes.size(); ++p) {
      assign(dist.g[p], local_grad(p, t));
      comm().all_reduce(dist.g[p].data(), dist.g[p].size(), og::ReduceOp::Avg);  // the trainer's average
      ref.g[p] = dist.g[p];
    }
    og::StepContext ctx{t, 0.02f};
    opt->step(ctx);
    single->step(ctx);
  }
  for (size_t p = 0; p < kShapes.size(); ++p) {
    const double d = rel_diff(dist.w[p].data(), ref.w[p].data(), dist.w[p].size());
    EXPECT_LT(d, kTol) << og::name_of(hp.algorithm) << " matrix " << p << " on " << comm().size() << " ranks";
    expect_same_on_all_ranks(dist.w[p], "weights");
  }
  // the state is replicated: identical everywhere and equal to one process's
  auto st = opt->state(), st_ref = single->state();
  ASSERT_EQ(st.size(), st_ref.size());
  for (size_t i = 0; i < st.size(); ++i) {
    EXPECT_EQ(st[i].name, st_ref[i].name);
    EXPECT_LT(rel_diff((float*)st[i].data, (float*)st_ref[i].data, st[i].count), kTol) << st[i].name;
  }
  if (owner_split == "off") {
    for (size_t p = 0; p < kShapes.size(); ++p) EXPECT_EQ(dist.w[p], ref.w[p]) << "owner_split off, matrix " << p;
    EXPECT_EQ(opt->stats().count("comm_bytes"), 0u);
  } else if (hp.algorithm != og::Algorithm::Dion) {
    EXPECT_GT(opt->stats().at("comm_bytes"), 0.0);
  }
}

// Row split of `rows` over W ranks: the first rows % W ranks get one more (uneven when W ∤ rows).
void shard_of(int64_t rows, int W, int r, int64_t& row0, int64_t& n) {
  const int64_t base = rows / W, extra = rows % W;
  n = base + (r < extra ? 1 : 0);
  row0 = r * base + std::min<int64_t>(r, extra);
}

// Single-process reference of Dion2's LOCAL scope: each rank's row block contributes its own
// top-k_local rows (k_local = local_select_count), the union is orthonormalized as one matrix.
class LocalScopeReference {
 public:
  LocalScopeReference(const og::OptimHParams& hp, Matrices& m, int W) : hp_(hp), m_(m), W_(W) {
    for (auto& w : m.w) mom_.emplace_back(w.size(), 0.0f);
  }
  void step(const og::StepContext& ctx) {
    for (size_t p = 0; p < kShapes.size(); ++p) {
      const int64_t R = kShapes[p].rows, C = kShapes[p].cols;
      float* M = mom_[p].data();
      for (size_t i = 0; i < mom_[p].size(); ++i) M[i] += m_.g[p][i];
      const int64_t kl = og::local_select_count(hp_.fraction, R, W_);
      std::vector<int64_t> K, part;
      for (int r = 0; r < W_; ++r) {
        int64_t row0, n;
        shard_of(R, W_, r, row0, n);
        if (n == 0) continue;
        const int64_t k = std::min(kl, n);
        if (hp_.select == og::Select::L1) {
          std::vector<double> score;
          og::l1_slice_norms(M + row0 * C, n, C, og::SliceAxis::Rows, score);
          og::top_k_indices(score, k, part);
        } else {  // smallest hash of the global row
          part.resize(n);
          for (int64_t i = 0; i < n; ++i) part[i] = i;
          auto key = [&](int64_t i) {
            return og::hash_u64(hp_.seed, (uint64_t)ctx.step, (uint64_t)p, (uint64_t)(row0 + i));
          };
          std::sort(part.begin(), part.end(), [&](int64_t a, int64_t b) { return key(a) < key(b); });
          part.resize(k);
          std::sort(part.begin(), part.end());
        }
        for (int64_t i : part) K.push_back(row0 + i);
      }
      std::vector<float> O(K.size() * C);
      og::NsSource src{M, R, C, C, K.data(), (int64_t)K.size(), og::SliceAxis::Rows};
      og::NsWorkspace ws;
      og::orthonormalize(hp_.ortho, src, O.data(), C, hp_.eps, ws);
      if (hp_.ef) og::scale_slices(M, R, C, og::SliceAxis::Rows, K, hp_.ef_decay, false);
      og::decay_and_add_slices(m_.w[p].data(), R, C, og::SliceAxis::Rows, K, O.data(),
                               1.0 - (double)ctx.lr * hp_.weight_decay, og::adjusted_lr(ctx.lr, hp_.adjust_lr, R, C));
      if (!hp_.ef)
        for (float& x : mom_[p]) x = (float)((double)x * hp_.ef_decay);
    }
  }

 private:
  og::OptimHParams hp_;
  Matrices& m_;
  int W_;
  std::vector<std::vector<float>> mom_;
};

// FSDP: each rank holds rows of every matrix; the reassembled result equals one process
// (Muon, NorMuon, Dion2 global) or the local-scope reference (Dion2 local).
void check_sharded(og::OptimHParams hp, const std::string& scope) {
  const int W = comm().size(), r = comm().rank();
  Matrices whole(2), ref(2);
  std::vector<std::vector<float>> w_shard, g_shard;
  std::vector<og::ParamSlot> slots = whole.slots();
  for (size_t p = 0; p < kShapes.size(); ++p) {
    int64_t row0, n;
    shard_of(kShapes[p].rows, W, r, row0, n);
    const int64_t C = kShapes[p].cols;
    w_shard.emplace_back(whole.w[p].begin() + row0 * C, whole.w[p].begin() + (row0 + n) * C);
    g_shard.emplace_back(n * C);
    slots[p].row0 = row0;
    slots[p].local_rows = n;
    slots[p].w = w_shard[p].data();
    slots[p].g = g_shard[p].data();
  }
  og::DistributedOptions o;
  o.comm = &comm();
  o.row_sharded = true;
  o.select_scope = scope;
  auto opt = og::make_distributed_optimizer(hp, slots, og::Device::CPU, o);
  const bool local_ref = hp.algorithm == og::Algorithm::Dion2 && scope == "local";
  std::unique_ptr<og::Optimizer> single;
  std::unique_ptr<LocalScopeReference> local;
  if (local_ref)
    local = std::make_unique<LocalScopeReference>(hp, ref, W);
  else
    single = og::make_optimizer(hp, ref.slots());
  for (int t = 1; t <= kSteps; ++t) {
    for (size_t p = 0; p < kShapes.size(); ++p) {
      // the averaged gradient (the same on every rank), this rank's rows of it
      assign(ref.g[p], random_vec(ref.g[p].size(), 5000 + 100 * t + p));
      std::memcpy(g_shard[p].data(), ref.g[p].data() + slots[p].row0 * kShapes[p].cols, g_shard[p].size() * 4);
    }
    og::StepContext ctx{t, 0.02f};
    opt->step(ctx);
    if (local)
      local->step(ctx);
    else
      single->step(ctx);
  }
  for (size_t p = 0; p < kShapes.size(); ++p) {
    const float* mine_ref = ref.w[p].data() + slots[p].row0 * kShapes[p].cols;
    double d = w_shard[p].empty() ? 0.0 : rel_diff(w_shard[p].data(), mine_ref, w_shard[p].size());
    // relative to the whole matrix's scale
    double scale = 0;
    for (float x : ref.w[p]) scale = std::max(scale, (double)std::fabs(x));
    double mine_scale = 0;
    for (size_t i = 0; i < w_shard[p].size(); ++i) mine_scale = std::max(mine_scale, (double)std::fabs(mine_ref[i]));
    d *= mine_scale / scale;
    EXPECT_LT(d, kTol) << og::name_of(hp.algorithm) << " " << scope << " matrix " << p << " rank " << r << " of " << W;
  }
}

}  // namespace

TEST(DistOptimDDP, Muon) { check_replicated(hparams(og::Algorithm::Muon)); }
TEST(DistOptimDDP, MuonPolarExpress) {
  auto hp = hparams(og::Algorithm::Muon);
  hp.ortho = og::Ortho::PolarExpress;
  check_replicated(hp);
}
TEST(DistOptimDDP, NorMuon) { check_replicated(hparams(og::Algorithm::NorMuon)); }
// Dion2 with l1 / random selection, ef on / off.
void for_each_dion2_variant(const std::function<void(const og::OptimHParams&)>& check) {
  for (og::Select sel : {og::Select::L1, og::Select::Random})
    for (bool ef : {true, false}) {
      auto hp = hparams(og::Algorithm::Dion2);
      hp.select = sel;
      hp.ef = ef;
      SCOPED_TRACE(std::string(og::name_of(sel)) + (ef ? " ef on" : " ef off"));
      check(hp);
    }
}

TEST(DistOptimDDP, Dion2) {
  for_each_dion2_variant([](const og::OptimHParams& hp) { check_replicated(hp); });
}
TEST(DistOptimDDP, NorDion2) { check_replicated(hparams(og::Algorithm::NorDion2)); }
TEST(DistOptimDDP, DionRunsReplicated) { check_replicated(hparams(og::Algorithm::Dion)); }
TEST(DistOptimDDP, OwnerSplitOffRunsTheSingleProcessStep) {
  for (og::Algorithm a : {og::Algorithm::Muon, og::Algorithm::Dion2}) check_replicated(hparams(a), "off");
}

TEST(DistOptimFSDP, Muon) { check_sharded(hparams(og::Algorithm::Muon), "local"); }
TEST(DistOptimFSDP, NorMuon) { check_sharded(hparams(og::Algorithm::NorMuon), "local"); }
TEST(DistOptimFSDP, Dion2Global) {
  for (og::Select sel : {og::Select::L1, og::Select::Random}) {
    auto hp = hparams(og::Algorithm::Dion2);
    hp.select = sel;
    hp.select_dim = og::SelectDim::Rows;  // the single process selects rows too (FSDP always does)
    SCOPED_TRACE(og::name_of(sel));
    check_sharded(hp, "global");
  }
}
TEST(DistOptimFSDP, NorDion2Global) { check_sharded(hparams(og::Algorithm::NorDion2), "global"); }
TEST(DistOptimFSDP, Dion2Local) {
  for_each_dion2_variant([](const og::OptimHParams& hp) { check_sharded(hp, "local"); });
}

// Dion on row shards: the factors' row sums all-reduced == one process on the whole matrices.
// Rank fraction 0.25: randomized Cholesky-QR of P's row blocks (tall) and of the replicated P (wide);
// cqr_warmup_steps 1: plain Cholesky-QR from step 2; rank fraction 1: the square 12 x 12 takes
// the Householder path on the gathered P; bf16 state.
TEST(DistOptimFSDP, Dion) {
  for (int variant = 0; variant < 4; ++variant) {
    auto hp = hparams(og::Algorithm::Dion);
    hp.diagnostics = true;
    if (variant == 1) hp.cqr_warmup_steps = 1;
    if (variant == 2) hp.rank_fraction = 1.0f;
    if (variant == 3) hp.state_dtype = og::StateDtype::BF16;
    SCOPED_TRACE("variant " + std::to_string(variant));
    check_sharded(hp, "local");
  }
}

// Dion on a matrix with fewer rows than ranks (2 x 9 over 3 ranks: one rank holds no rows, yet
// takes part in every sum) and a tall 9 x 2 one, rank fraction 1: equal to one process.
TEST(DistOptimFSDP, DionEmptyShard) {
  const int W = comm().size(), me = comm().rank();
  const std::vector<Shape> shapes = {{2, 9}, {9, 2}};
  auto hp = hparams(og::Algorithm::Dion);
  hp.rank_fraction = 1.0f;
  std::vector<std::vector<float>> w, g, ws, gs;
  std::vector<og::ParamSlot> slots, whole;
  for (size_t p = 0; p < shapes.size(); ++p) {
    const int64_t R = shapes[p].rows, C = shapes[p].cols;
    w.push_back(random_vec(R * C, 31 + p, 0.1));
    g.emplace_back(R * C);
    int64_t row0, n;
    shard_of(R, W, me, row0, n);
    ws.emplace_back(w[p].begin() + row0 * C, w[p].begin() + (row0 + n) * C);
    gs.emplace_back(n * C);
  }
  for (size_t p = 0; p < shapes.size(); ++p) {
    const int64_t R = shapes[p].rows, C = shapes[p].cols;
    og::ParamSlot s{"m" + std::to_string(p),
                    og::ParamRole::Matrix,
                    R,
                    C,
                    ws[p].empty() ? nullptr : ws[p].data(),
                    gs[p].empty() ? nullptr : gs[p].data()};
    shard_of(R, W, me, s.row0, s.local_rows);
    slots.push_back(s);
    whole.push_back({s.name, og::ParamRole::Matrix, R, C, w[p].data(), g[p].data()});
  }
  og::DistributedOptions o;
  o.comm = &comm();
  o.row_sharded = true;
  auto opt = og::make_distributed_optimizer(hp, slots, og::Device::CPU, o);
  auto single = og::make_optimizer(hp, whole);
  for (int t = 1; t <= kSteps; ++t) {
    for (size_t p = 0; p < shapes.size(); ++p) {
      assign(g[p], random_vec(g[p].size(), 700 + 10 * t + p));
      std::copy(g[p].begin() + slots[p].row0 * shapes[p].cols,
                g[p].begin() + (slots[p].row0 + slots[p].shard_rows()) * shapes[p].cols, gs[p].begin());
    }
    opt->step({t, 0.02f});
    single->step({t, 0.02f});
  }
  for (size_t p = 0; p < shapes.size(); ++p)
    if (!ws[p].empty())
      EXPECT_LT(rel_diff(ws[p].data(), w[p].data() + slots[p].row0 * shapes[p].cols, ws[p].size()), kTol) << p;
}

// Dion under FSDP sends only its factors' row sums, whatever the shard sizes: per step, by the
// ring formula 2(W-1)/W per all-reduced byte, a wide 64 x 128 (r 16) all-reduces two fp64 sums,
// P (128 x 16 fp32) and r fp64 column norms; a tall 128 x 64 (r 16, sketch 128 rows) the two
// sums, S P (128 x 16 fp64), the Gram (16 x 16 fp64) and R (64 x 16 fp32) — docs/DISTRIBUTED.md.
TEST(DistOptimBytes, DionFactorsOnly) {
  const int W = comm().size(), me = comm().rank();
  for (bool wide : {true, false}) {
    const int64_t R = wide ? 64 : 128, C = wide ? 128 : 64;
    std::vector<float> w = random_vec(R * C, 41, 0.1), g = random_vec(R * C, 42);
    og::ParamSlot s{"m", og::ParamRole::Matrix, R, C, nullptr, nullptr};
    shard_of(R, W, me, s.row0, s.local_rows);
    s.w = w.data() + s.row0 * C;
    s.g = g.data() + s.row0 * C;
    og::DistributedOptions o;
    o.comm = &comm();
    o.row_sharded = true;
    auto opt = og::make_distributed_optimizer(hparams(og::Algorithm::Dion), {s}, og::Device::CPU, o);
    opt->step({1, 0.02f});
    const double payload = wide ? 16 + 128 * 16 * 4 + 16 * 8 : 16 + 128 * 16 * 8 + 16 * 16 * 8 + 64 * 16 * 4;
    EXPECT_DOUBLE_EQ(opt->stats().at("comm_bytes"), 2.0 * (W - 1) / W * payload) << (wide ? "wide" : "tall");
  }
}

// Dion's orthonormalization on row blocks (dion_linalg.h RowSplit) against one process: a full-rank
// tall P (randomized Cholesky-QR, and plain Cholesky-QR) within 1e-5, and a rank-deficient one (a
// zero column) whose Cholesky fails alike on every rank, so the Householder QR of the gathered P
// gives exactly one process's rows, with the same fallback count.
TEST(DistOptimFSDP, DionOrthonormalizeRowBlocks) {
  const int W = comm().size(), me = comm().rank();
  const int64_t m = 37, n = 6;
  int64_t row0, rows;
  shard_of(m, W, me, row0, rows);
  std::vector<int64_t> row0s(W), counts(W);
  for (int r = 0; r < W; ++r) shard_of(m, W, r, row0s[r], counts[r]);
  og::dion::RowSplit split;
  split.m_global = m;
  split.row0 = row0;
  split.sum = [](double* x, size_t c) { comm().all_reduce(x, c, og::DType::F64, og::ReduceOp::Sum); };
  split.gather_rows = [&](const float* mine, float* whole) {
    std::vector<size_t> cnt;
    for (int64_t c : counts) cnt.push_back((size_t)(c * n));
    comm().all_gatherv(mine, whole, cnt, og::DType::F32);  // rank order is row order here
  };
  for (int rank_deficient = 0; rank_deficient < 2; ++rank_deficient)
    for (bool try_cqr : {false, true}) {
      SCOPED_TRACE(std::string(rank_deficient ? "rank-deficient" : "full rank") + (try_cqr ? ", cqr" : ""));
      std::vector<float> A = random_vec(m * n, 21);
      if (rank_deficient)
        for (int64_t i = 0; i < m; ++i) A[i * n + 3] = 0.0f;
      std::vector<float> whole = A, mine(A.begin() + row0 * n, A.begin() + (row0 + rows) * n);
      const auto one = og::dion::orthonormalize_columns(m, n, whole.data(), try_cqr, 99);
      const auto split_res = og::dion::orthonormalize_columns(rows, n, mine.data(), try_cqr, 99, &split);
      EXPECT_EQ(split_res.method, one.method);
      EXPECT_EQ(split_res.fallbacks, one.fallbacks);
      if (rank_deficient) {
        EXPECT_EQ(one.method, og::dion::OrthoMethod::HouseholderQR);
        EXPECT_TRUE(std::equal(mine.begin(), mine.end(), whole.begin() + row0 * n));
      } else if (rows > 0) {
        EXPECT_LT(rel_diff(mine.data(), whole.data() + row0 * n, mine.size()), kTol);
      }
    }
}

// Compressed sync: local gradients, only the selected momentum rows averaged == full sync.
TEST(DistOptimDDP, CompressedSyncEqualsFullSync) {
  auto hp = hparams(og::Algorithm::Dion2);
  hp.select = og::Select::Random;
  for (bool ef : {true, false}) {
    hp.ef = ef;
    Matrices dist(3), ref(3);
    og::DistributedOptions o;
    o.comm = &comm();
    o.compressed_sync = true;
    auto opt = og::make_distributed_optimizer(hp, dist.slots(), og::Device::CPU, o);
    auto single = og::make_optimizer(hp, ref.slots());
    for (int t = 1; t <= kSteps; ++t) {
      for (size_t p = 0; p < kShapes.size(); ++p) {
        assign(dist.g[p], local_grad(p, t));  // NOT averaged
        ref.g[p] = dist.g[p];
        comm().all_reduce(ref.g[p].data(), ref.g[p].size(), og::ReduceOp::Avg);
      }
      og::StepContext ctx{t, 0.02f};
      opt->step(ctx);
      single->step(ctx);
    }
    for (size_t p = 0; p < kShapes.size(); ++p) {
      EXPECT_LT(rel_diff(dist.w[p].data(), ref.w[p].data(), dist.w[p].size()), kTol) << "ef " << ef << " matrix " << p;
      expect_same_on_all_ranks(dist.w[p], "weights");
    }
    // the unselected momentum differs between ranks until synchronize_state averages it
    auto st = opt->state(), st_ref = single->state();
    std::vector<float> m0((float*)st[0].data, (float*)st[0].data + st[0].count);
    std::vector<float> mx = m0;
    comm().all_reduce(mx.data(), mx.size(), og::DType::F32, og::ReduceOp::Max);
    EXPECT_NE(mx, m0) << "momenta should diverge under compressed sync";
    opt->synchronize_state();
    for (size_t i = 0; i < st.size(); ++i)
      EXPECT_LT(rel_diff((float*)st[i].data, (float*)st_ref[i].data, st[i].count), kTol) << st[i].name;
  }
}

// Bytes per step scale with the fraction: Dion2 ships k x L per matrix. Six 64 x 128 matrices
// (rows selected) spread evenly over 2 or 3 ranks: the ratio between fractions is that of k
// (DDP: 32 / 16 / 8, exactly 2; FSDP local scope: k_local, see below), ±0.02 allowed, and
// Dion2 ships k / (Muon's rows) of Muon's bytes.
TEST(DistOptimBytes, ScaleWithFraction) {
  auto run = [](og::Algorithm a, float fraction, bool sharded) {
    std::vector<std::vector<float>> w, g, wl, gl;
    std::vector<og::ParamSlot> slots;
    const int W = comm().size(), r = comm().rank();
    for (int p = 0; p < 6; ++p) {
      w.push_back(random_vec(64 * 128, 90 + p, 0.1));
      g.push_back(random_vec(64 * 128, 190 + p));
    }
    for (int p = 0; p < 6; ++p) {
      og::ParamSlot s{"m" + std::to_string(p), og::ParamRole::Matrix, 64, 128, w[p].data(), g[p].data()};
      if (sharded) {
        shard_of(64, W, r, s.row0, s.local_rows);
        s.w += s.row0 * 128;
        s.g += s.row0 * 128;
      }
      slots.push_back(s);
    }
    auto hp = hparams(a);
    hp.fraction = fraction;
    og::DistributedOptions o;
    o.comm = &comm();
    o.row_sharded = sharded;
    auto opt = og::make_distributed_optimizer(hp, slots, og::Device::CPU, o);
    opt->step({1, 0.02f});
    return opt->stats().at("comm_bytes");
  };
  for (bool sharded : {false, true}) {
    const double muon = run(og::Algorithm::Muon, 1.0f, sharded);
    const double b5 = run(og::Algorithm::Dion2, 0.5f, sharded), b25 = run(og::Algorithm::Dion2, 0.25f, sharded),
                 b125 = run(og::Algorithm::Dion2, 0.125f, sharded);
    SCOPED_TRACE(sharded ? "fsdp (local scope)" : "ddp");
    if (!sharded) {  // all-gather of W blocks of ceil(6/W) matrices of 64 x 128 floats
      const int W = comm().size();
      EXPECT_DOUBLE_EQ(muon, (W - 1) * (double)((6 + W - 1) / W) * 64 * 128 * 4);
    }
    // DDP: k = fraction x 64 exactly. FSDP local scope: k_local = ceil(fraction x ceil(64 / W)) per
    // rank (64 over 3 ranks: 11 / 6 / 3 of 22 rows), so the stated ratio is that of k_local.
    auto k_of = [&](float f) {
      return sharded ? (double)og::local_select_count(f, 64, comm().size()) : (double)og::select_count(f, 64);
    };
    auto rows_of_muon = sharded ? (double)((64 + comm().size() - 1) / comm().size()) : 64.0;
    EXPECT_NEAR(b5 / b25, k_of(0.5f) / k_of(0.25f), 0.02);
    EXPECT_NEAR(b25 / b125, k_of(0.25f) / k_of(0.125f), 0.02);
    EXPECT_NEAR(b5 / muon, k_of(0.5f) / rows_of_muon, 0.01);
    if (comm().rank() == 0)
      std::printf("[bytes/step/rank, %s, %d ranks, 6 x 64x128] muon %.0f  dion2 a0.5 %.0f  a0.25 %.0f  a0.125 %.0f\n",
                  sharded ? "fsdp" : "ddp", comm().size(), muon, b5, b25, b125);
  }
}

TEST(DistOptimErrors, ClearMessages) {
  Matrices m(4);
  og::DistributedOptions o;
  o.comm = &comm();
  auto expect_error = [&](og::OptimHParams hp, og::DistributedOptions opt, const char* needle) {
    try {
      og::make_distributed_optimizer(hp, m.slots(), og::Device::CPU, opt);
      ADD_FAILURE() << "no error, expected one with '" << needle << "'";
    } catch (const og::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto c = o;
  c.compressed_sync = true;
  expect_error(hparams(og::Algorithm::Dion2), c, "dist.compressed_sync");  // l1 selection
  expect_error(hparams(og::Algorithm::Muon), c, "dist.compressed_sync");
  auto f = o;
  f.row_sharded = true;
  auto cols = hparams(og::Algorithm::Dion2);
  cols.select_dim = og::SelectDim::Cols;
  expect_error(cols, f, "select_dim");
  auto s = o;
  s.select_scope = "everywhere";
  expect_error(hparams(og::Algorithm::Dion2), s, "dist.select_scope");
}

// The counter's formulas on a real communicator.
TEST(CountingCommunicator, RingBytes) {
  og::CountingCommunicator cc(comm());
  const int W = comm().size();
  std::vector<float> a(W * 10, 1.0f), b(W * 10);
  cc.all_reduce(a.data(), 10, og::ReduceOp::Sum);
  EXPECT_DOUBLE_EQ(cc.bytes(og::CollectiveKind::AllReduce), 2.0 * (W - 1) / W * 40);
  EXPECT_EQ(a[0], (float)W);
  cc.all_gather(a.data(), b.data(), 10, og::DType::F32);
  cc.all_to_all(a.data(), b.data(), 10, og::DType::F32);
  cc.reduce_scatter(a.data(), b.data(), 10, og::DType::F32, og::ReduceOp::Sum);
  EXPECT_DOUBLE_EQ(cc.bytes(og::CollectiveKind::AllGather), (W - 1) * 40.0);
  EXPECT_DOUBLE_EQ(cc.bytes(og::CollectiveKind::AllToAll), (W - 1) * 40.0);
  EXPECT_DOUBLE_EQ(cc.bytes(og::CollectiveKind::ReduceScatter), (W - 1) * 40.0);
  cc.reset();
  EXPECT_EQ(cc.total_bytes(), 0.0);
}
