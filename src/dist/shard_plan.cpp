// Row split of each parameter over the ranks and the per-rank local buffer offsets (see
// shard_plan.h).
#include "dist/shard_plan.h"

#include <algorithm>

#include "core/error.h"

namespace og {

RowRange split_rows(int64_t rows, int world, int rank) {
  OG_CHECK(world > 0 && rank >= 0 && rank < world && rows >= 0, "split_rows: rank {} of {} for {} rows", rank, world,
           rows);
  const int64_t base = rows / world, rem = rows % world;
  return {rank * base + std::min<int64_t>(rank, rem), base + (rank < rem ? 1 : 0)};
}

ShardPlan::ShardPlan(const ParamLayout& layout, int world) : layout_(layout), world_(world) {
  OG_CHECK(world > 0, "ShardPlan: world size {} must be positive", world);
  const size_t P = layout_.params().size();
  ranges_.resize(P * world);
  offsets_.resize(P * world);
  totals_.assign(world, 0);
  for (size_t p = 0; p < P; ++p) {
    const ParamInfo& info = layout_.params()[p];
    for (int r = 0; r < world; ++r) {
      const RowRange rr = split_rows(info.rows, world, r);
      ranges_[p * world + r] = rr;
      offsets_[p * world + r] = totals_[r];
      const size_t n = (size_t)rr.rows * (size_t)info.cols;
      totals_[r] += (n + ParamLayout::kAlign - 1) / ParamLayout::kAlign * ParamLayout::kAlign;
    }
  }
}

size_t ShardPlan::local_elements(int r) const {
  size_t n = 0;
  for (size_t p = 0; p < num_params(); ++p) n += (size_t)rows(p, r).rows * (size_t)layout_.params()[p].cols;
  return n;
}

std::vector<size_t> ShardPlan::counts(size_t p) const {
  std::vector<size_t> c(world_);
  for (int r = 0; r < world_; ++r) c[r] = (size_t)rows(p, r).rows * (size_t)layout_.params()[p].cols;
  return c;
}

}  // namespace og
