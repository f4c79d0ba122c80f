// The paper's GPT on the CPU reference ops (model/cpu/ops.h): forward to the mean cross-entropy
// and backward to the parameter gradients, for float (training on CPU) and double (gradient
// checks). Parameters and gradients are one contiguous buffer laid out by gpt_param_layout
// (offsets in elements); activations are planned once for (max_batch, seq_len) and reused by
// every call, llm.c-style.
//
//   x = wte[inputs]
//   per layer: x += o(attention(qknorm(rotary(q(rmsnorm(x)))), qknorm(rotary(k(...))), v(...)))
//              x += proj(relu2(fc(rmsnorm(x))))
//   logits = lm_head(rmsnorm(x)),  loss = mean over non-ignored targets of cross-entropy.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "model/gpt_config.h"
#include "model/param_layout.h"
#include "model/param_units.h"

namespace og::cpu {

template <typename T> class GptCpu {
 public:
  GptCpu(const GPTConfig& cfg, int max_batch);
  ~GptCpu();
  GptCpu(const GptCpu&) = delete;
  GptCpu& operator=(const GptCpu&) = delete;

  const GPTConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  int max_batch() const { return max_batch_; }
  size_t activation_bytes() const { return arena_elems_ * sizeof(T); }  // the planned arena

  // Forward on inputs/targets [B, Tn] (B <= max_batch, Tn <= seq_len). Returns the mean loss over
  // the targets that are not -1 and keeps the activations for backward(). With targets == nullptr
  // it only computes the logits of the last position of each sequence (for sampling; see
  // last_logits) and returns 0; backward() is then not allowed.
  T forward(const T* params, const int32_t* inputs, const int32_t* targets, int B, int Tn);
  // grads += grad_scale * d(mean loss)/d(params) for the last forward (with targets). params
  // must be the ones that forward used. Consumes the logits (turned into their gradient in place).
  void backward(const T* params, T* grads, T grad_scale);
  // The same over a UnitSource (model/param_units.h): each unit's weights (element type T) are
  // acquired just before use and released after, and each unit's gradient buffer is handed back
  // (grads_ready) as soon as backward has written it.
  T forward(UnitSource& src, const int32_t* inputs, const int32_t* targets, int B, int Tn);
  void backward(UnitSource& src, T grad_scale);
  const std::vector<ParamUnit>& units() const { return units_; }
  // vocab_size logits of the last position of sequence b, valid after a forward with
  // targets == nullptr (or after a forward with targets, before backward).
  const T* last_logits(int b) const;
  // Per-token losses of the last forward with targets ([B * Tn], 0 for ignored targets).
  const T* losses() const { return losses_; }

 private:
  struct LayerActs {             // what one block saves for its backward
    T *res_in, *ln1, *rstd1;     // block input, its rmsnorm, rstd [N]
    T *q, *k, *v;                // projections [N, d]; q and k after rotary
    T *qn, *kn, *rstdq, *rstdk;  // QK-norm outputs and their rstd [N * H]
    T *probs, *att;              // attention probabilities [B, H, Tn, Tn] and output [N, d]
    T *res_mid, *ln2, *rstd2;    // residual after attention, its rmsnorm and rstd
    T *fc, *act;                 // mlp pre-activation and relu2 output [N, 4d]
  };
  struct LayerParams {  // element offsets of one block's weights in its unit's range
    size_t q, k, v, o, fc, proj;
  };
  void plan();  // carve the arena into the views below, each sized for (max_batch, seq_len)

  GPTConfig cfg_;
  ParamLayout layout_;
  int max_batch_;
  size_t arena_elems_ = 0;
  T* arena_ = nullptr;  // all activations and backward scratch, 64-byte aligned

  std::vector<ParamUnit> units_;  // wte, blocks, lm_head
  std::vector<LayerParams> lparams_;

  // state of the last forward
  int B_ = 0, Tn_ = 0;
  enum class Saved { None, Training, LastLogits } saved_ = Saved::None;
  int64_t valid_targets_ = 0;
  std::vector<int32_t> inputs_, targets_;  // copies (capacity max_batch * seq_len)

  // views into the arena; each buffer holds (max_batch, seq_len) worth, a call uses its prefix
  std::vector<LayerActs> layers_;
  T *res_final_ = nullptr, *lnf_ = nullptr, *rstdf_ = nullptr, *logits_ = nullptr, *losses_ = nullptr;
  T *dres_ = nullptr, *dln_ = nullptr, *datt_ = nullptr, *dq_ = nullptr, *dk_ = nullptr, *dv_ = nullptr;
  T *dqn_ = nullptr, *dkn_ = nullptr, *dfc_ = nullptr, *dact_ = nullptr, *dlosses_ = nullptr, *tmp_ = nullptr;
};

extern template class GptCpu<float>;
extern template class GptCpu<double>;

}  // namespace og::cpu
