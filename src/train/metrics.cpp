#include "train/metrics.h"

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace og {

void MetricsWriter::open(const std::string& path, bool append) {
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  OG_CHECK(f_ != nullptr, "cannot open metrics file {}: {}", path, std::strerror(errno));
  path_ = path;
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

void MetricsWriter::write(const nlohmann::json& row) {
  if (!f_) return;
  const std::string line = row.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    fail("cannot write metrics file {}: {}", path_, std::strerror(errno));
}

double flops_per_token(int n_layer, int d_model, int seq_len, int vocab_size) {
  const double d = d_model;
  const double matrix_params = (double)n_layer * 12.0 * d * d;  // q,k,v,o (4d^2) + fc, proj (8d^2)
  const double lm_head = (double)vocab_size * d;
  const double attention = 6.0 * n_layer * (double)seq_len * d;  // causal: half of 12*L*T*d
  return 6.0 * (matrix_params + lm_head) + attention;
}

}  // namespace og
