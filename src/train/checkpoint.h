// Checkpoints: a folder per save, <log.dir>/checkpoints/step_XXXXXXXX/, holding
//   state.bin   named tensors (parameters, every optimizer state tensor) + a 64-bit checksum
//   meta.json   step, data-loader positions of every rank, world size, model/optimizer identity
//   config.yaml the resolved config of the run that wrote it
// Written atomically: everything goes to a temp folder (step_XXXXXXXX.tmp-<pid>) that is fsynced
// and renamed into place, then the pointer file `latest` is replaced by rename. A writer killed
// midway leaves only its temp folder, which readers never look at (they follow `latest` or a
// named folder) and which the next write_checkpoint into the same checkpoints folder removes.
// Every write, fsync and close is checked: a full disk is an og::Error naming the file, and the
// previous checkpoint and `latest` stay as they were. One process writes a run's checkpoints.
// A corrupted, truncated or mismatched checkpoint is refused with a message naming the file and
// what disagrees.
//
// Test-only fault hook: when the environment variable OG_FAULT_CHECKPOINT_KILL_AFTER_BYTES is a
// number N, write_checkpoint writes exactly N bytes of the checkpoint's files (state.bin first)
// and then raises SIGKILL in its own process, i.e. a crash in the middle of writing tensors at a
// deterministic point (tests/cpu/test_faults.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/loader.h"
#include "optim/optimizer.h"

namespace og {

struct NamedTensor {
  std::string name;
  const void* data = nullptr;  // host memory
  size_t bytes = 0;
};

struct CheckpointMeta {
  int64_t step = 0;  // optimizer steps completed
  int world = 1;
  std::vector<LoaderState> loaders;  // one per data-parallel rank
  std::string model_signature;       // shapes and names of the parameters
  std::string optimizer_signature;   // groups, algorithms and state tensor shapes
  std::string config_yaml;
};

// Write a checkpoint folder `dir` (its parent is created; an existing `dir` is replaced). Atomic.
// Leftovers of an interrupted earlier write in the same parent folder are cleaned up first.
void write_checkpoint(const std::string& dir, const CheckpointMeta& meta, const std::vector<NamedTensor>& tensors);

class CheckpointReader {
 public:
  // Open and verify a checkpoint folder (or a run folder / checkpoints folder, meaning its
  // latest checkpoint): checksum, sizes, format version. Errors name the file.
  explicit CheckpointReader(const std::string& path);
  const CheckpointMeta& meta() const { return meta_; }
  const std::string& dir() const { return dir_; }
  // Copy tensor `name` into dst (exactly `bytes` bytes); a missing tensor or a size mismatch is
  // an og::Error naming the tensor.
  void read(const std::string& name, void* dst, size_t bytes) const;
  std::vector<std::string> names() const;

 private:
  struct Entry {
    std::string name;
    size_t offset = 0, bytes = 0;
  };
  std::string dir_;
  CheckpointMeta meta_;
  std::vector<Entry> entries_;
  std::vector<char> blob_;
};

// The checkpoint folder for `step` under a run's log dir, and the folder `latest` points to
// (empty if none).
std::string checkpoint_dir(const std::string& log_dir, int64_t step);
std::string latest_checkpoint(const std::string& log_dir);
// Remove all but the newest `keep` checkpoints of a run.
void prune_checkpoints(const std::string& log_dir, int keep);

}  // namespace og
