// The whole CPU GPT (model/cpu/gpt_cpu.h, og::make_cpu_model):
//  - its forward against a naive per-token implementation of the architecture (1e-12);
//  - its gradient in double precision against central finite differences for a random sample of
//    entries of every parameter tensor (max |analytic - numeric| / max |numeric| < 1e-7 per tensor);
//  - the float model's gradient against the double model's (max abs error / max abs < 1e-5 per tensor);
//  - the loss at the real init is ln(V) + 1/2 (logits ~ N(0, 1) at init: E[logsumexp] = ln V + 1/2);
//  - grad_scale and accumulation, causality, sampling logits, the Model interface round trips
//    and its errors;
//  - a model attached to a UnitSource (as FSDP attaches it) follows the unit protocol and gives
//    the loss, gradients and logits of the model's own whole buffers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdio>
#include <ctime>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/timer.h"
#include "grad_check.h"
#include "model/cpu/gpt_cpu.h"
#include "model/cpu/ops.h"
#include "model/model.h"
#include "tests/common/unit_call_log.h"

namespace og::test {
namespace {

GPTConfig tiny_config() {
  GPTConfig c;
  c.vocab_size = 64;
  c.d_model = 16;
  c.n_layer = 2;
  c.n_head = 2;
  c.seq_len = 8;
  c.rope_base = 10.0f;  // large angles even at T = 8, so rotary matters in the gradient
  return c;
}

std::vector<int32_t> random_tokens(size_t n, int V, uint64_t seed) {
  og::Rng rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = (int32_t)rng.below(V);
  return t;
}

// Initialized float parameters (gpt_init_params, seed), and the same values in double.
std::vector<float> init_params(const ParamLayout& layout, uint64_t seed) {
  std::vector<float> p(layout.total());
  gpt_init_params(layout, p.data(), seed);
  return p;
}

// An independent, deliberately naive forward of the architecture (DESIGN.md "The model"), one
// token at a time with plain loops and std::complex rotary: per-token losses.
std::vector<double> naive_gpt_losses(const GPTConfig& cfg, const ParamLayout& layout, const std::vector<double>& P,
                                     const std::vector<int32_t>& inputs, const std::vector<int32_t>& targets, int B,
                                     int T) {
  const int d = cfg.d_model, H = cfg.n_head, hd = d / H, F = 4 * d, V = cfg.vocab_size;
  using Mat = std::vector<std::vector<double>>;  // [token][feature]
  auto W = [&](const std::string& name, int r, int c) {
    return P[layout.find(name).offset + (size_t)r * layout.find(name).cols + c];
  };
  auto rms = [](const std::vector<double>& x) {
    double ms = 0;
    for (double v : x) ms += v * v / x.size();
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] / std::sqrt(ms + og::cpu::kRmsNormEps);
    return y;
  };
  auto linear = [&](const std::string& name, const std::vector<double>& x, int out) {
    std::vector<double> y(out, 0.0);
    for (int o = 0; o < out; ++o)
      for (size_t i = 0; i < x.size(); ++i) y[o] += W(name, o, (int)i) * x[i];
    return y;
  };
  std::vector<double> losses;
  for (int b = 0; b < B; ++b) {
    Mat x(T);
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < d; ++c) x[t].push_back(W("wte", inputs[b * T + t], c));
    for (int l = 0; l < cfg.n_layer; ++l) {
      const std::string h = "h." + std::to_string(l) + ".";
      Mat q(T), k(T), v(T);
      for (int t = 0; t < T; ++t) {
        const auto n1 = rms(x[t]);
        q[t] = linear(h + "attn.q", n1, d);
        k[t] = linear(h + "attn.k", n1, d);
        v[t] = linear(h + "attn.v", n1, d);
        for (auto* m : {&q[t], &k[t]}) {
          for (int hh = 0; hh < H; ++hh) {
            std::vector<double> head(hd);
            for (int i = 0; i < hd / 2; ++i) {  // rotary: z * exp(-i t inv_freq) on the halves
              const std::complex<double> z((*m)[hh * hd + i], (*m)[hh * hd + i + hd / 2]);
              const auto r = z * std::polar(1.0, -t * std::pow((double)cfg.rope_base, -2.0 * i / hd));
              head[i] = r.real();
              head[i + hd / 2] = r.imag();
            }
            const auto normed = rms(head);  // QK-norm after rotary
            for (int i = 0; i < hd; ++i) (*m)[hh * hd + i] = normed[i];
          }
        }
      }
      Mat att(T, std::vector<double>(d, 0.0));
      for (int t = 0; t < T; ++t)
        for (int hh = 0; hh < H; ++hh) {
          std::vector<double> w(t + 1);
          double z = 0;
          for (int j = 0; j <= t; ++j) {
            double s = 0;
            for (int i = 0; i < hd; ++i) s += q[t][hh * hd + i] * k[j][hh * hd + i];
            w[j] = std::exp(s / std::sqrt((double)hd));
            z += w[j];
          }
          for (int j = 0; j <= t; ++j)
            for (int i = 0; i < hd; ++i) att[t][hh * hd + i] += w[j] / z * v[j][hh * hd + i];
        }
      for (int t = 0; t < T; ++t) {
        const auto o = linear(h + "attn.o", att[t], d);
        for (int c = 0; c < d; ++c) x[t][c] += o[c];
        auto a = linear(h + "mlp.fc", rms(x[t]), F);
        for (double& e : a) e = e > 0 ? e * e : 0.0;
        const auto m = linear(h + "mlp.proj", a, d);
        for (int c = 0; c < d; ++c) x[t][c] += m[c];
      }
    }
    for (int t = 0; t < T; ++t) {
      const auto logits = linear("lm_head", rms(x[t]), V);
      double z = 0;
      for (double lg : logits) z += std::exp(lg);
      losses.push_back(std::log(z) - logits[targets[b * T + t]]);
    }
  }
  return losses;
}

TEST(ModelGrad, ForwardMatchesNaiveModel) {
  const GPTConfig cfg = tiny_config();
  const int B = 2, T = cfg.seq_len;
  cpu::GptCpu<double> gpt(cfg, B);
  const auto pf = init_params(gpt.layout(), 5);
  const std::vector<double> params(pf.begin(), pf.end());
  const auto inputs = random_tokens(B * T, cfg.vocab_size, 6), targets = random_tokens(B * T, cfg.vocab_size, 7);
  const double loss = gpt.forward(params.data(), inputs.data(), targets.data(), B, T);
  const auto ref = naive_gpt_losses(cfg, gpt.layout(), params, inputs, targets, B, T);
  double mean = 0;
  for (int n = 0; n < B * T; ++n) {
    EXPECT_NEAR(gpt.losses()[n], ref[n], 1e-12) << "token " << n;
    mean += ref[n] / (B * T);
  }
  EXPECT_NEAR(loss, mean, 1e-12);
}

TEST(ModelGrad, DoubleGradientMatchesFiniteDifferences) {
  const GPTConfig cfg = tiny_config();
  const int B = 2, T = cfg.seq_len;
  cpu::GptCpu<double> gpt(cfg, B);
  const auto pf = init_params(gpt.layout(), 7);
  std::vector<double> params(pf.begin(), pf.end());
  const auto inputs = random_tokens(B * T, cfg.vocab_size, 1);
  auto targets = random_tokens(B * T, cfg.vocab_size, 2);
  targets[3] = -1;  // one ignored target: the mean is over the other 15

  std::vector<double> grads(gpt.layout().total(), 0.0);
  gpt.forward(params.data(), inputs.data(), targets.data(), B, T);
  gpt.backward(params.data(), grads.data(), 1.0);
  auto loss = [&] { return gpt.forward(params.data(), inputs.data(), targets.data(), B, T); };

  og::Rng rng(3);
  for (const ParamInfo& p : gpt.layout().params()) {
    std::vector<size_t> idx;
    if (p.role == ParamRole::Embedding) {  // rows of tokens in the batch carry the gradient
      for (int k = 0; k < 12; ++k)
        idx.push_back(p.offset + inputs[rng.below(inputs.size())] * p.cols + rng.below(p.cols));
    } else {
      for (int k = 0; k < 12; ++k) idx.push_back(p.offset + rng.below(p.numel()));
    }
    const auto numeric = numeric_grad(params.data(), params.size(), loss, 1e-5, idx);
    std::vector<double> analytic;
    for (size_t i : idx) analytic.push_back(grads[i]);
    const double err = grad_rel_error(analytic, numeric);
    EXPECT_LT(err, 1e-7) << p.name;  // seen: ~1e-9
    double mag = 0;
    for (double g : numeric) mag = std::max(mag, std::fabs(g));
    EXPECT_GT(mag, 1e-6) << p.name << ": gradient sample is all ~0, the check would be vacuous";
  }
  // Embedding rows of tokens absent from the batch get exactly zero gradient; padding too.
  const ParamInfo& wte = gpt.layout().find("wte");
  for (int v = 0; v < cfg.vocab_size; ++v) {
    if (std::find(inputs.begin(), inputs.end(), v) != inputs.end()) continue;
    for (int64_t c = 0; c < wte.cols; ++c) EXPECT_EQ(grads[wte.offset + v * wte.cols + c], 0.0);
  }
  for (const ParamInfo& p : gpt.layout().params()) {
    const size_t end = p.offset + p.numel();
    const size_t next = (end + ParamLayout::kAlign - 1) / ParamLayout::kAlign * ParamLayout::kAlign;
    for (size_t i = end; i < next; ++i) EXPECT_EQ(grads[i], 0.0) << "padding after " << p.name;
  }
}

TEST(ModelGrad, FloatGradientMatchesDouble) {
  const GPTConfig cfg = tiny_config();
  const int B = 2, T = cfg.seq_len;
  cpu::GptCpu<double> gd(cfg, B);
  cpu::GptCpu<float> gf(cfg, B);
  const auto pf = init_params(gf.layout(), 11);
  const std::vector<double> pd(pf.begin(), pf.end());
  const auto inputs = random_tokens(B * T, cfg.vocab_size, 12), targets = random_tokens(B * T, cfg.vocab_size, 13);
  std::vector<double> grad_d(pd.size(), 0.0);
  std::vector<float> grad_f(pf.size(), 0.0f);
  const double loss_d = gd.forward(pd.data(), inputs.data(), targets.data(), B, T);
  gd.backward(pd.data(), grad_d.data(), 1.0);
  const float loss_f = gf.forward(pf.data(), inputs.data(), targets.data(), B, T);
  gf.backward(pf.data(), grad_f.data(), 1.0f);
  EXPECT_NEAR(loss_f, loss_d, 1e-5 * loss_d);
  for (const ParamInfo& p : gf.layout().params()) {
    double err = 0, mag = 0;
    for (size_t i = p.offset; i < p.offset + p.numel(); ++i) {
      err = std::max(err, std::fabs(grad_f[i] - grad_d[i]));
      mag = std::max(mag, std::fabs(grad_d[i]));
    }
    EXPECT_LT(err / mag, 1e-5) << p.name;  // seen: < 1e-6
  }
}

TEST(ModelGrad, LossAtInitIsLogVocabPlusHalf) {
  // Real vocabulary and init; at init the final rmsnorm gives unit-rms features and lm_head has
  // std 1/sqrt(d), so each logit is ~N(0, 1): loss ~ E[logsumexp] = ln V + 1/2 (+- ~0.05 here).
  GPTConfig cfg;
  cfg.vocab_size = 50304;
  cfg.d_model = 64;
  cfg.n_layer = 1;
  cfg.n_head = 4;
  cfg.seq_len = 32;
  auto model = make_cpu_model(cfg, 2);
  const auto inputs = random_tokens(64, cfg.vocab_size, 21), targets = random_tokens(64, cfg.vocab_size, 22);
  const float loss = model->forward_loss(inputs.data(), targets.data(), 2, 32);
  EXPECT_NEAR(loss, std::log(50304.0) + 0.5, 0.15);
}

TEST(ModelGrad, GradScaleAndAccumulation) {
  const GPTConfig cfg = tiny_config();
  auto model = make_cpu_model(cfg, 2);
  const auto inputs = random_tokens(16, cfg.vocab_size, 31), targets = random_tokens(16, cfg.vocab_size, 32);
  const size_t n = model->layout().total();
  model->zero_grad();
  const float loss1 = model->forward_backward(inputs.data(), targets.data(), 2, 8, 1.0f);
  const std::vector<float> g1(model->grads(), model->grads() + n);
  model->zero_grad();
  const float loss_a = model->forward_backward(inputs.data(), targets.data(), 2, 8, 0.5f);
  const float loss_b = model->forward_backward(inputs.data(), targets.data(), 2, 8, 0.5f);
  const std::vector<float> g2(model->grads(), model->grads() + n);
  EXPECT_EQ(loss1, loss_a);
  EXPECT_EQ(loss1, loss_b);
  double err = 0, mag = 0, sq = 0;
  for (size_t i = 0; i < n; ++i) {
    err = std::max(err, (double)std::fabs(g1[i] - g2[i]));
    mag = std::max(mag, (double)std::fabs(g1[i]));
    sq += (double)g1[i] * g1[i];
  }
  EXPECT_GT(mag, 0.0);
  EXPECT_LE(err, 1e-6 * mag);
  EXPECT_NEAR(model->grad_norm_sq(), sq, 1e-9 * sq);  // g2 ~ g1
  // grad_scale 0 adds nothing; zero_grad clears
  model->forward_backward(inputs.data(), targets.data(), 2, 8, 0.0f);
  EXPECT_EQ(std::vector<float>(model->grads(), model->grads() + n), g2);
  model->zero_grad();
  EXPECT_EQ(model->grad_norm_sq(), 0.0);
}

TEST(ModelGrad, CausalAndSampling) {
  const GPTConfig cfg = tiny_config();
  const int T = cfg.seq_len;
  cpu::GptCpu<double> gpt(cfg, 1);
  const auto pf = init_params(gpt.layout(), 41);
  const std::vector<double> p(pf.begin(), pf.end());
  auto tokens = random_tokens(T, cfg.vocab_size, 42);
  const auto targets = random_tokens(T, cfg.vocab_size, 43);
  gpt.forward(p.data(), tokens.data(), targets.data(), 1, T);
  const std::vector<double> full(gpt.losses(), gpt.losses() + T);
  // The last-position logits of the training forward equal the sampling forward's, and give its loss.
  const std::vector<double> train_last(gpt.last_logits(0), gpt.last_logits(0) + cfg.vocab_size);
  gpt.forward(p.data(), tokens.data(), nullptr, 1, T);
  const std::vector<double> sample_last(gpt.last_logits(0), gpt.last_logits(0) + cfg.vocab_size);
  for (int v = 0; v < cfg.vocab_size; ++v) EXPECT_NEAR(sample_last[v], train_last[v], 1e-12);
  double z = 0;
  for (double l : sample_last) z += std::exp(l);
  EXPECT_NEAR(std::log(z) - sample_last[targets[T - 1]], full[T - 1], 1e-12);
  // A prefix gives the same per-position losses; changing a later token changes none before it.
  gpt.forward(p.data(), tokens.data(), targets.data(), 1, 5);
  for (int t = 0; t < 5; ++t) EXPECT_NEAR(gpt.losses()[t], full[t], 1e-12);
  tokens[5] = (tokens[5] + 1) % cfg.vocab_size;
  gpt.forward(p.data(), tokens.data(), targets.data(), 1, T);
  for (int t = 0; t < 5; ++t) EXPECT_NEAR(gpt.losses()[t], full[t], 1e-12);
  EXPECT_NE(gpt.losses()[5], full[5]);
}

TEST(ModelGrad, ModelInterface) {
  const GPTConfig cfg = tiny_config();
  auto model = make_cpu_model(cfg, 2);
  EXPECT_EQ(model->device(), Device::CPU);
  EXPECT_EQ(model->config().d_model, cfg.d_model);
  const size_t n = model->layout().total();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(model->params()) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(model->grads()) % 64, 0u);
  // constructed with gpt_init_params(seed 0)
  const auto p0 = init_params(model->layout(), 0);
  EXPECT_EQ(std::vector<float>(model->params(), model->params() + n), p0);
  // upload / download round trip, and the loss follows the uploaded params
  const auto inputs = random_tokens(8, cfg.vocab_size, 51), targets = random_tokens(8, cfg.vocab_size, 52);
  const float loss0 = model->forward_loss(inputs.data(), targets.data(), 1, 8);
  const auto p1 = init_params(model->layout(), 99);
  model->upload_params(p1.data());
  std::vector<float> back(n, -1.0f);
  model->download_params(back.data());
  EXPECT_EQ(back, p1);
  const float loss1 = model->forward_loss(inputs.data(), targets.data(), 1, 8);
  EXPECT_NE(loss0, loss1);
  // the same params through GptCpu<float> directly give the same loss and last logits
  cpu::GptCpu<float> gpt(cfg, 1);
  EXPECT_EQ(gpt.forward(p1.data(), inputs.data(), targets.data(), 1, 8), loss1);
  const auto logits = model->last_logits(inputs.data(), 8);
  ASSERT_EQ(logits.size(), (size_t)cfg.vocab_size);
  for (int v = 0; v < cfg.vocab_size; ++v) EXPECT_FLOAT_EQ(logits[v], gpt.last_logits(0)[v]);
  // errors a caller can make
  auto bad = inputs;
  bad[2] = cfg.vocab_size;
  EXPECT_THROW(model->forward_loss(bad.data(), targets.data(), 1, 8), og::Error);
  auto bad_t = targets;
  bad_t[0] = -5;
  EXPECT_THROW(model->forward_loss(inputs.data(), bad_t.data(), 1, 8), og::Error);
  EXPECT_THROW(model->forward_loss(inputs.data(), targets.data(), 3, 8), og::Error);  // B > max batch
  EXPECT_THROW(model->forward_loss(inputs.data(), targets.data(), 1, 9), og::Error);  // T > seq_len
  cpu::GptCpu<float> fresh(cfg, 1);
  std::vector<float> g(n, 0.0f);
  EXPECT_THROW(fresh.backward(p1.data(), g.data(), 1.0f), og::Error);  // no forward yet
}

// A UnitSource over host copies of a whole parameter buffer that logs the calls: every acquire
// copies the unit into a buffer of its own and every grad_buffer hands out a zeroed one of its
// own (wrong offsets or a missing call show up as wrong numbers); grads_ready adds the unit's
// gradient into a whole gradient buffer.
class RecordingUnits final : public UnitSource {
 public:
  RecordingUnits(std::vector<ParamUnit> units, std::vector<float> weights)
      : units_(std::move(units)),
        weights_(std::move(weights)),
        grads_(weights_.size(), 0.0f),
        held_(units_.size()),
        out_(units_.size()) {}
  const void* acquire(int u, int next) override {
    log.add('a', u, next);
    held_[u].assign(weights_.begin() + units_[u].offset, weights_.begin() + units_[u].offset + units_[u].floats);
    return held_[u].data();
  }
  void release(int u) override {
    log.add('r', u);
    held_[u].assign(units_[u].floats, std::nanf(""));  // a read after release gives NaN
  }
  void* grad_buffer(int u) override {
    log.add('g', u);
    out_[u].assign(units_[u].floats, 0.0f);
    return out_[u].data();
  }
  void grads_ready(int u) override {
    log.add('d', u);
    for (size_t i = 0; i < units_[u].floats; ++i) grads_[units_[u].offset + i] += out_[u][i];
    out_[u].assign(units_[u].floats, std::nanf(""));
  }
  const std::vector<float>& grads() const { return grads_; }
  og_test::UnitCallLog log;

 private:
  std::vector<ParamUnit> units_;
  std::vector<float> weights_, grads_;
  std::vector<std::vector<float>> held_, out_;  // per unit
};

TEST(ModelGrad, UnitSourceEqualsWholeBuffers) {
  GPTConfig cfg = tiny_config();
  cfg.n_layer = 3;
  auto own = make_cpu_model(cfg, 2);
  auto attached = make_cpu_model(cfg, 2);
  const size_t n = own->layout().total();
  const auto p = init_params(own->layout(), 17);
  own->upload_params(p.data());
  const std::vector<ParamUnit>& units = attached->units();
  ASSERT_EQ(units.size(), (size_t)cfg.n_layer + 2);
  EXPECT_EQ(units.front().offset, 0u);
  EXPECT_EQ(units.back().offset + units.back().floats, n);
  RecordingUnits src(units, p);
  attached->attach_units(&src);
  EXPECT_TRUE(attached->units_attached());
  EXPECT_EQ(attached->params(), nullptr);
  EXPECT_EQ(attached->grads(), nullptr);
  EXPECT_THROW(attached->upload_params(p.data()), og::Error);
  EXPECT_THROW(attached->grad_norm_sq(), og::Error);
  const int nu = (int)units.size();

  const auto x1 = random_tokens(16, cfg.vocab_size, 61), y1 = random_tokens(16, cfg.vocab_size, 62);
  const auto x2 = random_tokens(16, cfg.vocab_size, 63), y2 = random_tokens(16, cfg.vocab_size, 64);
  // one micro-batch: bitwise equal (each gradient element is written once, into zero)
  own->zero_grad();
  EXPECT_EQ(attached->forward_backward(x1.data(), y1.data(), 2, 8, 0.5f),
            own->forward_backward(x1.data(), y1.data(), 2, 8, 0.5f));
  EXPECT_EQ(src.log.check(nu, true), "");
  EXPECT_EQ(std::vector<float>(own->grads(), own->grads() + n), src.grads());
  // a second micro-batch accumulates (the attached source adds per unit: rounding may differ)
  src.log.clear();
  attached->forward_backward(x2.data(), y2.data(), 2, 8, 0.5f);
  own->forward_backward(x2.data(), y2.data(), 2, 8, 0.5f);
  EXPECT_EQ(src.log.check(nu, true), "");
  double err = 0, mx = 0;
  for (size_t i = 0; i < n; ++i) {
    err = std::max(err, (double)std::fabs(own->grads()[i] - src.grads()[i]));
    mx = std::max(mx, (double)std::fabs(own->grads()[i]));
  }
  EXPECT_LT(err, 1e-6 * mx);
  EXPECT_GT(mx, 0.0);
  // forward only: loss and sampling logits
  src.log.clear();
  EXPECT_EQ(attached->forward_loss(x1.data(), y1.data(), 2, 8), own->forward_loss(x1.data(), y1.data(), 2, 8));
  EXPECT_EQ(src.log.check(nu, false), "");
  src.log.clear();
  EXPECT_EQ(attached->last_logits(x2.data(), 5), own->last_logits(x2.data(), 5));
  EXPECT_EQ(src.log.check(nu, false), "");
}

// The checker itself: a log that breaks each rule is refused.
TEST(ModelGrad, UnitCallLogRefusesViolations) {
  auto run = [](std::initializer_list<og_test::UnitCallLog::Call> calls, bool backward) {
    og_test::UnitCallLog log;
    for (const auto& c : calls) log.calls.push_back(c);
    return log.check(3, backward);
  };
  EXPECT_EQ(run({{'a', 0, 1}, {'r', 0, -1}, {'a', 1, 2}, {'r', 1, -1}, {'a', 2, -1}, {'r', 2, -1}}, false), "");
  EXPECT_NE(run({{'a', 0, 2}, {'r', 0, -1}, {'a', 1, 2}, {'r', 1, -1}, {'a', 2, -1}, {'r', 2, -1}}, false),
            "");  // hint
  EXPECT_NE(run({{'a', 0, 1}, {'a', 1, 2}, {'a', 2, -1}, {'r', 0, -1}, {'r', 1, -1}, {'r', 2, -1}}, false),
            "");                                                                                    // 3 held
  EXPECT_NE(run({{'a', 0, 1}, {'r', 0, -1}, {'a', 1, 2}, {'r', 1, -1}, {'a', 2, -1}}, false), "");  // not released
  EXPECT_NE(run({{'a', 1, 0}, {'r', 1, -1}, {'a', 0, 2}, {'r', 0, -1}, {'a', 2, -1}, {'r', 2, -1}}, false),
            "");  // order
  EXPECT_EQ(run({{'a', 2, 1},
                 {'g', 2, -1},
                 {'d', 2, -1},
                 {'r', 2, -1},
                 {'a', 1, -1},
                 {'g', 1, -1},
                 {'d', 1, -1},
                 {'r', 1, -1},
                 {'g', 0, -1},
                 {'d', 0, -1}},
                true),
            "");
  EXPECT_NE(run({{'g', 1, -1},
                 {'d', 1, -1},
                 {'a', 2, -1},
                 {'g', 2, -1},
                 {'d', 2, -1},
                 {'r', 2, -1},
                 {'g', 0, -1},
                 {'d', 0, -1}},
                true),
            "");  // unit 1's gradient buffer while its weights are not held
  EXPECT_NE(run({{'a', 2, -1}, {'g', 2, -1}, {'d', 2, -1}, {'r', 2, -1}, {'g', 0, -1}, {'d', 0, -1}}, true),
            "");  // unit 1 missing
}

}  // namespace
}  // namespace og::test

namespace og::test {
namespace {

// Not a correctness test: the forward+backward speed of the lead's tiny CPU training config
// (vocab 50304, d 128, 4 layers, 4 heads, seq 128, micro-batch 8). Run by hand:
//   build/tests/cpu_test_model_grad --gtest_also_run_disabled_tests --gtest_filter='*Speed*'
TEST(ModelGrad, DISABLED_SpeedTinyTrainingConfig) {
  GPTConfig cfg;
  cfg.vocab_size = 50304;
  cfg.d_model = 128;
  cfg.n_layer = 4;
  cfg.n_head = 4;
  cfg.seq_len = 128;
  const int B = 8, T = 128;
  auto model = make_cpu_model(cfg, B);
  const auto inputs = random_tokens(B * T, cfg.vocab_size, 61), targets = random_tokens(B * T, cfg.vocab_size, 62);
  model->zero_grad();
  model->forward_backward(inputs.data(), targets.data(), B, T, 1.0f);  // warm-up
  const int steps = 5;
  // Wall time, and process CPU time (all threads): on a shared machine the wall time swings with
  // the other load while CPU time per step stays put.
  og::Timer timer;
  const std::clock_t c0 = std::clock();
  float loss = 0;
  for (int s = 0; s < steps; ++s) loss = model->forward_backward(inputs.data(), targets.data(), B, T, 1.0f);
  const double per_step = timer.seconds() / steps;
  const double cpu_per_step = (double)(std::clock() - c0) / CLOCKS_PER_SEC / steps;
  og::Timer ft;
  for (int s = 0; s < steps; ++s) model->forward_loss(inputs.data(), targets.data(), B, T);
  const double fwd = ft.seconds() / steps;
  std::printf("tiny config fwd+bwd: %.1f ms/step wall (forward %.1f ms), %.0f tokens/s; %.1f CPU-ms/step; loss %.4f\n",
              per_step * 1e3, fwd * 1e3, B * T / per_step, cpu_per_step * 1e3, loss);
  EXPECT_TRUE(std::isfinite(loss));
}

}  // namespace
}  // namespace og::test
