#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"

namespace og {
namespace fs = std::filesystem;
namespace {

constexpr char kMagic[8] = {'O', 'G', 'C', 'K', 'P', 'T', '\0', '\1'};
constexpr uint32_t kVersion = 1;
constexpr size_t kAlign = 64;

// 64-bit checksum over a byte stream: four independent lanes of mix_u64 over 8-byte words
// (fast enough for multi-GB files), combined at the end with the total length.
class Checksum {
 public:
  void update(const void* data, size_t n) {
    const unsigned char* p = static_cast<const unsigned char*>(data);
    while (n > 0) {
      const size_t take = std::min(n, sizeof(buf_) - fill_);
      std::memcpy(buf_ + fill_, p, take);
      fill_ += take;
      p += take;
      n -= take;
      total_ += take;
      if (fill_ == sizeof(buf_)) flush();
    }
  }
  uint64_t digest() {
    if (fill_) {
      std::memset(buf_ + fill_, 0, sizeof(buf_) - fill_);
      flush();
    }
    uint64_t h = mix_u64(total_);
    for (uint64_t l : lane_) h = mix_u64(h ^ l);
    return h;
  }

 private:
  void flush() {
    uint64_t w[sizeof(buf_) / 8];
    std::memcpy(w, buf_, sizeof(buf_));
    for (size_t i = 0; i < sizeof(buf_) / 8; i += 4)
      for (int l = 0; l < 4; ++l) lane_[l] = mix_u64(lane_[l] ^ w[i + l]) + (uint64_t)l;
    fill_ = 0;
  }
  unsigned char buf_[4096];
  size_t fill_ = 0;
  uint64_t total_ = 0;
  uint64_t lane_[4] = {1, 2, 3, 4};
};

// The test-only fault hook (checkpoint.h): bytes a checkpoint write may still write before the
// process SIGKILLs itself; -1 when OG_FAULT_CHECKPOINT_KILL_AFTER_BYTES is unset.
int64_t fault_kill_budget() {
  const char* v = std::getenv("OG_FAULT_CHECKPOINT_KILL_AFTER_BYTES");
  if (v == nullptr || *v == '\0') return -1;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  OG_CHECK(*end == '\0' && n >= 0, "OG_FAULT_CHECKPOINT_KILL_AFTER_BYTES: '{}' is not a byte count", v);
  return n;
}

// A file written with checked writes and fsync; on failure the error names the path.
// `kill_budget` (the fault hook) is shared by the files of one checkpoint.
class CheckedFile {
 public:
  explicit CheckedFile(const std::string& path, int64_t* kill_budget = nullptr) : path_(path), kill_(kill_budget) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd_ < 0) fail("checkpoint: cannot create {}: {}", path, std::strerror(errno));
  }
  ~CheckedFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  void write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    bool die = false;
    if (kill_ && *kill_ >= 0 && (int64_t)n >= *kill_) {  // fault hook: write up to the budget, then die
      n = (size_t)*kill_;
      die = true;
    }
    if (kill_ && *kill_ >= 0) *kill_ -= (int64_t)n;
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, std::min<size_t>(n, 1 << 28));
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("checkpoint: write to {} failed: {}", path_, std::strerror(errno));
      }
      if (w == 0) fail("checkpoint: write to {} made no progress ({} bytes left)", path_, n);
      p += w;
      n -= (size_t)w;
    }
    if (die) std::raise(SIGKILL);
  }
  void close() {
    if (::fsync(fd_) != 0) fail("checkpoint: fsync of {} failed: {}", path_, std::strerror(errno));
    if (::close(fd_) != 0) {
      fd_ = -1;
      fail("checkpoint: close of {} failed: {}", path_, std::strerror(errno));
    }
    fd_ = -1;
  }

 private:
  std::string path_;
  int64_t* kill_ = nullptr;
  int fd_ = -1;
};

void write_text(const std::string& path, const std::string& text, int64_t* kill_budget = nullptr) {
  CheckedFile f(path, kill_budget);
  f.write(text.data(), text.size());
  f.close();
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void rename_or_fail(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  OG_CHECK(!ec, "checkpoint: cannot rename {} to {}: {}", from.string(), to.string(), ec.message());
}

// Leftovers of a write that was interrupted (killed, power loss) in checkpoints folder `parent`:
// temp folders and files (<name>.tmp-<pid>) are removed; a folder set aside for replacement
// (<name>.old-<pid>) whose replacement never arrived is put back, otherwise removed.
void clean_interrupted_writes(const fs::path& parent) {
  std::error_code ec;
  std::vector<fs::path> tmp, old;
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    if (n.find(".tmp-") != std::string::npos) tmp.push_back(it->path());
    if (n.find(".old-") != std::string::npos) old.push_back(it->path());
  }
  for (const auto& p : tmp) fs::remove_all(p, ec);
  for (const auto& p : old) {
    const std::string n = p.filename().string();
    const fs::path original = parent / n.substr(0, n.find(".old-"));
    if (!fs::exists(original)) {
      fs::rename(p, original, ec);
      if (!ec) continue;
    }
    fs::remove_all(p, ec);
  }
}

template <typename T> void put(std::string& s, T v) { s.append(reinterpret_cast<const char*>(&v), sizeof v); }

nlohmann::json meta_to_json(const CheckpointMeta& m) {
  nlohmann::json loaders = nlohmann::json::array();
  for (const auto& l : m.loaders) loaders.push_back({{"shard", l.shard}, {"position", l.position}, {"epoch", l.epoch}});
  nlohmann::json j = {{"format", "orthogpt-checkpoint"},
                      {"version", kVersion},
                      {"step", m.step},
                      {"world", m.world},
                      {"loaders", loaders},
                      {"model_signature", m.model_signature},
                      {"optimizer_signature", m.optimizer_signature}};
  if (m.shards > 0) j["shards"] = m.shards;
  return j;
}

// state.bin format: header, table, aligned data, checksum.
// `kill_budget`: the test-only fault hook (checkpoint.h), shared by the files of one checkpoint.
void write_tensor_file(const std::string& path, const std::vector<NamedTensor>& tensors,
                       int64_t* kill_budget = nullptr) {
  std::string head(kMagic, sizeof kMagic);
  put<uint32_t>(head, kVersion);
  put<uint32_t>(head, (uint32_t)tensors.size());
  size_t offset = 0;
  for (const auto& t : tensors) {
    put<uint32_t>(head, (uint32_t)t.name.size());
    head += t.name;
    put<uint64_t>(head, offset);
    put<uint64_t>(head, t.bytes);
    offset += (t.bytes + kAlign - 1) / kAlign * kAlign;
  }
  put<uint64_t>(head, offset);  // data bytes
  const size_t pad_head = (kAlign - head.size() % kAlign) % kAlign;
  head.append(pad_head, '\0');
  Checksum sum;
  CheckedFile f(path, kill_budget);
  f.write(head.data(), head.size());
  sum.update(head.data(), head.size());
  static const char zeros[kAlign] = {};
  for (const auto& t : tensors) {
    f.write(t.data, t.bytes);
    sum.update(t.data, t.bytes);
    const size_t pad = (kAlign - t.bytes % kAlign) % kAlign;
    f.write(zeros, pad);
    sum.update(zeros, pad);
  }
  const uint64_t digest = sum.digest();
  f.write(&digest, sizeof digest);
  f.close();
}

// Rename the finished temp folder `tmp` to `final_dir` (replacing an existing one), then
// repoint `latest` at it.
void publish(const fs::path& tmp, const fs::path& final_dir) {
  const fs::path parent = final_dir.parent_path();
  std::error_code ec;
  if (fs::exists(final_dir)) {
    const fs::path old = parent / (final_dir.filename().string() + ".old-" + std::to_string(::getpid()));
    rename_or_fail(final_dir, old);
    rename_or_fail(tmp, final_dir);
    fs::remove_all(old, ec);
  } else {
    rename_or_fail(tmp, final_dir);
  }
  fsync_dir(parent.string());
  const fs::path latest_tmp = parent / ("latest.tmp-" + std::to_string(::getpid()));
  write_text(latest_tmp.string(), final_dir.filename().string() + "\n");
  rename_or_fail(latest_tmp, parent / "latest");
  fsync_dir(parent.string());
}

}  // namespace

std::string checkpoint_dir(const std::string& log_dir, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%08lld", (long long)step);
  return (fs::path(log_dir) / "checkpoints" / name).string();
}

std::string latest_checkpoint(const std::string& log_dir) {
  const fs::path ptr = fs::path(log_dir) / "checkpoints" / "latest";
  std::ifstream f(ptr);
  std::string name;
  if (!f || !std::getline(f, name) || name.empty()) return "";
  return (fs::path(log_dir) / "checkpoints" / name).string();
}

void write_checkpoint(const std::string& dir, const CheckpointMeta& meta, const std::vector<NamedTensor>& tensors) {
  const fs::path final_dir(dir);
  const fs::path parent = final_dir.parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  OG_CHECK(!ec, "checkpoint: cannot create {}: {}", parent.string(), ec.message());
  clean_interrupted_writes(parent);
  const fs::path tmp = parent / (final_dir.filename().string() + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  int64_t kill_budget = fault_kill_budget();
  OG_CHECK(!ec, "checkpoint: cannot create {}: {}", tmp.string(), ec.message());
  try {
    write_tensor_file((tmp / "state.bin").string(), tensors, &kill_budget);
    write_text((tmp / "meta.json").string(), meta_to_json(meta).dump(2) + "\n", &kill_budget);
    write_text((tmp / "config.yaml").string(), meta.config_yaml, &kill_budget);
    fsync_dir(tmp.string());
    publish(tmp, final_dir);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

CheckpointReader::CheckpointReader(const std::string& path) {
  // Accept a checkpoint folder, a run's checkpoints folder, or a run folder.
  fs::path p(path);
  OG_CHECK(fs::exists(p), "checkpoint: {} does not exist", path);
  if (!fs::exists(p / "state.bin") && !fs::exists(p / "meta.json")) {
    std::string latest = latest_checkpoint(p.string());
    if (latest.empty() && p.filename() == "checkpoints") latest = latest_checkpoint(p.parent_path().string());
    OG_CHECK(!latest.empty(), "checkpoint: {} holds no checkpoint (no state.bin, no checkpoints/latest)", path);
    p = latest;
  }
  dir_ = p.string();
  const std::string state = (p / "state.bin").string(), meta_path = (p / "meta.json").string();

  // ---- meta.json ----
  nlohmann::json mj;
  {
    std::ifstream mf(meta_path);
    OG_CHECK(mf.good(), "checkpoint: cannot read {}", meta_path);
    try {
      mf >> mj;
      OG_CHECK(mj.at("format") == "orthogpt-checkpoint", "checkpoint: {} is not an orthogpt checkpoint", meta_path);
      OG_CHECK(mj.at("version") == kVersion, "checkpoint: {} has format version {}, this build reads {}", meta_path,
               mj.at("version").dump(), kVersion);
      meta_.step = mj.at("step");
      meta_.world = mj.at("world");
      for (const auto& l : mj.at("loaders")) meta_.loaders.push_back({l.at("shard"), l.at("position"), l.at("epoch")});
      meta_.model_signature = mj.at("model_signature");
      meta_.optimizer_signature = mj.at("optimizer_signature");
      meta_.shards = mj.value("shards", 0);
    } catch (const nlohmann::json::exception& e) {
      fail("checkpoint: {} is malformed: {}", meta_path, e.what());
    }
  }
  {
    std::ifstream cf(p / "config.yaml");
    meta_.config_yaml.assign(std::istreambuf_iterator<char>(cf), std::istreambuf_iterator<char>());
  }

  if (meta_.shards > 0) {
    OG_CHECK(meta_.shards == meta_.world, "checkpoint: {} lists {} rank files for a world of {}", meta_path,
             meta_.shards, meta_.world);
    for (int r = 0; r < meta_.shards; ++r)
      OG_CHECK(fs::exists(shard_path(r)), "checkpoint: {} is missing (the checkpoint was written by {} ranks)",
               shard_path(r), meta_.shards);
    return;
  }
  state_ = std::make_unique<TensorFile>(state, dir_);
}

std::string CheckpointReader::shard_path(int rank) const {
  return (fs::path(dir_) / shard_file_name(rank, meta_.shards)).string();
}

void CheckpointReader::read(const std::string& name, void* dst, size_t bytes) const {
  OG_CHECK(state_ != nullptr,
           "checkpoint {}: written sharded by {} FSDP ranks (no state.bin); it is read per rank file (dist.mode fsdp)",
           dir_, meta_.shards);
  state_->read(name, dst, bytes);
}

std::vector<std::string> CheckpointReader::names() const {
  return state_ ? state_->names() : std::vector<std::string>{};
}

TensorFile::TensorFile(const std::string& state, const std::string& label) : label_(label) {
  // ---- read, verify checksum, parse table ----
  std::ifstream f(state, std::ios::binary | std::ios::ate);
  OG_CHECK(f.good(), "checkpoint: cannot read {}", state);
  const size_t size = (size_t)f.tellg();
  OG_CHECK(size >= sizeof kMagic + 16 + 8, "checkpoint: {} is truncated ({} bytes)", state, size);
  blob_.resize(size);
  f.seekg(0);
  f.read(blob_.data(), (std::streamsize)size);
  OG_CHECK(f.good(), "checkpoint: reading {} failed", state);
  OG_CHECK(std::memcmp(blob_.data(), kMagic, sizeof kMagic) == 0, "checkpoint: {} has a wrong magic", state);
  Checksum sum;
  sum.update(blob_.data(), size - 8);
  uint64_t stored = 0;
  std::memcpy(&stored, blob_.data() + size - 8, 8);
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // let the fuzzer reach the parser behind the checksum
  OG_CHECK(sum.digest() == stored, "checkpoint: {} is corrupted (checksum mismatch)", state);
#else
  (void)stored;
#endif

  size_t pos = sizeof kMagic;
  auto get = [&](auto& v) {
    OG_CHECK(pos + sizeof v <= size - 8, "checkpoint: {} table is truncated", state);
    std::memcpy(&v, blob_.data() + pos, sizeof v);
    pos += sizeof v;
  };
  uint32_t version = 0, n = 0;
  get(version);
  get(n);
  OG_CHECK(version == kVersion, "checkpoint: {} has format version {}, this build reads {}", state, version, kVersion);
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t len = 0;
    get(len);
    OG_CHECK(pos + len <= size - 8, "checkpoint: {} table is truncated", state);
    Entry e;
    e.name.assign(blob_.data() + pos, len);
    pos += len;
    uint64_t off = 0, bytes = 0;
    get(off);
    get(bytes);
    e.offset = off;
    e.bytes = bytes;
    entries_.push_back(std::move(e));
  }
  uint64_t data_bytes = 0;
  get(data_bytes);
  const size_t data_start = (pos + kAlign - 1) / kAlign * kAlign;
  OG_CHECK(data_start + data_bytes + 8 == size, "checkpoint: {} has {} bytes, its table says {}", state, size,
           data_start + data_bytes + 8);
  for (auto& e : entries_) {
    OG_CHECK(e.offset + e.bytes <= data_bytes, "checkpoint: {}: tensor {} lies outside the file", state, e.name);
    e.offset += data_start;
  }
}

const TensorFile::Entry& TensorFile::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return e;
  fail("checkpoint {}: no tensor named {}", label_, name);
}

void TensorFile::read(const std::string& name, void* dst, size_t bytes) const {
  const Entry& e = find(name);
  OG_CHECK(e.bytes == bytes, "checkpoint {}: tensor {} has {} bytes, expected {}", label_, name, e.bytes, bytes);
  std::memcpy(dst, blob_.data() + e.offset, bytes);
}

bool TensorFile::has(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return true;
  return false;
}

size_t TensorFile::bytes(const std::string& name) const { return find(name).bytes; }

std::vector<std::string> TensorFile::names() const {
  std::vector<std::string> n;
  for (const auto& e : entries_) n.push_back(e.name);
  return n;
}

std::string shard_file_name(int rank, int world) {
  char name[48];
  std::snprintf(name, sizeof name, "rank-%05d-of-%05d.bin", rank, world);
  return name;
}

void write_sharded_checkpoint(const std::string& dir, const CheckpointMeta& meta_in,
                              const std::vector<NamedTensor>& my_tensors, Communicator& comm) {
  const int rank = comm.rank(), world = comm.size();
  const fs::path final_dir(dir);
  const fs::path parent = final_dir.parent_path();
  // Every rank must learn whether every rank succeeded, so a failure never leaves a rank waiting
  // in a collective: each phase ends with an all-reduce of an ok flag (min over ranks).
  std::string error;
  auto all_ok = [&](bool ok) { return comm.all_reduce_scalar(ok ? 1.0 : 0.0, ReduceOp::Min) > 0.5; };
  auto attempt = [&](auto&& f) {
    try {
      f();
      return true;
    } catch (const std::exception& e) {
      error = e.what();
      return false;
    }
  };
  // One temp folder for all ranks, named after rank 0's pid.
  int64_t pid = rank == 0 ? (int64_t)::getpid() : 0;
  comm.broadcast(&pid, 1, DType::I64, 0);
  const fs::path tmp = parent / (final_dir.filename().string() + ".tmp-" + std::to_string(pid));
  std::error_code ec;
  bool ok = rank != 0 || attempt([&] {
              fs::create_directories(parent, ec);
              OG_CHECK(!ec, "checkpoint: cannot create {}: {}", parent.string(), ec.message());
              clean_interrupted_writes(parent);
              fs::remove_all(tmp, ec);
              fs::create_directories(tmp, ec);
              OG_CHECK(!ec, "checkpoint: cannot create {}: {}", tmp.string(), ec.message());
            });
  if (all_ok(ok)) {
    ok = attempt([&] { write_tensor_file((tmp / shard_file_name(rank, world)).string(), my_tensors); });
    if (all_ok(ok)) {
      ok = rank != 0 || attempt([&] {
             CheckpointMeta meta = meta_in;
             meta.shards = world;
             meta.world = world;
             write_text((tmp / "meta.json").string(), meta_to_json(meta).dump(2) + "\n");
             write_text((tmp / "config.yaml").string(), meta.config_yaml);
             fsync_dir(tmp.string());
             publish(tmp, final_dir);
           });
      if (all_ok(ok)) return;
    }
  }
  if (rank == 0) fs::remove_all(tmp, ec);
  if (!error.empty()) fail("{}", error);
  fail("checkpoint {}: another rank failed to write its shard (see its log); nothing was published", dir);
}

void prune_checkpoints(const std::string& log_dir, int keep) {
  const fs::path dir = fs::path(log_dir) / "checkpoints";
  if (!fs::exists(dir)) return;
  std::vector<fs::path> all;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step_", 0) == 0 && n.find('.') == std::string::npos) all.push_back(e.path());
  }
  std::sort(all.begin(), all.end());
  std::error_code ec;
  for (size_t i = 0; i + keep < all.size(); ++i) fs::remove_all(all[i], ec);
}

}  // namespace og
