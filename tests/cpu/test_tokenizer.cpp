// GPT-2 tokenizer tests: exact ids against tests/data/tokenizer_cases.json (made by an
// independent Python implementation, scripts/gen_tokenizer_cases.py), byte-exact round trips on
// random bytes and random UTF-8, invalid UTF-8 handling, the two BPE merge loops against each
// other, thread safety, and load errors that name the file.
// Needs assets/gpt2 (scripts/get_tokenizer.sh); fails with that hint when missing.
#include <gtest/gtest.h>

#include <unistd.h>
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/bpe_merges.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace {

std::string tokenizer_dir() { return std::string(OG_SOURCE_DIR) + "/assets/gpt2"; }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// One tokenizer for the whole file (loading takes ~0.1 s). Tests call REQUIRE_TOKENIZER() first.
const og::GPT2Tokenizer& tok() {
  static const og::GPT2Tokenizer t = og::GPT2Tokenizer::load(tokenizer_dir());
  return t;
}

#define REQUIRE_TOKENIZER()                                                                     \
  do {                                                                                          \
    if (!fs::exists(tokenizer_dir() + "/encoder.json")) {                                       \
      FAIL() << "missing " << tokenizer_dir() << "/encoder.json: run scripts/get_tokenizer.sh"; \
    }                                                                                           \
  } while (0)

std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F && c != '\\')
      out += char(c);
    else
      out += fmt::format("\\x{:02x}", c);
  }
  return out;
}

void append_utf8(std::string& s, char32_t cp) {
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xF0 | (cp >> 18));
    s += char(0x80 | ((cp >> 12) & 0x3F));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
}

// Random valid UTF-8: code points drawn from ASCII, Latin-1, general BMP and astral planes
// (surrogates excluded), with extra weight on spaces, digits and apostrophes.
std::string random_utf8(std::mt19937_64& rng, size_t n_chars) {
  std::string s;
  std::uniform_int_distribution<int> kind(0, 9);
  for (size_t i = 0; i < n_chars; ++i) {
    char32_t cp;
    switch (kind(rng)) {
      case 0: cp = U" \t\n\r'0123456789"[rng() % 16]; break;
      case 1:
      case 2:
      case 3: cp = char32_t(0x20 + rng() % 0x5F); break;
      case 4: cp = char32_t(0x80 + rng() % 0x780); break;
      case 5:
      case 6: cp = char32_t(0x800 + rng() % (0xD800 - 0x800)); break;
      case 7: cp = char32_t(0xE000 + rng() % 0x2000); break;
      case 8: cp = char32_t(0x10000 + rng() % 0x100000); break;
      default: cp = char32_t(rng() % 0x80); break;
    }
    append_utf8(s, cp);
  }
  return s;
}

// Byte sequences that are not valid UTF-8.
const std::vector<std::string>& invalid_utf8_pieces() {
  static const std::vector<std::string> pieces = {
      "\x80",
      "\xbf",
      "\xff",
      "\xfe",
      "\xc0\xaf",
      "\xc1\xbf",  // stray continuation, never-valid, overlong
      "\xe0\x80\xaf",
      "\xed\xa0\x80",
      "\xed\xbf\xbf",  // overlong, UTF-16 surrogates
      "\xf4\x90\x80\x80",
      "\xf8\x88\x80\x80\x80",  // above U+10FFFF, 5-byte form
      "\xc3",
      "\xe2\x82",
      "\xf0\x9f\x98",  // truncated sequences
  };
  return pieces;
}

void expect_round_trip(const std::string& s) {
  std::vector<int> ids = tok().encode(s);
  for (int id : ids) ASSERT_TRUE(id >= 0 && id < tok().vocab_size()) << "id " << id << " for " << printable(s);
  ASSERT_EQ(tok().decode(ids), s) << "round trip failed for " << printable(s);
}

}  // namespace

TEST(Tokenizer, LoadsGpt2Vocabulary) {
  REQUIRE_TOKENIZER();
  EXPECT_EQ(tok().vocab_size(), 50257);
  EXPECT_EQ(tok().decode({og::GPT2Tokenizer::kEndOfText}), "<|endoftext|>");
  EXPECT_EQ(tok().decode({15496, 11, 995, 0}), "Hello, world!");
}

// Exact ids from the independent Python reference encoder.
TEST(Tokenizer, MatchesReferenceCases) {
  REQUIRE_TOKENIZER();
  const std::string path = std::string(OG_TEST_DATA_DIR) + "/tokenizer_cases.json";
  nlohmann::json doc = nlohmann::json::parse(read_file(path));
  const auto& cases = doc.at("cases");
  ASSERT_GE(cases.size(), 30u) << path;
  size_t checked_tokens = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string text = cases[i].at("text").get<std::string>();
    const std::vector<int> expected = cases[i].at("ids").get<std::vector<int>>();
    EXPECT_EQ(tok().encode(text), expected) << "case " << i << ": " << printable(text);
    EXPECT_EQ(tok().decode(expected), text) << "case " << i;
    checked_tokens += expected.size();
  }
  EXPECT_GT(checked_tokens, 1000u);
}

// " <|endoftext|>" in text is ordinary text: special tokens are never parsed by encode().
TEST(Tokenizer, EndOfTextInTextIsPlainText) {
  REQUIRE_TOKENIZER();
  const std::vector<int> ids = tok().encode("a <|endoftext|> b");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), og::GPT2Tokenizer::kEndOfText), 0);
  EXPECT_EQ(tok().decode(ids), "a <|endoftext|> b");
}

TEST(Tokenizer, RoundTripsRandomBytes) {
  REQUIRE_TOKENIZER();
  std::mt19937_64 rng(1234);
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s(rng() % 200, '\0');
    if (iter % 2 == 0) {
      for (char& c : s) c = char(rng() & 0xFF);  // uniform bytes: mostly invalid UTF-8
    } else {
      for (char& c : s) c = " \t\na'1\x80\xc3\xe2\xff"[rng() % 10];  // boundary-heavy alphabet
    }
    expect_round_trip(s);
  }
}

TEST(Tokenizer, RoundTripsRandomUtf8) {
  REQUIRE_TOKENIZER();
  std::mt19937_64 rng(99);
  for (int iter = 0; iter < 2000; ++iter) expect_round_trip(random_utf8(rng, rng() % 120));
}

TEST(Tokenizer, RoundTripsUtf8WithInvalidSequences) {
  REQUIRE_TOKENIZER();
  std::mt19937_64 rng(7);
  const auto& bad = invalid_utf8_pieces();
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s;
    const int parts = 1 + int(rng() % 8);
    for (int p = 0; p < parts; ++p) {
      if (rng() % 2)
        s += random_utf8(rng, rng() % 12);
      else
        s += bad[rng() % bad.size()];
    }
    expect_round_trip(s);
  }
}

// The documented choice: a run of invalid bytes is a word of its own, splitting the text around it.
TEST(Tokenizer, InvalidBytesAreSeparateWords) {
  REQUIRE_TOKENIZER();
  for (const std::string& bad : invalid_utf8_pieces()) {
    std::vector<int> expected = tok().encode("Hello");
    for (const std::string& part : {bad, std::string(" world")}) {
      std::vector<int> ids = tok().encode(part);
      expected.insert(expected.end(), ids.begin(), ids.end());
    }
    EXPECT_EQ(tok().encode("Hello" + bad + " world"), expected) << printable(bad);
  }
}

// Very long runs (the pattern's backtracking `\s+(?!\S)`, the heap merge loop, no cache).
TEST(Tokenizer, HandlesVeryLongRuns) {
  REQUIRE_TOKENIZER();
  for (const std::string& unit : {std::string(" "), std::string("ab"), std::string("!?"), std::string("7"),
                                  std::string("\xe4\xb8\x80"), std::string("\xff")}) {
    std::string s;
    while (s.size() < 400000) s += unit;
    s += "x";
    expect_round_trip(s);
  }
}

TEST(Tokenizer, ConcurrentEncodeMatchesSequential) {
  REQUIRE_TOKENIZER();
  std::mt19937_64 rng(5);
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i) texts.push_back(random_utf8(rng, 50 + rng() % 200));
  std::vector<std::vector<int>> expected;
  for (const auto& t : texts) expected.push_back(tok().encode(t));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (int rep = 0; rep < 3; ++rep)
        for (size_t i = size_t(w); i < texts.size(); i += 1 + size_t(w))
          if (tok().encode(texts[i]) != expected[i]) ++mismatches[size_t(w)];
    });
  }
  for (auto& t : threads) t.join();
  for (int w = 0; w < 4; ++w) EXPECT_EQ(mismatches[size_t(w)], 0) << "thread " << w;
}

TEST(Tokenizer, DecodeRejectsOutOfRangeIds) {
  REQUIRE_TOKENIZER();
  for (int bad : {-1, 50257, 65535}) {
    try {
      tok().decode({464, bad});
      ADD_FAILURE() << "no error for id " << bad;
    } catch (const og::Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
    }
  }
}

// The heap merge loop equals the reference loop on GPT-2's own merges (long random words), and
// on a random synthetic merge table.
TEST(BpeMerges, HeapEqualsReferenceOnGpt2Merges) {
  REQUIRE_TOKENIZER();
  // Build the table from the files independently of the tokenizer's loader.
  nlohmann::json enc = nlohmann::json::parse(read_file(tokenizer_dir() + "/encoder.json"));
  std::istringstream bpe(read_file(tokenizer_dir() + "/vocab.bpe"));
  og::BpeMergeTable table;
  std::string line;
  std::getline(bpe, line);  // #version
  while (std::getline(bpe, line)) {
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    const std::string l = line.substr(0, sp), r = line.substr(sp + 1);
    ASSERT_TRUE(table.add(enc.at(l).get<int>(), enc.at(r).get<int>(), enc.at(l + r).get<int>()));
  }
  table.finalize();
  ASSERT_EQ(table.size(), 50000u);
  ASSERT_TRUE(table.heap_is_exact());
  // Word symbols start as single-character tokens; letters in encoder.json are their own ids.
  const std::string alphabet = "etaoinshrdlucmfwypvbgkqjxzETAOIN'.,0123456789";
  std::mt19937_64 rng(42);
  for (int iter = 0; iter < 300; ++iter) {
    std::vector<int> word;
    const size_t n = 1 + rng() % 400;
    for (size_t i = 0; i < n; ++i) word.push_back(enc.at(std::string(1, alphabet[rng() % alphabet.size()])).get<int>());
    std::vector<int> a = word, b = word;
    table.apply_reference(a);
    table.apply_heap(b);
    ASSERT_EQ(a, b) << "word of " << n << " symbols, iteration " << iter;
  }
}

TEST(BpeMerges, HeapEqualsReferenceOnRandomTable) {
  std::mt19937_64 rng(3);
  // Tokens 0..3 are the alphabet; each merge combines two existing tokens into a new one, so
  // every merge that consumes a token comes after the merge that made it (heap is exact).
  og::BpeMergeTable table;
  int next_token = 4;
  for (int r = 0; r < 300; ++r) {
    const int l = int(rng() % size_t(next_token)), rt = int(rng() % size_t(next_token));
    if (table.add(l, rt, next_token)) ++next_token;
  }
  table.finalize();
  ASSERT_TRUE(table.heap_is_exact());
  for (int iter = 0; iter < 500; ++iter) {
    std::vector<int> word(1 + rng() % 200);
    for (int& t : word) t = int(rng() % 4);
    std::vector<int> a = word, b = word;
    table.apply_reference(a);
    table.apply_heap(b);
    ASSERT_EQ(a, b) << "iteration " << iter;
  }
  // A table where a token is produced after being consumed is detected.
  og::BpeMergeTable odd;
  odd.add(5, 1, 6);
  odd.add(0, 1, 5);
  odd.finalize();
  EXPECT_FALSE(odd.heap_is_exact());
}

// ---- load errors name the file ----

class TokenizerLoadErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("og_tok_test_{}", ::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // The og::Error message of loading dir_, or "" if it loaded.
  std::string load_error() {
    try {
      og::GPT2Tokenizer::load(dir_.string());
    } catch (const og::Error& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(TokenizerLoadErrors, MissingEncoderNamesFile) {
  const std::string msg = load_error();
  EXPECT_NE(msg.find((dir_ / "encoder.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("get_tokenizer.sh"), std::string::npos) << msg;
}

TEST_F(TokenizerLoadErrors, MissingMergesNamesFile) {
  REQUIRE_TOKENIZER();
  fs::copy_file(tokenizer_dir() + "/encoder.json", dir_ / "encoder.json");
  const std::string msg = load_error();
  EXPECT_NE(msg.find((dir_ / "vocab.bpe").string()), std::string::npos) << msg;
}

TEST_F(TokenizerLoadErrors, BadJsonNamesFile) {
  write_file(dir_ / "encoder.json", "{\"a\": 0, \"b\": ");
  write_file(dir_ / "vocab.bpe", "#version: 0.2\n");
  const std::string msg = load_error();
  EXPECT_NE(msg.find((dir_ / "encoder.json").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("invalid JSON"), std::string::npos) << msg;
}

TEST_F(TokenizerLoadErrors, BadMergeLineNamesFileAndLine) {
  REQUIRE_TOKENIZER();
  fs::copy_file(tokenizer_dir() + "/encoder.json", dir_ / "encoder.json");
  write_file(dir_ / "vocab.bpe", "#version: 0.2\n\xc4\xa0 t\nthis line has three\n");
  std::string msg = load_error();
  EXPECT_NE(msg.find((dir_ / "vocab.bpe").string() + ":3"), std::string::npos) << msg;
  write_file(dir_ / "vocab.bpe", "#version: 0.2\n\xc4\xa0 t\nnot_a_token x\n");
  msg = load_error();
  EXPECT_NE(msg.find((dir_ / "vocab.bpe").string() + ":3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not_a_token"), std::string::npos) << msg;
}

TEST(TokenizerDir, EnvironmentOverrides) {
  const char* old = std::getenv("ORTHOGPT_TOKENIZER_DIR");
  std::string saved = old ? old : "";
  ::setenv("ORTHOGPT_TOKENIZER_DIR", "/some/where/gpt2", 1);
  EXPECT_EQ(og::default_tokenizer_dir(), "/some/where/gpt2");
  ::unsetenv("ORTHOGPT_TOKENIZER_DIR");
  const std::string dflt = og::default_tokenizer_dir();
  EXPECT_TRUE(dflt == "assets/gpt2" || dflt == std::string(OG_SOURCE_DIR) + "/assets/gpt2") << dflt;
  if (old) ::setenv("ORTHOGPT_TOKENIZER_DIR", saved.c_str(), 1);
}
