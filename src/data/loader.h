// Distributed data loader over a sorted list of shards (the reference's scheme): data-parallel
// rank r of R reads B*T+1 contiguous tokens starting at position r*B*T of the current shard;
// inputs are the first B*T, targets the same shifted by one. After each batch the position
// advances by R*B*T; when the next step would not fit (base + R*B*T + 1 > shard length, with
// base = position - r*B*T, the same for all ranks, so ranks switch shards together) the loader
// moves to the next shard (cyclically) at position r*B*T. Deterministic; its position can be
// saved and restored exactly.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/shard.h"

namespace og {

struct LoaderState {
  int64_t shard = 0;     // index into the sorted shard list
  int64_t position = 0;  // token offset of this rank's next window
  int64_t epoch = 0;     // completed passes over all shards
};

class DataLoader {
 public:
  // `glob` is expanded and every shard validated up front (errors name file and `what`).
  DataLoader(const std::string& glob, const std::string& what, int B, int T, int rank, int world, int vocab_size);
  // Next window of this rank: inputs and targets, each B*T int32 (host memory).
  void next_batch(int32_t* inputs, int32_t* targets);
  void reset();  // back to the first window (validation replays the same batches)
  LoaderState state() const { return state_; }
  void restore(const LoaderState& s);  // og::Error if s does not fit these shards
  int B() const { return B_; }
  int T() const { return T_; }
  const std::vector<std::string>& files() const { return files_; }
  int64_t total_tokens() const;  // over all shards

 private:
  void open_current();
  int64_t step_tokens() const { return int64_t(world_) * B_ * T_; }    // one step's span, less 1
  int64_t first_position() const { return int64_t(rank_) * B_ * T_; }  // this rank's offset in a step
  std::string what_;  // config key for error messages, e.g. "data.train"
  std::vector<std::string> files_;
  std::vector<size_t> sizes_;
  Shard current_;
  int64_t current_index_ = -1;
  LoaderState state_;
  int B_, T_, rank_, world_, vocab_;
};

}  // namespace og
