// RMSNorm without a learned weight, over rows of length C (F.rms_norm semantics):
//   rstd = 1 / sqrt(mean(x^2) + eps),  y = x * rstd.
// Backward (dy -> dx), from d rstd / d x_i = -rstd^3 x_i / C:
//   dx_i = rstd * dy_i - rstd^3 / C * x_i * sum_j dy_j x_j.
// Row sums accumulate in double (rows are short; the reference should not add its own error).
#include <cmath>

#include "model/cpu/ops.h"

namespace og::cpu {

template <typename T> void rmsnorm_forward(T* out, T* rstd, const T* inp, int64_t N, int64_t C, double eps) {
#pragma omp parallel for schedule(static) if (N * C > 32768)
  for (int64_t n = 0; n < N; ++n) {
    const T* x = inp + n * C;
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += (double)x[c] * (double)x[c];
    const double r = 1.0 / std::sqrt(ss / (double)C + eps);
    T* y = out + n * C;
    const T rt = (T)r;
    for (int64_t c = 0; c < C; ++c) y[c] = x[c] * rt;
    rstd[n] = rt;
  }
}

template <typename T> void rmsnorm_backward(T* dinp, const T* dout, const T* inp, const T* rstd, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static) if (N * C > 32768)
  for (int64_t n = 0; n < N; ++n) {
    const T* x = inp + n * C;
    const T* dy = dout + n * C;
    double dot = 0.0;
    for (int64_t c = 0; c < C; ++c) dot += (double)dy[c] * (double)x[c];
    const double r = (double)rstd[n];
    const T a = (T)r;
    const T b = (T)(r * r * r * dot / (double)C);
    T* dx = dinp + n * C;
    for (int64_t c = 0; c < C; ++c) dx[c] += a * dy[c] - b * x[c];
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, int64_t, int64_t, double);
template void rmsnorm_forward<double>(double*, double*, const double*, int64_t, int64_t, double);
template void rmsnorm_backward<float>(float*, const float*, const float*, const float*, int64_t, int64_t);
template void rmsnorm_backward<double>(double*, const double*, const double*, const double*, int64_t, int64_t);

}  // namespace og::cpu
