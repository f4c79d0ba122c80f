// GPT-2 byte-level BPE tokenizer (see tokenizer.h).
//
// encode(text):
//   1. Pre-tokenize with GPT-2's regex (PCRE2, UTF + Unicode properties, JIT when available).
//   2. Each piece ("word") becomes one token per byte, then BPE merges (data/bpe_merges.h);
//      results for short words are cached per thread (lock-free; encode() is const and
//      thread-safe).
// Invalid UTF-8: the regex is compiled with PCRE2_MATCH_INVALID_UTF, under which an invalid
// sequence is never part of a match. The bytes between two matches (always invalid UTF-8, since
// every valid character matches some alternative of the pattern) are BPE-encoded as one word of
// their own. So invalid bytes split words around them, nothing is lost or replaced, and
// decode(encode(bytes)) == bytes for any input.
// Unicode tables: \p{L}, \p{N} and \s come from the PCRE2 library (10.42: Unicode 14). They can
// differ from Python `regex` / tiktoken only on characters assigned after that version (and on
// U+180E, which PCRE2 still counts as \s); tests/data/tokenizer_cases.json avoids those.
// decode(ids): concatenation of each token's bytes (id 50256 is the literal "<|endoftext|>").
#include "data/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/bpe_merges.h"

namespace og {

namespace {

// GPT-2's pre-tokenization pattern (openai/gpt-2 encoder.py).
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// GPT-2's byte -> printable character table (the alphabet of encoder.json / vocab.bpe): bytes
// that are printable Latin-1 ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for themselves,
// the other 68 map in byte order to U+0100, U+0101, ...
std::array<char32_t, 256> byte_to_char_table() {
  std::array<char32_t, 256> table{};
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[size_t(b)] = printable ? char32_t(b) : next++;
  }
  return table;
}

std::string utf8_of(char32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else {  // the table only reaches U+0143; three-byte forms are never needed
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

// Token text as written in encoder.json / vocab.bpe -> the raw bytes it stands for. Returns
// false if a character is outside the byte alphabet (the text comes from nlohmann_json, which
// has already validated it as UTF-8).
bool token_text_to_bytes(const std::string& text, const std::unordered_map<char32_t, uint8_t>& char_to_byte,
                         std::string& bytes) {
  bytes.clear();
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    char32_t cp;
    size_t len;
    if (c < 0x80) {
      cp = c;
      len = 1;
    } else if ((c >> 5) == 0x6) {
      cp = c & 0x1F;
      len = 2;
    } else if ((c >> 4) == 0xE) {
      cp = c & 0x0F;
      len = 3;
    } else {
      cp = c & 0x07;
      len = 4;
    }
    if (i + len > text.size()) return false;
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
    auto it = char_to_byte.find(cp);
    if (it == char_to_byte.end()) return false;
    bytes += char(it->second);
    i += len;
  }
  return true;
}

std::string read_tokenizer_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail("tokenizer file {} not found or unreadable (run scripts/get_tokenizer.sh, or set ORTHOGPT_TOKENIZER_DIR)",
         path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("error reading tokenizer file {}", path.string());
  return ss.str();
}

// Per-thread cache of BPE results for short words: no locks on the hot path. Each thread keeps
// one map, tagged with the id of the tokenizer that filled it (ids are never reused, so a
// thread switching tokenizers starts afresh instead of reading another vocabulary's results).
// A map that reaches kMaxEntries is emptied (bounded memory on unbounded sets of words).
struct WordCache {
  static constexpr size_t kMaxWordBytes = 64;
  static constexpr size_t kMaxEntries = size_t(1) << 16;  // ~10 MB
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<int>, StringHash, std::equal_to<>> map;

  static WordCache& for_tokenizer(uint64_t tokenizer_id) {
    thread_local WordCache cache;
    if (cache.owner != tokenizer_id) {
      cache.map.clear();
      cache.owner = tokenizer_id;
    }
    return cache;
  }
};

std::atomic<uint64_t> next_tokenizer_id{1};

}  // namespace

struct GPT2Tokenizer::Impl {
  std::vector<std::string> token_bytes;  // id -> bytes
  std::array<int, 256> byte_token{};     // byte -> id of its one-byte token
  BpeMergeTable merges;
  pcre2_code* regex = nullptr;
  const uint64_t id = next_tokenizer_id.fetch_add(1);  // tags this tokenizer's per-thread caches

  ~Impl() {
    if (regex) pcre2_code_free(regex);
  }

  void compile_regex() {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    regex = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_offset, nullptr);
    if (!regex) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      fail("PCRE2 cannot compile GPT-2's pattern at offset {}: {}", err_offset, reinterpret_cast<char*>(msg));
    }
    // JIT is a speed-up only: without it (unsupported platform) the interpreter gives the same matches.
    pcre2_jit_compile(regex, PCRE2_JIT_COMPLETE);
  }

  // BPE one pre-tokenized word and append its ids.
  void encode_word(std::string_view word, std::vector<int>& out) const {
    if (word.size() == 1) {
      out.push_back(byte_token[static_cast<unsigned char>(word[0])]);
      return;
    }
    WordCache* cache = nullptr;
    if (word.size() <= WordCache::kMaxWordBytes) {
      cache = &WordCache::for_tokenizer(id);
      auto it = cache->map.find(word);
      if (it != cache->map.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    thread_local std::vector<int> symbols;
    symbols.clear();
    for (char c : word) symbols.push_back(byte_token[static_cast<unsigned char>(c)]);
    merges.apply(symbols);
    if (cache) {
      if (cache->map.size() >= WordCache::kMaxEntries) cache->map.clear();
      cache->map.emplace(std::string(word), symbols);
    }
    out.insert(out.end(), symbols.begin(), symbols.end());
  }
};

GPT2Tokenizer::GPT2Tokenizer() = default;
GPT2Tokenizer::GPT2Tokenizer(GPT2Tokenizer&&) noexcept = default;
GPT2Tokenizer& GPT2Tokenizer::operator=(GPT2Tokenizer&&) noexcept = default;
GPT2Tokenizer::~GPT2Tokenizer() = default;

GPT2Tokenizer GPT2Tokenizer::load(const std::string& dir) {
  namespace fs = std::filesystem;
  auto impl = std::make_unique<Impl>();
  const std::array<char32_t, 256> byte_char = byte_to_char_table();
  std::unordered_map<char32_t, uint8_t> char_to_byte;
  for (int b = 0; b < 256; ++b) char_to_byte[byte_char[size_t(b)]] = uint8_t(b);

  // ---- encoder.json: {"token text": id, ...}, ids 0..n-1 each used once ----
  const fs::path encoder_path = fs::path(dir) / "encoder.json";
  nlohmann::json encoder;
  try {
    encoder = nlohmann::json::parse(read_tokenizer_file(encoder_path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON: {}", encoder_path.string(), e.what());
  }
  if (!encoder.is_object() || encoder.empty())
    fail("{}: expected a non-empty JSON object mapping token text to id", encoder_path.string());
  const size_t n = encoder.size();
  if (n <= size_t(kEndOfText) || n > 65536)
    fail("{}: {} tokens; GPT-2 needs more than {} (<|endoftext|> is id {}) and shards hold ids below 65536",
         encoder_path.string(), n, kEndOfText, kEndOfText);
  std::unordered_map<std::string, int> text_to_id;  // token text (as in the files) -> id
  text_to_id.reserve(n);
  impl->token_bytes.assign(n, std::string());
  std::vector<bool> id_used(n, false);
  std::string bytes;
  for (const auto& [text, value] : encoder.items()) {
    if (!value.is_number_integer())
      fail("{}: token \"{}\" has a non-integer id {}", encoder_path.string(), text, value.dump());
    const int64_t id = value.get<int64_t>();
    if (id < 0 || id >= int64_t(n))
      fail("{}: token \"{}\" has id {} outside 0..{}", encoder_path.string(), text, id, n - 1);
    if (id_used[size_t(id)]) fail("{}: id {} is used by more than one token", encoder_path.string(), id);
    id_used[size_t(id)] = true;
    if (!token_text_to_bytes(text, char_to_byte, bytes))
      fail("{}: token \"{}\" has a character outside GPT-2's byte alphabet", encoder_path.string(), text);
    impl->token_bytes[size_t(id)] = bytes;
    text_to_id.emplace(text, int(id));
  }
  auto eot = text_to_id.find("<|endoftext|>");
  if (eot == text_to_id.end() || eot->second != kEndOfText)
    fail("{}: expected \"<|endoftext|>\" with id {}", encoder_path.string(), kEndOfText);
  for (int b = 0; b < 256; ++b) {
    auto it = text_to_id.find(utf8_of(byte_char[size_t(b)]));
    if (it == text_to_id.end()) fail("{}: no single-byte token for byte 0x{:02x}", encoder_path.string(), b);
    impl->byte_token[size_t(b)] = it->second;
  }

  // ---- vocab.bpe: "#version" line, then one merge per line ("left right"), best first ----
  const fs::path merges_path = fs::path(dir) / "vocab.bpe";
  const std::string merges_text = read_tokenizer_file(merges_path);
  size_t line_no = 0;
  for (size_t begin = 0; begin < merges_text.size();) {
    size_t end = merges_text.find('\n', begin);
    if (end == std::string::npos) end = merges_text.size();
    std::string_view line(merges_text.data() + begin, end - begin);
    begin = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.starts_with("#"))) continue;
    const size_t space = line.find(' ');
    if (space == 0 || space == std::string_view::npos || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos)
      fail("{}:{}: expected two tokens separated by one space, got \"{}\"", merges_path.string(), line_no, line);
    const std::string left(line.substr(0, space)), right(line.substr(space + 1));
    auto l = text_to_id.find(left), r = text_to_id.find(right), m = text_to_id.find(left + right);
    if (l == text_to_id.end() || r == text_to_id.end() || m == text_to_id.end())
      fail("{}:{}: token \"{}\" is not in encoder.json", merges_path.string(), line_no,
           l == text_to_id.end()   ? left
           : r == text_to_id.end() ? right
                                   : left + right);
    if (!impl->merges.add(l->second, r->second, m->second))
      fail("{}:{}: duplicate merge \"{}\"", merges_path.string(), line_no, line);
  }
  if (impl->merges.size() == 0) fail("{}: no merges found", merges_path.string());
  impl->merges.finalize();

  impl->compile_regex();
  GPT2Tokenizer tok;
  tok.impl_ = std::move(impl);
  return tok;
}

int GPT2Tokenizer::vocab_size() const {
  OG_CHECK(impl_, "GPT2Tokenizer used before load()");
  return int(impl_->token_bytes.size());
}

std::vector<int> GPT2Tokenizer::encode(std::string_view text) const {
  OG_CHECK(impl_, "GPT2Tokenizer used before load()");
  std::vector<int> ids;
  ids.reserve(text.size() / 3 + 4);
  if (text.empty()) return ids;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(impl_->regex, nullptr);
  OG_CHECK(md, "out of memory allocating PCRE2 match data");
  struct Free {
    pcre2_match_data* md;
    ~Free() { pcre2_match_data_free(md); }
  } free_md{md};
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md);
  size_t pos = 0;
  while (pos < text.size()) {
    int rc = pcre2_match(impl_->regex, subject, text.size(), pos, 0, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) {  // only invalid UTF-8 is left
      impl_->encode_word(text.substr(pos), ids);
      break;
    }
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      fail("tokenizer: PCRE2 match failed at byte {}: {}", pos, reinterpret_cast<char*>(msg));
    }
    const size_t start = ovector[0], end = ovector[1];
    if (start > pos) impl_->encode_word(text.substr(pos, start - pos), ids);   // skipped invalid bytes
    if (end <= start) fail("tokenizer: empty regex match at byte {}", start);  // impossible for this pattern
    impl_->encode_word(text.substr(start, end - start), ids);
    pos = end;
  }
  return ids;
}

std::string GPT2Tokenizer::decode(const int* ids, size_t n) const {
  OG_CHECK(impl_, "GPT2Tokenizer used before load()");
  std::string out;
  out.reserve(n * 4);
  const int vocab = int(impl_->token_bytes.size());
  for (size_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab)
      fail("decode: token id {} at position {} is outside the vocabulary 0..{}", ids[i], i, vocab - 1);
    out += impl_->token_bytes[size_t(ids[i])];
  }
  return out;
}

std::string default_tokenizer_dir() {
  if (const char* env = std::getenv("ORTHOGPT_TOKENIZER_DIR"); env && *env) return env;
  std::error_code ec;
  if (std::filesystem::is_directory("assets/gpt2", ec)) return "assets/gpt2";
  return std::string(ORTHOGPT_SOURCE_DIR) + "/assets/gpt2";
}

}  // namespace og
