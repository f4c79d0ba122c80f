// Sampling rule, generation loop and `orthogpt sample` (see sample.h).
#include "train/sample.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "core/error.h"
#include "data/tokenizer.h"
#include "train/backend.h"
#include "train/checkpoint.h"
#include "train/config.h"

namespace og {
namespace {

// The top-k candidates (largest logits first, ties by lower id) and their unnormalized weights
// exp((logit - max) / temperature), in double.
struct Candidates {
  std::vector<int> ids;
  std::vector<double> weights;
  double total = 0;
};

Candidates top_k_candidates(const float* logits, int n, const SamplingParams& p) {
  check_sampling_params(p);
  OG_CHECK(n > 0, "sampling: empty logits vector");
  for (int i = 0; i < n; ++i)
    OG_CHECK(std::isfinite(logits[i]), "sampling: logit {} of {} is {} (the model's output is not finite)", i, n,
             logits[i]);
  const int k = std::min(p.top_k, n);
  Candidates c;
  c.ids.resize(n);
  std::iota(c.ids.begin(), c.ids.end(), 0);
  auto before = [logits](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  if (k < n) {
    std::nth_element(c.ids.begin(), c.ids.begin() + (k - 1), c.ids.end(), before);
    c.ids.resize(k);
  }
  std::sort(c.ids.begin(), c.ids.end(), before);
  const double top = logits[c.ids[0]];
  c.weights.resize(c.ids.size());
  for (size_t j = 0; j < c.ids.size(); ++j) {
    c.weights[j] = std::exp(((double)logits[c.ids[j]] - top) / p.temperature);
    c.total += c.weights[j];
  }
  return c;  // weights[0] == 1, so total >= 1
}

}  // namespace

void check_sampling_params(const SamplingParams& p) {
  OG_CHECK(std::isfinite(p.temperature) && p.temperature > 0,
           "temperature {} must be > 0 (use --top-k 1 for greedy decoding)", p.temperature);
  OG_CHECK(p.top_k >= 1, "top-k {} must be >= 1 (1: greedy; a value >= the vocabulary: no restriction)", p.top_k);
}

std::vector<double> sampling_distribution(const float* logits, int n, const SamplingParams& p) {
  const Candidates c = top_k_candidates(logits, n, p);
  std::vector<double> dist(n, 0.0);
  for (size_t j = 0; j < c.ids.size(); ++j) dist[c.ids[j]] = c.weights[j] / c.total;
  return dist;
}

int sample_token(const float* logits, int n, const SamplingParams& p, Rng& rng) {
  const Candidates c = top_k_candidates(logits, n, p);
  const double u = rng.uniform() * c.total;
  double acc = 0;
  for (size_t j = 0; j < c.ids.size(); ++j) {
    acc += c.weights[j];
    if (u < acc) return c.ids[j];
  }
  return c.ids.back();  // u within rounding of the total
}

GenerateResult generate(Model& model, const std::vector<int>& prompt, const GenerateOptions& opt,
                        const std::function<void(int)>& on_token) {
  OG_CHECK(!prompt.empty(), "generate: empty prompt");
  OG_CHECK(opt.max_tokens >= 0, "max tokens {} must be >= 0", opt.max_tokens);
  check_sampling_params(opt.sampling);
  const int T = model.config().seq_len;
  const int vocab = model.config().vocab_size;
  const int n = opt.vocab_limit > 0 ? std::min(opt.vocab_limit, vocab) : vocab;
  for (int id : prompt)
    OG_CHECK(id >= 0 && id < vocab, "generate: prompt token {} is outside the vocabulary ({})", id, vocab);

  GenerateResult res;
  res.prompt_truncated = (int)prompt.size() > T;
  std::vector<int32_t> context(prompt.begin(), prompt.end());
  Rng rng(opt.seed);
  for (int i = 0; i < opt.max_tokens; ++i) {
    const int window = std::min<int>((int)context.size(), T);
    const std::vector<float> logits = model.last_logits(context.data() + context.size() - window, window);
    OG_CHECK((int)logits.size() >= n, "generate: the model returned {} logits, expected {}", logits.size(), vocab);
    const int id = sample_token(logits.data(), n, opt.sampling, rng);
    if (opt.stop_at_end_of_text && id == GPT2Tokenizer::kEndOfText) {
      res.stopped_at_end_of_text = true;
      break;
    }
    res.tokens.push_back(id);
    context.push_back(id);
    if (on_token) on_token(id);
  }
  return res;
}

std::vector<std::string> run_sample(const SampleOptions& opt, std::FILE* out) {
  namespace fs = std::filesystem;
  OG_CHECK(!opt.prompt.empty(), "--prompt is empty: give the text to continue");
  OG_CHECK(opt.max_tokens >= 1, "--max-tokens {} must be >= 1", opt.max_tokens);
  OG_CHECK(opt.num_samples >= 1, "--num-samples {} must be >= 1", opt.num_samples);
  const SamplingParams sp{opt.temperature, opt.top_k};
  check_sampling_params(sp);
  const Device device = resolve_device(opt.device);
  const GPT2Tokenizer tok =
      GPT2Tokenizer::load(opt.tokenizer_dir.empty() ? default_tokenizer_dir() : opt.tokenizer_dir);

  // The checkpoint holds the run's resolved config (model shape) and the parameters.
  const CheckpointReader ck(opt.checkpoint);
  const Config cfg = load_config((fs::path(ck.dir()) / "config.yaml").string());
  validate_config(cfg);
  std::unique_ptr<Model> model = make_model(cfg, device, 1);
  {
    std::vector<float> host(model->layout().total());
    ck.read("params", host.data(), host.size() * sizeof(float));
    model->upload_params(host.data());
  }
  spdlog::info("sample: {} (step {}), model d_model {} x {} layers, seq {}, on {}", ck.dir(), ck.meta().step,
               cfg.model.d_model, cfg.model.n_layer, cfg.model.seq_len, describe_device(device));

  // Documents start after <|endoftext|> in the training data: condition on a document start.
  std::vector<int> prompt = {GPT2Tokenizer::kEndOfText};
  const std::vector<int> text_ids = tok.encode(opt.prompt);
  prompt.insert(prompt.end(), text_ids.begin(), text_ids.end());
  const int T = cfg.model.seq_len;
  if ((int)text_ids.size() > T)
    spdlog::warn("the prompt has {} tokens, more than the model's seq_len {}: only its last {} tokens are used",
                 text_ids.size(), T, T);
  if ((int)prompt.size() > T) prompt.erase(prompt.begin(), prompt.end() - T);

  std::vector<std::string> texts;
  for (int s = 0; s < opt.num_samples; ++s) {
    if (opt.num_samples > 1)
      std::fprintf(out, "%s---------- sample %d/%d ----------\n", s ? "\n" : "", s + 1, opt.num_samples);
    std::fputs(opt.prompt.c_str(), out);
    std::fflush(out);
    GenerateOptions g;
    g.max_tokens = opt.max_tokens;
    g.sampling = sp;
    g.seed = opt.seed + (uint64_t)s;
    g.vocab_limit = tok.vocab_size();
    std::string text;
    generate(*model, prompt, g, [&](int id) {
      const std::string piece = tok.decode(&id, 1);
      std::fwrite(piece.data(), 1, piece.size(), out);
      std::fflush(out);
      text += piece;
    });
    std::fputc('\n', out);
    std::fflush(out);
    texts.push_back(std::move(text));
  }
  return texts;
}

TrainingSampler::TrainingSampler(const Config& cfg)
    : tok_(GPT2Tokenizer::load(default_tokenizer_dir())),
      max_tokens_((int)cfg.train.sample_tokens),
      seed_(cfg.train.seed) {
  prompt_ = {GPT2Tokenizer::kEndOfText};
  const std::vector<int> ids = tok_.encode(cfg.train.sample_prompt);
  prompt_.insert(prompt_.end(), ids.begin(), ids.end());
  if ((int)prompt_.size() > cfg.model.seq_len) prompt_.erase(prompt_.begin(), prompt_.end() - cfg.model.seq_len);
}

std::string TrainingSampler::sample(Model& model, int64_t step) {
  GenerateOptions g;
  g.max_tokens = max_tokens_;
  g.seed = hash_u64(seed_, (uint64_t)step);
  g.vocab_limit = tok_.vocab_size();
  return tok_.decode(generate(model, prompt_, g).tokens);
}

}  // namespace og
