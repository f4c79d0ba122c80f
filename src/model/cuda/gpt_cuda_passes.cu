// GptCuda's passes, all queued on the model's stream (see gpt_cuda.h for the architecture and
// the precision choices, gpt_cpu.cpp for the reference order of operations).
//
// Forward of one block (N = B·T rows; y is the branch output, in dln_ as scratch):
//   q, k, v = ln1·Wq/k/vᵀ;  q, k = qknorm(rotary(q, k));  att = attention(q, k, v)
//   y = att·Woᵀ;  res_mid = res_in + y, ln2 = rmsnorm(res_mid)             (one fused kernel)
//   fc = ln2·Wfcᵀ;  act = relu²(fc);  y = act·Wprojᵀ
//   res_out = res_mid + y, ln1' = rmsnorm(res_out)                          (fused; next block's ln1)
// The lm_head and cross-entropy run in chunks of rows right after the final rmsnorm, producing
// the loss, dlnf and the lm_head gradient at once; then the blocks are back-propagated in reverse.
// Backward kernels WRITE their input gradients, except rmsnorm_backward, which adds into dres_
// (the residual stream's gradient: x_out = x_in + f(x_in)). Weight gradients are always
// accumulated into the fp32 gradient buffer (micro-batches add up).
#include "model/cuda/gpt_cuda.h"

namespace og {

// cuDNN's plans are built for seq_len; shorter sequences (sampling) take the flash kernels.
bool GptCuda::cudnn_attention_for(int T) const { return cudnn_attention_ && T == cfg_.seq_len; }

void GptCuda::attention_forward(const LayerActs& L, int B, int T) {
  const int H = cfg_.n_head, hd = cfg_.head_dim();
  if (cudnn_attention_for(T))
    cudnn_attention_->forward(L.att, L.lse, L.q, L.k, L.v, B, stream_);
  else
    gpu::attention_forward(L.att, L.lse, L.q, L.k, L.v, B, T, H, hd, stream_);
}

void GptCuda::attention_backward(gpu::bf16* dq, gpu::bf16* dk, gpu::bf16* dv, const gpu::bf16* datt, const LayerActs& L,
                                 int B, int T) {
  const int H = cfg_.n_head, hd = cfg_.head_dim();
  if (cudnn_attention_for(T))
    cudnn_attention_->backward(dq, dk, dv, datt, L.att, L.lse, L.q, L.k, L.v, B, stream_);
  else
    gpu::attention_backward(dq, dk, dv, delta_, datt, L.att, L.lse, L.q, L.k, L.v, B, T, H, hd, stream_);
}

using gpu::bf16;
using gpu::kRmsNormEps;

void GptCuda::forward_blocks(int B, int T) {
  const int64_t N = (int64_t)B * T, d = cfg_.d_model, V = cfg_.vocab_size;
  // The embedding is read from the fp32 master table straight into the fp32 residual stream.
  const auto* wte = static_cast<const float*>(src_->acquire(0, 1));
  gpu::embedding_forward<float, float>(layers_[0].res_in, inputs_d(), wte, N, d, V, stream_);
  src_->release(0);
  gpu::rmsnorm_forward<float>(layers_[0].ln1, layers_[0].rstd1, layers_[0].res_in, N, (int)d, kRmsNormEps, stream_);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    block_forward(l, acquire_bf16(1 + l, 2 + l), B, T, false);
    src_->release(1 + l);
  }
}

void GptCuda::block_forward(int l, const bf16* w, int B, int T, bool recompute_only) {
  const int64_t N = (int64_t)B * T, d = cfg_.d_model, F = cfg_.d_ff();
  const int H = cfg_.n_head, hd = cfg_.head_dim();
  const LayerActs& L = layers_[l];
  const LayerWeights& W = lw_[l];
  gpu::Matmul& mm = *matmul_;
  bf16* y = dln_;

  // attention
  mm.forward(L.q, L.ln1, w + W.q, N, d, d, stream_);
  mm.forward(L.k, L.ln1, w + W.k, N, d, d, stream_);
  mm.forward(L.v, L.ln1, w + W.v, N, d, d, stream_);
  gpu::rotary_qknorm_forward(L.q, L.rstdq, L.q, B, T, H, hd, cfg_.rope_base, kRmsNormEps, stream_);
  gpu::rotary_qknorm_forward(L.k, L.rstdk, L.k, B, T, H, hd, cfg_.rope_base, kRmsNormEps, stream_);
  attention_forward(L, B, T);
  mm.forward(y, L.att, w + W.o, N, d, d, stream_);
  gpu::rmsnorm_residual_forward<float>(L.res_mid, L.ln2, L.rstd2, L.res_in, y, N, (int)d, kRmsNormEps, stream_);
  // mlp
  mm.forward(L.fc, L.ln2, w + W.fc, N, d, F, stream_);
  gpu::relu2_forward(L.act, L.fc, N * F, stream_);
  if (recompute_only) return;  // backward needs nothing past the ReLU²
  mm.forward(y, L.act, w + W.proj, N, F, d, stream_);
  if (l + 1 < cfg_.n_layer) {
    const LayerActs& next = layers_[l + 1];
    gpu::rmsnorm_residual_forward<float>(next.res_in, next.ln1, next.rstd1, L.res_mid, y, N, (int)d, kRmsNormEps,
                                         stream_);
  } else {
    gpu::rmsnorm_residual_forward<float>(res_final_, lnf_, rstdf_, L.res_mid, y, N, (int)d, kRmsNormEps, stream_);
  }
}

// Recompute what the recompute mode did not keep for block l. The last block's buffers still
// hold its own forward values when backward starts, so it never needs this.
void GptCuda::restore_layer(int l, const bf16* w, int B, int T) {
  const int64_t N = (int64_t)B * T, d = cfg_.d_model, F = cfg_.d_ff();
  const LayerActs& L = layers_[l];
  switch (options_.recompute) {
    case Recompute::None: return;
    case Recompute::Elementwise:
      gpu::rmsnorm_forward<float>(L.ln1, L.rstd1, L.res_in, N, (int)d, kRmsNormEps, stream_);
      gpu::rmsnorm_forward<float>(L.ln2, L.rstd2, L.res_mid, N, (int)d, kRmsNormEps, stream_);
      gpu::relu2_forward(L.act, L.fc, N * F, stream_);
      return;
    case Recompute::Block:
      gpu::rmsnorm_forward<float>(L.ln1, L.rstd1, L.res_in, N, (int)d, kRmsNormEps, stream_);
      block_forward(l, w, B, T, true);
      return;
  }
}

// Chunks of rows: logits = lnf·W_lmᵀ (bf16) -> losses and dlogits in place -> dlnf rows (dln_)
// and dW_lm += dlogitsᵀ·lnf. dloss = d(loss)/d(per-token loss).
void GptCuda::head_forward_backward(int64_t N, float dloss) {
  const int64_t d = cfg_.d_model, V = cfg_.vocab_size;
  gpu::Matmul& mm = *matmul_;
  const bf16* w = acquire_bf16(head_unit(), cfg_.n_layer);  // next: the last block, for backward
  float* g = grad_buffer(head_unit());
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows_) {
    const int64_t rows = std::min<int64_t>(chunk_rows_, N - r0);
    mm.forward(logits_, lnf_ + r0 * d, w, rows, d, V, stream_);
    gpu::crossentropy_forward_backward(losses_ + r0, logits_, targets_d() + r0, rows, V, dloss, stream_);
    mm.backward_input(dln_ + r0 * d, logits_, w, rows, d, V, false, stream_);
    mm.backward_weight(g, logits_, lnf_ + r0 * d, rows, d, V, true, stream_);
  }
  src_->grads_ready(head_unit());
  src_->release(head_unit());
}

void GptCuda::head_loss(int64_t N) {
  const int64_t d = cfg_.d_model, V = cfg_.vocab_size;
  const bf16* w = acquire_bf16(head_unit(), -1);
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows_) {
    const int64_t rows = std::min<int64_t>(chunk_rows_, N - r0);
    matmul_->forward(logits_, lnf_ + r0 * d, w, rows, d, V, stream_);
    gpu::crossentropy_forward(losses_ + r0, logits_, targets_d() + r0, rows, V, stream_);
  }
  src_->release(head_unit());
}

void GptCuda::backward_blocks(int B, int T) {
  const int64_t N = (int64_t)B * T, d = cfg_.d_model, F = cfg_.d_ff(), V = cfg_.vocab_size;
  const int H = cfg_.n_head, hd = cfg_.head_dim();
  gpu::Matmul& mm = *matmul_;
  // In the attention backward, dact_ holds four 256-byte aligned [N, d] slices (see plan()).
  const size_t slice = (((size_t)N * d * sizeof(bf16) + 255) / 256 * 256) / sizeof(bf16);
  bf16 *datt = dact_, *dq = dact_ + slice, *dk = dact_ + 2 * slice, *dv = dact_ + 3 * slice;

  // final rmsnorm: dln_ holds dlnf from the head. Every rmsnorm_backward also leaves the bf16
  // copy of dres (dres_bf_) that the next matmuls read.
  CUDA_CHECK(cudaMemsetAsync(dres_, 0, (size_t)N * d * sizeof(float), stream_));
  gpu::rmsnorm_backward<float>(dres_, dln_, res_final_, rstdf_, N, (int)d, stream_, dres_bf_);

  for (int l = cfg_.n_layer - 1; l >= 0; --l) {
    const LayerActs& L = layers_[l];
    const LayerWeights& W = lw_[l];
    const bf16* w = acquire_bf16(1 + l, l > 0 ? l : -1);
    float* g = grad_buffer(1 + l);
    if (l + 1 < cfg_.n_layer) restore_layer(l, w, B, T);

    // mlp: res_out = res_mid + proj(relu²(fc(ln2)))
    mm.backward_weight(g + W.proj, dres_bf_, L.act, N, F, d, true, stream_);
    mm.backward_input(dact_, dres_bf_, w + W.proj, N, F, d, false, stream_);
    gpu::relu2_backward(dact_, dact_, L.fc, N * F, stream_);
    mm.backward_weight(g + W.fc, dact_, L.ln2, N, d, F, true, stream_);
    mm.backward_input(dln_, dact_, w + W.fc, N, d, F, false, stream_);
    gpu::rmsnorm_backward<float>(dres_, dln_, L.res_mid, L.rstd2, N, (int)d, stream_, dres_bf_);

    // attention: res_mid = res_in + o(attention(qknorm(rotary(q, k)), v)), q/k/v = ln1·W
    mm.backward_weight(g + W.o, dres_bf_, L.att, N, d, d, true, stream_);
    mm.backward_input(datt, dres_bf_, w + W.o, N, d, d, false, stream_);
    attention_backward(dq, dk, dv, datt, L, B, T);
    gpu::rotary_qknorm_backward(dq, dq, L.q, L.rstdq, B, T, H, hd, cfg_.rope_base, stream_);
    gpu::rotary_qknorm_backward(dk, dk, L.k, L.rstdk, B, T, H, hd, cfg_.rope_base, stream_);
    mm.backward_weight(g + W.q, dq, L.ln1, N, d, d, true, stream_);
    mm.backward_weight(g + W.k, dk, L.ln1, N, d, d, true, stream_);
    mm.backward_weight(g + W.v, dv, L.ln1, N, d, d, true, stream_);
    mm.backward_input(dln_, dq, w + W.q, N, d, d, false, stream_);
    mm.backward_input(dln_, dk, w + W.k, N, d, d, true, stream_);
    mm.backward_input(dln_, dv, w + W.v, N, d, d, true, stream_);
    gpu::rmsnorm_backward<float>(dres_, dln_, L.res_in, L.rstd1, N, (int)d, stream_, l > 0 ? dres_bf_ : nullptr);
    src_->grads_ready(1 + l);
    src_->release(1 + l);
  }
  gpu::embedding_backward<float>(grad_buffer(0), dres_, inputs_d(), N, d, V, emb_workspace_.data(),
                                 emb_workspace_.bytes(), stream_);
  src_->grads_ready(0);
}

}  // namespace og
