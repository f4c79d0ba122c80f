// Text generation: the temperature/top-k sampling rule against its definition (argmax, softmax
// restricted to the top k, a chi-square test of the empirical distribution), seeds, and the
// `orthogpt sample` path end to end on a checkpoint of a tiny model trained on KJV text, plus
// samples during training (train.sample_every).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "data/tokenizer.h"
#include "tests/common/tiny_run.h"
#include "train/checkpoint.h"
#include "train/sample.h"
#include "train/trainer.h"

using og_test::TempDir;

namespace {

std::vector<float> random_logits(int n, uint64_t seed, double scale = 3.0) {
  og::Rng rng(seed);
  std::vector<float> l(n);
  for (auto& x : l) x = (float)(scale * rng.normal());
  return l;
}

int argmax(const std::vector<float>& l) { return (int)(std::max_element(l.begin(), l.end()) - l.begin()); }

// Independent reference: softmax(l / T) over the k largest entries (sorted copy), zero elsewhere.
std::vector<double> reference_distribution(const std::vector<float>& l, double T, int k) {
  std::vector<float> sorted(l);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  const float kth = sorted[std::min<size_t>(k, l.size()) - 1];
  double mx = sorted[0], z = 0;
  std::vector<double> p(l.size(), 0.0);
  for (size_t i = 0; i < l.size(); ++i)
    if (l[i] >= kth) z += p[i] = std::exp((l[i] - mx) / T);
  for (auto& x : p) x /= z;
  return p;
}

std::string expect_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const og::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an og::Error";
  return "";
}

og::DistContext self_context() {
  og::DistContext d;
  d.host_comm = og::make_self_communicator();
  return d;
}

std::string tokenizer_dir() { return std::string(OG_SOURCE_DIR) + "/assets/gpt2"; }

// A tiny model on KJV text (real GPT-2 ids), a few steps, with a checkpoint at the end.
og::Config kjv_config(const std::string& out) {
  og::Config c = og_test::tiny_config(std::string(OG_TEST_DATA_DIR) + "/kjv_small", out, 50304);
  c.data.train = std::string(OG_TEST_DATA_DIR) + "/kjv_small/kjv_train_*.bin";
  c.data.val = std::string(OG_TEST_DATA_DIR) + "/kjv_small/kjv_val_*.bin";
  c.model.d_model = 32;
  c.model.seq_len = 32;
  c.train.batch_size = 4;
  c.train.micro_batch_size = 4;
  c.train.steps = 6;
  c.data.val_tokens = 4 * 32;
  c.checkpoint.enabled = true;
  return c;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

}  // namespace

TEST(SampleRule, TopKOneIsArgmax) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    const std::vector<float> l = random_logits(1000, seed);
    og::Rng rng(seed * 7);
    for (double T : {0.1, 1.0, 5.0}) EXPECT_EQ(og::sample_token(l.data(), (int)l.size(), {T, 1}, rng), argmax(l));
  }
}

TEST(SampleRule, TinyTemperatureIsArgmaxAndLargeKIsFullSoftmax) {
  const std::vector<float> l = random_logits(500, 3);
  og::Rng rng(11);
  // logits are distinct by far more than 1e-4 * log(1e300): every other weight underflows to 0
  for (int i = 0; i < 50; ++i) EXPECT_EQ(og::sample_token(l.data(), (int)l.size(), {1e-4, 500}, rng), argmax(l));
  // k >= n: the full softmax(l / T); k much larger than n is the same
  for (int k : {500, 100000}) {
    const std::vector<double> p = og::sampling_distribution(l.data(), (int)l.size(), {0.7, k});
    const std::vector<double> ref = reference_distribution(l, 0.7, 500);
    for (size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(p[i], ref[i], 1e-12) << i;
  }
  // top-k restriction: exactly k non-zero entries, equal to the renormalized reference
  const std::vector<double> p = og::sampling_distribution(l.data(), (int)l.size(), {1.3, 17});
  const std::vector<double> ref = reference_distribution(l, 1.3, 17);
  EXPECT_EQ(std::count_if(p.begin(), p.end(), [](double x) { return x > 0; }), 17);
  for (size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(p[i], ref[i], 1e-12) << i;
}

// Draws from sample_token vs softmax(l / T) restricted to the top k: Pearson chi-square over the
// k categories with k - 1 = 9 degrees of freedom. The 99.9% quantile of chi2(9) is 27.88; with a
// correct sampler a fixed seed fails this with probability 0.001 (and the seed is fixed).
TEST(SampleRule, EmpiricalDistributionMatchesTopKSoftmax) {
  const std::vector<float> l = random_logits(200, 5, 1.0);
  const double T = 0.8;
  const int k = 10, draws = 200000;
  const std::vector<double> p = reference_distribution(l, T, k);
  std::vector<int64_t> counts(l.size(), 0);
  og::Rng rng(2024);
  for (int i = 0; i < draws; ++i) ++counts[og::sample_token(l.data(), (int)l.size(), {T, k}, rng)];
  double chi2 = 0;
  int categories = 0;
  for (size_t i = 0; i < l.size(); ++i) {
    if (p[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the top k but was drawn";
      continue;
    }
    ++categories;
    const double expected = p[i] * draws;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  EXPECT_EQ(categories, k);
  EXPECT_LT(chi2, 27.88) << "chi-square " << chi2 << " with " << k - 1 << " degrees of freedom";
  // and a wrong temperature is rejected by the same test (the test can fail)
  const std::vector<double> wrong = reference_distribution(l, 1.6, k);
  double chi2_wrong = 0;
  for (size_t i = 0; i < l.size(); ++i)
    if (wrong[i] > 0)
      chi2_wrong += (counts[i] - wrong[i] * draws) * (counts[i] - wrong[i] * draws) / (wrong[i] * draws);
  EXPECT_GT(chi2_wrong, 27.88);
}

TEST(SampleRule, SameSeedSameTokensAndBadParamsAreErrors) {
  const std::vector<float> l = random_logits(300, 9);
  og::Rng a(42), b(42), c(43);
  std::vector<int> sa, sb, sc;
  for (int i = 0; i < 100; ++i) {
    sa.push_back(og::sample_token(l.data(), (int)l.size(), {1.0, 50}, a));
    sb.push_back(og::sample_token(l.data(), (int)l.size(), {1.0, 50}, b));
    sc.push_back(og::sample_token(l.data(), (int)l.size(), {1.0, 50}, c));
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
  og::Rng r(1);
  EXPECT_NE(expect_error([&] {
              og::sample_token(l.data(), (int)l.size(), {0.0, 5}, r);
            }).find("--top-k 1"),
            std::string::npos);
  EXPECT_NE(expect_error([&] {
              og::sample_token(l.data(), (int)l.size(), {1.0, 0}, r);
            }).find("top-k"),
            std::string::npos);
  std::vector<float> bad(l);
  bad[7] = std::nanf("");
  EXPECT_NE(expect_error([&] {
              og::sample_token(bad.data(), (int)bad.size(), {1.0, 5}, r);
            }).find("not finite"),
            std::string::npos);
}

// Train a few steps with a checkpoint, then the `orthogpt sample` code path on it.
TEST(SampleCommand, GeneratesFromACheckpointDeterministically) {
  ASSERT_TRUE(std::filesystem::exists(tokenizer_dir() + "/encoder.json"))
      << "missing " << tokenizer_dir() << ": run scripts/get_tokenizer.sh";
  TempDir out("og_sample_run");
  og::Config c = kjv_config(out.str());
  og::validate_config(c);
  og::DistContext d = self_context();
  og::run_train(c, d);

  og::SampleOptions o;
  o.checkpoint = out.str();
  o.prompt = "And God said";
  o.max_tokens = 12;
  o.seed = 5;
  o.device = "cpu";
  o.tokenizer_dir = tokenizer_dir();
  o.num_samples = 3;
  TempDir tmp("og_sample_out");
  std::FILE* f = std::fopen((tmp / "a.txt").c_str(), "w");
  const std::vector<std::string> a = og::run_sample(o, f);
  std::fclose(f);
  ASSERT_EQ(a.size(), 3u);
  const og::GPT2Tokenizer tok = og::GPT2Tokenizer::load(tokenizer_dir());
  int full = 0;
  for (const auto& t : a) {
    const size_t n = tok.encode(t).size();
    // 12 tokens unless <|endoftext|> came first; re-encoding may merge pieces, never add tokens
    EXPECT_LE(n, 12u) << t;
    full += n >= 10;
  }
  EXPECT_GE(full, 1) << "no sample reached the requested length";
  // the printed text is the prompt followed by each continuation
  const std::string printed = read_file(tmp / "a.txt");
  for (const auto& t : a) EXPECT_NE(printed.find(o.prompt + t), std::string::npos) << printed;

  // same seed: same text; another seed: different text
  f = std::fopen((tmp / "b.txt").c_str(), "w");
  const std::vector<std::string> b = og::run_sample(o, f);
  std::fclose(f);
  EXPECT_EQ(a, b);
  EXPECT_EQ(printed, read_file(tmp / "b.txt"));
  o.seed = 6;
  f = std::fopen((tmp / "c.txt").c_str(), "w");
  const std::vector<std::string> c6 = og::run_sample(o, f);
  std::fclose(f);
  EXPECT_NE(a, c6);
  EXPECT_EQ(a[1], c6[0]);  // sample i uses seed + i

  // generate() itself: exactly max_tokens without the end-of-text stop, through the sliding
  // window (prompt + generated > seq_len 32)
  {
    og::CheckpointReader ck(out.str());
    std::unique_ptr<og::Model> m = og::make_cpu_model(c.gpt(), 1);
    std::vector<float> host(m->layout().total());
    ck.read("params", host.data(), host.size() * sizeof(float));
    m->upload_params(host.data());
    og::GenerateOptions g;
    g.max_tokens = 40;
    g.seed = 1;
    g.vocab_limit = 50257;
    g.stop_at_end_of_text = false;
    std::vector<int> seen;
    const og::GenerateResult r =
        og::generate(*m, {og::GPT2Tokenizer::kEndOfText, 400, 500}, g, [&](int id) { seen.push_back(id); });
    EXPECT_EQ(r.tokens.size(), 40u);
    EXPECT_EQ(seen, r.tokens);
    for (int id : r.tokens) EXPECT_LT(id, 50257);
  }

  // errors name the problem
  og::SampleOptions e = o;
  e.checkpoint = out / "no_such_dir";
  EXPECT_NE(expect_error([&] { og::run_sample(e, stdout); }).find("no_such_dir"), std::string::npos);
  e = o;
  e.temperature = 0;
  EXPECT_NE(expect_error([&] { og::run_sample(e, stdout); }).find("temperature"), std::string::npos);
  e = o;
  e.top_k = 0;
  EXPECT_NE(expect_error([&] { og::run_sample(e, stdout); }).find("top-k"), std::string::npos);
  e = o;
  e.prompt = "";
  EXPECT_NE(expect_error([&] { og::run_sample(e, stdout); }).find("--prompt"), std::string::npos);
  // a corrupted checkpoint is refused (CheckpointReader's checksum)
  const std::string latest = og::latest_checkpoint(out.str());
  {
    std::fstream s(latest + "/state.bin", std::ios::in | std::ios::out | std::ios::binary);
    s.seekp(300);
    s.put('\x5a');
  }
  e = o;
  EXPECT_NE(expect_error([&] { og::run_sample(e, stdout); }).find("state.bin"), std::string::npos);
}

// A prompt longer than seq_len: the last seq_len tokens are kept and the run still generates.
TEST(SampleCommand, LongPromptIsTruncated) {
  TempDir out("og_sample_long");
  og::Config c = kjv_config(out.str());
  c.train.steps = 1;
  og::DistContext d = self_context();
  og::run_train(c, d);
  og::SampleOptions o;
  o.checkpoint = out.str();
  std::string p;
  for (int i = 0; i < 40; ++i) p += " and the LORD";
  o.prompt = p;  // ~120 tokens > seq_len 32
  o.max_tokens = 3;
  o.device = "cpu";
  o.tokenizer_dir = tokenizer_dir();
  TempDir tmp("og_sample_long_out");
  std::FILE* f = std::fopen((tmp / "o.txt").c_str(), "w");
  const std::vector<std::string> a = og::run_sample(o, f);
  std::fclose(f);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(read_file(tmp / "o.txt").rfind(p, 0), 0u);
}

TEST(SampleDuringTraining, WritesSampleRows) {
  TempDir out("og_sample_train");
  og::Config c = kjv_config(out.str());
  c.checkpoint.enabled = false;
  c.train.sample_every = 2;
  c.train.sample_prompt = "The LORD";
  c.train.sample_tokens = 5;
  og::validate_config(c);
  og::DistContext d = self_context();
  const og::TrainResult r = og::run_train(c, d);
  std::ifstream m(out / "metrics.jsonl");
  std::vector<int64_t> steps;
  int train_rows = 0;
  for (std::string line; std::getline(m, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j["type"] == "train") ++train_rows;
    if (j["type"] != "sample") continue;
    steps.push_back(j["step"].get<int64_t>());
    EXPECT_EQ(j["prompt"], "The LORD");
    EXPECT_TRUE(j["text"].is_string());
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{2, 4, 6}));
  EXPECT_EQ(train_rows, 6);
  // sampling does not change training: same final parameters as a run without samples
  TempDir out2("og_sample_train_off");
  og::Config c2 = c;
  c2.train.sample_every = 0;
  c2.log.dir = out2.str();
  const og::TrainResult r2 = og::run_train(c2, d);
  EXPECT_EQ(r.final_params, r2.final_params);
  // bad values name the key
  c2.train.sample_tokens = 0;
  EXPECT_NE(expect_error([&] { og::validate_config(c2); }).find("train.sample_tokens"), std::string::npos);
}
