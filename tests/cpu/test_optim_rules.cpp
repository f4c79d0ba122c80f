// Update rules of AdamW, Lion, Muon and NorMuon against hand computations in double (written
// from OPTIMIZERS.md, independent of the implementation; NS from ns_double.h), weight decay,
// lr_eff, bf16 state, state naming, and the errors make_optimizer raises for bad input.
// Tolerances: 1e-6 relative on W for the elementwise rules (fp32 storage of the same double
// math), 2e-5 for Muon/NorMuon (fp32 NS products against fp64).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "ns_double.h"
#include "optim/matrix_ops.h"
#include "optim/optimizer.h"
#include "optim_test_group.h"

using namespace og;
using og::test::rel_diff;
using og::test::TestGroup;

namespace {

using Shapes = std::vector<std::pair<int64_t, int64_t>>;

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

double rel_diff_d(const std::vector<float>& a, const std::vector<double>& b) {
  double d = 0.0, n = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += (a[i] - b[i]) * (a[i] - b[i]);
    n += b[i] * b[i];
  }
  return std::sqrt(d / n);
}

OptimHParams hp_of(Algorithm a) {
  OptimHParams hp;
  hp.algorithm = a;
  hp.weight_decay = 0.1f;
  return hp;
}

}  // namespace

TEST(OptimRules, AdamWMatchesHandComputation) {
  const Shapes shapes = {{3, 5}, {1, 7}, {4, 4}};
  TestGroup grp(shapes, 1, ParamRole::Vector);
  OptimHParams hp = hp_of(Algorithm::AdamW);
  hp.betas = {0.8f, 0.9f};
  hp.eps = 1e-6f;
  auto opt = make_optimizer(hp, grp.slots);
  std::vector<std::vector<double>> w, m, v;
  for (auto& x : grp.w) {
    w.push_back(to_double(x));
    m.emplace_back(x.size(), 0.0);
    v.emplace_back(x.size(), 0.0);
  }
  const double b1 = 0.8f, b2 = 0.9f, eps = 1e-6f, wd = 0.1f;
  // The step count is ctx.step: start at 3 to see the bias correction use it.
  for (int t = 3; t <= 6; ++t) {
    grp.new_grads(t);
    const double lr = 0.01f * t;
    opt->step({t, (float)lr});
    for (size_t p = 0; p < w.size(); ++p) {
      for (size_t i = 0; i < w[p].size(); ++i) {
        const double g = grp.g[p][i];
        w[p][i] *= 1.0 - lr * wd;
        m[p][i] = b1 * m[p][i] + (1 - b1) * g;
        v[p][i] = b2 * v[p][i] + (1 - b2) * g * g;
        w[p][i] -= lr / (1 - std::pow(b1, t)) * m[p][i] / (std::sqrt(v[p][i]) / std::sqrt(1 - std::pow(b2, t)) + eps);
      }
      EXPECT_LT(rel_diff_d(grp.w[p], w[p]), 1e-6) << "param " << p << " step " << t;
    }
  }
  const auto st = opt->state();
  ASSERT_EQ(st.size(), 9u);
  EXPECT_EQ(st[0].name, "m0/momentum");
  EXPECT_EQ(st[1].name, "m0/variance");
  EXPECT_EQ(st[2].name, "m0/step");
  EXPECT_EQ(st[8].name, "m2/step");
  EXPECT_EQ(*(const float*)st[2].data, 6.0f);
  std::vector<float> m2((float*)st[6].data, (float*)st[6].data + st[6].count);
  EXPECT_LT(rel_diff_d(m2, m[2]), 1e-6);
  std::vector<float> v2((float*)st[7].data, (float*)st[7].data + st[7].count);
  EXPECT_LT(rel_diff_d(v2, v[2]), 1e-6);
}

TEST(OptimRules, LionMatchesHandComputation) {
  TestGroup grp({{4, 6}, {1, 9}}, 2, ParamRole::Embedding);
  OptimHParams hp = hp_of(Algorithm::Lion);
  auto opt = make_optimizer(hp, grp.slots);
  std::vector<std::vector<double>> w, m;
  for (auto& x : grp.w) {
    w.push_back(to_double(x));
    m.emplace_back(x.size(), 0.0);
  }
  // A zero gradient on a zero momentum gives sign(0) = 0: that entry only decays.
  grp.new_grads(1);
  grp.g[0][5] = 0.0f;
  const double b1 = 0.9f, b2 = 0.95f, wd = 0.1f, lr = 0.003f;
  for (int t = 1; t <= 4; ++t) {
    if (t > 1) grp.new_grads(t);
    opt->step({t, (float)lr});
    for (size_t p = 0; p < w.size(); ++p) {
      for (size_t i = 0; i < w[p].size(); ++i) {
        const double g = grp.g[p][i], c = b1 * m[p][i] + (1 - b1) * g;
        const double u = c > 0 ? 1.0 : (c < 0 ? -1.0 : 0.0);
        m[p][i] = b2 * m[p][i] + (1 - b2) * g;
        w[p][i] = w[p][i] * (1 - lr * wd) - lr * u;
      }
      EXPECT_LT(rel_diff_d(grp.w[p], w[p]), 1e-6) << "param " << p << " step " << t;
    }
    if (t == 1) EXPECT_FLOAT_EQ(grp.w[0][5], (float)w[0][5]);
  }
}

TEST(OptimRules, MuonAndNorMuonMatchHandComputation) {
  const Shapes shapes = {{6, 10}, {12, 5}, {7, 7}};
  for (Algorithm alg : {Algorithm::Muon, Algorithm::NorMuon})
    for (bool nesterov : {false, true})
      for (Ortho ortho : {Ortho::NewtonSchulz, Ortho::PolarExpress}) {
        TestGroup grp(shapes, 3);
        OptimHParams hp = hp_of(alg);
        hp.nesterov = nesterov;
        hp.ortho = ortho;
        hp.mu = 0.9f;
        hp.beta2 = 0.8f;
        hp.adjust_lr = AdjustLr::SpectralNorm;
        auto opt = make_optimizer(hp, grp.slots);
        std::vector<std::vector<double>> w, m, v;
        for (size_t p = 0; p < shapes.size(); ++p) {
          w.push_back(to_double(grp.w[p]));
          m.emplace_back(grp.w[p].size(), 0.0);
          v.emplace_back(shapes[p].first, 0.0);
        }
        const double mu = 0.9f, wd = 0.1f, b2 = 0.8f;
        for (int t = 1; t <= 4; ++t) {
          grp.new_grads(10 + t);
          const double lr = 0.02f;
          opt->step({t, (float)lr});
          for (size_t p = 0; p < shapes.size(); ++p) {
            const auto [r, c] = shapes[p];
            std::vector<double> u(m[p].size());
            for (size_t i = 0; i < u.size(); ++i) {
              m[p][i] = mu * m[p][i] + grp.g[p][i];
              u[i] = nesterov ? mu * m[p][i] + grp.g[p][i] : m[p][i];
            }
            std::vector<double> o = test::ns_double(u, r, c, ortho == Ortho::PolarExpress, 1e-8);
            if (alg == Algorithm::NorMuon) {
              double f = 0.0, g = 0.0;
              for (double x : o) f += x * x;
              for (int64_t i = 0; i < r; ++i) {
                double n = 0.0;
                for (int64_t j = 0; j < c; ++j) n += o[i * c + j] * o[i * c + j] / c;
                v[p][i] = b2 * v[p][i] + (1 - b2) * n;
                for (int64_t j = 0; j < c; ++j) o[i * c + j] /= std::sqrt(v[p][i]) + 1e-8;
              }
              for (double x : o) g += x * x;
              for (double& x : o) x *= std::sqrt(f) / std::max(std::sqrt(g), 1e-8);
            }
            const double lr_eff = lr * std::sqrt((double)r / (double)c);
            for (size_t i = 0; i < o.size(); ++i) w[p][i] = w[p][i] * (1 - lr * wd) - lr_eff * o[i];
            EXPECT_LT(rel_diff_d(grp.w[p], w[p]), 2e-5)
                << name_of(alg) << " nesterov " << nesterov << " " << name_of(ortho) << " param " << p << " step " << t;
          }
        }
      }
}

TEST(OptimRules, WeightDecayTouchesEveryEntry) {
  // Zero gradients: every algorithm's update is exactly zero, only W·(1 − lr·wd) remains, on all
  // entries, with the unadjusted lr (the matrices are not square: lr_eff != lr).
  for (Algorithm a : {Algorithm::AdamW, Algorithm::Lion, Algorithm::Muon, Algorithm::NorMuon, Algorithm::Dion2,
                      Algorithm::NorDion2}) {
    TestGroup grp({{4, 16}, {16, 4}}, 4);
    for (auto& g : grp.g) std::fill(g.begin(), g.end(), 0.0f);
    OptimHParams hp = hp_of(a);
    hp.weight_decay = 0.5f;
    auto opt = make_optimizer(hp, grp.slots);
    const std::vector<std::vector<float>> before = grp.w;
    opt->step({1, 0.2f});
    for (size_t p = 0; p < 2; ++p)
      for (size_t i = 0; i < before[p].size(); ++i)
        ASSERT_FLOAT_EQ(grp.w[p][i], before[p][i] * 0.9f) << name_of(a) << " param " << p << " entry " << i;
  }
}

TEST(OptimRules, AdjustedLr) {
  EXPECT_FLOAT_EQ(adjusted_lr(0.02f, AdjustLr::SpectralNorm, 768, 768), 0.02f);
  EXPECT_FLOAT_EQ(adjusted_lr(0.02f, AdjustLr::SpectralNorm, 3072, 768), 0.04f);
  EXPECT_FLOAT_EQ(adjusted_lr(0.02f, AdjustLr::SpectralNorm, 768, 3072), 0.01f);
  EXPECT_FLOAT_EQ(adjusted_lr(0.02f, AdjustLr::RmsNorm, 768, 3072), (float)(0.02 * 0.2 * std::sqrt(3072.0)));
  EXPECT_FLOAT_EQ(adjusted_lr(0.02f, AdjustLr::RmsNorm, 100, 64), 0.04f);
  EXPECT_FLOAT_EQ(adjusted_lr(0.02f, AdjustLr::None, 3072, 768), 0.02f);
  // The optimizer applies it: Muon with spectral_norm vs none on a 4:1 matrix, no weight decay.
  std::vector<float> d[2];
  int i = 0;
  for (AdjustLr rule : {AdjustLr::SpectralNorm, AdjustLr::None}) {
    TestGroup grp({{32, 8}}, 5);
    OptimHParams hp = hp_of(Algorithm::Muon);
    hp.weight_decay = 0.0f;
    hp.adjust_lr = rule;
    const std::vector<float> w0 = grp.w[0];
    make_optimizer(hp, grp.slots)->step({1, 0.01f});
    for (size_t j = 0; j < w0.size(); ++j) d[i].push_back(grp.w[0][j] - w0[j]);
    ++i;
  }
  for (size_t j = 0; j < d[0].size(); ++j) EXPECT_NEAR(d[0][j], 2.0f * d[1][j], 1e-6f);
}

TEST(OptimRules, Bf16Rounding) {
  EXPECT_EQ(round_bf16(1.0f), 1.0f);
  EXPECT_EQ(round_bf16(1.0f + 0x1p-8f), 1.0f);                       // tie -> even (down)
  EXPECT_EQ(round_bf16(1.0f + 3 * 0x1p-8f), 1.0f + 0x1p-6f);         // tie -> even (up)
  EXPECT_EQ(round_bf16(1.0f + 0x1p-8f + 0x1p-20f), 1.0f + 0x1p-7f);  // above the tie
  EXPECT_EQ(round_bf16(-3.0f - 0x1p-9f), -3.0f);
  EXPECT_EQ(round_bf16(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(round_bf16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(round_bf16(std::numeric_limits<float>::max()), std::numeric_limits<float>::infinity());
  EXPECT_EQ(round_bf16(0.0f), 0.0f);
}

TEST(OptimRules, Bf16StateIsRoundedAndCloseToFp32) {
  for (Algorithm a : {Algorithm::AdamW, Algorithm::Lion, Algorithm::Muon, Algorithm::NorMuon, Algorithm::Dion2,
                      Algorithm::NorDion2}) {
    TestGroup f32({{8, 24}, {24, 8}}, 6), b16({{8, 24}, {24, 8}}, 6);
    OptimHParams hp = hp_of(a);
    hp.fraction = 1.0f;  // same selection in both runs
    auto o32 = make_optimizer(hp, f32.slots);
    hp.state_dtype = StateDtype::BF16;
    auto o16 = make_optimizer(hp, b16.slots);
    const std::vector<std::vector<float>> w0 = f32.w;
    for (int t = 1; t <= 3; ++t) {
      f32.new_grads(t);
      b16.new_grads(t);
      o32->step({t, 0.01f});
      o16->step({t, 0.01f});
    }
    int rounded_tensors = 0;
    for (const StateTensor& s : o16->state()) {
      if (s.name.ends_with("/step")) continue;
      const float* x = static_cast<const float*>(s.data);
      for (size_t i = 0; i < s.count; ++i) ASSERT_EQ(x[i], round_bf16(x[i])) << name_of(a) << " " << s.name;
      ++rounded_tensors;
    }
    EXPECT_GE(rounded_tensors, 2) << name_of(a);
    // fp32 state is not bf16-representable in general (so the check above means something).
    const StateTensor s32 = o32->state()[0];
    int not_bf16 = 0;
    for (size_t i = 0; i < s32.count; ++i) not_bf16 += ((float*)s32.data)[i] != round_bf16(((float*)s32.data)[i]);
    EXPECT_GT(not_bf16, 0);
    for (size_t p = 0; p < 2; ++p) {
      std::vector<float> d32(w0[p].size()), d16(w0[p].size());
      for (size_t i = 0; i < d32.size(); ++i) {
        d32[i] = f32.w[p][i] - w0[p][i];
        d16[i] = b16.w[p][i] - w0[p][i];
      }
      EXPECT_LT(rel_diff(d16, d32), a == Algorithm::Lion ? 0.1 : 2e-2) << name_of(a);
    }
  }
}

TEST(OptimRules, MatrixAlgorithmsRejectEmbeddingLmHeadAndVectors) {
  for (Algorithm a : {Algorithm::Muon, Algorithm::NorMuon, Algorithm::Dion2, Algorithm::NorDion2, Algorithm::Dion})
    for (ParamRole role : {ParamRole::Embedding, ParamRole::LmHead, ParamRole::Vector}) {
      TestGroup grp({{16, 8}}, 7, role);
      grp.slots[0].name = "wte";
      try {
        make_optimizer(hp_of(a), grp.slots);
        ADD_FAILURE() << name_of(a) << " accepted role " << role_name(role);
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("wte"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find(role_name(role)), std::string::npos) << e.what();
      }
    }
  for (Algorithm a : {Algorithm::AdamW, Algorithm::Lion})
    for (ParamRole role : {ParamRole::Embedding, ParamRole::LmHead, ParamRole::Vector, ParamRole::Matrix}) {
      TestGroup grp({{16, 8}}, 7, role);
      EXPECT_NO_THROW(make_optimizer(hp_of(a), grp.slots)) << name_of(a);
    }
}

TEST(OptimRules, InvalidHyperparametersAreErrors) {
  TestGroup grp({{8, 8}}, 8);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto bad = [&](Algorithm a, auto edit, const char* what) {
    OptimHParams hp = hp_of(a);
    edit(hp);
    try {
      make_optimizer(hp, grp.slots);
      ADD_FAILURE() << name_of(a) << ": no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  for (Algorithm a : {Algorithm::Dion2, Algorithm::NorDion2}) {
    bad(
        a, [](OptimHParams& h) { h.fraction = 0.0f; }, "fraction");
    bad(
        a, [](OptimHParams& h) { h.fraction = 1.5f; }, "fraction");
    bad(
        a, [&](OptimHParams& h) { h.fraction = nan; }, "fraction");
    bad(
        a, [](OptimHParams& h) { h.ef_decay = 1.5f; }, "ef_decay");
  }
  for (Algorithm a : {Algorithm::Muon, Algorithm::NorMuon, Algorithm::Dion2, Algorithm::NorDion2}) {
    bad(
        a, [](OptimHParams& h) { h.mu = 1.0f; }, "mu");
    bad(
        a, [](OptimHParams& h) { h.mu = -0.1f; }, "mu");
    bad(
        a, [](OptimHParams& h) { h.beta2 = 1.0f; }, "beta2");
  }
  for (Algorithm a : {Algorithm::AdamW, Algorithm::Lion}) {
    bad(
        a,
        [](OptimHParams& h) {
          h.betas = {1.0f, 0.9f};
        },
        "betas");
    bad(
        a,
        [](OptimHParams& h) {
          h.betas = {0.9f, -0.5f};
        },
        "betas");
  }
  for (Algorithm a : {Algorithm::AdamW, Algorithm::Muon}) {
    bad(
        a, [](OptimHParams& h) { h.eps = 0.0f; }, "epsilon");
    bad(
        a, [](OptimHParams& h) { h.weight_decay = -0.01f; }, "weight_decay");
    bad(
        a, [&](OptimHParams& h) { h.weight_decay = nan; }, "weight_decay");
  }
  // Bad parameters.
  OptimHParams hp = hp_of(Algorithm::Muon);
  std::vector<ParamSlot> two = {grp.slots[0], grp.slots[0]};
  EXPECT_THROW(make_optimizer(hp, two), Error);  // duplicate name
  std::vector<ParamSlot> empty = grp.slots;
  empty[0].rows = 0;
  EXPECT_THROW(make_optimizer(hp, empty), Error);
  std::vector<ParamSlot> nog = grp.slots;
  nog[0].g = nullptr;
  EXPECT_THROW(make_optimizer(hp, nog), Error);
  // Bad step contexts.
  auto opt = make_optimizer(hp, grp.slots);
  EXPECT_THROW(opt->step({0, 0.01f}), Error);
  EXPECT_THROW(opt->step({1, -0.01f}), Error);
  EXPECT_THROW(opt->step({1, nan}), Error);
#ifndef ORTHOGPT_CUDA
  try {
    make_optimizer(hp, grp.slots, Device::CUDA);
    ADD_FAILURE() << "cuda accepted in a CPU-only build";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("without CUDA"), std::string::npos) << e.what();
  }
#endif
}

TEST(OptimRules, StateNamesAndOrder) {
  TestGroup grp({{4, 6}, {6, 4}}, 9);
  auto names = [&](Algorithm a) {
    std::vector<std::string> n;
    for (const StateTensor& s : make_optimizer(hp_of(a), grp.slots)->state()) {
      n.push_back(s.name);
      EXPECT_EQ(s.dtype, StateDtype::F32);
      EXPECT_EQ(s.device, Device::CPU);
    }
    return n;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(names(Algorithm::Muon), (V{"m0/momentum", "m1/momentum"}));
  EXPECT_EQ(names(Algorithm::Dion2), (V{"m0/momentum", "m1/momentum"}));
  EXPECT_EQ(names(Algorithm::Lion), (V{"m0/momentum", "m1/momentum"}));
  EXPECT_EQ(names(Algorithm::NorMuon), (V{"m0/momentum", "m0/variance_neuron", "m1/momentum", "m1/variance_neuron"}));
  EXPECT_EQ(names(Algorithm::NorDion2), (V{"m0/momentum", "m0/variance_neuron", "m1/momentum", "m1/variance_neuron"}));
  EXPECT_EQ(names(Algorithm::AdamW),
            (V{"m0/momentum", "m0/variance", "m0/step", "m1/momentum", "m1/variance", "m1/step"}));
}
