// `tokenize` pipeline tests: small text / JSONL inputs in a temp dir -> shards, read back both by
// an independent parser of the shard format (header of 256 int32, then uint16 tokens) and by
// og::Shard; documents, <|endoftext|> structure, val split, shard sizes, determinism across
// thread counts, stale-shard cleanup, and errors naming file and line.
// Needs assets/gpt2 (scripts/get_tokenizer.sh); fails with that hint when missing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/shard.h"
#include "data/tokenize.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace {

constexpr int kEot = og::GPT2Tokenizer::kEndOfText;

std::string tokenizer_dir() { return std::string(OG_SOURCE_DIR) + "/assets/gpt2"; }

const og::GPT2Tokenizer& tok() {
  static og::GPT2Tokenizer t = og::GPT2Tokenizer::load(tokenizer_dir());
  return t;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Independent reader of the llm.c shard format.
std::vector<int> read_shard_tokens(const fs::path& p) {
  const std::string bytes = read_bytes(p);
  EXPECT_GE(bytes.size(), 1024u) << p;
  int32_t header[256];
  std::memcpy(header, bytes.data(), sizeof(header));
  EXPECT_EQ(header[0], 20240520) << p;
  EXPECT_EQ(header[1], 1) << p;
  const size_t n = size_t(header[2]);
  EXPECT_EQ(bytes.size(), 1024 + 2 * n) << p;
  std::vector<int> tokens(n);
  for (size_t i = 0; i < n; ++i) {
    uint16_t t;
    std::memcpy(&t, bytes.data() + 1024 + 2 * i, 2);
    tokens[i] = t;
  }
  return tokens;
}

// Expected stream of a list of documents: [EOT, encode(doc)...] each.
std::vector<int> stream_of(const std::vector<std::string>& docs) {
  std::vector<int> out;
  for (const auto& d : docs) {
    out.push_back(kEot);
    const auto ids = tok().encode(d);
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

class Tokenize : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(tokenizer_dir() + "/encoder.json"))
      GTEST_FAIL() << "missing " << tokenizer_dir() << "/encoder.json: run scripts/get_tokenizer.sh";
    dir_ = fs::temp_directory_path() / fmt::format("og_tokenize_{}_{}", ::getpid(),
                                                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "in");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / "in" / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
  og::TokenizeOptions options(std::vector<std::string> inputs) {
    og::TokenizeOptions o;
    o.inputs = std::move(inputs);
    o.output_dir = (dir_ / "out").string();
    o.prefix = "test";
    o.tokenizer_dir = tokenizer_dir();
    o.progress = false;
    return o;
  }
  // All tokens of the shards of one split, in order; checks shard sizes and og::Shard reading.
  std::vector<int> split_tokens(const og::TokenizeSummary& sum, const std::string& split, int64_t shard_tokens) {
    std::vector<std::string> paths;
    for (const auto& p : sum.shards)
      if (p.find("_" + split + "_") != std::string::npos) paths.push_back(p);
    std::vector<int> all;
    for (size_t i = 0; i < paths.size(); ++i) {
      EXPECT_EQ(fs::path(paths[i]).filename().string(), fmt::format("test_{}_{:06d}.bin", split, i));
      std::vector<int> t = read_shard_tokens(paths[i]);
      if (i + 1 < paths.size()) EXPECT_EQ(int64_t(t.size()), shard_tokens) << paths[i];
      EXPECT_LE(int64_t(t.size()), shard_tokens) << paths[i];
      EXPECT_GT(t.size(), 0u) << paths[i];
      og::Shard shard = og::Shard::open(paths[i]);
      std::vector<int32_t> via_shard(shard.num_tokens());
      shard.read(0, shard.num_tokens(), via_shard.data(), 50257);
      EXPECT_EQ(std::vector<int>(via_shard.begin(), via_shard.end()), t) << paths[i];
      all.insert(all.end(), t.begin(), t.end());
    }
    return all;
  }
  std::vector<std::string> out_files() {
    std::vector<std::string> names;
    if (fs::exists(dir_ / "out"))
      for (const auto& e : fs::directory_iterator(dir_ / "out")) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
  std::string error_of(const og::TokenizeOptions& o) {
    try {
      og::run_tokenize(o);
    } catch (const og::Error& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(Tokenize, TextAndJsonlToShardsWithValSplit) {
  const std::string a = write("a.txt",
                              "First document, line one.\nLine two of it.\n\n\n"
                              "Second document: don't stop.\n   \t\n"  // whitespace-only line separates
                              "Third\r\nwith CRLF\r\n\r\n");
  const std::string b = write("b.jsonl",
                              "{\"text\": \"JSON document \\u4f60\\u597d \\ud83d\\ude00\", \"id\": 1}\n"
                              "\n"
                              "{\"text\": \"\", \"id\": 2}\n"  // empty: skipped
                              "{\"text\": \"tabs\\there\\nand newlines\\n\\n\"}\n"
                              "{\"id\": 4, \"text\": \"last  one \"}");
  std::vector<std::string> docs = {
      "First document, line one.\nLine two of it.", "Second document: don't stop.", "Third\r\nwith CRLF\r",
      "JSON document \u4f60\u597d \U0001f600",      "tabs\there\nand newlines\n\n", "last  one "};
  auto o = options({a, b});
  o.val_fraction = 0.34;  // document i > 0 is val when ceil(0.34 i) > ceil(0.34 (i-1)): i = 1, 3
  o.shard_tokens = 7;
  o.threads = 3;
  const og::TokenizeSummary sum = og::run_tokenize(o);
  const std::vector<std::string> train_docs = {docs[0], docs[2], docs[4], docs[5]};
  const std::vector<std::string> val_docs = {docs[1], docs[3]};
  EXPECT_EQ(sum.documents, 6);
  EXPECT_EQ(sum.train_documents, 4);
  EXPECT_EQ(sum.val_documents, 2);
  const std::vector<int> train = split_tokens(sum, "train", o.shard_tokens);
  const std::vector<int> val = split_tokens(sum, "val", o.shard_tokens);
  EXPECT_EQ(train, stream_of(train_docs));
  EXPECT_EQ(val, stream_of(val_docs));
  EXPECT_EQ(sum.train_tokens, int64_t(train.size()));
  EXPECT_EQ(sum.val_tokens, int64_t(val.size()));
  EXPECT_EQ(std::count(train.begin(), train.end(), kEot), 4);
  EXPECT_EQ(train.front(), kEot);
  // Decoding the stream gives the documents back, each after <|endoftext|>.
  std::string expected_text;
  for (const auto& d : train_docs) expected_text += "<|endoftext|>" + d;
  EXPECT_EQ(tok().decode(train), expected_text);
  EXPECT_EQ(sum.shards.size(), size_t((train.size() + 6) / 7 + (val.size() + 6) / 7));
}

TEST_F(Tokenize, SplitFileMakesOneDocumentPerFile) {
  const std::string a = write("a.txt", "para one\n\npara two\n");
  const std::string b = write("b.txt", "");  // empty file: no document
  const std::string c = write("c.txt", "\n\nonly\n\n\n");
  auto o = options({a, b, c});
  o.split = "file";
  o.val_fraction = 0.0;
  const og::TokenizeSummary sum = og::run_tokenize(o);
  EXPECT_EQ(sum.documents, 2);
  EXPECT_EQ(sum.val_documents, 0);
  EXPECT_EQ(split_tokens(sum, "train", o.shard_tokens), stream_of({"para one\n\npara two\n", "\n\nonly\n\n\n"}));
  EXPECT_EQ(out_files(), std::vector<std::string>{"test_train_000000.bin"});
}

TEST_F(Tokenize, ValSplitRule) {
  // N documents, fraction f: ceil((N - 1) f) in val, never document 0, at least one for N >= 2.
  std::string text;
  for (int i = 0; i < 50; ++i) text += fmt::format("Document number {} says {}.\n\n", i, i * 7919 % 1000);
  const std::string a = write("a.txt", text);
  for (double f : {0.0, 0.01, 0.1, 0.25, 0.5, 0.9}) {
    auto o = options({a});
    o.val_fraction = f;
    const og::TokenizeSummary sum = og::run_tokenize(o);
    EXPECT_EQ(sum.documents, 50);
    EXPECT_EQ(sum.val_documents, int64_t(std::ceil(49 * f - 1e-9))) << f;
    EXPECT_EQ(sum.train_documents + sum.val_documents, 50);
    const std::vector<int> train = split_tokens(sum, "train", o.shard_tokens);
    // Document 0 is always train.
    const std::vector<int> first = stream_of({"Document number 0 says 0."});
    ASSERT_GE(train.size(), first.size());
    EXPECT_TRUE(std::equal(first.begin(), first.end(), train.begin())) << f;
  }
  // A single document stays in train; two give one val document.
  auto o = options({write("one.txt", "just one document")});
  o.val_fraction = 0.01;
  auto sum = og::run_tokenize(o);
  EXPECT_EQ(sum.train_documents, 1);
  EXPECT_EQ(sum.val_documents, 0);
  o.inputs = {write("two.txt", "one\n\ntwo")};
  sum = og::run_tokenize(o);
  EXPECT_EQ(sum.train_documents, 1);
  EXPECT_EQ(sum.val_documents, 1);
}

TEST_F(Tokenize, DeterministicAcrossThreadCounts) {
  std::string text;
  for (int i = 0; i < 300; ++i) text += fmt::format("Doc {}: the quick brown fox {} jumps.\n\n", i, i * i);
  const std::string a = write("a.txt", text);
  std::vector<std::string> bytes_by_run;
  for (int threads : {1, 4}) {
    auto o = options({a});
    o.threads = threads;
    o.shard_tokens = 1000;
    o.val_fraction = 0.05;
    const auto sum = og::run_tokenize(o);
    std::string all;
    for (const auto& p : sum.shards) all += fs::path(p).filename().string() + read_bytes(p);
    bytes_by_run.push_back(all);
  }
  EXPECT_EQ(bytes_by_run[0], bytes_by_run[1]);
}

TEST_F(Tokenize, RemovesStaleShardsOfSamePrefixOnly) {
  fs::create_directories(dir_ / "out");
  for (const char* name : {"test_train_000007.bin", "test_val_000000.bin", "other_train_000000.bin", "test_notes.txt"})
    std::ofstream(dir_ / "out" / name) << "x";
  auto o = options({write("a.txt", "alpha\n\nbeta\n\ngamma")});
  o.val_fraction = 0.0;
  og::run_tokenize(o);
  EXPECT_EQ(out_files(),
            (std::vector<std::string>{"other_train_000000.bin", "test_notes.txt", "test_train_000000.bin"}));
}

TEST_F(Tokenize, BadJsonlLineNamesFileAndLine) {
  const std::string good = write("good.txt", "fine document\n\nanother");
  const std::string bad = write("bad.jsonl", "{\"text\": \"ok\"}\n\n{\"text\": \"unterminated}\n{\"text\": \"ok\"}\n");
  std::string msg = error_of(options({good, bad}));
  EXPECT_NE(msg.find(bad + ":3"), std::string::npos) << msg;
  EXPECT_TRUE(out_files().empty()) << "a failed run must not leave shards";

  const std::string no_text = write("no_text.jsonl", "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
  msg = error_of(options({no_text}));
  EXPECT_NE(msg.find(no_text + ":2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"text\""), std::string::npos) << msg;

  const std::string not_string = write("not_string.jsonl", "[1, 2]\n");
  msg = error_of(options({not_string}));
  EXPECT_NE(msg.find(not_string + ":1"), std::string::npos) << msg;
}

TEST_F(Tokenize, OptionErrors) {
  const std::string a = write("a.txt", "text");
  auto o = options({a});
  o.split = "paragraph";
  EXPECT_NE(error_of(o).find("paragraph"), std::string::npos);
  o = options({a, (dir_ / "in" / "missing.txt").string()});
  EXPECT_NE(error_of(o).find("missing.txt"), std::string::npos);
  o = options({a});
  o.val_fraction = 1.0;
  EXPECT_NE(error_of(o).find("val_fraction"), std::string::npos);
  o = options({a});
  o.shard_tokens = 0;
  EXPECT_NE(error_of(o).find("shard_tokens"), std::string::npos);
  o = options({write("blank.txt", "\n \n\t\n")});
  EXPECT_NE(error_of(o).find("no documents"), std::string::npos);
  o = options({a});
  o.tokenizer_dir = (dir_ / "nowhere").string();
  EXPECT_NE(error_of(o).find("encoder.json"), std::string::npos);
}

}  // namespace
