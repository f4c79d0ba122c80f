// Owner plans and shard maps of the distributed matrix optimizers (see distributed_plan.h).
#include "optim/distributed_plan.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "optim/slice_select.h"

namespace og {

double ns_cost(int64_t rows, int64_t cols) {
  const double m = (double)std::min(rows, cols), n = (double)std::max(rows, cols);
  return 5.0 * (4.0 * m * m * n + 2.0 * m * m * m);
}

bool owner_split_pays(const OptimHParams& hp, const std::vector<ParamSlot>& params) {
  const bool selective = hp.algorithm == Algorithm::Dion2 || hp.algorithm == Algorithm::NorDion2;
  double flops = 0.0, bytes = 0.0;
  for (const ParamSlot& p : params) {
    int64_t k = p.rows, len = p.cols;
    if (selective) {
      const bool by_rows =
          hp.algorithm == Algorithm::NorDion2 || selection_axis(hp.select_dim, p.rows, p.cols) == SliceAxis::Rows;
      const int64_t n = by_rows ? p.rows : p.cols;
      len = by_rows ? p.cols : p.rows;
      k = select_count(hp.fraction, n);
    }
    flops += ns_cost(k, len);
    bytes += 20.0 * (double)p.rows * (double)p.cols;
  }
  return bytes > 0.0 && flops >= kOwnerSplitFlopsPerByte * bytes;
}

OwnerPlan plan_owners(const std::vector<double>& cost, const std::vector<size_t>& payload, int world) {
  OG_CHECK(world >= 1 && cost.size() == payload.size(), "internal: plan_owners with {} costs, {} payloads, world {}",
           cost.size(), payload.size(), world);
  const size_t n = cost.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cost[a] > cost[b]; });
  std::vector<double> load(world, 0.0);
  OwnerPlan plan;
  plan.owner.assign(n, 0);
  for (size_t p : order) {
    const int r = (int)(std::min_element(load.begin(), load.end()) - load.begin());
    plan.owner[p] = r;
    load[r] += cost[p];
  }
  plan.owned.assign(world, {});
  for (size_t p = 0; p < n; ++p) plan.owned[plan.owner[p]].push_back(p);
  relayout(plan, payload);
  return plan;
}

void relayout(OwnerPlan& plan, const std::vector<size_t>& payload) {
  plan.offset.assign(payload.size(), 0);
  plan.block = 0;
  for (const auto& mine : plan.owned) {
    size_t off = 0;
    for (size_t p : mine) {
      plan.offset[p] = off;
      off += payload[p];
    }
    plan.block = std::max(plan.block, off);
  }
}

int64_t local_select_count(float fraction, int64_t rows, int world) {
  const int64_t even = (rows + world - 1) / world;
  return select_count(fraction, std::max<int64_t>(even, 1));
}

ShardMap gather_shard_map(Communicator& comm, const std::vector<ParamSlot>& params) {
  const int W = comm.size();
  const size_t np = params.size();
  // Per parameter: rows, cols, row0, local rows. Shapes travel too, so that ranks holding
  // different parameter lists fail here with a message instead of corrupting a collective.
  std::vector<int64_t> mine(4 * np), all(4 * np * (size_t)W);
  for (size_t p = 0; p < np; ++p) {
    mine[4 * p] = params[p].rows;
    mine[4 * p + 1] = params[p].cols;
    mine[4 * p + 2] = params[p].row0;
    mine[4 * p + 3] = params[p].shard_rows();
  }
  const double count_max = comm.all_reduce_scalar((double)np, ReduceOp::Max);
  OG_CHECK(count_max == (double)np, "distributed optimizer: rank {} has {} parameters, another rank {}", comm.rank(),
           np, count_max);
  comm.all_gather(mine.data(), all.data(), mine.size(), DType::I64);
  ShardMap map;
  map.row0.assign(np, std::vector<int64_t>(W));
  map.nrows.assign(np, std::vector<int64_t>(W));
  map.order.assign(np, {});
  map.max_rows.assign(np, 0);
  for (size_t p = 0; p < np; ++p) {
    const ParamSlot& s = params[p];
    for (int r = 0; r < W; ++r) {
      const int64_t* v = all.data() + (size_t)r * 4 * np + 4 * p;
      OG_CHECK(v[0] == s.rows && v[1] == s.cols, "fsdp: parameter '{}' is {}x{} on rank {} but {}x{} on rank {}",
               s.name, s.rows, s.cols, comm.rank(), v[0], v[1], r);
      map.row0[p][r] = v[2];
      map.nrows[p][r] = v[3];
      map.max_rows[p] = std::max(map.max_rows[p], v[3]);
    }
    auto& ord = map.order[p];
    ord.resize(W);
    std::iota(ord.begin(), ord.end(), 0);
    std::stable_sort(ord.begin(), ord.end(), [&](int a, int b) { return map.row0[p][a] < map.row0[p][b]; });
    int64_t next = 0;
    for (int r : ord) {
      OG_CHECK(map.nrows[p][r] >= 0, "fsdp: parameter '{}' has {} rows on rank {}", s.name, map.nrows[p][r], r);
      if (map.nrows[p][r] == 0) continue;  // an empty shard (more ranks than rows) may sit anywhere
      OG_CHECK(map.row0[p][r] == next,
               "fsdp: the row shards of '{}' ({} rows) do not tile it: rank {} holds rows [{}, {}) where row {} "
               "was expected next",
               s.name, s.rows, r, map.row0[p][r], map.row0[p][r] + map.nrows[p][r], next);
      next += map.nrows[p][r];
    }
    OG_CHECK(next == s.rows, "fsdp: the row shards of '{}' cover {} of its {} rows", s.name, next, s.rows);
  }
  return map;
}

}  // namespace og
