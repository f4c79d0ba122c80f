// Shard format: byte-exact header, round trip, and every validation error naming the file.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "data/shard.h"
#include "tests/common/tiny_run.h"

using og_test::TempDir;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const og::Error& e) {
    return e.what();
  }
  return "";
}

void write_raw(const std::string& path, const std::vector<int32_t>& header, const std::vector<uint16_t>& tokens,
               size_t extra_bytes = 0) {
  std::vector<int32_t> h(256, 0);
  std::copy(header.begin(), header.end(), h.begin());
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(h.data()), 1024);
  f.write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  for (size_t i = 0; i < extra_bytes; ++i) f.put('x');
}

}  // namespace

TEST(Shard, RoundTripAndHeaderBytes) {
  TempDir d("og_shard_rt");
  og::Rng rng(1);
  std::vector<uint16_t> t(12345);
  for (auto& x : t) x = (uint16_t)(1 + rng.below(50256));
  const std::string path = d / "a.bin";
  og::write_shard(path, t.data(), t.size());
  // header: magic, version, count (little-endian int32), then zeros
  std::ifstream f(path, std::ios::binary);
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_EQ(bytes.size(), 1024 + 2 * t.size());
  auto le32 = [&](size_t off) {
    return (int32_t)(bytes[off] | bytes[off + 1] << 8 | bytes[off + 2] << 16 | (uint32_t)bytes[off + 3] << 24);
  };
  EXPECT_EQ(le32(0), 20240520);
  EXPECT_EQ(le32(4), 1);
  EXPECT_EQ(le32(8), 12345);
  for (size_t i = 12; i < 1024; ++i) ASSERT_EQ(bytes[i], 0) << i;
  EXPECT_EQ(bytes[1024], t[0] & 0xff);
  EXPECT_EQ(bytes[1025], t[0] >> 8);

  og::Shard s = og::Shard::open(path);
  ASSERT_EQ(s.num_tokens(), t.size());
  EXPECT_EQ(std::memcmp(s.tokens(), t.data(), t.size() * 2), 0);
  std::vector<int32_t> out(100);
  s.read(500, 100, out.data(), 50304);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(out[i], t[500 + i]);
  og::Shard moved = std::move(s);
  EXPECT_EQ(moved.num_tokens(), t.size());
}

TEST(Shard, ValidationErrorsNameTheFile) {
  TempDir d("og_shard_bad");
  std::vector<uint16_t> t(100, 7);
  const std::string magic = d / "magic.bin", version = d / "version.bin", trunc = d / "trunc.bin",
                    trail = d / "trail.bin", shorth = d / "short.bin", ok = d / "ok.bin";
  write_raw(magic, {12345, 1, 100}, t);
  write_raw(version, {20240520, 2, 100}, t);
  write_raw(trunc, {20240520, 1, 200}, t);
  write_raw(trail, {20240520, 1, 100}, t, 3);
  std::ofstream(shorth, std::ios::binary) << "short";
  std::string m = error_of([&] { og::Shard::open(magic); });
  EXPECT_NE(m.find(magic), std::string::npos) << m;
  EXPECT_NE(m.find("magic"), std::string::npos) << m;
  m = error_of([&] { og::Shard::open(version); });
  EXPECT_NE(m.find("version 2"), std::string::npos) << m;
  m = error_of([&] { og::Shard::open(trunc); });
  EXPECT_NE(m.find("truncated"), std::string::npos) << m;
  EXPECT_NE(m.find("200 tokens"), std::string::npos) << m;
  m = error_of([&] { og::Shard::open(trail); });
  EXPECT_NE(m.find("3 trailing bytes"), std::string::npos) << m;
  m = error_of([&] { og::Shard::open(shorth); });
  EXPECT_NE(m.find("truncated header"), std::string::npos) << m;
  m = error_of([&] { og::Shard::open(d / "missing.bin"); });
  EXPECT_NE(m.find("missing.bin"), std::string::npos) << m;

  // out-of-range token id, reported with its offset
  t[42] = 60000;
  og::write_shard(ok, t.data(), t.size());
  og::Shard s = og::Shard::open(ok);
  std::vector<int32_t> out(100);
  m = error_of([&] { s.read(0, 100, out.data(), 50304); });
  EXPECT_NE(m.find(ok), std::string::npos) << m;
  EXPECT_NE(m.find("offset 42"), std::string::npos) << m;
  EXPECT_NE(m.find("60000"), std::string::npos) << m;
  m = error_of([&] { s.read(90, 20, out.data(), 65536); });
  EXPECT_NE(m.find("past its end"), std::string::npos) << m;
}

TEST(Shard, GlobAndFailedWrites) {
  TempDir d("og_shard_glob");
  std::vector<uint16_t> t(10, 1);
  og::write_shard(d / "x_002.bin", t.data(), t.size());
  og::write_shard(d / "x_001.bin", t.data(), t.size());
  const auto files = og::expand_glob(d / "x_*.bin", "data.train");
  ASSERT_EQ(files.size(), 2u);
  EXPECT_LT(files[0], files[1]);
  std::string m = error_of([&] { og::expand_glob(d / "y_*.bin", "data.val"); });
  EXPECT_NE(m.find("data.val"), std::string::npos) << m;
  EXPECT_NE(m.find("y_*.bin"), std::string::npos) << m;
  // writing into a folder that does not exist: clear error, no file
  m = error_of([&] { og::write_shard(d / "nodir/z.bin", t.data(), t.size()); });
  EXPECT_NE(m.find("z.bin"), std::string::npos) << m;
  EXPECT_FALSE(std::filesystem::exists(d / "nodir/z.bin"));
}
