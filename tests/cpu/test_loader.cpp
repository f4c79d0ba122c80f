// Distributed data loader: windows of every rank against an independently enumerated schedule
// of step spans (ranks 0..R-1 of R in {1,2,3}), shard switching, wrap-around with epoch counts,
// determinism, exact save/restore, reset, and construction / restore errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/loader.h"

namespace fs = std::filesystem;

namespace {

constexpr int kVocab = 50257;
constexpr int kB = 2, kT = 8, kBT = kB * kT;

struct TempDir {
  fs::path dir;
  TempDir() {
    std::random_device rd;
    dir = fs::temp_directory_path() / fmt::format("orthogpt_test_loader_{}_{:x}", ::getpid(), rd());
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

std::vector<uint16_t> random_tokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(0, kVocab - 1);
  std::vector<uint16_t> t(n);
  for (auto& x : t) x = static_cast<uint16_t>(dist(rng));
  return t;
}

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an og::Error containing '" << parts.at(0) << "'";
  } catch (const og::Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// Three shards of random tokens with lengths that leave different remainders after the last
// step for every world size tested; written out of order to exercise sorting.
struct Corpus {
  TempDir tmp;
  std::vector<std::string> names = {"c_train_000000.bin", "c_train_000001.bin", "c_train_000002.bin"};
  std::vector<size_t> lengths = {200, 97, 161};
  std::vector<std::vector<uint16_t>> shards;
  Corpus() {
    shards.resize(3);
    for (int i : {2, 0, 1}) {
      shards[i] = random_tokens(lengths[i], 100 + i);
      og::write_shard(tmp.file(names[i]), shards[i].data(), shards[i].size());
    }
  }
  std::string glob() const { return tmp.file("c_train_*.bin"); }
};

// The schedule of step spans, enumerated per shard instead of simulated: shard s holds
// floor((len_s - 1) / (R*B*T)) steps, at bases 0, R*B*T, 2*R*B*T, ... (each step needs
// R*B*T + 1 tokens from its base).
struct Step {
  size_t shard;
  size_t base;
};
std::vector<Step> schedule(const std::vector<size_t>& lengths, int world) {
  const size_t span = static_cast<size_t>(world) * kBT;
  std::vector<Step> steps;
  for (size_t s = 0; s < lengths.size(); s++)
    for (size_t k = 0; k < (lengths[s] - 1) / span; k++) steps.push_back({s, k * span});
  return steps;
}

struct Batch {
  std::vector<int32_t> x, y;
  bool operator==(const Batch&) const = default;
};
Batch next(og::DataLoader& dl) {
  Batch b{std::vector<int32_t>(kBT, -1), std::vector<int32_t>(kBT, -1)};
  dl.next_batch(b.x.data(), b.y.data());
  return b;
}
std::vector<Batch> take(og::DataLoader& dl, int n) {
  std::vector<Batch> out;
  for (int i = 0; i < n; i++) out.push_back(next(dl));
  return out;
}

}  // namespace

TEST(DataLoader, WindowsMatchTheScheduleForEveryRankAndWorldSize) {
  Corpus c;
  for (int world : {1, 2, 3}) {
    SCOPED_TRACE("world " + std::to_string(world));
    const auto steps = schedule(c.lengths, world);
    const int per_epoch = static_cast<int>(steps.size());
    std::vector<std::unique_ptr<og::DataLoader>> ranks;
    for (int r = 0; r < world; r++)
      ranks.push_back(std::make_unique<og::DataLoader>(c.glob(), "data.train", kB, kT, r, world, kVocab));
    EXPECT_EQ(ranks[0]->files(),
              (std::vector<std::string>{c.tmp.file(c.names[0]), c.tmp.file(c.names[1]), c.tmp.file(c.names[2])}));
    EXPECT_EQ(ranks[0]->total_tokens(), 200 + 97 + 161);

    const int total_steps = 2 * per_epoch + 3;  // two full wraps and a bit
    for (int step = 0; step < total_steps; step++) {
      const Step& st = steps[step % per_epoch];
      const auto& toks = c.shards[st.shard];
      std::vector<int32_t> all_inputs;  // ranks' inputs concatenated, in rank order
      for (int r = 0; r < world; r++) {
        Batch b = next(*ranks[r]);
        const size_t start = st.base + static_cast<size_t>(r) * kBT;
        for (int i = 0; i < kBT; i++) {
          ASSERT_EQ(b.x[i], toks[start + i]) << "step " << step << " rank " << r << " i " << i;
          ASSERT_EQ(b.y[i], toks[start + i + 1]) << "step " << step << " rank " << r << " i " << i;
        }
        all_inputs.insert(all_inputs.end(), b.x.begin(), b.x.end());
        // All ranks agree on where they are after each step.
        EXPECT_EQ(ranks[r]->state().shard, ranks[0]->state().shard);
        EXPECT_EQ(ranks[r]->state().epoch, ranks[0]->state().epoch);
        EXPECT_EQ(ranks[r]->state().position - r * kBT, ranks[0]->state().position);
      }
      // The step's union is one contiguous span of the shard, starting at the base.
      for (size_t i = 0; i < all_inputs.size(); i++) ASSERT_EQ(all_inputs[i], toks[st.base + i]) << i;
      // Epoch counts completed passes: it increments exactly when the schedule wraps.
      EXPECT_EQ(ranks[0]->state().epoch, (step + 1) / per_epoch) << "step " << step;
      EXPECT_EQ(static_cast<size_t>(ranks[0]->state().shard), steps[(step + 1) % per_epoch].shard);
    }
  }
}

TEST(DataLoader, ShardSwitchAndWrapPositions) {
  // World 2, B*T = 16: a step needs 33 tokens, bases advance by 32: shard lengths 200, 97, 161
  // hold 6, 3, 5 steps.
  Corpus c;
  og::DataLoader dl(c.glob(), "data.train", kB, kT, 1, 2, kVocab);
  EXPECT_EQ(dl.state().shard, 0);
  EXPECT_EQ(dl.state().position, kBT);
  take(dl, 5);
  EXPECT_EQ(dl.state().shard, 0);
  EXPECT_EQ(dl.state().position, kBT + 5 * 2 * kBT);  // base 160: 160 + 33 = 193 <= 200
  take(dl, 1);
  EXPECT_EQ(dl.state().shard, 1);  // base 192: 192 + 33 > 200
  EXPECT_EQ(dl.state().position, kBT);
  take(dl, 3 + 5);
  EXPECT_EQ(dl.state().shard, 0);
  EXPECT_EQ(dl.state().epoch, 1);
  EXPECT_EQ(dl.state().position, kBT);
}

TEST(DataLoader, SingleShardWrapsOntoItself) {
  TempDir tmp;
  auto toks = random_tokens(3 * kBT + 1, 7);  // exactly 3 steps for world 1
  og::write_shard(tmp.file("only.bin"), toks.data(), toks.size());
  og::DataLoader dl(tmp.file("*.bin"), "data.val", kB, kT, 0, 1, kVocab);
  auto first = take(dl, 3);
  EXPECT_EQ(dl.state().epoch, 1);
  EXPECT_EQ(dl.state().position, 0);
  auto second = take(dl, 3);
  EXPECT_EQ(first, second);
  EXPECT_EQ(first[2].y.back(), toks.back());  // the last step ends exactly at the shard's end
  EXPECT_EQ(dl.state().epoch, 2);
}

TEST(DataLoader, DeterministicAcrossInstances) {
  Corpus c;
  og::DataLoader a(c.glob(), "data.train", kB, kT, 1, 3, kVocab);
  og::DataLoader b(c.glob(), "data.train", kB, kT, 1, 3, kVocab);
  EXPECT_EQ(take(a, 25), take(b, 25));
}

TEST(DataLoader, SaveRestoreReplaysExactly) {
  Corpus c;
  for (int world : {1, 3}) {
    const int per_epoch = static_cast<int>(schedule(c.lengths, world).size());
    // Save points: mid-shard, just before a shard switch, just before the wrap, after it.
    for (int save_at : {1, 3, per_epoch - 1, per_epoch + 2}) {
      SCOPED_TRACE(fmt::format("world {} save at {}", world, save_at));
      const int rank = world - 1;
      og::DataLoader dl(c.glob(), "data.train", kB, kT, rank, world, kVocab);
      take(dl, save_at);
      const og::LoaderState saved = dl.state();
      const auto after = take(dl, per_epoch + 2);
      // Same instance.
      dl.restore(saved);
      EXPECT_EQ(take(dl, per_epoch + 2), after);
      // A fresh instance (as on resume from a checkpoint).
      og::DataLoader fresh(c.glob(), "data.train", kB, kT, rank, world, kVocab);
      fresh.restore(saved);
      EXPECT_EQ(fresh.state().shard, saved.shard);
      EXPECT_EQ(fresh.state().position, saved.position);
      EXPECT_EQ(fresh.state().epoch, saved.epoch);
      EXPECT_EQ(take(fresh, per_epoch + 2), after);
      EXPECT_EQ(fresh.state().epoch, dl.state().epoch);
    }
  }
}

TEST(DataLoader, ResetReplaysFromTheFirstWindow) {
  Corpus c;
  og::DataLoader dl(c.glob(), "data.val", kB, kT, 2, 3, kVocab);
  const auto first = take(dl, 13);  // crosses shards and the wrap
  EXPECT_GT(dl.state().epoch, 0);
  dl.reset();
  EXPECT_EQ(dl.state().shard, 0);
  EXPECT_EQ(dl.state().position, 2 * kBT);
  EXPECT_EQ(dl.state().epoch, 0);
  EXPECT_EQ(take(dl, 13), first);
}

TEST(DataLoader, RestoreOfImpossibleStatesIsAnError) {
  Corpus c;
  og::DataLoader dl(c.glob(), "data.train", kB, kT, 1, 3, kVocab);  // span 48: steps at 16, 64, 112, ...
  const og::LoaderState good = dl.state();
  auto restore = [&](og::LoaderState s) { return [&dl, s] { dl.restore(s); }; };
  expect_error(restore({3, 16, 0}), {"data.train", "shard index out of range"});
  expect_error(restore({-1, 16, 0}), {"data.train", "shard index out of range"});
  expect_error(restore({0, 16, -1}), {"data.train", "negative epoch"});
  expect_error(restore({0, 17, 0}), {"data.train", "position 17", "world size"});
  expect_error(restore({0, 0, 0}), {"data.train", "position 0"});  // rank 0's window, not rank 1's
  expect_error(restore({1, 16 + 2 * 48, 0}), {"data.train", c.names[1], "does not fit"});  // 96 + 49 > 97
  expect_error(restore({0, 16 + 4 * 48, 0}), {"data.train", c.names[0], "does not fit"});  // 192 + 49 > 200
  // A failed restore leaves the state untouched; valid edge states are accepted.
  EXPECT_EQ(dl.state().position, good.position);
  dl.restore({1, 16 + 48, 0});  // 48 + 49 = 97: shard 1's last step
  EXPECT_EQ(dl.state().shard, 1);
  dl.restore({0, 16 + 3 * 48, 5});  // base 144: 144 + 49 = 193 <= 200
  EXPECT_EQ(dl.state().epoch, 5);
  Batch b = next(dl);
  EXPECT_EQ(b.x[0], c.shards[0][16 + 3 * 48]);
  EXPECT_EQ(dl.state().shard, 1);
}

TEST(DataLoader, ConstructionErrors) {
  Corpus c;
  // Too small a shard for one step: names the file and the minimum size.
  expect_error([&] { og::DataLoader(c.glob(), "data.train", kB, kT, 0, 7, kVocab); },
               {"data.train", c.names[1], "97 tokens", "world*B*T+1 = 7*2*8+1 = 113"});
  // 97 tokens are exactly one step for world 6 (6*16+1): accepted; world 7 is not, on every rank.
  EXPECT_NO_THROW(og::DataLoader(c.tmp.file("c_train_000001.bin"), "data.train", kB, kT, 0, 6, kVocab));
  expect_error([&] { og::DataLoader(c.tmp.file("c_train_000001.bin"), "data.train", kB, kT, 3, 7, kVocab); },
               {"data.train", c.names[1], "at least"});
  expect_error([&] { og::DataLoader(c.tmp.file("none_*.bin"), "data.val", kB, kT, 0, 1, kVocab); },
               {"data.val", "no files match"});
  expect_error([&] { og::DataLoader(c.glob(), "data.train", 0, kT, 0, 1, kVocab); }, {"data.train", "B=0"});
  expect_error([&] { og::DataLoader(c.glob(), "data.train", kB, kT, 2, 2, kVocab); }, {"data.train", "rank 2"});
  expect_error([&] { og::DataLoader(c.glob(), "data.train", kB, kT, -1, 2, kVocab); }, {"data.train", "rank -1"});

  // A corrupt shard anywhere in the list fails at construction, naming it.
  std::vector<uint8_t> junk(1100, 0x11);
  const std::string bad = c.tmp.file("c_train_000003.bin");
  FILE* f = std::fopen(bad.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::fwrite(junk.data(), 1, junk.size(), f);
  std::fclose(f);
  expect_error([&] { og::DataLoader(c.glob(), "data.train", kB, kT, 0, 1, kVocab); },
               {"data.train", "c_train_000003.bin", "magic"});
}

TEST(DataLoader, BadTokenAndChangedShardAreErrors) {
  Corpus c;
  // A token id beyond the model's vocabulary in shard 1 at offset 20 (inside rank 0's first
  // window there, world 1): the error names the file and the offset; the state does not move.
  auto toks = c.shards[1];
  toks[20] = 60000;
  og::write_shard(c.tmp.file(c.names[1]), toks.data(), toks.size());
  og::DataLoader dl(c.glob(), "data.train", kB, kT, 0, 1, kVocab);
  const int steps_in_shard0 = static_cast<int>((c.lengths[0] - 1) / kBT);
  take(dl, steps_in_shard0 + 1);  // shard 1, window [16, 33)
  const og::LoaderState before = dl.state();
  expect_error([&] { next(dl); }, {"data.train", c.names[1], "token offset 20", "60000"});
  EXPECT_EQ(dl.state().position, before.position);

  // A shard rewritten with another length after construction is detected when it is opened.
  og::write_shard(c.tmp.file(c.names[1]), c.shards[1].data(), c.shards[1].size());
  og::DataLoader dl2(c.glob(), "data.train", kB, kT, 0, 1, kVocab);
  auto shorter = random_tokens(150, 9);
  og::write_shard(c.tmp.file(c.names[2]), shorter.data(), shorter.size());
  take(dl2, steps_in_shard0 + static_cast<int>((c.lengths[1] - 1) / kBT));
  expect_error([&] { next(dl2); }, {"data.train", c.names[2], "changed", "150 tokens", "161"});
}
