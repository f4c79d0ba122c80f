// Parameter layout: every parameter of the model lives in one contiguous fp32 buffer
// (llm.c-style); the layout names each parameter, gives its (rows, cols) = (fan_out, fan_in)
// shape and its role, which is what the optimizer layer routes on (never the shape).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/gpt_config.h"

namespace og {

enum class ParamRole { Matrix, Embedding, LmHead, Vector };
const char* role_name(ParamRole r);

struct ParamInfo {
  std::string name;
  int64_t rows = 0;  // fan_out (a vector has rows = 1)
  int64_t cols = 0;  // fan_in
  ParamRole role = ParamRole::Matrix;
  size_t offset = 0;  // in floats, into the contiguous buffer
  size_t numel() const { return (size_t)rows * (size_t)cols; }
};

class ParamLayout {
 public:
  // Offsets are aligned to kAlign floats (256 bytes) so every view is aligned for vector loads.
  static constexpr size_t kAlign = 64;
  const ParamInfo& add(std::string name, int64_t rows, int64_t cols, ParamRole role);
  const std::vector<ParamInfo>& params() const { return params_; }
  size_t total() const { return total_; }                // floats, including alignment padding
  size_t num_elements() const;                           // floats, excluding padding
  const ParamInfo& find(const std::string& name) const;  // throws og::Error if absent
  const ParamInfo* try_find(const std::string& name) const;

 private:
  std::vector<ParamInfo> params_;
  size_t total_ = 0;
};

// The GPT's parameters, in this order: wte [V, d]; per layer l: h.{l}.attn.{q,k,v,o} [d, d],
// h.{l}.mlp.fc [4d, d], h.{l}.mlp.proj [d, 4d]; lm_head [V, d].
ParamLayout gpt_param_layout(const GPTConfig& cfg);

// Initialize parameters (host buffer of layout.total() floats; padding zeroed): linear weights
// ~ N(0, s^2), s = fan_in^-1/2 * min(1, sqrt(fan_out/fan_in)); embedding ~ N(0, 1).
void gpt_init_params(const ParamLayout& layout, float* params, uint64_t seed);

}  // namespace og
