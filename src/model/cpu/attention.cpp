// Causal softmax attention for one layer, scale 1/sqrt(hd); q, k, v, out are [B, T, H, hd] and
// the saved probabilities probs are [B, H, T, T] (row t holds query t's weights over keys j <= t;
// entries above the diagonal are 0).
// Per (b, h), with Q, K, V, O the [T, hd] slices of that head (row stride H * hd):
//   forward   S = scale Q K^T,  P = causal row-softmax(S),  O = P V
//   backward  dV += P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)) (on j <= t),
//             dQ += scale dS K,  dK += scale dS^T Q
// The products are og::cpu::gemm calls on the strided head slices (the full T x T products are
// computed and the upper triangle discarded: simpler than triangular loops, and the gemm is
// vectorized). Parallel over the B*H independent (b, h) pairs; each writes only its own head's
// slice of out/dq/dk/dv and its own probs block, so there are no races and the result is
// deterministic. (Inside the parallel loop each gemm runs on its calling thread.) The masked
// zeros of P multiply future rows of V, so a NaN/Inf in a later position would reach earlier
// outputs; finite inputs give exactly the causal result.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/gemm_cpu.h"
#include "model/cpu/ops.h"

namespace og::cpu {

template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, int B, int T_, int H, int hd) {
  const int64_t C = (int64_t)H * hd;  // row stride of q/k/v/out
  const T scale = (T)(1.0 / std::sqrt((double)hd));
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if ((int64_t)B * H * T_ * T_ * hd > 65536)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      const int64_t head = (int64_t)b * T_ * C + (int64_t)h * hd;
      T* P = probs + ((int64_t)b * H + h) * T_ * T_;
      gemm<T>(false, true, T_, T_, hd, scale, q + head, C, k + head, C, T(0), P, T_);  // S = scale Q K^T
      for (int t = 0; t < T_; ++t) {
        T* pt = P + (int64_t)t * T_;
        T maxv = pt[0];
        for (int j = 1; j <= t; ++j) maxv = std::max(maxv, pt[j]);
        T sum = T(0);
        for (int j = 0; j <= t; ++j) {
          pt[j] = std::exp(pt[j] - maxv);
          sum += pt[j];
        }
        const T inv = T(1) / sum;
        for (int j = 0; j <= t; ++j) pt[j] *= inv;
        for (int j = t + 1; j < T_; ++j) pt[j] = T(0);  // causal mask
      }
      gemm<T>(false, false, T_, hd, T_, T(1), P, T_, v + head, C, T(0), out + head, C);  // O = P V
    }
  }
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q, const T* k, const T* v, int B,
                        int T_, int H, int hd) {
  const int64_t C = (int64_t)H * hd;
  const T scale = (T)(1.0 / std::sqrt((double)hd));
#pragma omp parallel if ((int64_t)B * H * T_ * T_ * hd > 65536)
  {
    std::vector<T> dS((size_t)T_ * T_);  // this thread's dP, turned into dS in place
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < H; ++h) {
        const int64_t head = (int64_t)b * T_ * C + (int64_t)h * hd;
        const T* P = probs + ((int64_t)b * H + h) * T_ * T_;
        gemm<T>(true, false, T_, hd, T_, T(1), P, T_, dout + head, C, T(1), dv + head, C);         // dV += P^T dO
        gemm<T>(false, true, T_, T_, hd, T(1), dout + head, C, v + head, C, T(0), dS.data(), T_);  // dP = dO V^T
        for (int t = 0; t < T_; ++t) {  // softmax backward, scaled, on the causal part
          const T* pt = P + (int64_t)t * T_;
          T* st = dS.data() + (int64_t)t * T_;
          T pdp = T(0);
          for (int j = 0; j <= t; ++j) pdp += pt[j] * st[j];
          for (int j = 0; j <= t; ++j) st[j] = pt[j] * (st[j] - pdp) * scale;
          for (int j = t + 1; j < T_; ++j) st[j] = T(0);
        }
        gemm<T>(false, false, T_, hd, T_, T(1), dS.data(), T_, k + head, C, T(1), dq + head, C);  // dQ += dS K
        gemm<T>(true, false, T_, hd, T_, T(1), dS.data(), T_, q + head, C, T(1), dk + head, C);   // dK += dS^T Q
      }
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, const float*, const float*, int, int, int, int);
template void attention_forward<double>(double*, double*, const double*, const double*, const double*, int, int, int,
                                        int);
template void attention_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*,
                                        const float*, int, int, int, int);
template void attention_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         const double*, const double*, int, int, int, int);

}  // namespace og::cpu
