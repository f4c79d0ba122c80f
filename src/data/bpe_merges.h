// BPE merge table and the merge loop of GPT-2's byte-level BPE, on token ids.
//
// A word enters as one token per byte; the merge loop repeatedly takes the adjacent pair with the
// lowest merge rank and merges all its non-overlapping occurrences, left to right, until no
// adjacent pair has a rank (this is GPT-2's reference `bpe()`). Two exact implementations:
//   - apply_reference: the reference loop, O(n) per merge round; best for short words.
//   - apply_heap: a priority queue of (rank, position) over a linked list, O(n log n); used for
//     long words. It gives the reference result whenever every merge that consumes a token comes
//     after every merge that produces it (then a merge never creates a pair that outranks the
//     round in progress); finalize() checks this for the table (true for GPT-2's vocab.bpe) and
//     apply() falls back to the reference loop for tables where it does not hold.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace og {

class BpeMergeTable {
 public:
  struct Merge {
    int rank;    // position in vocab.bpe (lower merges first)
    int merged;  // token id of the merged pair
  };

  // Add the next merge (its rank is the number of merges added before). Returns false, adding
  // nothing, if the pair already has a merge.
  bool add(int left, int right, int merged);
  // Prepare for lookups and check the ordering property above; call after the last add().
  void finalize();

  // The merge for an adjacent pair, or nullptr.
  const Merge* find(int left, int right) const {
    uint64_t key = pack(left, right);
    for (size_t slot = hash(key) & mask_;; slot = (slot + 1) & mask_) {
      const Slot& s = slots_[slot];
      if (s.key == key) return &s.merge;
      if (s.key == kEmpty) return nullptr;
    }
  }

  size_t size() const { return count_; }
  bool heap_is_exact() const { return heap_is_exact_; }

  // Merge `symbols` (token ids) in place; picks the faster exact algorithm for the length.
  void apply(std::vector<int>& symbols) const;
  void apply_reference(std::vector<int>& symbols) const;
  void apply_heap(std::vector<int>& symbols) const;

 private:
  struct Slot {
    uint64_t key;
    Merge merge;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t pack(int left, int right) { return (uint64_t(uint32_t(left)) << 32) | uint32_t(right); }
  static size_t hash(uint64_t key) {  // splitmix64 finalizer: cheap and well mixed
    key ^= key >> 30;
    key *= 0xbf58476d1ce4e5b9ULL;
    key ^= key >> 27;
    key *= 0x94d049bb133111ebULL;
    key ^= key >> 31;
    return size_t(key);
  }
  void rehash(size_t capacity);

  std::vector<Slot> slots_ = std::vector<Slot>(16, Slot{kEmpty, {0, 0}});
  size_t mask_ = 15;
  size_t count_ = 0;
  std::vector<int> left_of_rank_, right_of_rank_, merged_of_rank_;
  bool heap_is_exact_ = false;
};

}  // namespace og
