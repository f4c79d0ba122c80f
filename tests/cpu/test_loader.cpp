// Distributed loader: the reference's windows per rank, shard switching, exact save/restore.
#include <gtest/gtest.h>

#include "core/error.h"
#include "data/loader.h"
#include "tests/common/tiny_run.h"

using og_test::TempDir;

namespace {

// Shards whose token at global index g is (g % 50000): windows are easy to predict.
std::vector<size_t> write_counting_shards(const std::string& dir, const std::vector<size_t>& sizes) {
  size_t g = 0;
  for (size_t s = 0; s < sizes.size(); ++s) {
    std::vector<uint16_t> t(sizes[s]);
    for (auto& x : t) x = (uint16_t)(g++ % 50000);
    char name[64];
    std::snprintf(name, sizeof name, "/d_%06zu.bin", s);
    og::write_shard(dir + name, t.data(), t.size());
  }
  return sizes;
}

}  // namespace

TEST(Loader, WindowsFollowTheReferenceScheme) {
  TempDir d("og_loader");
  const std::vector<size_t> sizes = {1000, 700, 900};
  write_counting_shards(d.str(), sizes);
  std::vector<size_t> starts = {0, 1000, 1700};
  const int B = 2, T = 8;
  for (int R : {1, 2, 3}) {
    // simulate the reference per rank: (shard, pos) sequence
    for (int r = 0; r < R; ++r) {
      og::DataLoader L(d / "d_*.bin", "data.train", B, T, r, R, 50304);
      size_t shard = 0, pos = (size_t)r * B * T;
      std::vector<int32_t> x(B * T), y(B * T);
      for (int step = 0; step < 300; ++step) {
        L.next_batch(x.data(), y.data());
        for (int i = 0; i < B * T; ++i) {
          ASSERT_EQ(x[i], (int32_t)((starts[shard] + pos + i) % 50000)) << "R " << R << " r " << r << " step " << step;
          ASSERT_EQ(y[i], (int32_t)((starts[shard] + pos + i + 1) % 50000));
        }
        pos += (size_t)R * B * T;
        if (pos + (size_t)R * B * T + 1 > sizes[shard]) {
          shard = (shard + 1) % sizes.size();
          pos = (size_t)r * B * T;
        }
      }
      EXPECT_GT(L.state().epoch, 0);  // 300 steps wrap around the 2600 tokens
    }
  }
}

TEST(Loader, RanksOfAStepCoverOneContiguousSpan) {
  TempDir d("og_loader_span");
  write_counting_shards(d.str(), {5000});
  const int B = 3, T = 4, R = 3;
  std::vector<og::DataLoader> L;
  for (int r = 0; r < R; ++r) L.emplace_back(d / "d_*.bin", "data.train", B, T, r, R, 50304);
  std::vector<int32_t> x(B * T), y(B * T);
  for (int step = 0; step < 5; ++step) {
    for (int r = 0; r < R; ++r) {
      L[r].next_batch(x.data(), y.data());
      EXPECT_EQ(x[0], step * R * B * T + r * B * T);
    }
  }
}

TEST(Loader, SaveRestoreResetAreExact) {
  TempDir d("og_loader_state");
  write_counting_shards(d.str(), {600, 800});
  og::DataLoader L(d / "d_*.bin", "data.train", 2, 16, 1, 2, 50304);
  std::vector<int32_t> x(32), y(32), x2(32), y2(32);
  for (int i = 0; i < 17; ++i) L.next_batch(x.data(), y.data());
  const og::LoaderState s = L.state();
  std::vector<std::vector<int32_t>> after;
  for (int i = 0; i < 25; ++i) {
    L.next_batch(x.data(), y.data());
    after.push_back(x);
  }
  og::DataLoader M(d / "d_*.bin", "data.train", 2, 16, 1, 2, 50304);
  M.restore(s);
  for (int i = 0; i < 25; ++i) {
    M.next_batch(x2.data(), y2.data());
    ASSERT_EQ(x2, after[i]) << i;
  }
  // reset replays the first window
  og::DataLoader fresh(d / "d_*.bin", "data.train", 2, 16, 1, 2, 50304);
  fresh.next_batch(x.data(), y.data());
  M.reset();
  M.next_batch(x2.data(), y2.data());
  EXPECT_EQ(x, x2);
  // impossible states are refused
  EXPECT_THROW(M.restore({5, 0, 0}), og::Error);
  EXPECT_THROW(M.restore({0, 599, 0}), og::Error);
}

TEST(Loader, ClearErrors) {
  TempDir d("og_loader_err");
  write_counting_shards(d.str(), {40});
  try {
    og::DataLoader L(d / "d_*.bin", "data.train", 2, 16, 0, 2, 50304);
    FAIL();
  } catch (const og::Error& e) {
    EXPECT_NE(std::string(e.what()).find("fewer than one step"), std::string::npos) << e.what();
  }
  try {
    og::DataLoader L(d / "nope_*.bin", "data.val", 2, 16, 0, 1, 50304);
    FAIL();
  } catch (const og::Error& e) {
    EXPECT_NE(std::string(e.what()).find("data.val"), std::string::npos) << e.what();
  }
  // token ids beyond the model's vocabulary stop the read, naming file and offset
  og::DataLoader small(d / "d_*.bin", "data.train", 1, 8, 0, 1, 20);
  std::vector<int32_t> x(8), y(8);
  small.next_batch(x.data(), y.data());  // tokens 0..8 fit
  try {
    for (int i = 0; i < 4; ++i) small.next_batch(x.data(), y.data());
    FAIL();
  } catch (const og::Error& e) {
    EXPECT_NE(std::string(e.what()).find("offset 20"), std::string::npos) << e.what();
  }
}
