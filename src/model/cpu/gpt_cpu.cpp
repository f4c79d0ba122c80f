// The GPT forward and backward on the CPU reference ops; see gpt_cpu.h for the architecture.
// The backward walks the forward in reverse. The ops accumulate into input gradients, so each
// scratch gradient is zeroed before its producer runs, except dres_, the gradient of the
// residual stream, which every rmsnorm backward adds into directly (x_out = x_in + f(x_in)).
#include "model/cpu/gpt_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "core/error.h"
#include "model/cpu/ops.h"

namespace og::cpu {

template <typename T>
GptCpu<T>::GptCpu(const GPTConfig& cfg, int max_batch)
    : cfg_(cfg), layout_(gpt_param_layout(cfg)), max_batch_(max_batch) {
  OG_CHECK(max_batch >= 1, "cpu model: max batch {} must be >= 1", max_batch);
  OG_CHECK(cfg.vocab_size >= 1 && cfg.d_model >= 1 && cfg.n_layer >= 1 && cfg.n_head >= 1 && cfg.seq_len >= 1,
           "cpu model: vocab_size, d_model, n_layer, n_head and seq_len must be positive");
  OG_CHECK(cfg.d_model % cfg.n_head == 0, "cpu model: d_model {} is not a multiple of n_head {}", cfg.d_model,
           cfg.n_head);
  OG_CHECK(cfg.head_dim() % 2 == 0, "cpu model: head_dim {} must be even for rotary", cfg.head_dim());
  units_ = gpt_param_units(layout_);
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    auto at = [&](const char* w) { return layout_.find(h + w).offset - units_[1 + l].offset; };
    lparams_.push_back({at("attn.q"), at("attn.k"), at("attn.v"), at("attn.o"), at("mlp.fc"), at("mlp.proj")});
  }
  inputs_.assign((size_t)max_batch * cfg.seq_len, 0);
  targets_.assign((size_t)max_batch * cfg.seq_len, 0);
  plan();
}

template <typename T> GptCpu<T>::~GptCpu() { std::free(arena_); }

template <typename T> void GptCpu<T>::plan() {
  const size_t N = (size_t)max_batch_ * cfg_.seq_len, d = cfg_.d_model, F = cfg_.d_ff(), V = cfg_.vocab_size;
  const size_t H = cfg_.n_head, T_ = cfg_.seq_len;
  // Two passes: the first sums the sizes (arena_ still null), the second hands out pointers.
  for (int pass = 0; pass < 2; ++pass) {
    size_t off = 0;
    auto take = [&](size_t count) {
      T* p = arena_ ? arena_ + off : nullptr;
      off += (count + 15) / 16 * 16;  // keep every view 64-byte aligned
      return p;
    };
    layers_.assign(cfg_.n_layer, LayerActs{});
    for (auto& L : layers_) {
      L.res_in = take(N * d);
      L.ln1 = take(N * d);
      L.rstd1 = take(N);
      L.q = take(N * d);
      L.k = take(N * d);
      L.v = take(N * d);
      L.qn = take(N * d);
      L.kn = take(N * d);
      L.rstdq = take(N * H);
      L.rstdk = take(N * H);
      L.probs = take((size_t)max_batch_ * H * T_ * T_);
      L.att = take(N * d);
      L.res_mid = take(N * d);
      L.ln2 = take(N * d);
      L.rstd2 = take(N);
      L.fc = take(N * F);
      L.act = take(N * F);
    }
    res_final_ = take(N * d);
    lnf_ = take(N * d);
    rstdf_ = take(N);
    logits_ = take(N * V);
    losses_ = take(N);
    dlosses_ = take(N);
    tmp_ = take(N * d);
    dres_ = take(N * d);
    dln_ = take(N * d);
    datt_ = take(N * d);
    dq_ = take(N * d);
    dk_ = take(N * d);
    dv_ = take(N * d);
    dqn_ = take(N * d);
    dkn_ = take(N * d);
    dfc_ = take(N * F);
    dact_ = take(N * F);
    if (pass == 0) {
      arena_elems_ = off;
      arena_ = static_cast<T*>(std::aligned_alloc(64, arena_elems_ * sizeof(T)));
      if (!arena_)
        fail("cpu model: cannot allocate {:.1f} MiB of activations for batch {} x seq {}",
             arena_elems_ * sizeof(T) / 1048576.0, max_batch_, cfg_.seq_len);
      // Touch everything once so no page fault lands inside a timed step.
      std::memset(arena_, 0, arena_elems_ * sizeof(T));
    }
  }
}

template <typename T>
T GptCpu<T>::forward(const T* params, const int32_t* inputs, const int32_t* targets, int B, int Tn) {
  WholeBufferUnits src(units_, params, nullptr, sizeof(T));
  return forward(src, inputs, targets, B, Tn);
}

template <typename T> void GptCpu<T>::backward(const T* params, T* grads, T grad_scale) {
  WholeBufferUnits src(units_, params, grads, sizeof(T));
  backward(src, grad_scale);
}

template <typename T>
T GptCpu<T>::forward(UnitSource& src, const int32_t* inputs, const int32_t* targets, int B, int Tn) {
  OG_CHECK(B >= 1 && B <= max_batch_, "cpu model: batch {} outside [1, {}] (the max batch it was built for)", B,
           max_batch_);
  OG_CHECK(Tn >= 1 && Tn <= cfg_.seq_len, "cpu model: sequence length {} outside [1, {}] (seq_len)", Tn, cfg_.seq_len);
  const int64_t N = (int64_t)B * Tn, d = cfg_.d_model, F = cfg_.d_ff(), V = cfg_.vocab_size;
  const int H = cfg_.n_head, hd = cfg_.head_dim();
  const double base = cfg_.rope_base;
  saved_ = Saved::None;
  for (int64_t n = 0; n < N; ++n)
    OG_CHECK(inputs[n] >= 0 && inputs[n] < V,
             "cpu model: input token {} at batch row {}, position {} is outside [0, {})", inputs[n], n / Tn, n % Tn, V);
  std::copy(inputs, inputs + N, inputs_.begin());
  B_ = B;
  Tn_ = Tn;

  const int head = cfg_.n_layer + 1;  // the lm_head's unit
  auto weights = [&](int unit, int next) { return static_cast<const T*>(src.acquire(unit, next)); };
  embedding_forward(layers_[0].res_in, inputs, weights(0, 1), N, d);
  src.release(0);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    LayerActs& L = layers_[l];
    const LayerParams& P = lparams_[l];
    const T* w = weights(1 + l, 2 + l);
    T* res_out = l + 1 < cfg_.n_layer ? layers_[l + 1].res_in : res_final_;
    // attention
    rmsnorm_forward(L.ln1, L.rstd1, L.res_in, N, d);
    matmul_forward(L.q, L.ln1, w + P.q, N, d, d);
    matmul_forward(L.k, L.ln1, w + P.k, N, d, d);
    matmul_forward(L.v, L.ln1, w + P.v, N, d, d);
    rotary_forward(L.q, L.q, B, Tn, H, hd, base);
    rotary_forward(L.k, L.k, B, Tn, H, hd, base);
    rmsnorm_forward(L.qn, L.rstdq, L.q, N * H, hd);  // QK-norm per head, after rotary
    rmsnorm_forward(L.kn, L.rstdk, L.k, N * H, hd);
    attention_forward(L.att, L.probs, L.qn, L.kn, L.v, B, Tn, H, hd);
    matmul_forward(tmp_, L.att, w + P.o, N, d, d);
    for (int64_t i = 0; i < N * d; ++i) L.res_mid[i] = L.res_in[i] + tmp_[i];
    // mlp
    rmsnorm_forward(L.ln2, L.rstd2, L.res_mid, N, d);
    matmul_forward(L.fc, L.ln2, w + P.fc, N, d, F);
    relu2_forward(L.act, L.fc, N * F);
    matmul_forward(tmp_, L.act, w + P.proj, N, F, d);
    for (int64_t i = 0; i < N * d; ++i) res_out[i] = L.res_mid[i] + tmp_[i];
    src.release(1 + l);
  }
  rmsnorm_forward(lnf_, rstdf_, res_final_, N, d);
  const T* lm_head = weights(head, -1);

  if (!targets) {  // sampling: logits of the last position of each sequence only
    for (int b = 0; b < B; ++b) std::memcpy(tmp_ + b * d, lnf_ + ((int64_t)b * Tn + Tn - 1) * d, d * sizeof(T));
    matmul_forward(logits_, tmp_, lm_head, B, d, V);
    src.release(head);
    saved_ = Saved::LastLogits;
    return T(0);
  }
  matmul_forward(logits_, lnf_, lm_head, N, d, V);
  src.release(head);
  crossentropy_forward(losses_, logits_, targets, N, V);  // validates the targets
  std::copy(targets, targets + N, targets_.begin());
  double sum = 0.0;
  valid_targets_ = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    sum += (double)losses_[n];
    ++valid_targets_;
  }
  OG_CHECK(valid_targets_ > 0, "cpu model: every target of the batch is the ignore index -1");
  saved_ = Saved::Training;
  return (T)(sum / (double)valid_targets_);
}

template <typename T> void GptCpu<T>::backward(UnitSource& src, T grad_scale) {
  OG_CHECK(saved_ == Saved::Training, "cpu model: backward() needs a preceding forward() with targets");
  saved_ = Saved::None;  // the logits are about to become dlogits
  const int B = B_, Tn = Tn_;
  const int64_t N = (int64_t)B * Tn, d = cfg_.d_model, F = cfg_.d_ff(), V = cfg_.vocab_size;
  const int H = cfg_.n_head, hd = cfg_.head_dim();
  const double base = cfg_.rope_base;
  auto zero = [](T* p, int64_t n) { std::memset(p, 0, (size_t)n * sizeof(T)); };

  // d(mean loss)/d(loss_n) = 1 / (number of non-ignored targets), times the caller's scale.
  for (int64_t n = 0; n < N; ++n) dlosses_[n] = grad_scale / (T)valid_targets_;
  crossentropy_backward(logits_, logits_, targets_.data(), dlosses_, N, V);  // in place: logits -> dlogits
  const int head = cfg_.n_layer + 1;
  auto weights = [&](int unit, int next) { return static_cast<const T*>(src.acquire(unit, next)); };
  auto grads_of = [&](int unit) { return static_cast<T*>(src.grad_buffer(unit)); };
  zero(dln_, N * d);
  {
    const T* lm_head = weights(head, cfg_.n_layer);
    matmul_backward(dln_, grads_of(head), logits_, lnf_, lm_head, N, d, V);
    src.grads_ready(head);
    src.release(head);
  }
  zero(dres_, N * d);
  rmsnorm_backward(dres_, dln_, res_final_, rstdf_, N, d);

  for (int l = cfg_.n_layer - 1; l >= 0; --l) {
    const LayerActs& L = layers_[l];
    const LayerParams& P = lparams_[l];
    const T* w = weights(1 + l, l > 0 ? l : -1);
    T* g = grads_of(1 + l);
    // mlp: res_out = res_mid + proj(relu2(fc(rmsnorm(res_mid))))
    zero(dact_, N * F);
    matmul_backward(dact_, g + P.proj, dres_, L.act, w + P.proj, N, F, d);
    zero(dfc_, N * F);
    relu2_backward(dfc_, dact_, L.fc, N * F);
    zero(dln_, N * d);
    matmul_backward(dln_, g + P.fc, dfc_, L.ln2, w + P.fc, N, d, F);
    rmsnorm_backward(dres_, dln_, L.res_mid, L.rstd2, N, d);
    // attention: res_mid = res_in + o(attention(...))
    zero(datt_, N * d);
    matmul_backward(datt_, g + P.o, dres_, L.att, w + P.o, N, d, d);
    zero(dqn_, N * d);
    zero(dkn_, N * d);
    zero(dv_, N * d);
    attention_backward(dqn_, dkn_, dv_, datt_, L.probs, L.qn, L.kn, L.v, B, Tn, H, hd);
    zero(dq_, N * d);
    zero(dk_, N * d);
    rmsnorm_backward(dq_, dqn_, L.q, L.rstdq, N * H, hd);
    rmsnorm_backward(dk_, dkn_, L.k, L.rstdk, N * H, hd);
    rotary_backward(dq_, dq_, B, Tn, H, hd, base);
    rotary_backward(dk_, dk_, B, Tn, H, hd, base);
    zero(dln_, N * d);
    matmul_backward(dln_, g + P.q, dq_, L.ln1, w + P.q, N, d, d);
    matmul_backward(dln_, g + P.k, dk_, L.ln1, w + P.k, N, d, d);
    matmul_backward(dln_, g + P.v, dv_, L.ln1, w + P.v, N, d, d);
    rmsnorm_backward(dres_, dln_, L.res_in, L.rstd1, N, d);
    src.grads_ready(1 + l);
    src.release(1 + l);
  }
  embedding_backward(grads_of(0), dres_, inputs_.data(), N, d);
  src.grads_ready(0);
}

template <typename T> const T* GptCpu<T>::last_logits(int b) const {
  OG_CHECK(b >= 0 && b < B_, "cpu model: last_logits row {} outside the last batch of {}", b, B_);
  const int64_t V = cfg_.vocab_size;
  if (saved_ == Saved::LastLogits) return logits_ + b * V;
  OG_CHECK(saved_ == Saved::Training, "cpu model: no logits saved (forward not run, or consumed by backward)");
  return logits_ + ((int64_t)b * Tn_ + Tn_ - 1) * V;
}

template class GptCpu<float>;
template class GptCpu<double>;

}  // namespace og::cpu
