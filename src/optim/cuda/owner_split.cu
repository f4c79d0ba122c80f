// The DDP owner split of the CUDA matrix optimizers (see owner_split.h).
#include "optim/cuda/owner_split.h"

#include <algorithm>

#include "core/error.h"
#include "optim/distributed_plan.h"

namespace og::cuda {

OwnerSplit::OwnerSplit(Communicator& comm, const std::vector<std::vector<int32_t>>& groups,
                       const std::vector<int64_t>& rows, const std::vector<int64_t>& cols)
    : comm_(comm) {
  OG_CHECK(groups.size() == rows.size() && groups.size() == cols.size(), "internal: OwnerSplit with {} groups",
           groups.size());
  OG_CHECK(comm_.device_buffers(),
           "the CUDA matrix optimizers need a device communicator (nccl) across ranks, got '{}'", comm_.backend());
  const int W = comm_.size();
  size_t n = 0;
  for (const auto& g : groups) n += g.size();
  std::vector<double> cost(n, 0.0);
  std::vector<size_t> payload(n, 0);
  std::vector<int> group_of(n, -1);
  for (size_t g = 0; g < groups.size(); ++g)
    for (int32_t p : groups[g]) {
      OG_CHECK(p >= 0 && (size_t)p < n && group_of[p] < 0, "internal: OwnerSplit: matrix {} misplaced", p);
      group_of[p] = (int)g;
      cost[p] = ns_cost(rows[g], cols[g]);
      payload[p] = (size_t)(rows[g] * cols[g]);
    }
  owner_ = plan_owners(cost, payload, W).owner;

  constexpr size_t kAlign = 128;  // elements: 256 bytes of bf16
  std::vector<size_t> used(W, 0);
  members_.resize(groups.size());
  first_.assign(groups.size(), std::vector<int>(W, 0));
  count_.assign(groups.size(), std::vector<int>(W, 0));
  offset_.assign(groups.size(), std::vector<size_t>(W, 0));
  for (size_t g = 0; g < groups.size(); ++g) {
    per_.push_back(rows[g] * cols[g]);
    members_[g] = groups[g];
    std::stable_sort(members_[g].begin(), members_[g].end(),
                     [&](int32_t a, int32_t b) { return owner_[a] != owner_[b] ? owner_[a] < owner_[b] : a < b; });
    int pos = 0;
    for (int r = 0; r < W; ++r) {
      first_[g][r] = pos;
      while (pos < (int)members_[g].size() && owner_[members_[g][pos]] == r) ++pos;
      count_[g][r] = pos - first_[g][r];
      offset_[g][r] = used[r];
      used[r] += ((size_t)count_[g][r] * (size_t)per_[g] + kAlign - 1) / kAlign * kAlign;
    }
  }
  block_ = std::max<size_t>(*std::max_element(used.begin(), used.end()), kAlign);
  buf_.resize((size_t)W * block_);
  CUDA_CHECK(cudaMemset(buf_.data(), 0, buf_.bytes()));  // padding travels too: keep it defined
}

OwnerSplit::~OwnerSplit() = default;

bf16* OwnerSplit::result(int g, int pos) {
  const int r = owner_[members_[g][pos]];
  return run(g, r) + (size_t)(pos - first_[g][r]) * (size_t)per_[g];
}

void OwnerSplit::all_gather(cudaStream_t s) {
  comm_.reset();
  bf16* mine = buf_.data() + (size_t)rank() * block_;
  order_.run(comm_, s, [&] { comm_.all_gather(mine, buf_.data(), block_, DType::BF16); });
}

void neuron_norm_factors_by_run(OwnerSplit* split, int g, int size, const bf16* all, cudaStream_t s, int64_t k,
                                int64_t L, const NeuronNormDesc* descs, StateDtype v_dtype, float beta2, float* rowsq,
                                float* factors) {
  auto one = [&](int first, int count, const bf16* o) {
    const int64_t row0 = (int64_t)first * k;
    neuron_norm_factors(s, o, count, k, L, descs + first, v_dtype, beta2, rowsq + row0, factors + row0);
  };
  if (!split) {
    one(0, size, all);
    return;
  }
  for (int r = 0; r < split->world(); ++r)
    if (split->count(g, r) > 0) one(split->first(g, r), split->count(g, r), split->run(g, r));
}

}  // namespace og::cuda
