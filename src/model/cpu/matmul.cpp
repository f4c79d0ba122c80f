// Linear layer without bias, y = x · Wᵀ, and its backward, on the CPU gemm.
// Shapes: inp [N, C], w [OC, C] (rows = fan_out), out [N, OC].
#include "core/gemm_cpu.h"
#include "model/cpu/ops.h"

namespace og::cpu {

template <typename T> void matmul_forward(T* out, const T* inp, const T* w, int64_t N, int64_t C, int64_t OC) {
  // out[N, OC] = inp[N, C] · w[OC, C]^T
  gemm<T>(false, true, N, OC, C, T(1), inp, C, w, C, T(0), out, OC);
}

template <typename T>
void matmul_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, int64_t N, int64_t C, int64_t OC) {
  // dinp[N, C] += dout[N, OC] · w[OC, C]
  if (dinp) gemm<T>(false, false, N, C, OC, T(1), dout, OC, w, C, T(1), dinp, C);
  // dw[OC, C] += dout[N, OC]^T · inp[N, C]
  if (dw) gemm<T>(true, false, OC, C, N, T(1), dout, OC, inp, C, T(1), dw, C);
}

template void matmul_forward<float>(float*, const float*, const float*, int64_t, int64_t, int64_t);
template void matmul_forward<double>(double*, const double*, const double*, int64_t, int64_t, int64_t);
template void matmul_backward<float>(float*, float*, const float*, const float*, const float*, int64_t, int64_t,
                                     int64_t);
template void matmul_backward<double>(double*, double*, const double*, const double*, const double*, int64_t, int64_t,
                                      int64_t);

}  // namespace og::cpu
