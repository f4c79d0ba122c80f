// Metrics: one JSON object per line (JSONL). Train rows {"type": "train", "step", "tokens",
// "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "optim_ms", ...}; validation rows
// {"type": "val", "step", "tokens", "val_loss"}. Flushed after every row so a crashed run keeps
// what it measured.
#pragma once
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace og {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  // append = true when resuming a run (rows after the resume point follow the old ones).
  void open(const std::string& path, bool append);
  ~MetricsWriter();
  void write(const nlohmann::json& row);
  bool is_open() const { return f_ != nullptr; }

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

// FLOPs of one forward+backward per token: 6 * (matrix + lm_head parameters) plus attention
// (6 * n_layer * T * d for QK^T and PV, causal: half of the full 12 * n_layer * T * d).
double flops_per_token(int n_layer, int d_model, int seq_len, int vocab_size);

}  // namespace og
