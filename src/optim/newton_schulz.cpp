// Newton–Schulz / Polar Express orthonormalization on the CPU (see newton_schulz.h).
#include "optim/newton_schulz.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include <omp.h>

#include "core/error.h"
#include "core/gemm_cpu.h"

namespace og {
namespace {

struct Coeffs {
  double a, b, c;
};

// Keller Jordan's quintic NS, five distinct steps.
constexpr Coeffs kNs5[5] = {{4.0848, -6.8946, 2.9270},
                            {3.9505, -6.3029, 2.6377},
                            {3.7418, -5.5913, 2.3037},
                            {2.8769, -3.1427, 1.2046},
                            {2.8366, -3.0525, 1.2012}};

// Polar Express (Amsel et al.), five steps, used with the 1.02 safety factor on the norm.
constexpr Coeffs kPolarExpress[5] = {{8.156554524902461, -22.48329292557795, 15.878769915207462},
                                     {4.042929935166739, -2.808917465908714, 0.5000178451051316},
                                     {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
                                     {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
                                     {2.3465413258596377, -1.7097828382687081, 0.42323551169305323}};

// Row-block height for the symmetric products: about 8 blocks, so ~56% of the full product is
// computed; small matrices are one block (the saving is not worth the extra calls).
int64_t sym_block(int64_t n) {
  if (n <= 128) return n;
  return std::max<int64_t>(64, ((n + 7) / 8 + 15) / 16 * 16);
}

void mirror_upper(float* c, int64_t n) {
  for (int64_t i = 1; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) c[i * n + j] = c[j * n + i];
}

// C (n x n) = X·Xᵀ for X (n x k, row stride ldx).
void gram_rows(const float* x, int64_t n, int64_t k, int64_t ldx, float* c) {
  const int64_t bs = sym_block(n);
  for (int64_t i0 = 0; i0 < n; i0 += bs) {
    const int64_t h = std::min(bs, n - i0);
    cpu::gemm<float>(false, true, h, n - i0, k, 1.0f, x + i0 * ldx, ldx, x + i0 * ldx, ldx, 0.0f, c + i0 * n + i0, n);
  }
  mirror_upper(c, n);
}

// C (n x n) = Xᵀ·X for X (m x n, row stride ldx).
void gram_cols(const float* x, int64_t m, int64_t n, int64_t ldx, float* c) {
  const int64_t bs = sym_block(n);
  for (int64_t i0 = 0; i0 < n; i0 += bs) {
    const int64_t h = std::min(bs, n - i0);
    cpu::gemm<float>(true, false, h, n - i0, m, 1.0f, x + i0, ldx, x + i0, ldx, 0.0f, c + i0 * n + i0, n);
  }
  mirror_upper(c, n);
}

// B <- b·A + c·B (B holds A·A on entry).
void combine(float* bm, const float* am, size_t n, double b, double c) {
  for (size_t i = 0; i < n; ++i) bm[i] = (float)(b * (double)am[i] + c * (double)bm[i]);
}

// Y <- a·X, elementwise.
void scaled_copy(float* y, const float* x, size_t n, double a) {
  for (size_t i = 0; i < n; ++i) y[i] = (float)(a * (double)x[i]);
}

// Five steps on X (m x n, dense) held in ws.x; left form (A = X·Xᵀ) when `left`, else right form
// (A = Xᵀ·X, X = a·X + X·B). Result in ws.x.
void iterate(const Coeffs* coeffs, int64_t m, int64_t n, bool left, NsWorkspace& ws) {
  const int64_t s = left ? m : n;  // side of A
  const size_t xn = (size_t)m * (size_t)n, an = (size_t)s * (size_t)s;
  ws.y.resize(xn);
  ws.a.resize(an);
  ws.b.resize(an);
  for (int step = 0; step < 5; ++step) {
    const Coeffs& k = coeffs[step];
    float* x = ws.x.data();
    float* y = ws.y.data();
    if (left)
      gram_rows(x, m, n, n, ws.a.data());
    else
      gram_cols(x, m, n, n, ws.a.data());
    gram_rows(ws.a.data(), s, s, s, ws.b.data());  // A·Aᵀ = A·A (A symmetric)
    combine(ws.b.data(), ws.a.data(), an, k.b, k.c);
    scaled_copy(y, x, xn, k.a);
    if (left)
      cpu::gemm<float>(false, false, m, n, m, 1.0f, ws.b.data(), m, x, n, 1.0f, y, n);
    else
      cpu::gemm<float>(false, false, m, n, n, 1.0f, x, n, ws.b.data(), n, 1.0f, y, n);
    std::swap(ws.x, ws.y);
  }
}

}  // namespace

void orthonormalize(Ortho kind, const NsSource& src, float* out, int64_t ld_out, float eps, NsWorkspace& ws) {
  const int64_t R = src.out_rows(), C = src.out_cols();
  OG_CHECK(R > 0 && C > 0 && src.data && out, "newton_schulz: empty input ({} x {})", R, C);
  const bool polar = kind == Ortho::PolarExpress;
  // NS5 runs on the wide orientation (transpose a tall input); Polar Express uses the right form.
  const bool transposed = !polar && R > C;
  const int64_t m = transposed ? C : R, n = transposed ? R : C;
  const bool left = m <= n;

  // Load (gathering selected slices), in the iteration's orientation.
  ws.x.resize((size_t)m * (size_t)n);
  float* x = ws.x.data();
  const bool sel_rows = src.index && src.axis == SliceAxis::Rows;
  const bool sel_cols = src.index && src.axis == SliceAxis::Cols;
  for (int64_t i = 0; i < R; ++i) {
    const float* row = src.data + (sel_rows ? src.index[i] : i) * src.ld;
    for (int64_t j = 0; j < C; ++j) {
      const float v = row[sel_cols ? src.index[j] : j];
      if (transposed)
        x[j * R + i] = v;
      else
        x[i * C + j] = v;
    }
  }

  // Normalize so every singular value is <= 1 (the iteration diverges otherwise).
  const double norm = frobenius_norm(x, ws.x.size());
  const double scale = 1.0 / ((polar ? 1.02 * norm : norm) + (double)eps);
  for (float& v : ws.x) v = (float)((double)v * scale);

  iterate(polar ? kPolarExpress : kNs5, m, n, left, ws);

  x = ws.x.data();
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < C; ++j) out[i * ld_out + j] = transposed ? x[j * R + i] : x[i * C + j];
}

void orthonormalize_batch(Ortho kind, const std::vector<NsJob>& jobs, float eps) {
  constexpr int64_t kSmall = 256 * 256;  // below this, one job per thread beats threaded products
  bool all_small = true;
  for (const NsJob& j : jobs) all_small = all_small && j.src.out_rows() * j.src.out_cols() <= kSmall;
  if (!all_small || jobs.size() < 2 || omp_get_max_threads() < 2) {
    NsWorkspace ws;
    for (const NsJob& j : jobs) orthonormalize(kind, j.src, j.out, j.ld_out, eps, ws);
    return;
  }
  for (const NsJob& j : jobs)  // validate outside the parallel region (no exception may leave it)
    OG_CHECK(j.src.out_rows() > 0 && j.src.out_cols() > 0 && j.src.data && j.out, "newton_schulz: empty input");
#pragma omp parallel
  {
    NsWorkspace ws;
#pragma omp for schedule(dynamic)
    for (size_t i = 0; i < jobs.size(); ++i) orthonormalize(kind, jobs[i].src, jobs[i].out, jobs[i].ld_out, eps, ws);
  }
}

}  // namespace og
