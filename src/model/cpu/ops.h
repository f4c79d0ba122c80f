// Reference ops of the GPT in plain C++ (the ground truth the CUDA kernels are tested against).
// Templated on the float type: float for training, double for gradient checks; explicit
// instantiations for both live in the .cpp files. Shapes follow llm.c: N = B*T rows.
// Activations of attention are [B, T, H, hd] (= the [N, d] output of a projection).
// Backward functions ACCUMULATE (+=) into parameter gradients and into input gradients unless
// a comment says "writes".
#pragma once
#include <cstdint>

namespace og::cpu {

// RMSNorm epsilon: F.rms_norm's default for fp32 inputs (machine epsilon of float).
constexpr double kRmsNormEps = 1.1920928955078125e-07;

// out[N, OC] = inp[N, C] · w[OC, C]^T   (writes)
template <typename T> void matmul_forward(T* out, const T* inp, const T* w, int64_t N, int64_t C, int64_t OC);
// dinp[N, C] += dout[N, OC] · w ;  dw[OC, C] += dout^T · inp   (either output may be null)
template <typename T>
void matmul_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, int64_t N, int64_t C, int64_t OC);

// RMSNorm without weight over rows of length C: rstd[n] = 1/sqrt(mean(x^2) + eps), out = x*rstd (writes)
template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, int64_t N, int64_t C, double eps = kRmsNormEps);
template <typename T> void rmsnorm_backward(T* dinp, const T* dout, const T* inp, const T* rstd, int64_t N, int64_t C);

// Rotary embedding on x[B, T, H, hd], halves rotated: for i < hd/2, theta = t * base^(-2i/hd),
// y[i] = x[i]*cos + x[i+hd/2]*sin;  y[i+hd/2] = -x[i]*sin + x[i+hd/2]*cos   (writes; out may alias inp)
template <typename T> void rotary_forward(T* out, const T* inp, int B, int T_, int H, int hd, double base);
// rotary_backward also WRITES (the transposed rotation; dinp may alias dout). cos/sin in double.
template <typename T> void rotary_backward(T* dinp, const T* dout, int B, int T_, int H, int hd, double base);

// Causal softmax attention, scale 1/sqrt(hd). q, k, v, out: [B, T, H, hd]; probs: [B, H, T, T]
// (saved for backward; entries above the diagonal are 0).  (forward writes out and probs)
template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, int B, int T_, int H, int hd);
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q, const T* k, const T* v, int B,
                        int T_, int H, int hd);

// ReLU^2: out = max(x, 0)^2   (writes)
template <typename T> void relu2_forward(T* out, const T* inp, int64_t N);
template <typename T> void relu2_backward(T* dinp, const T* dout, const T* inp, int64_t N);

// Token embedding: out[n, :] = wte[tokens[n], :]   (writes); backward scatter-adds into dwte.
template <typename T> void embedding_forward(T* out, const int32_t* tokens, const T* wte, int64_t N, int64_t C);
template <typename T> void embedding_backward(T* dwte, const T* dout, const int32_t* tokens, int64_t N, int64_t C);

// Cross-entropy from logits[N, V]: losses[n] = logsumexp(logits[n]) - logits[n, target[n]] (writes).
// Backward writes dlogits[n, :] = dlosses[n] * (softmax(logits[n]) - onehot(target[n])); dlogits may
// alias logits (the model converts its logits buffer in place). target -1 = ignored (loss 0,
// gradient row 0); any other target outside [0, V) throws og::Error.
template <typename T>
void crossentropy_forward(T* losses, const T* logits, const int32_t* targets, int64_t N, int64_t V);
template <typename T>
void crossentropy_backward(T* dlogits, const T* logits, const int32_t* targets, const T* dlosses, int64_t N, int64_t V);

}  // namespace og::cpu
