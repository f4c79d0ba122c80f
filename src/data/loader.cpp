#include "data/loader.h"

#include "core/error.h"

namespace og {

DataLoader::DataLoader(const std::string& glob, const std::string& what, int B, int T, int rank, int world, int vocab)
    : B_(B), T_(T), rank_(rank), world_(world), vocab_(vocab) {
  OG_CHECK(B > 0 && T > 0 && world > 0 && rank >= 0 && rank < world, "{}: bad loader shape B={} T={} rank {}/{}",
           what, B, T, rank, world);
  files_ = expand_glob(glob, what);
  // Validate every shard up front (header, size), and that each holds at least one window for
  // the last rank: the reference's next-shard rule needs position + R*B*T + 1 <= length.
  const size_t need = (size_t)world * B * T + 1;
  for (const auto& f : files_) {
    Shard s = Shard::open(f);
    OG_CHECK(s.num_tokens() >= need,
             "{}: shard {} has {} tokens, fewer than one step of windows for {} rank(s) x {} x {} (+1) = {}", what, f,
             s.num_tokens(), world, B, T, need);
    sizes_.push_back(s.num_tokens());
  }
  reset();
}

void DataLoader::reset() {
  state_ = {0, (int64_t)rank_ * B_ * T_, 0};
  open_current();
}

void DataLoader::open_current() {
  if (current_index_ == state_.shard) return;
  current_ = Shard::open(files_[state_.shard]);
  OG_CHECK(current_.num_tokens() == sizes_[state_.shard], "shard {} changed size while training ({} -> {} tokens)",
           files_[state_.shard], sizes_[state_.shard], current_.num_tokens());
  current_index_ = state_.shard;
}

void DataLoader::next_batch(int32_t* inputs, int32_t* targets) {
  const size_t n = (size_t)B_ * T_;
  open_current();
  // B*T+1 contiguous tokens: inputs are the first B*T, targets the same shifted by one.
  current_.read((size_t)state_.position, n, inputs, vocab_);
  current_.read((size_t)state_.position + 1, n, targets, vocab_);
  state_.position += (int64_t)world_ * B_ * T_;
  if ((size_t)state_.position + (size_t)world_ * B_ * T_ + 1 > sizes_[state_.shard]) {
    state_.shard += 1;
    if (state_.shard == (int64_t)files_.size()) {
      state_.shard = 0;
      state_.epoch += 1;
    }
    state_.position = (int64_t)rank_ * B_ * T_;
  }
}

void DataLoader::restore(const LoaderState& s) {
  OG_CHECK(s.shard >= 0 && s.shard < (int64_t)files_.size(), "loader state: shard index {} but only {} shard(s)",
           s.shard, files_.size());
  OG_CHECK(s.position >= 0 && (size_t)s.position + (size_t)B_ * T_ + 1 <= sizes_[s.shard],
           "loader state: position {} does not fit shard {} ({} tokens) with windows of {} x {}", s.position,
           files_[s.shard], sizes_[s.shard], B_, T_);
  OG_CHECK(s.epoch >= 0, "loader state: negative epoch {}", s.epoch);
  state_ = s;
  open_current();
}

int64_t DataLoader::total_tokens() const {
  int64_t n = 0;
  for (size_t s : sizes_) n += (int64_t)s;
  return n;
}

}  // namespace og
