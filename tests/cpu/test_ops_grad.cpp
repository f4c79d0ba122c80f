// The CPU reference ops (model/cpu/ops.h): every backward against central finite differences in
// double precision on random non-zero inputs (the loss is a random projection sum(w * y) of the
// op's output, so dout = w), with accumulate-vs-write semantics checked by pre-filling the
// gradient buffers with random values; forwards against independent naive formulas.
// Tolerance for gradients: max |analytic - numeric| / max |numeric| < 1e-7 (central differences
// with h = 1e-5 have truncation and rounding errors around 1e-10 here).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <complex>
#include <vector>

#include "core/error.h"
#include "grad_check.h"
#include "model/cpu/ops.h"

namespace og::test {
namespace {

constexpr double kGradTol = 1e-7;
using og::cpu::kRmsNormEps;

// Analytic gradient of an accumulating backward: run it on a buffer pre-filled with g0 and
// subtract g0 (also proves it adds rather than overwrites).
std::vector<double> accumulated(const std::vector<double>& g0, const std::vector<double>& g) {
  std::vector<double> d(g.size());
  for (size_t i = 0; i < g.size(); ++i) d[i] = g[i] - g0[i];
  return d;
}

TEST(OpsGrad, Matmul) {
  const int64_t N = 7, C = 5, OC = 6;
  auto inp = randn(N * C, 1), w = randn(OC * C, 2), dout = randn(N * OC, 3);
  std::vector<double> out(N * OC);
  auto loss = [&] {
    og::cpu::matmul_forward(out.data(), inp.data(), w.data(), N, C, OC);
    return dot(dout.data(), out.data(), out.size());
  };
  // forward against the naive sum
  loss();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < OC; ++o) {
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += inp[n * C + c] * w[o * C + c];
      EXPECT_NEAR(out[n * OC + o], s, 1e-14);
    }
  const auto dinp0 = randn(N * C, 4), dw0 = randn(OC * C, 5);
  auto dinp = dinp0, dw = dw0;
  og::cpu::matmul_backward(dinp.data(), dw.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  EXPECT_LT(grad_rel_error(accumulated(dinp0, dinp), numeric_grad(inp.data(), inp.size(), loss)), kGradTol);
  EXPECT_LT(grad_rel_error(accumulated(dw0, dw), numeric_grad(w.data(), w.size(), loss)), kGradTol);
  // either output may be null
  auto dw_only = dw0;
  og::cpu::matmul_backward<double>(nullptr, dw_only.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  EXPECT_EQ(dw_only, dw);
  auto dinp_only = dinp0;
  og::cpu::matmul_backward<double>(dinp_only.data(), nullptr, dout.data(), inp.data(), w.data(), N, C, OC);
  EXPECT_EQ(dinp_only, dinp);
}

TEST(OpsGrad, RmsNorm) {
  const int64_t N = 6, C = 8;
  auto inp = randn(N * C, 11, 3.0), dout = randn(N * C, 12);
  std::vector<double> out(N * C), rstd(N);
  auto loss = [&] {
    og::cpu::rmsnorm_forward(out.data(), rstd.data(), inp.data(), N, C);
    return dot(dout.data(), out.data(), out.size());
  };
  loss();
  for (int64_t n = 0; n < N; ++n) {
    double ms = 0, ms_out = 0;
    for (int64_t c = 0; c < C; ++c) ms += inp[n * C + c] * inp[n * C + c] / C;
    for (int64_t c = 0; c < C; ++c) ms_out += out[n * C + c] * out[n * C + c] / C;
    EXPECT_NEAR(rstd[n], 1.0 / std::sqrt(ms + kRmsNormEps), 1e-14);
    EXPECT_NEAR(ms_out, 1.0, 1e-6);  // rms of the output is 1 up to eps / mean(x^2)
    for (int64_t c = 0; c < C; ++c) EXPECT_NEAR(out[n * C + c], inp[n * C + c] / std::sqrt(ms + kRmsNormEps), 1e-14);
  }
  const auto dinp0 = randn(N * C, 13);
  auto dinp = dinp0;
  og::cpu::rmsnorm_backward(dinp.data(), dout.data(), inp.data(), rstd.data(), N, C);
  EXPECT_LT(grad_rel_error(accumulated(dinp0, dinp), numeric_grad(inp.data(), inp.size(), loss)), kGradTol);
}

TEST(OpsGrad, RotaryForwardMatchesComplexRotation) {
  // The halves (x[i], x[i + hd/2]) form z = x[i] + i x[i+hd/2]; the op is z * exp(-i theta).
  const int B = 2, T = 5, H = 2, hd = 8;
  for (double base : {10000.0, 3.0}) {
    auto inp = randn((size_t)B * T * H * hd, 21);
    std::vector<double> out(inp.size());
    og::cpu::rotary_forward(out.data(), inp.data(), B, T, H, hd, base);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < H; ++h)
          for (int i = 0; i < hd / 2; ++i) {
            const size_t row = (((size_t)b * T + t) * H + h) * hd;
            const double inv_freq = 1.0 / std::pow(base, (2.0 * i) / hd);
            const std::complex<double> z(inp[row + i], inp[row + i + hd / 2]);
            const std::complex<double> y = z * std::polar(1.0, -t * inv_freq);
            EXPECT_NEAR(out[row + i], y.real(), 1e-14);
            EXPECT_NEAR(out[row + i + hd / 2], y.imag(), 1e-14);
          }
    // position 0 is the identity; in place gives the same result
    for (int i = 0; i < hd; ++i) EXPECT_DOUBLE_EQ(out[i], inp[i]);
    auto inplace = inp;
    og::cpu::rotary_forward(inplace.data(), inplace.data(), B, T, H, hd, base);
    EXPECT_EQ(inplace, out);
  }
}

TEST(OpsGrad, Rotary) {
  const int B = 2, T = 5, H = 2, hd = 8;
  const double base = 10.0;  // large angles at small t, so every term matters
  auto inp = randn((size_t)B * T * H * hd, 31), dout = randn(inp.size(), 32);
  std::vector<double> out(inp.size());
  auto loss = [&] {
    og::cpu::rotary_forward(out.data(), inp.data(), B, T, H, hd, base);
    return dot(dout.data(), out.data(), out.size());
  };
  auto dinp = randn(inp.size(), 33);  // rotary_backward WRITES: the prior content must vanish
  og::cpu::rotary_backward(dinp.data(), dout.data(), B, T, H, hd, base);
  EXPECT_LT(grad_rel_error(dinp, numeric_grad(inp.data(), inp.size(), loss)), kGradTol);
  auto inplace = dout;  // dinp may alias dout
  og::cpu::rotary_backward(inplace.data(), inplace.data(), B, T, H, hd, base);
  EXPECT_EQ(inplace, dinp);
}

// Naive causal attention: the full T x T score matrix with -inf above the diagonal.
std::vector<double> naive_attention(const std::vector<double>& q, const std::vector<double>& k,
                                    const std::vector<double>& v, int B, int T, int H, int hd) {
  std::vector<double> out(q.size(), 0.0);
  const int C = H * hd;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < T; ++t) {
        std::vector<double> s(T);
        double m = -INFINITY;
        for (int j = 0; j < T; ++j) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[(b * T + t) * C + h * hd + i] * k[(b * T + j) * C + h * hd + i];
          s[j] = j <= t ? d / std::sqrt((double)hd) : -INFINITY;
          m = std::max(m, s[j]);
        }
        double z = 0;
        for (int j = 0; j < T; ++j) z += std::exp(s[j] - m);
        for (int j = 0; j < T; ++j)
          for (int i = 0; i < hd; ++i)
            out[(b * T + t) * C + h * hd + i] += std::exp(s[j] - m) / z * v[(b * T + j) * C + h * hd + i];
      }
  return out;
}

TEST(OpsGrad, AttentionForwardCausal) {
  const int B = 2, T = 5, H = 2, hd = 8;
  const size_t n = (size_t)B * T * H * hd;
  auto q = randn(n, 41), k = randn(n, 42), v = randn(n, 43);
  std::vector<double> out(n), probs((size_t)B * H * T * T, 7.0);
  og::cpu::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, H, hd);
  const auto ref = naive_attention(q, k, v, B, T, H, hd);
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(out[i], ref[i], 1e-13);
  for (int bh = 0; bh < B * H; ++bh)
    for (int t = 0; t < T; ++t) {
      double s = 0;
      for (int j = 0; j < T; ++j) {
        const double p = probs[((size_t)bh * T + t) * T + j];
        if (j > t) EXPECT_EQ(p, 0.0);
        s += p;
      }
      EXPECT_NEAR(s, 1.0, 1e-14);
    }
  // Changing q, k, v at positions >= 3 leaves the outputs at positions < 3 bit-identical.
  auto q2 = q, k2 = k, v2 = v;
  for (int b = 0; b < B; ++b)
    for (int t = 3; t < T; ++t)
      for (int c = 0; c < H * hd; ++c) {
        const size_t i = ((size_t)b * T + t) * H * hd + c;
        q2[i] += 1.5;
        k2[i] -= 2.0;
        v2[i] *= 3.0;
      }
  std::vector<double> out2(n), probs2(probs.size());
  og::cpu::attention_forward(out2.data(), probs2.data(), q2.data(), k2.data(), v2.data(), B, T, H, hd);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < H * hd; ++c) {
        const size_t i = ((size_t)b * T + t) * H * hd + c;
        if (t < 3) {
          EXPECT_EQ(out2[i], out[i]);
        }
      }
  EXPECT_NE(out2[((size_t)0 * T + 4) * H * hd], out[((size_t)0 * T + 4) * H * hd]);
}

TEST(OpsGrad, Attention) {
  const int B = 2, T = 5, H = 2, hd = 8;
  const size_t n = (size_t)B * T * H * hd;
  auto q = randn(n, 51), k = randn(n, 52), v = randn(n, 53), dout = randn(n, 54);
  std::vector<double> out(n), probs((size_t)B * H * T * T);
  auto loss = [&] {
    og::cpu::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, H, hd);
    return dot(dout.data(), out.data(), n);
  };
  loss();
  const auto dq0 = randn(n, 55), dk0 = randn(n, 56), dv0 = randn(n, 57);
  auto dq = dq0, dk = dk0, dv = dv0;
  og::cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(), q.data(), k.data(), v.data(),
                              B, T, H, hd);
  EXPECT_LT(grad_rel_error(accumulated(dq0, dq), numeric_grad(q.data(), n, loss)), kGradTol);
  EXPECT_LT(grad_rel_error(accumulated(dk0, dk), numeric_grad(k.data(), n, loss)), kGradTol);
  EXPECT_LT(grad_rel_error(accumulated(dv0, dv), numeric_grad(v.data(), n, loss)), kGradTol);
}

TEST(OpsGrad, AttentionFloatMatchesDoubleLargerShape) {
  // Enough work for the parallel path; float vs double on the same inputs.
  const int B = 3, T = 33, H = 3, hd = 16;
  const size_t n = (size_t)B * T * H * hd;
  auto q = randn(n, 61), k = randn(n, 62), v = randn(n, 63), dout = randn(n, 64);
  std::vector<double> out(n), probs((size_t)B * H * T * T), dq(n, 0), dk(n, 0), dv(n, 0);
  og::cpu::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, T, H, hd);
  og::cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(), q.data(), k.data(), v.data(),
                              B, T, H, hd);
  auto f = [](const std::vector<double>& x) { return std::vector<float>(x.begin(), x.end()); };
  auto qf = f(q), kf = f(k), vf = f(v), doutf = f(dout);
  std::vector<float> outf(n), probsf(probs.size()), dqf(n, 0), dkf(n, 0), dvf(n, 0);
  og::cpu::attention_forward(outf.data(), probsf.data(), qf.data(), kf.data(), vf.data(), B, T, H, hd);
  og::cpu::attention_backward(dqf.data(), dkf.data(), dvf.data(), doutf.data(), probsf.data(), qf.data(), kf.data(),
                              vf.data(), B, T, H, hd);
  auto close = [](const std::vector<float>& a, const std::vector<double>& b, double tol) {
    double err = 0, scale = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      err = std::max(err, std::fabs(a[i] - b[i]));
      scale = std::max(scale, std::fabs(b[i]));
    }
    return err / scale < tol;
  };
  EXPECT_TRUE(close(outf, out, 1e-5));
  EXPECT_TRUE(close(dqf, dq, 1e-5));
  EXPECT_TRUE(close(dkf, dk, 1e-5));
  EXPECT_TRUE(close(dvf, dv, 1e-5));
}

TEST(OpsGrad, Relu2) {
  const int64_t N = 40;
  auto inp = randn(N, 71), dout = randn(N, 72);
  std::vector<double> out(N);
  auto loss = [&] {
    og::cpu::relu2_forward(out.data(), inp.data(), N);
    return dot(dout.data(), out.data(), N);
  };
  loss();
  for (int64_t i = 0; i < N; ++i) EXPECT_EQ(out[i], inp[i] > 0 ? inp[i] * inp[i] : 0.0);
  const auto dinp0 = randn(N, 73);
  auto dinp = dinp0;
  og::cpu::relu2_backward(dinp.data(), dout.data(), inp.data(), N);
  EXPECT_LT(grad_rel_error(accumulated(dinp0, dinp), numeric_grad(inp.data(), N, loss)), kGradTol);
}

TEST(OpsGrad, Embedding) {
  const int64_t V = 11, C = 6, N = 9;
  const std::vector<int32_t> tokens = {3, 0, 10, 3, 7, 3, 0, 5, 10};  // repeats must add up
  auto wte = randn(V * C, 81), dout = randn(N * C, 82);
  std::vector<double> out(N * C);
  auto loss = [&] {
    og::cpu::embedding_forward(out.data(), tokens.data(), wte.data(), N, C);
    return dot(dout.data(), out.data(), out.size());
  };
  loss();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(out[n * C + c], wte[tokens[n] * C + c]);
  const auto dwte0 = randn(V * C, 83);
  auto dwte = dwte0;
  og::cpu::embedding_backward(dwte.data(), dout.data(), tokens.data(), N, C);
  EXPECT_LT(grad_rel_error(accumulated(dwte0, dwte), numeric_grad(wte.data(), wte.size(), loss)), kGradTol);
}

TEST(OpsGrad, EmbeddingBackwardIsDeterministicAcrossThreadCounts) {
  // Many repeats of few tokens, big enough for the parallel path: 1 and 2 threads bit-identical.
  const int64_t V = 5, C = 100, N = 2000;
  std::vector<int32_t> tokens(N);
  og::Rng rng(91);
  for (auto& t : tokens) t = (int32_t)rng.below(V);
  std::vector<float> dout(N * C);
  for (auto& x : dout) x = (float)rng.normal();
  std::vector<float> naive(V * C, 0.5f), one(V * C, 0.5f), two(V * C, 0.5f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) naive[tokens[n] * C + c] += dout[n * C + c];
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  og::cpu::embedding_backward(one.data(), dout.data(), tokens.data(), N, C);
  omp_set_num_threads(2);
  og::cpu::embedding_backward(two.data(), dout.data(), tokens.data(), N, C);
  omp_set_num_threads(saved);
  EXPECT_EQ(one, two);
  EXPECT_EQ(one, naive);  // same summation order as the sequential loop
}

TEST(OpsGrad, CrossEntropyForwardMatchesLogSoftmax) {
  const int64_t N = 6, V = 13;
  auto logits = randn(N * V, 101, 2.0);
  std::vector<int32_t> targets = {0, 12, 5, 5, -1, 7};
  std::vector<double> losses(N, 9.0);
  og::cpu::crossentropy_forward(losses.data(), logits.data(), targets.data(), N, V);
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0) {
      EXPECT_EQ(losses[n], 0.0);
      continue;
    }
    long double z = 0;  // no max shift: the logits are moderate
    for (int64_t j = 0; j < V; ++j) z += std::exp((long double)logits[n * V + j]);
    const double log_softmax_t = (double)((long double)logits[n * V + targets[n]] - std::log(z));
    EXPECT_NEAR(losses[n], -log_softmax_t, 1e-13);
  }
  std::vector<int32_t> bad = {0, 13, 0, 0, 0, 0};
  EXPECT_THROW(og::cpu::crossentropy_forward(losses.data(), logits.data(), bad.data(), N, V), og::Error);
  bad[1] = -2;
  EXPECT_THROW(og::cpu::crossentropy_forward(losses.data(), logits.data(), bad.data(), N, V), og::Error);
}

TEST(OpsGrad, CrossEntropy) {
  const int64_t N = 6, V = 13;
  auto logits = randn(N * V, 111, 2.0), dlosses = randn(N, 112);
  std::vector<int32_t> targets = {0, 12, 5, 5, -1, 7};
  std::vector<double> losses(N);
  auto loss = [&] {
    og::cpu::crossentropy_forward(losses.data(), logits.data(), targets.data(), N, V);
    return dot(dlosses.data(), losses.data(), N);
  };
  auto dlogits = randn(N * V, 113);  // WRITES: prior content must vanish
  og::cpu::crossentropy_backward(dlogits.data(), logits.data(), targets.data(), dlosses.data(), N, V);
  EXPECT_LT(grad_rel_error(dlogits, numeric_grad(logits.data(), logits.size(), loss)), kGradTol);
  for (int64_t j = 0; j < V; ++j) EXPECT_EQ(dlogits[4 * V + j], 0.0);  // ignored row
  auto inplace = logits;                                               // dlogits may alias logits
  og::cpu::crossentropy_backward(inplace.data(), inplace.data(), targets.data(), dlosses.data(), N, V);
  EXPECT_EQ(inplace, dlogits);
}

TEST(OpsGrad, CrossEntropyFloatMatchesDouble) {
  // The float path uses a polynomial exp; check it over a wide logit range and a long row,
  // including the in-place backward the model uses.
  const int64_t N = 5, V = 50304;
  auto logits = randn(N * V, 121, 6.0);
  for (int64_t j = 0; j < V; j += 97) logits[j] = -120.0 + j % 200;  // far below the max too
  std::vector<int32_t> targets = {1, 50303, 777, 0, 12345};
  std::vector<double> dl = {1.0, 0.5, -2.0, 0.25, 1.0};
  std::vector<double> loss_d(N), dlogits_d(N * V);
  og::cpu::crossentropy_forward(loss_d.data(), logits.data(), targets.data(), N, V);
  og::cpu::crossentropy_backward(dlogits_d.data(), logits.data(), targets.data(), dl.data(), N, V);
  std::vector<float> logits_f(logits.begin(), logits.end()), loss_f(N), dl_f(dl.begin(), dl.end());
  og::cpu::crossentropy_forward(loss_f.data(), logits_f.data(), targets.data(), N, V);
  og::cpu::crossentropy_backward(logits_f.data(), logits_f.data(), targets.data(), dl_f.data(), N, V);
  for (int64_t n = 0; n < N; ++n) EXPECT_NEAR(loss_f[n], loss_d[n], 2e-6 * std::fabs(loss_d[n]));
  double err = 0;
  for (int64_t i = 0; i < N * V; ++i) err = std::max(err, std::fabs(logits_f[i] - dlogits_d[i]) / std::fabs(dl[i / V]));
  EXPECT_LT(err, 1e-6);  // entries are probabilities (<= 1) times dl: absolute error vs 1
}

}  // namespace
}  // namespace og::test
