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
//
// Sharded (FSDP) checkpoints replace state.bin by one tensor file per rank,
// rank-RRRRR-of-NNNNN.bin (same format: named tensors + checksum), holding that rank's shards of
// the parameters and of its optimizer state; meta.json says "shards": N. All ranks write into
// one temp folder; after every rank has finished (a collective), rank 0 writes meta.json and
// renames the folder into place, so a checkpoint is published whole or not at all.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "dist/communicator.h"
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
  int shards = 0;  // FSDP: number of rank files (the world size that wrote them); 0: one state.bin
};

// Write a checkpoint folder `dir` (its parent is created; an existing `dir` is replaced). Atomic.
// Leftovers of an interrupted earlier write in the same parent folder are cleaned up first.
void write_checkpoint(const std::string& dir, const CheckpointMeta& meta, const std::vector<NamedTensor>& tensors);
// Sharded form, a collective over `comm` (every rank passes its own shards; meta.shards is set to
// comm.size()): rank files, then meta.json by rank 0, published atomically. An error on any rank
// is an og::Error on every rank, and nothing is published.
void write_sharded_checkpoint(const std::string& dir, const CheckpointMeta& meta,
                              const std::vector<NamedTensor>& my_tensors, Communicator& comm);
// "rank-00001-of-00004.bin"
std::string shard_file_name(int rank, int world);

// One tensor file (state.bin or a rank file): read whole and verified (magic, version, table,
// checksum) at construction. `label` names it in the messages of read().
class TensorFile {
 public:
  TensorFile(const std::string& path, const std::string& label);
  // Copy tensor `name` into dst (exactly `bytes` bytes); a missing tensor or a size mismatch is
  // an og::Error naming the tensor.
  void read(const std::string& name, void* dst, size_t bytes) const;
  bool has(const std::string& name) const;
  size_t bytes(const std::string& name) const;  // og::Error if absent
  std::vector<std::string> names() const;

 private:
  struct Entry {
    std::string name;
    size_t offset = 0, bytes = 0;
  };
  const Entry& find(const std::string& name) const;
  std::string label_;
  std::vector<Entry> entries_;
  std::vector<char> blob_;
};

class CheckpointReader {
 public:
  // Open and verify a checkpoint folder (or a run folder / checkpoints folder, meaning its
  // latest checkpoint): checksum, sizes, format version. Errors name the file.
  explicit CheckpointReader(const std::string& path);
  const CheckpointMeta& meta() const { return meta_; }
  const std::string& dir() const { return dir_; }
  // Copy tensor `name` of state.bin into dst (exactly `bytes` bytes); a missing tensor or a size
  // mismatch is an og::Error naming the tensor. A sharded checkpoint has no state.bin: open its
  // rank files (shard_path) instead.
  void read(const std::string& name, void* dst, size_t bytes) const;
  std::vector<std::string> names() const;
  bool sharded() const { return meta_.shards > 0; }
  std::string shard_path(int rank) const;  // rank file `rank` of a sharded checkpoint

 private:
  std::string dir_;
  CheckpointMeta meta_;
  std::unique_ptr<TensorFile> state_;  // state.bin (null when sharded)
};

// The checkpoint folder for `step` under a run's log dir, and the folder `latest` points to
// (empty if none).
std::string checkpoint_dir(const std::string& log_dir, int64_t step);
std::string latest_checkpoint(const std::string& log_dir);
// Remove all but the newest `keep` checkpoints of a run.
void prune_checkpoints(const std::string& log_dir, int keep);

}  // namespace og
