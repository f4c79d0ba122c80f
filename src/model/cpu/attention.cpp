// Causal softmax attention for one layer, scale 1/sqrt(hd); q, k, v, out are [B, T, H, hd] and
// the saved probabilities probs are [B, H, T, T] (row t holds query t's weights over keys j <= t;
// entries above the diagonal are 0).
// Forward, per (b, h, t):  s_j = scale q_t . k_j (j <= t),  p = softmax(s),  out_t = sum_j p_j v_j.
// Backward, per (b, h, t):  dv_j += p_j dout_t,  dp_j = dout_t . v_j,  ds_j = p_j (dp_j - sum_i p_i dp_i),
//   dq_t += scale sum_j ds_j k_j,  dk_j += scale ds_j q_t.
// Parallel over the B*H independent (b, h) pairs: each writes only its own head's slice of
// out/dq/dk/dv and its own probs block, so there are no races and the result is deterministic.
#include <algorithm>
#include <cmath>
#include <vector>

#include "model/cpu/ops.h"

namespace og::cpu {

template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, int B, int T_, int H, int hd) {
  const int64_t C = (int64_t)H * hd;  // row stride of q/k/v/out
  const T scale = (T)(1.0 / std::sqrt((double)hd));
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if ((int64_t)B * H * T_ * T_ * hd > 65536)
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      const int64_t base = (int64_t)b * T_ * C + (int64_t)h * hd;
      T* P = probs + ((int64_t)b * H + h) * T_ * T_;
      for (int t = 0; t < T_; ++t) {
        const T* qt = q + base + t * C;
        T* pt = P + (int64_t)t * T_;
        T maxv = -INFINITY;
        for (int j = 0; j <= t; ++j) {
          const T* kj = k + base + j * C;
          T s = T(0);
          for (int i = 0; i < hd; ++i) s += qt[i] * kj[i];
          pt[j] = s * scale;
          maxv = std::max(maxv, pt[j]);
        }
        T sum = T(0);
        for (int j = 0; j <= t; ++j) {
          pt[j] = std::exp(pt[j] - maxv);
          sum += pt[j];
        }
        const T inv = T(1) / sum;
        for (int j = 0; j <= t; ++j) pt[j] *= inv;
        for (int j = t + 1; j < T_; ++j) pt[j] = T(0);
        T* ot = out + base + t * C;
        for (int i = 0; i < hd; ++i) ot[i] = T(0);
        for (int j = 0; j <= t; ++j) {
          const T* vj = v + base + j * C;
          const T p = pt[j];
          for (int i = 0; i < hd; ++i) ot[i] += p * vj[i];
        }
      }
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
    std::vector<T> ds(T_);  // one query row of score gradients
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < H; ++h) {
        const int64_t base = (int64_t)b * T_ * C + (int64_t)h * hd;
        const T* P = probs + ((int64_t)b * H + h) * T_ * T_;
        for (int t = 0; t < T_; ++t) {
          const T* pt = P + (int64_t)t * T_;
          const T* dot = dout + base + t * C;
          // dp_j = dout_t . v_j and dv_j += p_j dout_t, then the softmax backward.
          T pdp = T(0);
          for (int j = 0; j <= t; ++j) {
            const T* vj = v + base + j * C;
            T* dvj = dv + base + j * C;
            const T p = pt[j];
            T s = T(0);
            for (int i = 0; i < hd; ++i) {
              s += dot[i] * vj[i];
              dvj[i] += p * dot[i];
            }
            ds[j] = s;
            pdp += p * s;
          }
          const T* qt = q + base + t * C;
          T* dqt = dq + base + t * C;
          for (int j = 0; j <= t; ++j) {
            const T g = pt[j] * (ds[j] - pdp) * scale;  // d loss / d (q_t . k_j)
            const T* kj = k + base + j * C;
            T* dkj = dk + base + j * C;
            for (int i = 0; i < hd; ++i) {
              dqt[i] += g * kj[i];
              dkj[i] += g * qt[i];
            }
          }
        }
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
