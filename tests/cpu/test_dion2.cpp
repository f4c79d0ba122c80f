// Dion2 and NorDion2 on the CPU: selection (l1 top-k, random k-subset rule, k, dimension), the
// error-feedback variants, and the identities Dion2(α = 1) ≡ Muon(nesterov off, mu = ef_decay)
// and NorDion2(α = 1) ≡ NorMuon(nesterov off), which hold exactly in real arithmetic and here
// up to fp32 rounding (tolerance 2e-5 relative on the weight trajectory: both run the same NS).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "optim/dion2_cpu.h"
#include "optim/optimizer.h"
#include "optim/slice_select.h"
#include "optim_test_group.h"

using namespace og;
using og::test::rel_diff;
using og::test::TestGroup;

namespace {

OptimHParams dion2_hp(float fraction) {
  OptimHParams hp;
  hp.algorithm = Algorithm::Dion2;
  hp.fraction = fraction;
  hp.ef_decay = 0.9f;
  hp.weight_decay = 0.1f;
  return hp;
}

Dion2Cpu& as_dion2(Optimizer& o) { return dynamic_cast<Dion2Cpu&>(o); }

// Slices of W changed by more than weight decay in the last step (independent of selected()).
std::vector<int64_t> updated_slices(const std::vector<float>& before, const std::vector<float>& after, int64_t rows,
                                    int64_t cols, bool by_rows, double decay) {
  std::set<int64_t> s;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = r * cols + c;
      if (std::fabs((double)after[i] - (double)before[i] * decay) > 1e-6) s.insert(by_rows ? r : c);
    }
  return {s.begin(), s.end()};
}

// The k largest-l1 slices, computed independently in the test (sort all, take k, ties by index).
std::vector<int64_t> expected_top_k(const std::vector<float>& m, int64_t rows, int64_t cols, bool by_rows, int64_t k) {
  const int64_t n = by_rows ? rows : cols;
  std::vector<std::pair<double, int64_t>> s(n);
  for (int64_t i = 0; i < n; ++i) s[i] = {0.0, i};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) s[by_rows ? r : c].first += std::fabs((double)m[r * cols + c]);
  std::stable_sort(s.begin(), s.end(), [](auto& a, auto& b) { return a.first > b.first; });
  std::vector<int64_t> out;
  for (int64_t i = 0; i < k; ++i) out.push_back(s[i].second);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(Dion2, SelectCount) {
  EXPECT_EQ(select_count(0.25f, 64), 16);
  EXPECT_EQ(select_count(0.25f, 65), 17);
  EXPECT_EQ(select_count(0.5f, 3), 2);
  EXPECT_EQ(select_count(0.5f, 1), 1);
  EXPECT_EQ(select_count(0.01f, 10), 1);  // max(1, ...)
  EXPECT_EQ(select_count(1.0f, 7), 7);
  EXPECT_EQ(select_count(0.1f, 10), 1);  // 0.1f is 0.100000001: still one slice
  EXPECT_EQ(select_count(0.3f, 10), 3);
  EXPECT_EQ(select_count(0.7f, 100), 70);
  EXPECT_EQ(select_count(0.125f, 768), 96);
  EXPECT_EQ(select_count(0.25f, 3072), 768);
  EXPECT_EQ(select_count(0.33f, 100), 33);
  EXPECT_EQ(select_count(0.333f, 100), 34);
  EXPECT_THROW(select_count(0.0f, 10), Error);
  EXPECT_THROW(select_count(1.5f, 10), Error);
}

TEST(Dion2, L1SelectsExactlyTheKLargestSlices) {
  // Wide (rows selected), tall (columns selected), square (rows selected).
  TestGroup grp({{12, 40}, {40, 12}, {24, 24}}, 11);
  auto opt = make_optimizer(dion2_hp(0.25f), grp.slots);
  std::vector<std::vector<float>> m(3);
  for (int p = 0; p < 3; ++p) m[p].assign(grp.g[p].size(), 0.0f);
  const double decay = 1.0 - 0.05 * 0.1;
  for (int step = 1; step <= 4; ++step) {
    grp.new_grads(100 + step);
    std::vector<std::vector<float>> before = grp.w;
    // Expected momentum before decay, tracked independently: M += G, then M[K] *= ef_decay.
    for (int p = 0; p < 3; ++p)
      for (size_t i = 0; i < m[p].size(); ++i) m[p][i] += grp.g[p][i];
    opt->step({step, 0.05f});
    for (int p = 0; p < 3; ++p) {
      const ParamSlot& s = grp.slots[p];
      const bool by_rows = s.rows <= s.cols;
      const int64_t k = select_count(0.25f, by_rows ? s.rows : s.cols);
      const std::vector<int64_t> want = expected_top_k(m[p], s.rows, s.cols, by_rows, k);
      EXPECT_EQ(as_dion2(*opt).selected(p), want) << "param " << p << " step " << step;
      EXPECT_EQ(updated_slices(before[p], grp.w[p], s.rows, s.cols, by_rows, decay), want)
          << "param " << p << " step " << step;
      for (int64_t i : want)
        for (int64_t j = 0; j < (by_rows ? s.cols : s.rows); ++j)
          m[p][by_rows ? i * s.cols + j : j * s.cols + i] *= 0.9f;
    }
  }
}

TEST(Dion2, L1TiesGoToTheSmallerIndex) {
  std::vector<double> score = {1.0, 3.0, 2.0, 3.0, 3.0, 0.5};
  std::vector<int64_t> out;
  top_k_indices(score, 2, out);
  EXPECT_EQ(out, (std::vector<int64_t>{1, 3}));
  top_k_indices(score, 4, out);
  EXPECT_EQ(out, (std::vector<int64_t>{1, 2, 3, 4}));
  top_k_indices(score, 6, out);
  EXPECT_EQ(out.size(), 6u);
}

TEST(Dion2, RandomSelectionFollowsTheHashRule) {
  // key_i = hash_u64(seed, step, p, i); the k smallest keys win.
  TestGroup grp({{8, 20}, {30, 6}, {16, 16}}, 3);
  OptimHParams hp = dion2_hp(0.3f);
  hp.select = Select::Random;
  hp.seed = 1234;
  auto opt = make_optimizer(hp, grp.slots);
  for (int step = 1; step <= 5; ++step) {
    grp.new_grads(step);
    opt->step({step, 0.01f});
    for (uint64_t p = 0; p < 3; ++p) {
      const ParamSlot& s = grp.slots[p];
      const int64_t n = std::min(s.rows, s.cols);
      std::vector<std::pair<uint64_t, int64_t>> keys;
      for (int64_t i = 0; i < n; ++i) keys.push_back({hash_u64(1234, step, p, i), i});
      std::sort(keys.begin(), keys.end());
      std::vector<int64_t> want;
      for (int64_t i = 0; i < select_count(0.3f, n); ++i) want.push_back(keys[i].second);
      std::sort(want.begin(), want.end());
      EXPECT_EQ(as_dion2(*opt).selected(p), want) << "param " << p << " step " << step;
    }
  }
}

TEST(Dion2, RandomSelectionIsUniform) {
  // Marginals: each of n = 16 slices is picked k/n of the time (chi-square, 15 dof).
  const int64_t n = 16, k = 4, steps = 4000;
  std::vector<double> count(n, 0.0);
  std::vector<int64_t> idx;
  for (int64_t t = 1; t <= steps; ++t) {
    random_k_indices(42, t, 3, n, k, idx);
    ASSERT_EQ((int64_t)idx.size(), k);
    ASSERT_TRUE(std::is_sorted(idx.begin(), idx.end()));
    ASSERT_EQ(std::set<int64_t>(idx.begin(), idx.end()).size(), (size_t)k);  // without replacement
    for (int64_t i : idx) count[i] += 1.0;
  }
  const double expect = (double)steps * k / n;
  double chi2 = 0.0;
  for (double c : count) chi2 += (c - expect) * (c - expect) / expect;
  EXPECT_LT(chi2, 37.70) << "chi-square, 15 dof, p = 0.001";  // a biased rule fails by far
  // Whole subsets: all C(6, 2) = 15 pairs equally likely (chi-square, 14 dof).
  std::map<std::vector<int64_t>, double> pairs;
  const int64_t t2 = 6000;
  for (int64_t t = 1; t <= t2; ++t) {
    random_k_indices(7, t, 0, 6, 2, idx);
    pairs[idx] += 1.0;
  }
  ASSERT_EQ(pairs.size(), 15u);
  chi2 = 0.0;
  for (auto& [sub, c] : pairs) chi2 += (c - t2 / 15.0) * (c - t2 / 15.0) / (t2 / 15.0);
  EXPECT_LT(chi2, 36.12) << "chi-square, 14 dof, p = 0.001";
}

TEST(Dion2, RandomSelectionReproducibleAndSeedDependent) {
  auto run = [](uint64_t seed, std::vector<std::vector<int64_t>>& sel) {
    TestGroup grp({{16, 48}}, 5);
    OptimHParams hp = dion2_hp(0.25f);
    hp.select = Select::Random;
    hp.seed = seed;
    auto opt = make_optimizer(hp, grp.slots);
    for (int step = 1; step <= 6; ++step) {
      grp.new_grads(step);
      opt->step({step, 0.02f});
      sel.push_back(as_dion2(*opt).selected(0));
    }
    return grp.w[0];
  };
  std::vector<std::vector<int64_t>> a, b, c;
  const std::vector<float> wa = run(9, a), wb = run(9, b), wc = run(10, c);
  EXPECT_EQ(a, b);
  EXPECT_EQ(wa, wb);  // bit-identical
  EXPECT_NE(a, c);
  int differing_steps = 0;
  for (size_t i = 0; i < a.size(); ++i) differing_steps += a[i] != c[i];
  EXPECT_GE(differing_steps, 4);
  // Different steps select differently too (the step is part of the key).
  EXPECT_NE(a[0], a[1]);
}

TEST(Dion2, EfOffDecaysTheWholeMomentum) {
  TestGroup grp({{10, 30}, {30, 10}}, 21);
  OptimHParams hp = dion2_hp(0.2f);
  hp.ef = false;
  auto opt = make_optimizer(hp, grp.slots);
  std::vector<std::vector<float>> m = {std::vector<float>(300, 0.0f), std::vector<float>(300, 0.0f)};
  for (int step = 1; step <= 3; ++step) {
    grp.new_grads(50 + step);
    opt->step({step, 0.02f});
    const std::vector<StateTensor> st = opt->state();
    ASSERT_EQ(st.size(), 2u);
    for (int p = 0; p < 2; ++p) {
      for (size_t i = 0; i < 300; ++i) m[p][i] = (float)(((double)m[p][i] + grp.g[p][i]) * 0.9f);
      const float* got = static_cast<const float*>(st[p].data);
      EXPECT_EQ(st[p].name, "m" + std::to_string(p) + "/momentum");
      for (size_t i = 0; i < 300; ++i) ASSERT_NEAR(got[i], m[p][i], 1e-5 * (1 + std::fabs(m[p][i]))) << i;
    }
  }
  // ef on: after one step only the selected slices are decayed.
  TestGroup g2({{10, 30}}, 22);
  auto on = make_optimizer(dion2_hp(0.2f), g2.slots);
  on->step({1, 0.02f});
  const float* m1 = static_cast<const float*>(on->state()[0].data);
  const std::vector<int64_t>& sel = as_dion2(*on).selected(0);
  ASSERT_EQ(sel.size(), 2u);
  for (int64_t r = 0; r < 10; ++r) {
    const bool selected = std::find(sel.begin(), sel.end(), r) != sel.end();
    for (int64_t c = 0; c < 30; ++c)
      EXPECT_FLOAT_EQ(m1[r * 30 + c], selected ? 0.9f * g2.g[0][r * 30 + c] : g2.g[0][r * 30 + c]);
  }
}

TEST(Dion2, SelectionDimension) {
  TestGroup grp({{8, 24}, {24, 8}, {12, 12}}, 31);
  struct Want {
    SelectDim dim;
    bool rows[3];
  };
  for (const Want& w : {Want{SelectDim::Shorter, {true, false, true}}, Want{SelectDim::Rows, {true, true, true}},
                        Want{SelectDim::Cols, {false, false, false}}}) {
    TestGroup g({{8, 24}, {24, 8}, {12, 12}}, 31);
    OptimHParams hp = dion2_hp(0.25f);
    hp.select_dim = w.dim;
    auto opt = make_optimizer(hp, g.slots);
    std::vector<std::vector<float>> before = g.w;
    opt->step({1, 0.05f});
    for (int p = 0; p < 3; ++p) {
      const ParamSlot& s = g.slots[p];
      const int64_t n = w.rows[p] ? s.rows : s.cols;
      EXPECT_EQ(as_dion2(*opt).axis_of(s), w.rows[p] ? SliceAxis::Rows : SliceAxis::Cols);
      const std::vector<int64_t> upd = updated_slices(before[p], g.w[p], s.rows, s.cols, w.rows[p], 1.0 - 0.05 * 0.1);
      EXPECT_EQ((int64_t)upd.size(), select_count(0.25f, n)) << name_of(w.dim) << " param " << p;
      EXPECT_EQ(upd, as_dion2(*opt).selected(p));
    }
  }
  // NorDion2 always selects rows, whatever the shape; select_dim cols is refused.
  TestGroup g({{24, 8}}, 32);
  OptimHParams hp = dion2_hp(0.25f);
  hp.algorithm = Algorithm::NorDion2;
  auto opt = make_optimizer(hp, g.slots);
  opt->step({1, 0.05f});
  EXPECT_EQ(as_dion2(*opt).selected(0).size(), 6u);
  hp.select_dim = SelectDim::Cols;
  EXPECT_THROW(make_optimizer(hp, g.slots), Error);
}

TEST(Dion2, WeightDecayTouchesEveryEntry) {
  // With a zero gradient on a zero momentum the update is O = NS(0) = 0: only decay remains.
  TestGroup grp({{6, 18}}, 41);
  std::fill(grp.g[0].begin(), grp.g[0].end(), 0.0f);
  auto opt = make_optimizer(dion2_hp(0.5f), grp.slots);
  const std::vector<float> before = grp.w[0];
  opt->step({1, 0.1f});
  for (size_t i = 0; i < before.size(); ++i) EXPECT_FLOAT_EQ(grp.w[0][i], before[i] * (1.0f - 0.1f * 0.1f));
}

TEST(Dion2, FractionOneIsMuonWithoutNesterov) {
  for (Ortho ortho : {Ortho::NewtonSchulz, Ortho::PolarExpress}) {
    const std::vector<std::pair<int64_t, int64_t>> shapes = {{16, 40}, {40, 16}, {24, 24}};
    TestGroup a(shapes, 51), b(shapes, 51);
    OptimHParams hd = dion2_hp(1.0f);
    hd.ortho = ortho;
    hd.ef_decay = 0.9f;
    OptimHParams hm = hd;
    hm.algorithm = Algorithm::Muon;
    hm.mu = 0.9f;
    hm.nesterov = false;
    auto dion2 = make_optimizer(hd, a.slots);
    auto muon = make_optimizer(hm, b.slots);
    const std::vector<std::vector<float>> w0 = a.w;
    for (int step = 1; step <= 6; ++step) {
      a.new_grads(200 + step);
      b.new_grads(200 + step);
      dion2->step({step, 0.02f});
      muon->step({step, 0.02f});
    }
    for (int p = 0; p < 3; ++p) {
      std::vector<float> da(a.w[p].size()), db(a.w[p].size());
      for (size_t i = 0; i < da.size(); ++i) {
        da[i] = a.w[p][i] - w0[p][i];
        db[i] = b.w[p][i] - w0[p][i];
      }
      EXPECT_LT(rel_diff(da, db), 2e-5) << name_of(ortho) << " param " << p;
    }
  }
}

TEST(Dion2, NorDion2FractionOneIsNorMuonWithoutNesterov) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{16, 40}, {40, 16}, {24, 24}};
  TestGroup a(shapes, 61), b(shapes, 61);
  OptimHParams hd = dion2_hp(1.0f);
  hd.algorithm = Algorithm::NorDion2;
  hd.mu = 0.9f;
  hd.ef_decay = 0.5f;  // ignored by NorDion2 (it decays by mu)
  OptimHParams hm = hd;
  hm.algorithm = Algorithm::NorMuon;
  hm.nesterov = false;
  auto nd = make_optimizer(hd, a.slots);
  auto nm = make_optimizer(hm, b.slots);
  const std::vector<std::vector<float>> w0 = a.w;
  for (int step = 1; step <= 6; ++step) {
    a.new_grads(300 + step);
    b.new_grads(300 + step);
    nd->step({step, 0.02f});
    nm->step({step, 0.02f});
  }
  for (int p = 0; p < 3; ++p) {
    std::vector<float> da(a.w[p].size()), db(a.w[p].size());
    for (size_t i = 0; i < da.size(); ++i) {
      da[i] = a.w[p][i] - w0[p][i];
      db[i] = b.w[p][i] - w0[p][i];
    }
    EXPECT_LT(rel_diff(da, db), 2e-5) << "param " << p;
  }
  // Same second moments; NorDion2 stores the momentum after its decay: mu·(NorMuon's M).
  const auto sa = nd->state(), sb = nm->state();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].name, sb[i].name);
    std::vector<float> va((float*)sa[i].data, (float*)sa[i].data + sa[i].count);
    std::vector<float> vb((float*)sb[i].data, (float*)sb[i].data + sb[i].count);
    if (sa[i].name.ends_with("/momentum"))
      for (float& x : vb) x *= 0.9f;
    EXPECT_LT(rel_diff(va, vb), 2e-5) << sa[i].name;
  }
}

TEST(Dion2, NorDion2UpdatesOnlySelectedNeuronVariance) {
  TestGroup grp({{20, 12}}, 71);
  OptimHParams hp = dion2_hp(0.25f);
  hp.algorithm = Algorithm::NorDion2;
  auto opt = make_optimizer(hp, grp.slots);
  opt->step({1, 0.02f});
  const auto st = opt->state();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[1].name, "m0/variance_neuron");
  ASSERT_EQ(st[1].count, 20u);
  const std::vector<int64_t>& sel = as_dion2(*opt).selected(0);
  ASSERT_EQ(sel.size(), 5u);
  const float* v = static_cast<const float*>(st[1].data);
  for (int64_t r = 0; r < 20; ++r) {
    const bool s = std::find(sel.begin(), sel.end(), r) != sel.end();
    if (s)
      EXPECT_GT(v[r], 0.0f) << r;
    else
      EXPECT_EQ(v[r], 0.0f) << r;
  }
  // Momentum of the selected rows decays by mu (0.95), the rest keeps the gradient.
  const float* m = static_cast<const float*>(st[0].data);
  for (int64_t r = 0; r < 20; ++r) {
    const bool s = std::find(sel.begin(), sel.end(), r) != sel.end();
    EXPECT_FLOAT_EQ(m[r * 12], s ? 0.95f * grp.g[0][r * 12] : grp.g[0][r * 12]);
  }
}

TEST(Dion2, Diagnostics) {
  TestGroup grp({{16, 32}, {32, 16}}, 81);
  OptimHParams hp = dion2_hp(0.25f);
  hp.diagnostics = true;
  auto opt = make_optimizer(hp, grp.slots);
  opt->step({1, 0.02f});
  auto st = opt->stats();
  ASSERT_TRUE(st.count("select_mass"));
  // The top quarter of the slices by l1 norm holds more than a quarter of the mass, less than all.
  EXPECT_GT(st["select_mass"], 0.25);
  EXPECT_LT(st["select_mass"], 1.0);
  EXPECT_DOUBLE_EQ(st["select_k"], 4.0);
  EXPECT_DOUBLE_EQ(st["select_fraction"], 0.25);
  // Independent check of the mass on the first matrix.
  std::vector<double> rows(16, 0.0);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 32; ++c) rows[r] += std::fabs(grp.g[0][r * 32 + c]);
  std::vector<double> cols(16, 0.0);
  for (int r = 0; r < 32; ++r)
    for (int c = 0; c < 16; ++c) cols[c] += std::fabs(grp.g[1][r * 16 + c]);
  double mass = 0.0;
  for (auto* v : {&rows, &cols}) {
    std::vector<double> s = *v;
    std::sort(s.rbegin(), s.rend());
    mass += std::accumulate(s.begin(), s.begin() + 4, 0.0) / std::accumulate(s.begin(), s.end(), 0.0);
  }
  EXPECT_NEAR(st["select_mass"], mass / 2, 1e-12);
  // α = 1: all the mass. Off: no stats.
  TestGroup g2({{8, 8}}, 82);
  hp.fraction = 1.0f;
  auto all = make_optimizer(hp, g2.slots);
  all->step({1, 0.02f});
  EXPECT_DOUBLE_EQ(all->stats().at("select_mass"), 1.0);
  hp.diagnostics = false;
  auto off = make_optimizer(hp, g2.slots);
  off->step({1, 0.02f});
  EXPECT_TRUE(off->stats().empty());
}
