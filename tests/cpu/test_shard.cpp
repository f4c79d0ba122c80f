// Token shard format: byte-exact header, write/read round trip on random tokens, every validation
// error (message names the file), atomic writes that leave nothing behind on failure, globbing.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace {

// A fresh directory under the system temp dir, removed (with its contents) at the end.
struct TempDir {
  fs::path dir;
  TempDir() {
    std::random_device rd;
    dir = fs::temp_directory_path() / fmt::format("orthogpt_test_shard_{}_{:x}", ::getpid(), rd());
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir, ec);
  }
  std::string file(const std::string& name) const { return (dir / name).string(); }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
};

std::vector<uint16_t> random_tokens(size_t n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(0, vocab - 1);
  std::vector<uint16_t> t(n);
  for (auto& x : t) x = static_cast<uint16_t>(dist(rng));
  return t;
}

std::vector<uint8_t> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

void put_le32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int k = 0; k < 4; k++) b[at + k] = static_cast<uint8_t>(v >> (8 * k));
}

// A raw file: header (magic, version, count; rest zero) then `tokens` uint16 LE, then `extra`
// bytes. Built byte by byte, independently of write_shard.
void write_raw(const std::string& path, int32_t magic, int32_t version, int32_t count,
               const std::vector<uint16_t>& tokens, size_t extra = 0) {
  std::vector<uint8_t> b(1024 + 2 * tokens.size() + extra, 0);
  put_le32(b, 0, static_cast<uint32_t>(magic));
  put_le32(b, 4, static_cast<uint32_t>(version));
  put_le32(b, 8, static_cast<uint32_t>(count));
  for (size_t i = 0; i < tokens.size(); i++) {
    b[1024 + 2 * i] = static_cast<uint8_t>(tokens[i] & 0xff);
    b[1024 + 2 * i + 1] = static_cast<uint8_t>(tokens[i] >> 8);
  }
  for (size_t i = 0; i < extra; i++) b[1024 + 2 * tokens.size() + i] = static_cast<uint8_t>(0x5a + i);
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
}

// Runs fn, expects an og::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an og::Error containing '" << parts.at(0) << "'";
  } catch (const og::Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

constexpr int kVocab = 50257;

}  // namespace

TEST(Shard, HeaderBytesAndRoundTrip) {
  TempDir tmp;
  const std::string path = tmp.file("round.bin");
  const size_t n = 12345;
  auto tokens = random_tokens(n, kVocab, 1);
  og::write_shard(path, tokens.data(), n);

  // Byte-exact layout: magic 20240520 = 0x0134D888, version 1, count, 253 zero ints, LE tokens.
  const auto b = file_bytes(path);
  ASSERT_EQ(b.size(), 1024 + 2 * n);
  const uint8_t magic_le[4] = {0x88, 0xD8, 0x34, 0x01};
  for (int k = 0; k < 4; k++) EXPECT_EQ(b[k], magic_le[k]) << "magic byte " << k;
  const uint8_t version_le[4] = {1, 0, 0, 0};
  for (int k = 0; k < 4; k++) EXPECT_EQ(b[4 + k], version_le[k]) << "version byte " << k;
  for (int k = 0; k < 4; k++) EXPECT_EQ(b[8 + k], (n >> (8 * k)) & 0xff) << "count byte " << k;
  for (size_t k = 12; k < 1024; k++) ASSERT_EQ(b[k], 0) << "header byte " << k;
  for (size_t i = 0; i < n; i++) {
    ASSERT_EQ(b[1024 + 2 * i], tokens[i] & 0xff) << "token " << i;
    ASSERT_EQ(b[1024 + 2 * i + 1], tokens[i] >> 8) << "token " << i;
  }

  // Read back: mapped tokens, full read as int32, and an interior sub-range.
  og::Shard s = og::Shard::open(path);
  EXPECT_EQ(s.path(), path);
  ASSERT_EQ(s.num_tokens(), n);
  for (size_t i = 0; i < n; i++) ASSERT_EQ(s.tokens()[i], tokens[i]);
  std::vector<int32_t> out(n, -1);
  s.read(0, n, out.data(), kVocab);
  for (size_t i = 0; i < n; i++) ASSERT_EQ(out[i], tokens[i]) << i;
  std::vector<int32_t> sub(1000, -1);
  s.read(4321, 1000, sub.data(), kVocab);
  for (size_t i = 0; i < 1000; i++) ASSERT_EQ(sub[i], tokens[4321 + i]) << i;
  s.read(n, 0, sub.data(), kVocab);  // empty read at the end is in bounds

  // Moving keeps the mapping valid.
  og::Shard moved = std::move(s);
  EXPECT_EQ(s.num_tokens(), 0u);
  ASSERT_EQ(moved.num_tokens(), n);
  EXPECT_EQ(moved.tokens()[n - 1], tokens[n - 1]);

  // Ids up to 65535 survive the round trip (full uint16 range).
  const std::vector<uint16_t> edge = {0, 1, 255, 256, 65534, 65535};
  og::write_shard(path, edge.data(), edge.size());
  og::Shard e = og::Shard::open(path);
  std::vector<int32_t> eo(edge.size());
  e.read(0, edge.size(), eo.data(), 65536);
  for (size_t i = 0; i < edge.size(); i++) EXPECT_EQ(eo[i], edge[i]);
}

TEST(Shard, RawFileWrittenIndependentlyReadsBack) {
  TempDir tmp;
  const std::string path = tmp.file("raw.bin");
  auto tokens = random_tokens(777, kVocab, 2);
  write_raw(path, og::kShardMagic, og::kShardVersion, 777, tokens);
  og::Shard s = og::Shard::open(path);
  ASSERT_EQ(s.num_tokens(), 777u);
  std::vector<int32_t> out(777);
  s.read(0, 777, out.data(), kVocab);
  for (size_t i = 0; i < 777; i++) ASSERT_EQ(out[i], tokens[i]);
}

TEST(Shard, EmptyShardIsValid) {
  TempDir tmp;
  const std::string path = tmp.file("empty.bin");
  og::write_shard(path, nullptr, 0);
  EXPECT_EQ(fs::file_size(path), 1024u);
  og::Shard s = og::Shard::open(path);
  EXPECT_EQ(s.num_tokens(), 0u);
}

TEST(Shard, OverwriteReplacesContentAndLeavesNoTempFiles) {
  TempDir tmp;
  const std::string path = tmp.file("a.bin");
  auto t1 = random_tokens(100, kVocab, 3);
  auto t2 = random_tokens(50, kVocab, 4);
  og::write_shard(path, t1.data(), t1.size());
  og::write_shard(path, t2.data(), t2.size());
  og::Shard s = og::Shard::open(path);
  ASSERT_EQ(s.num_tokens(), 50u);
  for (size_t i = 0; i < 50; i++) EXPECT_EQ(s.tokens()[i], t2[i]);
  EXPECT_EQ(tmp.listing(), std::vector<std::string>{"a.bin"});
}

TEST(Shard, ValidationErrorsNameTheFile) {
  TempDir tmp;
  auto tokens = random_tokens(100, kVocab, 5);
  auto open = [](const std::string& p) { return [p] { og::Shard::open(p); }; };

  const std::string magic = tmp.file("bad_magic.bin");
  write_raw(magic, 12345, og::kShardVersion, 100, tokens);
  expect_error(open(magic), {magic, "magic", "12345", "20240520"});

  const std::string version = tmp.file("bad_version.bin");
  write_raw(version, og::kShardMagic, 7, 100, tokens);
  expect_error(open(version), {version, "version 7", "expected 1"});

  const std::string truncated = tmp.file("truncated.bin");
  write_raw(truncated, og::kShardMagic, og::kShardVersion, 101, tokens);  // says 101, has 100
  expect_error(open(truncated), {truncated, "truncated", "101 tokens", "1226 bytes", "1224 bytes"});

  const std::string trailing = tmp.file("trailing.bin");
  write_raw(trailing, og::kShardMagic, og::kShardVersion, 100, tokens, 3);
  expect_error(open(trailing), {trailing, "3 trailing bytes", "100 tokens", "1227 bytes"});

  const std::string negative = tmp.file("negative.bin");
  write_raw(negative, og::kShardMagic, og::kShardVersion, -4, tokens);
  expect_error(open(negative), {negative, "negative token count -4"});

  const std::string short_header = tmp.file("short.bin");
  std::ofstream(short_header, std::ios::binary).write(std::string(1000, '\0').data(), 1000);
  expect_error(open(short_header), {short_header, "truncated header", "1000 bytes"});

  const std::string empty = tmp.file("zero_bytes.bin");
  std::ofstream(empty, std::ios::binary).close();
  expect_error(open(empty), {empty, "truncated header", "0 bytes"});

  expect_error(open(tmp.file("missing.bin")), {tmp.file("missing.bin"), "cannot open", "No such file"});
  fs::create_directory(tmp.file("a_dir.bin"));
  expect_error(open(tmp.file("a_dir.bin")), {tmp.file("a_dir.bin"), "not a regular file"});
}

TEST(Shard, ReadChecksVocabAndBounds) {
  TempDir tmp;
  const std::string path = tmp.file("vocab.bin");
  auto tokens = random_tokens(1000, 1000, 6);
  tokens[777] = 5000;
  og::write_shard(path, tokens.data(), tokens.size());
  og::Shard s = og::Shard::open(path);
  std::vector<int32_t> out(1000);

  expect_error([&] { s.read(0, 1000, out.data(), 1000); }, {path, "token offset 777", "id 5000", "vocab size 1000"});
  // The offset reported is the shard offset, not the offset within the read.
  expect_error([&] { s.read(700, 100, out.data(), 1000); }, {path, "token offset 777"});
  // Id == vocab_size is out of range too.
  expect_error([&] { s.read(777, 1, out.data(), 5000); }, {path, "token offset 777", "vocab size 5000"});
  // Reads that avoid the bad token, or with a vocabulary that covers it, succeed.
  s.read(0, 777, out.data(), 1000);
  for (size_t i = 0; i < 777; i++) ASSERT_EQ(out[i], tokens[i]);
  s.read(778, 222, out.data(), 1000);
  s.read(0, 1000, out.data(), 5001);
  EXPECT_EQ(out[777], 5000);

  expect_error([&] { s.read(990, 11, out.data(), kVocab); }, {path, "out of range", "1000 tokens"});
  expect_error([&] { s.read(1001, 0, out.data(), kVocab); }, {path, "out of range"});
  expect_error([&] { s.read(5, SIZE_MAX, out.data(), kVocab); }, {path, "out of range"});
}

TEST(Shard, WriteIntoMissingDirectoryFailsCleanly) {
  TempDir tmp;
  const std::string path = tmp.file("no_such_dir/x.bin");
  auto tokens = random_tokens(10, kVocab, 7);
  expect_error([&] { og::write_shard(path, tokens.data(), tokens.size()); }, {path, "No such file or directory"});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(tmp.listing().empty());
}

TEST(Shard, WriteOverDirectoryFailsAndRemovesTemp) {
  TempDir tmp;
  const std::string path = tmp.file("taken");
  fs::create_directory(path);
  auto tokens = random_tokens(10, kVocab, 8);
  expect_error([&] { og::write_shard(path, tokens.data(), tokens.size()); }, {path, "rename"});
  EXPECT_TRUE(fs::is_directory(path));
  EXPECT_EQ(tmp.listing(), std::vector<std::string>{"taken"});
}

TEST(Shard, WriteIntoReadOnlyDirectoryFails) {
  TempDir tmp;
  const std::string sub = tmp.file("ro");
  fs::create_directory(sub);
  fs::permissions(sub, fs::perms::owner_read | fs::perms::owner_exec, fs::perm_options::replace);
  if (::access(sub.c_str(), W_OK) == 0) GTEST_SKIP() << "running with privileges that ignore directory permissions";
  const std::string path = sub + "/x.bin";
  auto tokens = random_tokens(10, kVocab, 9);
  expect_error([&] { og::write_shard(path, tokens.data(), tokens.size()); }, {path, "Permission denied"});
  EXPECT_FALSE(fs::exists(path));
}

// A full disk, simulated with a file-size limit (writes past it fail with EFBIG once SIGXFSZ is
// ignored): the failed write leaves the previous content of `path` untouched and no temp file.
TEST(Shard, WriteThatRunsOutOfSpaceLeavesOldFileIntact) {
  TempDir tmp;
  const std::string path = tmp.file("full.bin");
  auto old_tokens = random_tokens(100, kVocab, 10);
  og::write_shard(path, old_tokens.data(), old_tokens.size());
  auto big = random_tokens(20000, kVocab, 11);

  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  rlimit limited = saved;
  limited.rlim_cur = 8192;
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  std::string msg;
  try {
    og::write_shard(path, big.data(), big.size());
  } catch (const og::Error& e) {
    msg = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, old_handler);

  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("writing the tokens"), std::string::npos) << msg;
  EXPECT_NE(msg.find("File too large"), std::string::npos) << msg;
  EXPECT_EQ(tmp.listing(), std::vector<std::string>{"full.bin"});
  og::Shard s = og::Shard::open(path);
  ASSERT_EQ(s.num_tokens(), 100u);
  for (size_t i = 0; i < 100; i++) EXPECT_EQ(s.tokens()[i], old_tokens[i]);
}

TEST(Shard, GlobIsSortedAndFiltered) {
  TempDir tmp;
  auto tokens = random_tokens(10, kVocab, 12);
  for (const char* name :
       {"x_train_000002.bin", "x_train_000000.bin", "x_val_000000.bin", "x_train_000001.bin", "x_train_notes.txt"})
    og::write_shard(tmp.file(name), tokens.data(), tokens.size());
  auto files = og::expand_glob(tmp.file("x_train_*.bin"), "data.train");
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0], tmp.file("x_train_000000.bin"));
  EXPECT_EQ(files[1], tmp.file("x_train_000001.bin"));
  EXPECT_EQ(files[2], tmp.file("x_train_000002.bin"));
  // A plain path (no wildcard) that exists matches itself.
  EXPECT_EQ(og::expand_glob(tmp.file("x_val_000000.bin"), "data.val"),
            std::vector<std::string>{tmp.file("x_val_000000.bin")});
}

TEST(Shard, EmptyGlobIsAnError) {
  TempDir tmp;
  const std::string pattern = tmp.file("*.bin");
  expect_error([&] { og::expand_glob(pattern, "data.train"); }, {"data.train", "no files match", pattern});
  const std::string missing_dir = tmp.file("nowhere/*.bin");
  expect_error([&] { og::expand_glob(missing_dir, "data.val"); }, {"data.val", missing_dir});
  expect_error([&] { og::expand_glob("", "data.val"); }, {"data.val", "empty"});
}
