// Token shards in the llm.c / modded-nanogpt format: a header of 256 little-endian int32
// (magic 20240520, version 1, token count, then zeros) followed by `count` uint16 tokens.
// Reading is validated; read() copies with pread (never through the mapping), so a file truncated
// while in use is an og::Error naming the file and the byte offset, never a SIGBUS. Writing is
// atomic (temp file + rename).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace og {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr size_t kShardHeaderInts = 256;
constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);

class Shard {
 public:
  // Map and validate `path`: wrong magic or version, a token count that disagrees with the file
  // size, or a truncated header are og::Errors naming the file.
  static Shard open(const std::string& path);
  Shard() = default;
  Shard(Shard&& o) noexcept;
  Shard& operator=(Shard&& o) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard();

  const std::string& path() const { return path_; }
  size_t num_tokens() const { return num_tokens_; }
  // Direct view of the mapped tokens (tests, tools). Unlike read(), touching it after the file was
  // truncated in place raises SIGBUS: the data loader uses read().
  const uint16_t* tokens() const { return tokens_; }
  // Copy tokens [begin, begin + n) into out as int32, checking each id < vocab_size
  // (an out-of-range id is an og::Error naming the file and the token's offset). The tokens are
  // read from the open file descriptor: a file truncated since open() is an og::Error naming the
  // file and the byte offset where the data ends.
  void read(size_t begin, size_t n, int32_t* out, int vocab_size) const;

 private:
  std::string path_;
  int fd_ = -1;  // kept open for read()
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  size_t num_tokens_ = 0;
};

// Write a shard atomically (temp file + rename); an I/O failure is an og::Error, and leaves no
// partial file at `path`.
void write_shard(const std::string& path, const uint16_t* tokens, size_t n);

// Files matching a glob pattern, sorted; an og::Error naming the pattern (and `what`, e.g.
// "data.train") if nothing matches.
std::vector<std::string> expand_glob(const std::string& pattern, const std::string& what);

}  // namespace og
