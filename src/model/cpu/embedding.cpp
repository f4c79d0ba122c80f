// Token embedding lookup out[n, :] = wte[tokens[n], :] and its backward, a scatter-add into dwte.
// The backward is race-free and deterministic: threads own disjoint column ranges of dwte and
// each walks all tokens in order, so every entry sums its contributions in the same order
// whatever the thread count. Token ids are trusted here (the model validates them).
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "model/cpu/ops.h"

namespace og::cpu {

template <typename T> void embedding_forward(T* out, const int32_t* tokens, const T* wte, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static) if (N * C > 65536)
  for (int64_t n = 0; n < N; ++n) std::memcpy(out + n * C, wte + (int64_t)tokens[n] * C, (size_t)C * sizeof(T));
}

template <typename T> void embedding_backward(T* dwte, const T* dout, const int32_t* tokens, int64_t N, int64_t C) {
  // Column ranges in multiples of 16 elements (a cache line of floats) so threads never share a line.
  constexpr int64_t kGrain = 16;
  const int64_t groups = (C + kGrain - 1) / kGrain;
#pragma omp parallel if (N * C > 65536)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t c0 = std::min(C, groups * t / nt * kGrain), c1 = std::min(C, groups * (t + 1) / nt * kGrain);
    for (int64_t n = 0; n < N && c0 < c1; ++n) {
      T* dst = dwte + (int64_t)tokens[n] * C;
      const T* src = dout + n * C;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int64_t, int64_t);
template void embedding_forward<double>(double*, const int32_t*, const double*, int64_t, int64_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t);
template void embedding_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t);

}  // namespace og::cpu
