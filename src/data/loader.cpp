// Distributed data loader: each data-parallel rank reads its own B*T+1 token window of a step
// span of world*B*T+1 tokens; spans tile the shards in order, cyclically (see loader.h).
//
// One deliberate difference from the reference (models/gpt_utils.py): the reference decides to
// switch shards with its *own* position (position + world*B*T + 1 > length), which for ranks > 0
// is stricter than for rank 0, so near a shard's end ranks can switch at different steps and
// read unrelated data. Here the test uses the step's base position (rank 0's), so all ranks
// switch together and a step's windows always form one contiguous span; for rank 0 (and for
// world = 1) the sequence is exactly the reference's.
#include "data/loader.h"

#include <cstring>

#include "core/error.h"

namespace og {

DataLoader::DataLoader(const std::string& glob, const std::string& what, int B, int T, int rank, int world,
                       int vocab_size)
    : B_(B), T_(T), rank_(rank), world_(world), vocab_(vocab_size) {
  OG_CHECK(B > 0 && T > 0, "{}: batch size B and sequence length T must be positive, got B={} T={}", what, B, T);
  OG_CHECK(world > 0 && rank >= 0 && rank < world, "{}: rank {} is not in [0, world={})", what, rank, world);
  OG_CHECK(vocab_size > 0, "{}: vocab size must be positive, got {}", what, vocab_size);
  what_ = what;
  files_ = expand_glob(glob, what);

  // Every shard must hold one full step span so that every rank's first window fits. The test
  // does not depend on the rank, so all ranks accept or reject the same shards.
  const int64_t min_tokens = step_tokens() + 1;
  sizes_.reserve(files_.size());
  for (const std::string& f : files_) {
    Shard s;
    try {
      s = Shard::open(f);
    } catch (const Error& e) {
      fail("{}: {}", what, e.what());
    }
    if (static_cast<int64_t>(s.num_tokens()) < min_tokens)
      fail("{}: shard '{}' has {} tokens, too few for one step: it needs at least world*B*T+1 = {}*{}*{}+1 = {}", what,
           f, s.num_tokens(), world, B, T, min_tokens);
    sizes_.push_back(s.num_tokens());
  }
  reset();
}

int64_t DataLoader::total_tokens() const {
  int64_t total = 0;
  for (size_t n : sizes_) total += static_cast<int64_t>(n);
  return total;
}

void DataLoader::reset() { state_ = LoaderState{0, first_position(), 0}; }

void DataLoader::open_current() {
  if (current_index_ == state_.shard) return;
  current_ = Shard();  // unmap the previous shard before mapping the next
  current_index_ = -1;
  const std::string& f = files_[static_cast<size_t>(state_.shard)];
  Shard s;
  try {
    s = Shard::open(f);
  } catch (const Error& e) {
    fail("{}: {}", what_, e.what());
  }
  const size_t expected = sizes_[static_cast<size_t>(state_.shard)];
  if (s.num_tokens() != expected)
    fail("{}: shard '{}' changed while training: it now has {} tokens, it had {} when the loader started", what_, f,
         s.num_tokens(), expected);
  current_ = std::move(s);
  current_index_ = state_.shard;
}

void DataLoader::next_batch(int32_t* inputs, int32_t* targets) {
  open_current();
  const size_t window = static_cast<size_t>(B_) * static_cast<size_t>(T_);
  const size_t pos = static_cast<size_t>(state_.position);
  try {
    current_.read(pos, window, inputs, vocab_);
    // targets = tokens [pos+1, pos+window+1): all but the last are already in inputs.
    std::memcpy(targets, inputs + 1, (window - 1) * sizeof(int32_t));
    current_.read(pos + window, 1, targets + window - 1, vocab_);
  } catch (const Error& e) {
    fail("{}: {}", what_, e.what());
  }

  // Advance; move to the next shard when the next step's span does not fit in this one.
  state_.position += step_tokens();
  const int64_t base = state_.position - first_position();
  if (base + step_tokens() + 1 > static_cast<int64_t>(sizes_[static_cast<size_t>(state_.shard)])) {
    state_.shard += 1;
    if (state_.shard == static_cast<int64_t>(files_.size())) {
      state_.shard = 0;
      state_.epoch += 1;
    }
    state_.position = first_position();
  }
}

void DataLoader::restore(const LoaderState& s) {
  const int64_t n_shards = static_cast<int64_t>(files_.size());
  auto bad = [&](const std::string& why) {
    fail("{}: cannot restore the loader state (shard {}, position {}, epoch {}) for rank {} of {}, B={} T={}: {}",
         what_, s.shard, s.position, s.epoch, rank_, world_, B_, T_, why);
  };
  if (s.shard < 0 || s.shard >= n_shards) bad(fmt::format("shard index out of range [0, {})", n_shards));
  if (s.epoch < 0) bad("negative epoch");
  const int64_t base = s.position - first_position();
  if (base < 0 || base % step_tokens() != 0)
    bad(fmt::format("the position is not rank*B*T + k*world*B*T (a state saved with another world size, B or T?)"));
  const int64_t len = static_cast<int64_t>(sizes_[static_cast<size_t>(s.shard)]);
  if (base + step_tokens() + 1 > len)
    bad(fmt::format("the step at base {} does not fit in shard '{}' of {} tokens", base,
                    files_[static_cast<size_t>(s.shard)], len));
  state_ = s;
}

}  // namespace og
