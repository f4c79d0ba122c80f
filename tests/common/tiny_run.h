// Test fixtures for end-to-end training tests: temporary folders, random-token shards and a
// tiny config (CPU path, seconds per run).
#pragma once
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/shard.h"
#include "train/config.h"

namespace og_test {

// A fresh folder under the temp dir, removed when the object dies.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    path_ = std::filesystem::temp_directory_path() /
            (tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  static int& counter() {
    static int c = 0;
    return c;
  }
  std::filesystem::path path_;
};

// Shards of uniformly random tokens below `vocab` (a learnable-free stream; for equivalence tests).
inline void write_random_shards(const std::string& dir, const std::string& prefix, int n_shards, size_t tokens,
                                int vocab, uint64_t seed) {
  og::Rng rng(seed);
  for (int s = 0; s < n_shards; ++s) {
    std::vector<uint16_t> t(tokens);
    for (auto& x : t) x = (uint16_t)rng.below((uint64_t)vocab);
    char name[64];
    std::snprintf(name, sizeof name, "%s_%06d.bin", prefix.c_str(), s);
    og::write_shard(dir + "/" + name, t.data(), t.size());
  }
}

// A tiny model on shards in `data_dir` ({train,val}_*.bin), outputs in `out_dir`.
inline og::Config tiny_config(const std::string& data_dir, const std::string& out_dir, int vocab = 256) {
  og::Config c;
  c.model.vocab_size = vocab;
  c.model.d_model = 32;
  c.model.n_layer = 2;
  c.model.n_head = 2;
  c.model.seq_len = 16;
  c.data.train = data_dir + "/train_*.bin";
  c.data.val = data_dir + "/val_*.bin";
  c.data.val_tokens = 4 * 16 * 6;
  c.train.steps = 4;
  c.train.batch_size = 12;
  c.train.micro_batch_size = 2;
  c.train.val_every = 0;
  c.train.device = "cpu";
  c.train.seed = 7;
  c.log.dir = out_dir;
  c.log.every = 1000;
  c.log.level = "warn";
  return c;
}

}  // namespace og_test
