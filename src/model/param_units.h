// Parameter units: the groups of parameters the GPT uses together, in the order it uses them —
// the embedding (unit 0), each block (units 1..n_layer), the lm_head (unit n_layer + 1). Each is
// a contiguous range of the layout (gpt_param_layout declares them in this order), so a unit's
// weights or gradients can live in a buffer of their own, laid out as that range of the layout.
//
// A UnitSource tells a model where each unit's weights are and takes each unit's gradients when
// backward has written them. The default source is the model's own whole buffers
// (WholeBufferUnits); a sharded data-parallel runtime (train/fsdp.h) supplies one that gathers
// a unit just before use (with prefetch of the next) and reduce-scatters its gradients as soon
// as backward is done with it, so no rank ever holds every unit at once.
//
// The calls a model makes, in order (L = n_layer; `next` is the unit it will acquire next, or -1):
//   forward:  acquire(0, 1) .. release(0), acquire(1, 2) .. release(1), .., acquire(L+1, -1) .. release(L+1)
//   backward: acquire(L+1, L), grad_buffer(L+1) .. grads_ready(L+1), release(L+1),
//             acquire(l+1, l or -1), grad_buffer(l+1) .. grads_ready(l+1), release(l+1) for l = L-1..0,
//             grad_buffer(0) .. grads_ready(0)   (the embedding's backward reads no weights)
// (The lm_head and the last block are acquired again right after forward released them: a
// source that keeps its last two units finds them still there.)
// A model that queues work on a stream (CUDA) makes these calls from the host as it enqueues;
// the source orders its own work with the model's stream (events).
#pragma once
#include <cstddef>
#include <vector>

#include "model/param_layout.h"

namespace og {

// The element type of a unit's weights as a model computes with them.
enum class WeightType { F32, BF16 };
inline size_t weight_type_size(WeightType t) { return t == WeightType::F32 ? 4 : 2; }

struct ParamUnit {
  size_t first = 0, end = 0;  // parameters [first, end) of the layout
  size_t offset = 0;          // floats: the first parameter's offset in the whole buffer
  size_t floats = 0;          // the range's length in the whole buffer (alignment padding included)
};

// The GPT's units (see above), from its layout; checks that each unit is contiguous.
std::vector<ParamUnit> gpt_param_units(const ParamLayout& layout);

class UnitSource {
 public:
  virtual ~UnitSource() = default;
  // Unit u's weights, element i of the unit's range at index i, in the element type the model
  // computes with (its unit_weight_dtype). Valid until release(u). `next`: the unit the model
  // acquires after this one (-1: none), which the source may start fetching now.
  virtual const void* acquire(int unit, int next) = 0;
  virtual void release(int unit) = 0;
  // A gradient buffer for unit u, laid out like its weights, zeroed (the model accumulates its
  // weight gradients into it). Valid until grads_ready(u).
  virtual void* grad_buffer(int unit) = 0;
  // Backward has written all of unit u's gradient into grad_buffer(u).
  virtual void grads_ready(int unit) = 0;
};

// The whole-buffer source: weights and gradients are views of two buffers laid out by the
// layout (elements of elem_size bytes), gradients accumulate across calls (nothing is zeroed).
class WholeBufferUnits final : public UnitSource {
 public:
  WholeBufferUnits(std::vector<ParamUnit> units, const void* weights, void* grads, size_t elem_size)
      : units_(std::move(units)), weights_(weights), grads_(grads), elem_(elem_size) {}
  const void* acquire(int unit, int) override {
    return static_cast<const char*>(weights_) + units_[unit].offset * elem_;
  }
  void release(int) override {}
  void* grad_buffer(int unit) override { return static_cast<char*>(grads_) + units_[unit].offset * elem_; }
  void grads_ready(int) override {}

 private:
  std::vector<ParamUnit> units_;
  const void* weights_;
  void* grads_;
  size_t elem_;
};

}  // namespace og
