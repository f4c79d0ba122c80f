#include "data/shard.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include "core/error.h"

namespace og {

static_assert(std::endian::native == std::endian::little, "shards are little-endian; this build assumes a little-endian host");

Shard Shard::open(const std::string& path) {
  Shard s;
  s.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY);
  OG_CHECK(fd >= 0, "shard {}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail("shard {}: cannot stat: {}", path, std::strerror(e));
  }
  const size_t bytes = (size_t)st.st_size;
  if (bytes < kShardHeaderBytes) {
    ::close(fd);
    fail("shard {}: truncated header ({} bytes, the header alone is {})", path, bytes, kShardHeaderBytes);
  }
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  OG_CHECK(map != MAP_FAILED, "shard {}: mmap failed: {}", path, std::strerror(map_errno));
  s.map_ = map;
  s.map_bytes_ = bytes;
  int32_t header[3];
  std::memcpy(header, map, sizeof header);
  OG_CHECK(header[0] == kShardMagic, "shard {}: wrong magic {} (expected {}): not a token shard", path, header[0],
           kShardMagic);
  OG_CHECK(header[1] == kShardVersion, "shard {}: unsupported version {} (expected {})", path, header[1],
           kShardVersion);
  OG_CHECK(header[2] >= 0, "shard {}: negative token count {}", path, header[2]);
  const size_t count = (size_t)header[2];
  const size_t expected = kShardHeaderBytes + count * sizeof(uint16_t);
  OG_CHECK(bytes >= expected, "shard {}: truncated: the header says {} tokens ({} bytes) but the file has {} bytes",
           path, count, expected, bytes);
  OG_CHECK(bytes == expected, "shard {}: {} trailing bytes after the {} tokens the header announces", path,
           bytes - expected, count);
  s.tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map) + kShardHeaderBytes);
  s.num_tokens_ = count;
  return s;
}

Shard::Shard(Shard&& o) noexcept { *this = std::move(o); }

Shard& Shard::operator=(Shard&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_bytes_);
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_bytes_ = std::exchange(o.map_bytes_, 0);
    tokens_ = std::exchange(o.tokens_, nullptr);
    num_tokens_ = std::exchange(o.num_tokens_, 0);
  }
  return *this;
}

Shard::~Shard() {
  if (map_) ::munmap(map_, map_bytes_);
}

void Shard::read(size_t begin, size_t n, int32_t* out, int vocab_size) const {
  OG_CHECK(begin <= num_tokens_ && n <= num_tokens_ - begin, "shard {}: read of tokens [{}, {}) past its end ({})",
           path_, begin, begin + n, num_tokens_);
  const uint16_t* src = tokens_ + begin;
  uint16_t worst = 0;
  for (size_t i = 0; i < n; ++i) {
    out[i] = src[i];
    worst = std::max(worst, src[i]);
  }
  if ((int)worst >= vocab_size) {
    for (size_t i = 0; i < n; ++i)
      if ((int)src[i] >= vocab_size)
        fail("shard {}: token {} at offset {} is out of range for vocab_size {}", path_, src[i], begin + i,
             vocab_size);
  }
}

void write_shard(const std::string& path, const uint16_t* tokens, size_t n) {
  OG_CHECK(n <= (size_t)INT32_MAX, "shard {}: {} tokens do not fit the int32 header count", path, n);
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  OG_CHECK(fd >= 0, "shard {}: cannot create {}: {}", path, tmp, std::strerror(errno));
  auto write_all = [&](const void* data, size_t bytes) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      const ssize_t w = ::write(fd, p, std::min<size_t>(bytes, 1 << 26));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      bytes -= (size_t)w;
    }
    return true;
  };
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = (int32_t)n;
  const bool ok = write_all(header, sizeof header) && write_all(tokens, n * sizeof(uint16_t)) && ::fsync(fd) == 0;
  const int e = errno;
  if (::close(fd) != 0 || !ok) {
    ::unlink(tmp.c_str());
    fail("shard {}: write failed: {}", path, std::strerror(ok ? errno : e));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int re = errno;
    ::unlink(tmp.c_str());
    fail("shard {}: cannot rename {} into place: {}", path, tmp, std::strerror(re));
  }
}

std::vector<std::string> expand_glob(const std::string& pattern, const std::string& what) {
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> files;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
  ::globfree(&g);
  OG_CHECK(rc == 0 || rc == GLOB_NOMATCH, "{}: cannot expand '{}' (glob error {})", what, pattern, rc);
  OG_CHECK(!files.empty(), "{}: no files match '{}'", what, pattern);
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace og
