// Token shards: memory-mapped, validated reading; atomic writing (temp file, fsync, rename);
// glob expansion of shard lists. The on-disk format is little-endian (header of 256 int32, then
// uint16 tokens); this code maps it directly, so it requires a little-endian host.
#include "data/shard.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "core/error.h"

namespace og {

static_assert(std::endian::native == std::endian::little,
              "the shard format is little-endian and is mapped directly: a little-endian host is required");

namespace {

std::string errno_text(int err) { return std::generic_category().message(err); }

// Closes a file descriptor on scope exit unless released.
struct FdCloser {
  int fd = -1;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

// ---- reading ---------------------------------------------------------------------------------

Shard::Shard(Shard&& o) noexcept { *this = std::move(o); }

Shard& Shard::operator=(Shard&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_bytes_);
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_);
    fd_ = o.fd_;
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    tokens_ = o.tokens_;
    num_tokens_ = o.num_tokens_;
    o.fd_ = -1;
    o.map_ = nullptr;
    o.map_bytes_ = 0;
    o.tokens_ = nullptr;
    o.num_tokens_ = 0;
  }
  return *this;
}

Shard::~Shard() {
  if (map_) ::munmap(map_, map_bytes_);
  if (fd_ >= 0) ::close(fd_);
}

Shard Shard::open(const std::string& path) {
  FdCloser fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) fail("shard '{}': cannot open: {}", path, errno_text(errno));
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) fail("shard '{}': cannot stat: {}", path, errno_text(errno));
  if (!S_ISREG(st.st_mode)) fail("shard '{}': not a regular file", path);
  const size_t file_bytes = static_cast<size_t>(st.st_size);
  if (file_bytes < kShardHeaderBytes)
    fail("shard '{}': truncated header: the file has {} bytes (it ends at byte offset {}), the header alone needs {}",
         path, file_bytes, file_bytes, kShardHeaderBytes);

  Shard s;
  s.path_ = path;
  void* map = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (map == MAP_FAILED) fail("shard '{}': cannot mmap {} bytes: {}", path, file_bytes, errno_text(errno));
  s.map_ = map;  // owned by s from here on: unmapped if validation below throws
  s.map_bytes_ = file_bytes;

  int32_t header[3];
  std::memcpy(header, map, sizeof(header));
  if (header[0] != kShardMagic)
    fail("shard '{}': bad magic {} (expected {}): not a token shard", path, header[0], kShardMagic);
  if (header[1] != kShardVersion)
    fail("shard '{}': unsupported version {} (expected {})", path, header[1], kShardVersion);
  if (header[2] < 0) fail("shard '{}': negative token count {} in the header", path, header[2]);
  const size_t count = static_cast<size_t>(header[2]);
  const size_t expected_bytes = kShardHeaderBytes + count * sizeof(uint16_t);
  if (file_bytes < expected_bytes)
    fail(
        "shard '{}': truncated: the header says {} tokens ({} bytes in all) but the file has {} bytes (it ends at "
        "byte offset {}, token offset {})",
        path, count, expected_bytes, file_bytes, file_bytes, (file_bytes - kShardHeaderBytes) / sizeof(uint16_t));
  if (file_bytes > expected_bytes)
    fail("shard '{}': {} trailing bytes: the header says {} tokens ({} bytes in all) but the file has {} bytes", path,
         file_bytes - expected_bytes, count, expected_bytes, file_bytes);

  ::madvise(map, file_bytes, MADV_SEQUENTIAL);  // advisory only: its failure is harmless
  s.tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map) + kShardHeaderBytes);
  s.num_tokens_ = count;
  s.fd_ = fd.fd;  // owned by s from here on
  fd.fd = -1;
  return s;
}

void Shard::read(size_t begin, size_t n, int32_t* out, int vocab_size) const {
  OG_CHECK(vocab_size > 0, "shard '{}': vocab size must be positive, got {}", path_, vocab_size);
  OG_CHECK(begin <= num_tokens_ && n <= num_tokens_ - begin,
           "shard '{}': read of tokens [{}, {}) is out of range: the shard has {} tokens", path_, begin, begin + n,
           num_tokens_);
  // pread in chunks through a small buffer instead of reading the mapping: a file truncated in
  // place after open() then gives a short read (an error below), never a SIGBUS. The copy is
  // B*T tokens per batch, negligible next to the model's work.
  constexpr size_t kChunk = 4096;
  uint16_t buf[kChunk];
  uint16_t max_id = 0;
  for (size_t done = 0; done < n;) {
    const size_t take = std::min(kChunk, n - done);
    const size_t want = take * sizeof(uint16_t);
    const off_t offset = static_cast<off_t>(kShardHeaderBytes + (begin + done) * sizeof(uint16_t));
    size_t got = 0;
    while (got < want) {
      const ssize_t r = ::pread(fd_, reinterpret_cast<char*>(buf) + got, want - got, offset + static_cast<off_t>(got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0)
        fail("shard '{}': read of {} bytes at byte offset {} failed: {}", path_, want - got,
             static_cast<long long>(offset) + static_cast<long long>(got), errno_text(errno));
      if (r == 0) {
        struct stat st {};
        const long long now = ::fstat(fd_, &st) == 0 ? static_cast<long long>(st.st_size) : -1;
        fail(
            "shard '{}': truncated while in use: reading tokens [{}, {}) needs the file to reach byte offset {}, "
            "but it now ends at byte offset {} (the header says {} tokens)",
            path_, begin, begin + n, kShardHeaderBytes + (begin + n) * sizeof(uint16_t), now, num_tokens_);
      }
      got += static_cast<size_t>(r);
    }
    // Convert first and check the maximum afterwards: the hot loop stays branch-free.
    for (size_t i = 0; i < take; i++) {
      out[done + i] = buf[i];
      max_id = std::max(max_id, buf[i]);
    }
    done += take;
  }
  if (n > 0 && static_cast<int>(max_id) >= vocab_size) {
    for (size_t i = 0; i < n; i++)
      if (out[i] >= vocab_size)
        fail("shard '{}': token id {} at token offset {} is out of range for vocab size {}", path_, out[i], begin + i,
             vocab_size);
  }
}

// ---- writing ---------------------------------------------------------------------------------

namespace {

// Write all of buf, retrying on short writes and EINTR; returns 0 or the errno of the failure.
int write_all(int fd, const void* buf, size_t bytes) {
  const char* p = static_cast<const char*>(buf);
  while (bytes > 0) {
    const ssize_t w = ::write(fd, p, bytes);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return EIO;  // no progress and no error: treat as an I/O error rather than spin
    p += w;
    bytes -= static_cast<size_t>(w);
  }
  return 0;
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

void write_shard(const std::string& path, const uint16_t* tokens, size_t n) {
  OG_CHECK(n <= static_cast<size_t>(INT32_MAX), "write_shard '{}': {} tokens do not fit the int32 header count", path,
           n);
  OG_CHECK(n == 0 || tokens != nullptr, "write_shard '{}': null token pointer for {} tokens", path, n);

  // A unique temp name beside the target (same filesystem, so rename is atomic). O_EXCL with a
  // per-process counter avoids collisions; mode 0666 lets the umask decide permissions as for
  // any normally created file.
  static std::atomic<uint64_t> counter{0};
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
    tmp = fmt::format("{}.tmp.{}.{}", path, static_cast<long>(::getpid()), counter.fetch_add(1));
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) fail("write_shard '{}': cannot create the temporary file '{}': {}", path, tmp, errno_text(errno));

  // From here on, any failure removes the temp file.
  auto abandon = [&](const char* what, int err) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    fail("write_shard '{}': {} failed: {}", path, what, errno_text(err));
  };

  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(n);
  if (int err = write_all(fd, header, sizeof(header))) abandon("writing the header", err);
  if (n > 0)
    if (int err = write_all(fd, tokens, n * sizeof(uint16_t))) abandon("writing the tokens", err);
  if (::fsync(fd) != 0) abandon("fsync", errno);
  const int closed = ::close(fd);
  fd = -1;
  if (closed != 0) abandon("close", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) abandon("rename of the temporary file", errno);

  // Make the rename itself durable. Best effort: the data is complete at `path` either way.
  FdCloser dir{::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (dir.fd >= 0) ::fsync(dir.fd);
}

// ---- shard lists -----------------------------------------------------------------------------

std::vector<std::string> expand_glob(const std::string& pattern, const std::string& what) {
  OG_CHECK(!pattern.empty(), "{}: empty file pattern", what);
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> files;
  if (rc == 0) files.assign(g.gl_pathv, g.gl_pathv + g.gl_pathc);
  ::globfree(&g);
  if (rc == GLOB_NOMATCH || (rc == 0 && files.empty())) fail("{}: no files match '{}'", what, pattern);
  if (rc == GLOB_ABORTED) fail("{}: reading a directory failed while expanding '{}'", what, pattern);
  if (rc != 0) fail("{}: expanding '{}' failed (glob error {})", what, pattern, rc);
  std::sort(files.begin(), files.end());  // byte order, independent of the locale
  return files;
}

}  // namespace og
