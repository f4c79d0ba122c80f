// Shape of the paper's GPT (see DESIGN.md "The model").
#pragma once
#include <cstdint>

namespace og {

struct GPTConfig {
  int vocab_size = 50304;  // GPT-2's 50257 padded to a multiple of 128
  int d_model = 768;
  int n_layer = 12;
  int n_head = 6;
  int seq_len = 1024;  // maximum sequence length T
  float rope_base = 10000.0f;
  int head_dim() const { return d_model / n_head; }
  int d_ff() const { return 4 * d_model; }
};

}  // namespace og
