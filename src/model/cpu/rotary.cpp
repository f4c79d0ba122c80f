// Rotary position embedding on x[B, T, H, hd], halves rotated (the reference's convention):
//   for i < hd/2: theta = t * base^(-2i/hd), c = cos(theta), s = sin(theta),
//   y[i] = x[i] c + x[i + hd/2] s,   y[i + hd/2] = -x[i] s + x[i + hd/2] c.
// The backward applies the transposed rotation (a rotation by -theta):
//   dx[i] = dy[i] c - dy[i + hd/2] s,   dx[i + hd/2] = dy[i] s + dy[i + hd/2] c.
// Both WRITE their output and allow it to alias the input (each pair is read before written).
// Angles and cos/sin are computed in double, once per (t, i), and shared by every b and h.
#include <cmath>

#include "core/error.h"
#include "model/cpu/ops.h"

namespace og::cpu {
namespace {

// sign = +1: forward rotation; sign = -1: its transpose (backward).
template <typename T> void rotate(T* out, const T* inp, int B, int T_, int H, int hd, double base, double sign) {
  OG_CHECK(hd % 2 == 0, "rotary: head_dim {} must be even", hd);
  const int half = hd / 2;
#pragma omp parallel for schedule(static) if ((int64_t)B * T_ * H * hd > 32768)
  for (int t = 0; t < T_; ++t) {
    for (int i = 0; i < half; ++i) {
      const double theta = (double)t * std::pow(base, -2.0 * i / (double)hd);
      const T c = (T)std::cos(theta), s = (T)(sign * std::sin(theta));
      for (int b = 0; b < B; ++b) {
        for (int h = 0; h < H; ++h) {
          const int64_t row = (((int64_t)b * T_ + t) * H + h) * hd;
          const T x1 = inp[row + i], x2 = inp[row + i + half];
          out[row + i] = x1 * c + x2 * s;
          out[row + i + half] = -x1 * s + x2 * c;
        }
      }
    }
  }
}

}  // namespace

template <typename T> void rotary_forward(T* out, const T* inp, int B, int T_, int H, int hd, double base) {
  rotate(out, inp, B, T_, H, hd, base, 1.0);
}

template <typename T> void rotary_backward(T* dinp, const T* dout, int B, int T_, int H, int hd, double base) {
  rotate(dinp, dout, B, T_, H, hd, base, -1.0);
}

template void rotary_forward<float>(float*, const float*, int, int, int, int, double);
template void rotary_forward<double>(double*, const double*, int, int, int, int, double);
template void rotary_backward<float>(float*, const float*, int, int, int, int, double);
template void rotary_backward<double>(double*, const double*, int, int, int, int, double);

}  // namespace og::cpu
