// Fault injection: what a crash, a full disk, a damaged data file or a NaN does to a run.
//   - a checkpoint writer SIGKILLed in the middle of writing tensors (the test-only hook
//     OG_FAULT_CHECKPOINT_KILL_AFTER_BYTES, checkpoint.h) leaves the previous checkpoint intact,
//     `latest` on it, and a temp folder that readers ignore and the next write removes;
//   - a full disk (RLIMIT_FSIZE in a forked child, SIGXFSZ ignored, so write() fails with EFBIG)
//     is an og::Error naming the file, `orthogpt train` exits non-zero, nothing new is published;
//   - a shard truncated before the run, before the loader switches to it, or while it is being
//     read is an og::Error naming the file and the byte offset, never a SIGBUS;
//   - a NaN gradient stops `orthogpt train` naming the step, or is skipped and counted in
//     metrics.jsonl with train.skip_nonfinite.
// The end-to-end cases run the orthogpt executable of this build (a tiny model, a few steps).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "data/loader.h"
#include "tests/common/tiny_run.h"
#include "train/checkpoint.h"

using og_test::TempDir;
namespace fs = std::filesystem;

namespace {

std::vector<float> random_floats(size_t n, uint64_t seed) {
  og::Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = (float)rng.below(1u << 20) / 4096.0f - 128.0f;
  return v;
}

og::CheckpointMeta meta_at(int64_t step) {
  og::CheckpointMeta m;
  m.step = step;
  m.world = 1;
  m.loaders = {{0, 16 * step, 0}};
  m.model_signature = "fault-test model";
  m.optimizer_signature = "fault-test optimizer";
  m.config_yaml = "train:\n  steps: 10\n";
  return m;
}

// The checkpoint of step `step`: two tensors of random values (so a mix-up cannot go unseen).
struct Tensors {
  std::vector<float> params, moment;
  explicit Tensors(uint64_t seed) : params(random_floats(20000, seed)), moment(random_floats(12345, seed + 1)) {}
  std::vector<og::NamedTensor> named() const {
    return {{"params", params.data(), params.size() * 4}, {"optim/m", moment.data(), moment.size() * 4}};
  }
};

void expect_checkpoint_holds(const std::string& path, int64_t step, const Tensors& t) {
  og::CheckpointReader r(path);
  EXPECT_EQ(r.meta().step, step) << path;
  std::vector<float> p(t.params.size()), m(t.moment.size());
  r.read("params", p.data(), p.size() * 4);
  r.read("optim/m", m.data(), m.size() * 4);
  EXPECT_TRUE(p == t.params) << path << ": params differ from what was written";
  EXPECT_TRUE(m == t.moment) << path << ": optim/m differs from what was written";
}

// Names in a folder, sorted.
std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Runs fn in a forked child that exits with fn's return value (an escaped exception: 99); returns
// the wait status. Output the child writes to `message_fd` comes back through a pipe.
template <typename Fn> int in_child(Fn fn, std::string* message = nullptr) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) return -1;
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    int code = 99;
    try {
      code = fn(pipefd[1]);
    } catch (...) {}
    ::close(pipefd[1]);
    ::_exit(code);
  }
  ::close(pipefd[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) out.append(buf, (size_t)n);
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (message) *message = out;
  return status;
}

void write_fd(int fd, const std::string& s) {
  for (size_t off = 0; off < s.size();) {
    const ssize_t w = ::write(fd, s.data() + off, s.size() - off);
    if (w <= 0) return;
    off += (size_t)w;
  }
}

void limit_file_size(rlim_t bytes) {
  ::signal(SIGXFSZ, SIG_IGN);  // a write past the limit then fails with EFBIG instead of killing
  rlimit lim{};
  ::getrlimit(RLIMIT_FSIZE, &lim);
  lim.rlim_cur = bytes;
  ::setrlimit(RLIMIT_FSIZE, &lim);
}

struct RunResult {
  int status = -1;     // wait status
  std::string output;  // stdout + stderr
  int exit_code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
};

// Runs `orthogpt train --config <yaml> extra...` in a child, optionally with a file-size limit.
RunResult run_orthogpt_train(const og::Config& c, const std::string& work, const std::vector<std::string>& extra = {},
                             rlim_t file_limit = RLIM_INFINITY) {
  const std::string cfg_path = work + "/run_config.yaml", log_path = work + "/run_output.txt";
  {
    std::ofstream f(cfg_path);
    f << og::config_to_yaml(c);
  }
  std::vector<std::string> args = {std::string(OG_BINARY_DIR) + "/orthogpt", "train", "--config", cfg_path};
  args.insert(args.end(), extra.begin(), extra.end());
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    if (file_limit != RLIM_INFINITY) limit_file_size(file_limit);
    ::setenv("OMP_NUM_THREADS", "1", 1);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  RunResult r;
  ::waitpid(pid, &r.status, 0);
  std::ifstream in(log_path);
  std::stringstream ss;
  ss << in.rdbuf();
  r.output = ss.str();
  return r;
}

og::Config tiny_run(const std::string& data, const std::string& out) {
  og::Config c = og_test::tiny_config(data, out);
  c.log.level = "info";
  c.train.threads = 1;
  return c;
}

}  // namespace

// ---- (a) a checkpoint writer killed midway ----------------------------------------------------

TEST(Faults, CheckpointWriterKilledMidwayLeavesThePreviousOne) {
  const Tensors first(1), second(2);
  // state.bin of this checkpoint: 64-byte header + table, then 80000 + 49408 bytes of tensors.
  // Kill points: in the header, in the middle of the first tensor, in the second tensor, and after
  // state.bin is complete (in meta.json).
  for (const int64_t kill_after : {int64_t(40), int64_t(50000), int64_t(100000), int64_t(129600)}) {
    SCOPED_TRACE("killed after " + std::to_string(kill_after) + " bytes");
    TempDir run("og_fault_kill");
    const std::string ck = run / "checkpoints", dir1 = og::checkpoint_dir(run.str(), 1),
                      dir2 = og::checkpoint_dir(run.str(), 2);
    og::write_checkpoint(dir1, meta_at(1), first.named());

    pid_t child = 0;
    std::fflush(nullptr);
    child = ::fork();
    if (child == 0) {
      ::setenv("OG_FAULT_CHECKPOINT_KILL_AFTER_BYTES", std::to_string(kill_after).c_str(), 1);
      try {
        og::write_checkpoint(dir2, meta_at(2), second.named());
      } catch (...) {
        ::_exit(2);
      }
      ::_exit(0);  // the hook did not fire: the parent reports it
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the writer was not killed by the fault hook (status " << status << ")";

    // the half-written temp folder is there, with exactly the bytes written before the kill
    const std::string tmp = dir2 + ".tmp-" + std::to_string(child);
    ASSERT_TRUE(fs::is_directory(tmp)) << "expected the killed writer's temp folder " << tmp;
    const uintmax_t full = fs::file_size(dir1 + "/state.bin");  // same tensor sizes
    ASSERT_EQ(full, 129544u);                                   // the kill points above assume this layout
    EXPECT_EQ(fs::file_size(tmp + "/state.bin"), std::min<uintmax_t>(full, (uintmax_t)kill_after));
    EXPECT_FALSE(fs::exists(dir2)) << "a half-written checkpoint was published";
    // readers: `latest` still names step 1, and every way of opening the run finds it intact
    EXPECT_EQ(og::latest_checkpoint(run.str()), dir1);
    expect_checkpoint_holds(run.str(), 1, first);
    expect_checkpoint_holds(ck, 1, first);
    expect_checkpoint_holds(dir1, 1, first);
    try {  // the temp folder itself is not a valid checkpoint
      og::CheckpointReader r(tmp);
      ADD_FAILURE() << "a half-written checkpoint was accepted";
    } catch (const og::Error&) {}
    // pruning to one checkpoint keeps step 1 (the temp folder does not count as the newest)
    og::prune_checkpoints(run.str(), 1);
    EXPECT_TRUE(fs::exists(dir1));

    // the next write succeeds, removes the leftover and moves `latest`
    og::write_checkpoint(dir2, meta_at(2), second.named());
    EXPECT_EQ(listing(ck), (std::vector<std::string>{"latest", "step_00000001", "step_00000002"}));
    EXPECT_EQ(og::latest_checkpoint(run.str()), dir2);
    expect_checkpoint_holds(run.str(), 2, second);
    expect_checkpoint_holds(dir1, 1, first);
  }
}

// A hook value that is not a byte count is refused, not ignored (a test relying on it would
// otherwise pass without injecting anything).
TEST(Faults, CheckpointKillHookRejectsGarbage) {
  TempDir run("og_fault_hook");
  const Tensors t(3);
  std::string msg;
  const int status = in_child(
      [&](int fd) {
        ::setenv("OG_FAULT_CHECKPOINT_KILL_AFTER_BYTES", "12kb", 1);
        try {
          og::write_checkpoint(og::checkpoint_dir(run.str(), 1), meta_at(1), t.named());
        } catch (const og::Error& e) {
          write_fd(fd, e.what());
          return 3;
        }
        return 0;
      },
      &msg);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << msg;
  EXPECT_NE(msg.find("OG_FAULT_CHECKPOINT_KILL_AFTER_BYTES"), std::string::npos) << msg;
}

// ---- (b) disk full while writing a checkpoint -------------------------------------------------

TEST(Faults, CheckpointOnAFullDiskIsAClearErrorAndKeepsThePreviousOne) {
  const Tensors first(4), second(5);
  TempDir run("og_fault_full");
  const std::string dir1 = og::checkpoint_dir(run.str(), 1), dir2 = og::checkpoint_dir(run.str(), 2);
  og::write_checkpoint(dir1, meta_at(1), first.named());
  std::string msg;
  const int status = in_child(
      [&](int fd) {
        limit_file_size(30000);  // state.bin needs ~130 KB
        try {
          og::write_checkpoint(dir2, meta_at(2), second.named());
        } catch (const og::Error& e) {
          write_fd(fd, e.what());
          return 3;
        }
        return 0;
      },
      &msg);
  ASSERT_TRUE(WIFEXITED(status)) << "the writer died instead of reporting the error (status " << status << ")";
  EXPECT_EQ(WEXITSTATUS(status), 3) << "expected an og::Error; message: " << msg;
  EXPECT_NE(msg.find("step_00000002.tmp-"), std::string::npos) << msg;
  EXPECT_NE(msg.find("state.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::strerror(EFBIG)), std::string::npos) << msg;
  // nothing new is visible and nothing is left behind; the previous checkpoint is intact
  EXPECT_EQ(listing(run / "checkpoints"), (std::vector<std::string>{"latest", "step_00000001"}));
  EXPECT_EQ(og::latest_checkpoint(run.str()), dir1);
  expect_checkpoint_holds(run.str(), 1, first);
}

TEST(Faults, TrainOnAFullDiskExitsNonZeroNamingTheFile) {
  TempDir data("og_fault_full_data"), out("og_fault_full_out");
  og_test::write_random_shards(data.str(), "train", 1, 3000, 256, 31);
  og_test::write_random_shards(data.str(), "val", 1, 2000, 256, 32);
  og::Config c = tiny_run(data.str(), out.str());
  c.train.steps = 4;
  c.checkpoint.enabled = true;
  c.checkpoint.every = 2;
  c.checkpoint.keep = 5;
  // a first run writes step 2 normally
  c.train.steps = 2;
  RunResult r1 = run_orthogpt_train(c, data.str());
  ASSERT_EQ(r1.exit_code(), 0) << r1.output;
  const std::string dir2 = og::checkpoint_dir(out.str(), 2);
  ASSERT_EQ(og::latest_checkpoint(out.str()), dir2);
  const auto state2 = fs::file_size(dir2 + "/state.bin");
  // the resumed run cannot write its step 4 checkpoint: files may not grow past 16 KB
  c.train.steps = 4;
  c.checkpoint.resume = out.str();
  c.log.level = "warn";  // the output file is under the same limit
  RunResult r2 = run_orthogpt_train(c, data.str(), {}, 16384);
  EXPECT_NE(r2.exit_code(), 0) << r2.output;
  EXPECT_TRUE(WIFEXITED(r2.status)) << "killed by a signal instead of exiting with an error: " << r2.status;
  EXPECT_NE(r2.output.find("step_00000004.tmp-"), std::string::npos) << r2.output;
  EXPECT_NE(r2.output.find("state.bin"), std::string::npos) << r2.output;
  EXPECT_NE(r2.output.find(std::strerror(EFBIG)), std::string::npos) << r2.output;
  EXPECT_EQ(listing(out / "checkpoints"), (std::vector<std::string>{"latest", "step_00000002"}));
  EXPECT_EQ(og::latest_checkpoint(out.str()), dir2);
  og::CheckpointReader ck(out.str());
  EXPECT_EQ(ck.meta().step, 2);
  EXPECT_EQ(fs::file_size(dir2 + "/state.bin"), state2);
}

// ---- (c) truncated shards -----------------------------------------------------------------------

namespace {

// Two train shards of `tokens` random tokens; the second one can be truncated in place (the same
// inode, as a failing copy or a full disk would leave it).
struct TwoShards {
  TempDir dir{"og_fault_shards"};
  std::string second = dir / "train_000001.bin";
  explicit TwoShards(size_t tokens = 3000) {
    og_test::write_random_shards(dir.str(), "train", 2, tokens, 256, 41);
    og_test::write_random_shards(dir.str(), "val", 1, 2000, 256, 42);
  }
  void truncate_second(size_t keep_tokens) const {
    ASSERT_EQ(::truncate(second.c_str(), (off_t)(og::kShardHeaderBytes + keep_tokens * 2)), 0);
  }
  std::string glob() const { return dir / "train_*.bin"; }
};

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const og::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Faults, ShardTruncatedBeforeTheRunIsRefusedUpFront) {
  TwoShards s;
  s.truncate_second(1000);
  const std::string msg = error_of([&] { og::DataLoader dl(s.glob(), "data.train", 2, 16, 0, 1, 256); });
  EXPECT_NE(msg.find("data.train"), std::string::npos) << msg;
  EXPECT_NE(msg.find(s.second), std::string::npos) << msg;
  EXPECT_NE(msg.find("byte offset 3024"), std::string::npos) << msg;
}

TEST(Faults, ShardTruncatedBeforeTheSwitchIsAnErrorAtTheSwitch) {
  TwoShards s;
  og::DataLoader dl(s.glob(), "data.train", 2, 16, 0, 1, 256);
  std::vector<int32_t> x(32), y(32);
  dl.next_batch(x.data(), y.data());  // shard 0 is open
  s.truncate_second(1000);
  std::string msg;
  int good_batches = 1;
  for (; good_batches < 200; ++good_batches) {
    msg = error_of([&] { dl.next_batch(x.data(), y.data()); });
    if (!msg.empty()) break;
  }
  EXPECT_EQ(good_batches, (3000 - 1) / 32) << "the error must come when the loader switches to the truncated shard";
  EXPECT_NE(msg.find(s.second), std::string::npos) << msg;
  EXPECT_NE(msg.find("byte offset 3024"), std::string::npos) << msg;
}

TEST(Faults, ShardTruncatedWhileBeingReadIsAnErrorNotASigbus) {
  // windows of 4 x 512 tokens = 4096 bytes: shard 0 holds 4 steps, then the loader moves on
  TwoShards s(10000);
  og::DataLoader dl(s.glob(), "data.train", 4, 512, 0, 1, 256);
  std::vector<int32_t> x(2048), y(2048);
  for (int i = 0; i < 4; ++i) dl.next_batch(x.data(), y.data());
  dl.next_batch(x.data(), y.data());  // the first window of shard 1: it is open (and mapped) now
  ASSERT_EQ(dl.state().shard, 1);
  // Cut it to 100 tokens (1224 bytes): the next window, tokens [2048, 4097) = bytes [5120, 9314),
  // lies on pages wholly past the end of the file, where reading the mapping raises SIGBUS.
  s.truncate_second(100);
  const std::string msg = error_of([&] { dl.next_batch(x.data(), y.data()); });
  EXPECT_NE(msg.find("data.train"), std::string::npos) << msg;
  EXPECT_NE(msg.find(s.second), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated while in use"), std::string::npos) << msg;
  EXPECT_NE(msg.find("byte offset 1224"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokens [2048, 4096)"), std::string::npos) << msg;
}

TEST(Faults, TrainWithATruncatedShardExitsNonZeroNamingFileAndOffset) {
  TwoShards s;
  s.truncate_second(1000);
  TempDir out("og_fault_shard_out");
  og::Config c = tiny_run(s.dir.str(), out.str());
  RunResult r = run_orthogpt_train(c, out.str());
  EXPECT_NE(r.exit_code(), 0) << r.output;
  EXPECT_TRUE(WIFEXITED(r.status)) << "killed by a signal: " << r.status << "\n" << r.output;
  EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(s.second), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("byte offset 3024"), std::string::npos) << r.output;
}

// ---- (d) NaN gradients through the executable ---------------------------------------------------
// (run_train's own behaviour is tested in test_train.cpp: the error names the step; skipping
// counts in TrainResult.) Here: the exit code, and the skip count in metrics.jsonl.

TEST(Faults, TrainWithANaNGradientStopsOrSkipsAndCounts) {
  TempDir data("og_fault_nan_data"), out("og_fault_nan_out"), out2("og_fault_nan_skip");
  og_test::write_random_shards(data.str(), "train", 1, 3000, 256, 51);
  og_test::write_random_shards(data.str(), "val", 1, 2000, 256, 52);
  og::Config c = tiny_run(data.str(), out.str());
  c.train.fault_nan_step = 2;
  RunResult r = run_orthogpt_train(c, out.str());
  EXPECT_NE(r.exit_code(), 0) << r.output;
  EXPECT_NE(r.output.find("step 2: non-finite"), std::string::npos) << r.output;

  c.log.dir = out2.str();
  c.train.skip_nonfinite = true;
  r = run_orthogpt_train(c, out2.str());
  ASSERT_EQ(r.exit_code(), 0) << r.output;
  std::ifstream m(out2 / "metrics.jsonl");
  int skip_rows = 0, train_rows = 0;
  std::string done;
  for (std::string line; std::getline(m, line);) {
    if (line.find("\"type\":\"skip\"") != std::string::npos) {
      ++skip_rows;
      EXPECT_NE(line.find("\"step\":2"), std::string::npos) << line;
      EXPECT_NE(line.find("\"skipped_steps\":1"), std::string::npos) << line;
    }
    train_rows += line.find("\"type\":\"train\"") != std::string::npos;
    if (line.find("\"type\":\"done\"") != std::string::npos) done = line;
  }
  EXPECT_EQ(skip_rows, 1);
  EXPECT_EQ(train_rows, 3);  // 4 steps, one skipped
  EXPECT_NE(done.find("\"skipped_steps\":1"), std::string::npos) << done;
}
