// FSDP sharding plan: every parameter of the layout is split by rows over N ranks (ZeRO-3
// style; rows = fan_out, so a shard is a contiguous slice of the row-major parameter). Uneven
// splits are allowed: rank r holds base + (r < rows % N) rows, base = rows / N, so ranks differ
// by at most one row and a rank may hold no row of a tiny parameter. The split depends only on
// (rows, N), so any rank (or a later run at another world size) can recompute it.
//
// Each rank keeps its shards of all parameters in ONE contiguous local buffer (fp32 master
// weights; the gradient shards use a second buffer with the same offsets), in layout order,
// each shard aligned to ParamLayout::kAlign floats.
//
// Gathering a parameter from its shards and reduce-scattering its gradient into them are
// variable-size collectives over the parameter's slice of the model's flat buffer: rank r's
// block of parameter p starts at p.offset + row0(r) * cols and the blocks lie in rank order, so
// counts(p) (rows(r) * cols per rank, displacements their prefix sums) is all they need
// (Communicator::all_gatherv / reduce_scatterv).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/param_layout.h"

namespace og {

struct RowRange {
  int64_t row0 = 0, rows = 0;  // rows [row0, row0 + rows)
  int64_t end() const { return row0 + rows; }
};

// Rows of a `rows`-row parameter held by `rank` of `world`.
RowRange split_rows(int64_t rows, int world, int rank);

class ShardPlan {
 public:
  ShardPlan(const ParamLayout& layout, int world);
  int world() const { return world_; }
  const ParamLayout& layout() const { return layout_; }
  size_t num_params() const { return layout_.params().size(); }

  // Rows of parameter p (index into layout().params()) held by rank r.
  RowRange rows(size_t p, int r) const { return ranges_[p * world_ + r]; }
  // Offset (floats) of rank r's shard of p in rank r's local buffer.
  size_t local_offset(size_t p, int r) const { return offsets_[p * world_ + r]; }
  // Floats in rank r's local buffer, including the alignment padding between shards.
  size_t local_total(int r) const { return totals_[r]; }
  // Parameter elements rank r holds (no padding); the sum over ranks is layout().num_elements().
  size_t local_elements(int r) const;
  // Elements of p per rank (rows(p, r).rows * cols): the counts of all_gatherv / reduce_scatterv
  // over the slice [p.offset, p.offset + p.numel()) of the flat buffer.
  std::vector<size_t> counts(size_t p) const;

 private:
  ParamLayout layout_;
  int world_;
  std::vector<RowRange> ranges_;  // [param][rank]
  std::vector<size_t> offsets_;   // [param][rank]
  std::vector<size_t> totals_;    // [rank]
};

}  // namespace og
