// `orthogpt tokenize`: input files -> GPT-2 token shards (see tokenize.h).
//
// Pipeline, per batch of ~64 MB of documents (data/document_reader.h):
//   1. all threads take documents from the batch (an atomic counter), extract the text (JSON
//      lines are parsed here) and encode it as [<|endoftext|>, tokens...], as in FineWeb shards;
//   2. the main thread walks the batch in input order, numbers the non-empty documents
//      0, 1, 2, ... and appends each to the train or the val stream; a stream writes a shard of
//      exactly shard_tokens tokens whenever it has that many (documents may span shards), and its
//      remainder at the end.
// Val documents: document i > 0 goes to val when ceil(i * f) > ceil((i - 1) * f), f = val_fraction.
// So document 0 is train, document 1 is val (f > 0), and val documents are spread evenly with
// ceil((N - 1) * f) of N in val: deterministic, streaming, and at least one when N >= 2.
// A failed run removes the shards it wrote; a successful one removes stale shards of the same
// prefix left by an earlier run, so the output folder holds exactly this run's shards.
#include "data/tokenize.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "core/timer.h"
#include "data/document_reader.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace og {

namespace {

constexpr size_t kBatchBytes = size_t(64) << 20;

bool is_val_document(int64_t index, double val_fraction) {
  if (val_fraction <= 0.0 || index == 0) return false;
  return std::ceil(double(index) * val_fraction) > std::ceil(double(index - 1) * val_fraction);
}

// One output stream (train or val): buffers tokens and writes full shards as they fill.
class ShardStream {
 public:
  ShardStream(std::string dir, std::string prefix, std::string split, size_t shard_tokens)
      : dir_(std::move(dir)), prefix_(std::move(prefix)), split_(std::move(split)), shard_tokens_(shard_tokens) {
    buffer_.reserve(std::min<size_t>(shard_tokens_, size_t(1) << 24));
  }
  void append(const std::vector<uint16_t>& tokens) {
    size_t i = 0;
    while (i < tokens.size()) {
      const size_t n = std::min(tokens.size() - i, shard_tokens_ - buffer_.size());
      buffer_.insert(buffer_.end(), tokens.begin() + ptrdiff_t(i), tokens.begin() + ptrdiff_t(i + n));
      i += n;
      if (buffer_.size() == shard_tokens_) flush();
    }
    tokens_ += int64_t(tokens.size());
  }
  void finish() {
    if (!buffer_.empty()) flush();
  }
  int64_t tokens() const { return tokens_; }
  const std::vector<std::string>& written() const { return written_; }

 private:
  void flush() {
    const std::string path =
        (std::filesystem::path(dir_) / fmt::format("{}_{}_{:06d}.bin", prefix_, split_, written_.size())).string();
    write_shard(path, buffer_.data(), buffer_.size());
    written_.push_back(path);
    buffer_.clear();
  }
  std::string dir_, prefix_, split_;
  size_t shard_tokens_;
  std::vector<uint16_t> buffer_;
  std::vector<std::string> written_;
  int64_t tokens_ = 0;
};

// Progress on stderr, from counters the workers bump: a bar redrawn in place 4x a second on a
// terminal, a plain line every 10 s otherwise (logs), and a final line.
class Progress {
 public:
  Progress(bool enabled, uint64_t total_bytes) : enabled_(enabled), total_bytes_(total_bytes) {
    if (!enabled_) return;
    tty_ = ::isatty(STDERR_FILENO) != 0;
    thread_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu_);
      const auto period = tty_ ? std::chrono::milliseconds(250) : std::chrono::milliseconds(10000);
      while (!cv_.wait_for(lock, period, [this] { return done_; })) print(false);
    });
  }
  ~Progress() { stop(); }
  void add(uint64_t bytes, int64_t tokens) {
    bytes_.fetch_add(bytes, std::memory_order_relaxed);
    tokens_.fetch_add(tokens, std::memory_order_relaxed);
    docs_.fetch_add(1, std::memory_order_relaxed);
  }
  void stop() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
    print(true);
  }

 private:
  void print(bool final) {
    const double s = std::max(timer_.seconds(), 1e-9);
    // Document bytes exclude the separators; the final line reports the whole input.
    const uint64_t bytes = final ? std::max<uint64_t>(bytes_.load(), total_bytes_) : bytes_.load();
    const uint64_t docs = docs_.load();
    const int64_t tokens = tokens_.load();
    const double frac = total_bytes_ ? std::min(1.0, double(bytes) / double(total_bytes_)) : 1.0;
    constexpr int kWidth = 30;
    const int filled = int(frac * kWidth);
    std::string bar = std::string(size_t(filled), '#') + std::string(size_t(kWidth - filled), '.');
    std::fprintf(stderr, "%stokenize [%s] %5.1f%% %.1f/%.1f MB | %llu docs %.1f/s | %lld tokens %.2fM/s | %.1f MB/s%s",
                 tty_ ? "\r" : "", bar.c_str(), 100.0 * frac, double(bytes) / 1e6, double(total_bytes_) / 1e6,
                 (unsigned long long)docs, double(docs) / s, (long long)tokens, double(tokens) / s / 1e6,
                 double(bytes) / s / 1e6, (final || !tty_) ? "\n" : "");
    std::fflush(stderr);
  }
  bool enabled_, tty_ = false, done_ = false;
  uint64_t total_bytes_;
  std::atomic<uint64_t> bytes_{0}, docs_{0};
  std::atomic<int64_t> tokens_{0};
  Timer timer_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

// Tokenize batch[i] into out[i] ([EOT, ids...], or empty for an empty document) on `threads`
// threads. The first failing document (in batch order) is rethrown.
void tokenize_batch(std::vector<RawDocument>& batch, const DocumentReader& reader, const GPT2Tokenizer& tok,
                    int threads, Progress& progress, std::vector<std::vector<uint16_t>>& out) {
  out.assign(batch.size(), {});
  std::vector<std::string> errors(batch.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < batch.size();) {
      try {
        const uint64_t raw_bytes = batch[i].text.size();
        const std::string& file = reader.files()[batch[i].file];
        const std::string text = document_text(std::move(batch[i]), file);
        if (!text.empty()) {
          const std::vector<int> ids = tok.encode(text);
          out[i].reserve(ids.size() + 1);
          out[i].push_back(uint16_t(GPT2Tokenizer::kEndOfText));
          for (int id : ids) out[i].push_back(uint16_t(id));
        }
        progress.add(raw_bytes + 1, int64_t(out[i].size()));
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    }
  };
  std::vector<std::thread> pool;
  const int n_threads = std::max(1, std::min<int>(threads, int(batch.size())));
  for (int t = 1; t < n_threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  for (const std::string& e : errors)
    if (!e.empty()) throw Error(e);
}

// Shards named like ours ({prefix}_{train|val}_NNNNNN.bin) in `dir` that this run did not write.
std::vector<std::filesystem::path> stale_shards(const std::string& dir, const std::string& prefix,
                                                const std::set<std::string>& written) {
  std::vector<std::filesystem::path> stale;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(prefix + "_")) continue;
    std::string rest = name.substr(prefix.size() + 1);  // train_NNNNNN.bin or val_NNNNNN.bin
    if (rest.starts_with("train_"))
      rest = rest.substr(6);
    else if (rest.starts_with("val_"))
      rest = rest.substr(4);
    else
      continue;
    if (rest.size() != 10 || !rest.ends_with(".bin") ||
        !std::all_of(rest.begin(), rest.begin() + 6, [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    if (!entry.is_regular_file() || written.count(entry.path().string())) continue;
    stale.push_back(entry.path());
  }
  return stale;
}

}  // namespace

TokenizeSummary run_tokenize(const TokenizeOptions& opt) {
  if (opt.output_dir.empty()) fail("tokenize: no output directory given");
  if (opt.prefix.empty() || opt.prefix.find('/') != std::string::npos)
    fail("tokenize: prefix \"{}\" must be a non-empty file name part", opt.prefix);
  if (!(opt.val_fraction >= 0.0 && opt.val_fraction < 1.0))
    fail("tokenize: val_fraction {} must be in [0, 1)", opt.val_fraction);
  if (opt.shard_tokens <= 0 || opt.shard_tokens > int64_t(INT32_MAX))
    fail("tokenize: shard_tokens {} must be in 1..{} (the shard header holds an int32 count)", opt.shard_tokens,
         INT32_MAX);
  if (opt.threads < 0) fail("tokenize: threads {} must be >= 0 (0: all cores)", opt.threads);

  DocumentReader reader(opt.inputs, opt.split);
  const std::string tok_dir = opt.tokenizer_dir.empty() ? default_tokenizer_dir() : opt.tokenizer_dir;
  const GPT2Tokenizer tok = GPT2Tokenizer::load(tok_dir);
  std::error_code ec;
  std::filesystem::create_directories(opt.output_dir, ec);
  if (!std::filesystem::is_directory(opt.output_dir))
    fail("tokenize: cannot create output directory {}: {}", opt.output_dir, ec.message());
  const int threads = opt.threads > 0 ? opt.threads : int(std::max(1u, std::thread::hardware_concurrency()));

  TokenizeSummary sum;
  ShardStream train(opt.output_dir, opt.prefix, "train", size_t(opt.shard_tokens));
  ShardStream val(opt.output_dir, opt.prefix, "val", size_t(opt.shard_tokens));
  Timer timer;
  try {
    Progress progress(opt.progress, reader.total_bytes());
    std::vector<RawDocument> batch;
    std::vector<std::vector<uint16_t>> tokens;
    while (batch.clear(), reader.read(batch, kBatchBytes)) {
      tokenize_batch(batch, reader, tok, threads, progress, tokens);
      for (const auto& doc : tokens) {
        if (doc.empty()) continue;  // empty document
        if (is_val_document(sum.documents, opt.val_fraction)) {
          val.append(doc);
          ++sum.val_documents;
        } else {
          train.append(doc);
          ++sum.train_documents;
        }
        ++sum.documents;
      }
    }
    if (sum.documents == 0) fail("tokenize: no documents found in {} input file(s)", opt.inputs.size());
    train.finish();
    val.finish();
  } catch (...) {
    for (const auto* s : {&train, &val})
      for (const std::string& path : s->written()) std::filesystem::remove(path, ec);
    throw;
  }

  sum.train_tokens = train.tokens();
  sum.val_tokens = val.tokens();
  sum.shards = train.written();
  sum.shards.insert(sum.shards.end(), val.written().begin(), val.written().end());
  const std::set<std::string> written(sum.shards.begin(), sum.shards.end());
  for (const auto& path : stale_shards(opt.output_dir, opt.prefix, written)) {
    spdlog::warn("tokenize: removing stale shard {} from an earlier run", path.string());
    std::filesystem::remove(path, ec);
  }
  spdlog::info("tokenize: {} documents ({} train, {} val), {} train tokens, {} val tokens, {} shard(s) in {:.1f} s",
               sum.documents, sum.train_documents, sum.val_documents, sum.train_tokens, sum.val_tokens,
               sum.shards.size(), timer.seconds());
  return sum;
}

}  // namespace og
