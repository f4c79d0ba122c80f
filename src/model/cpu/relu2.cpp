// ReLU squared, the MLP's activation: y = max(x, 0)^2, dy/dx = 2 max(x, 0).
#include "model/cpu/ops.h"

namespace og::cpu {

template <typename T> void relu2_forward(T* out, const T* inp, int64_t N) {
#pragma omp parallel for simd schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) {
    const T r = inp[i] > T(0) ? inp[i] : T(0);
    out[i] = r * r;
  }
}

template <typename T> void relu2_backward(T* dinp, const T* dout, const T* inp, int64_t N) {
#pragma omp parallel for simd schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) {
    const T r = inp[i] > T(0) ? inp[i] : T(0);
    dinp[i] += T(2) * r * dout[i];
  }
}

template void relu2_forward<float>(float*, const float*, int64_t);
template void relu2_forward<double>(double*, const double*, int64_t);
template void relu2_backward<float>(float*, const float*, const float*, int64_t);
template void relu2_backward<double>(double*, const double*, const double*, int64_t);

}  // namespace og::cpu
