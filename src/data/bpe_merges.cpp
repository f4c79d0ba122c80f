// BPE merge table (open-addressing hash of token pairs) and the two exact merge loops; see
// bpe_merges.h for the algorithm and when the heap version equals the reference loop.
#include "data/bpe_merges.h"

#include <algorithm>
#include <climits>
#include <functional>
#include <queue>

namespace og {

namespace {
// Words up to this many bytes use the reference loop (few rounds, tiny scans); longer words use
// the heap, whose cost grows as n log n instead of n * rounds.
constexpr size_t kHeapMinSymbols = 48;
}  // namespace

bool BpeMergeTable::add(int left, int right, int merged) {
  if (find(left, right) != nullptr) return false;
  if ((count_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);  // load factor <= 1/2
  uint64_t key = pack(left, right);
  size_t slot = hash(key) & mask_;
  while (slots_[slot].key != kEmpty) slot = (slot + 1) & mask_;
  int rank = int(count_);
  slots_[slot] = Slot{key, Merge{rank, merged}};
  ++count_;
  left_of_rank_.push_back(left);
  right_of_rank_.push_back(right);
  merged_of_rank_.push_back(merged);
  return true;
}

void BpeMergeTable::rehash(size_t capacity) {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(capacity, Slot{kEmpty, {0, 0}});
  mask_ = capacity - 1;
  for (const Slot& s : old) {
    if (s.key == kEmpty) continue;
    size_t slot = hash(s.key) & mask_;
    while (slots_[slot].key != kEmpty) slot = (slot + 1) & mask_;
    slots_[slot] = s;
  }
}

void BpeMergeTable::finalize() {
  // last_produced[t]: highest rank of a merge whose result is token t (-1: none, e.g. a byte).
  int max_id = -1;
  for (size_t r = 0; r < count_; ++r)
    max_id = std::max({max_id, left_of_rank_[r], right_of_rank_[r], merged_of_rank_[r]});
  std::vector<int> last_produced(size_t(max_id + 1), -1);
  for (size_t r = 0; r < count_; ++r) last_produced[size_t(merged_of_rank_[r])] = int(r);
  heap_is_exact_ = true;
  for (size_t r = 0; r < count_; ++r) {
    if (last_produced[size_t(left_of_rank_[r])] >= int(r) || last_produced[size_t(right_of_rank_[r])] >= int(r)) {
      heap_is_exact_ = false;
      break;
    }
  }
}

void BpeMergeTable::apply(std::vector<int>& symbols) const {
  if (symbols.size() >= kHeapMinSymbols && heap_is_exact_)
    apply_heap(symbols);
  else
    apply_reference(symbols);
}

void BpeMergeTable::apply_reference(std::vector<int>& s) const {
  size_t n = s.size();
  while (n > 1) {
    // The lowest-ranked adjacent pair of this round.
    const Merge* best = nullptr;
    int best_left = 0, best_right = 0;
    for (size_t i = 0; i + 1 < n; ++i) {
      const Merge* m = find(s[i], s[i + 1]);
      if (m && (!best || m->rank < best->rank)) {
        best = m;
        best_left = s[i];
        best_right = s[i + 1];
      }
    }
    if (!best) break;
    // Merge every occurrence, scanning left to right without overlap.
    size_t w = 0;
    for (size_t i = 0; i < n;) {
      if (i + 1 < n && s[i] == best_left && s[i + 1] == best_right) {
        s[w++] = best->merged;
        i += 2;
      } else {
        s[w++] = s[i++];
      }
    }
    n = w;
  }
  s.resize(n);
}

void BpeMergeTable::apply_heap(std::vector<int>& s) const {
  const int n = int(s.size());
  if (n < 2) return;
  // Symbols form a linked list over their starting positions; a merge keeps the left position
  // and unlinks the right one (id -1).
  std::vector<int> id(s);
  std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    prev[size_t(i)] = i - 1;
    next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  }
  // Candidates ordered by (rank, position): within a rank, left to right as in the reference.
  using Candidate = std::pair<int, int>;  // (rank, left position)
  std::vector<Candidate> init;
  init.reserve(size_t(n));
  for (int i = 0; i + 1 < n; ++i)
    if (const Merge* m = find(id[size_t(i)], id[size_t(i) + 1])) init.emplace_back(m->rank, i);
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap(std::greater<Candidate>{},
                                                                                       std::move(init));
  while (!heap.empty()) {
    auto [rank, pos] = heap.top();
    heap.pop();
    // Stale candidates: the left symbol was merged away, or either side changed since the push
    // (a pair's rank identifies the pair, so an unchanged pair still has this rank).
    if (id[size_t(pos)] < 0) continue;
    const int right = next[size_t(pos)];
    if (right < 0) continue;
    const Merge* m = find(id[size_t(pos)], id[size_t(right)]);
    if (!m || m->rank != rank) continue;

    id[size_t(pos)] = m->merged;
    id[size_t(right)] = -1;
    const int after = next[size_t(right)];
    next[size_t(pos)] = after;
    if (after >= 0) prev[size_t(after)] = pos;

    const int before = prev[size_t(pos)];
    if (before >= 0)
      if (const Merge* mb = find(id[size_t(before)], id[size_t(pos)])) heap.emplace(mb->rank, before);
    if (after >= 0)
      if (const Merge* ma = find(id[size_t(pos)], id[size_t(after)])) heap.emplace(ma->rank, pos);
  }
  s.clear();
  for (int i = 0; i >= 0; i = next[size_t(i)]) s.push_back(id[size_t(i)]);
}

}  // namespace og
