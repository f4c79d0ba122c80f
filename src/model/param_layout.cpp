#include "model/param_layout.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"

namespace og {

const char* role_name(ParamRole r) {
  switch (r) {
    case ParamRole::Matrix: return "matrix";
    case ParamRole::Embedding: return "embedding";
    case ParamRole::LmHead: return "lm_head";
    case ParamRole::Vector: return "vector";
  }
  return "?";
}

const ParamInfo& ParamLayout::add(std::string name, int64_t rows, int64_t cols, ParamRole role) {
  OG_CHECK(rows > 0 && cols > 0, "parameter {} has an empty shape ({}, {})", name, rows, cols);
  OG_CHECK(!try_find(name), "parameter {} declared twice", name);
  ParamInfo p;
  p.name = std::move(name);
  p.rows = rows;
  p.cols = cols;
  p.role = role;
  p.offset = total_;
  total_ += (p.numel() + kAlign - 1) / kAlign * kAlign;
  params_.push_back(std::move(p));
  return params_.back();
}

size_t ParamLayout::num_elements() const {
  size_t n = 0;
  for (const auto& p : params_) n += p.numel();
  return n;
}

const ParamInfo* ParamLayout::try_find(const std::string& name) const {
  for (const auto& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

const ParamInfo& ParamLayout::find(const std::string& name) const {
  const ParamInfo* p = try_find(name);
  OG_CHECK(p != nullptr, "no parameter named {}", name);
  return *p;
}

ParamLayout gpt_param_layout(const GPTConfig& c) {
  ParamLayout L;
  const int64_t d = c.d_model, V = c.vocab_size, f = c.d_ff();
  L.add("wte", V, d, ParamRole::Embedding);
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    L.add(h + "attn.q", d, d, ParamRole::Matrix);
    L.add(h + "attn.k", d, d, ParamRole::Matrix);
    L.add(h + "attn.v", d, d, ParamRole::Matrix);
    L.add(h + "attn.o", d, d, ParamRole::Matrix);
    L.add(h + "mlp.fc", f, d, ParamRole::Matrix);
    L.add(h + "mlp.proj", d, f, ParamRole::Matrix);
  }
  L.add("lm_head", V, d, ParamRole::LmHead);
  return L;
}

void gpt_init_params(const ParamLayout& layout, float* params, uint64_t seed) {
  std::memset(params, 0, layout.total() * sizeof(float));
  for (size_t i = 0; i < layout.params().size(); ++i) {
    const ParamInfo& p = layout.params()[i];
    // One independent stream per parameter, so adding a parameter does not shift the others.
    Rng rng(hash_u64(seed, 0x1A17, i));
    double std;
    if (p.role == ParamRole::Embedding) {
      std = 1.0;
    } else if (p.role == ParamRole::Vector) {
      std = 0.0;
    } else {
      const double fan_out = (double)p.rows, fan_in = (double)p.cols;
      std = 1.0 / std::sqrt(fan_in) * std::min(1.0, std::sqrt(fan_out / fan_in));
    }
    float* w = params + p.offset;
    for (size_t j = 0; j < p.numel(); ++j) w[j] = (float)(std * rng.normal());
  }
}

}  // namespace og
