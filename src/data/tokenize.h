// `orthogpt tokenize`: text files to train/val shards, using all cores.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace og {

struct TokenizeOptions {
  std::vector<std::string> inputs;  // files; *.jsonl: one JSON object per line with a "text" field
  std::string output_dir;
  std::string prefix = "corpus";     // shard names: {prefix}_train_000000.bin, {prefix}_val_000000.bin
  std::string split = "blank-line";  // plain text: "blank-line" (documents separated by blank lines) | "file"
  double val_fraction = 0.01;        // fraction of documents that go to val (deterministic)
  int64_t shard_tokens = 100000000;  // tokens per shard
  std::string tokenizer_dir;         // empty: default_tokenizer_dir()
  int threads = 0;                   // 0: all cores
  bool progress = true;              // progress bar on stderr
};

struct TokenizeSummary {
  int64_t documents = 0, train_documents = 0, val_documents = 0;
  int64_t train_tokens = 0, val_tokens = 0;
  std::vector<std::string> shards;
};

TokenizeSummary run_tokenize(const TokenizeOptions& opt);

}  // namespace og
