// Text generation from a trained model: the sampling rule (temperature + top-k over one logits
// vector, drawn with og::Rng so a seed reproduces the text), the generation loop (a sliding
// window of at most seq_len tokens through Model::last_logits, stopping at <|endoftext|>), and
// `orthogpt sample` (a checkpoint + a prompt -> streamed text), and samples during training.
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/tokenizer.h"
#include "model/model.h"
#include "train/config.h"

namespace og {

struct SamplingParams {
  double temperature = 1.0;  // > 0; use top_k 1 for greedy decoding
  int top_k = 50;            // >= 1; k >= the vocabulary means no restriction
};

// og::Error naming the option when temperature <= 0 (or not finite) or top_k < 1.
void check_sampling_params(const SamplingParams& p);

// The distribution sample_token draws from: softmax(logits / temperature) over the top_k largest
// logits (ties broken by the lower index), zero elsewhere; n entries, in double precision.
// A non-finite logit is an og::Error.
std::vector<double> sampling_distribution(const float* logits, int n, const SamplingParams& p);

// One token id in [0, n) drawn from sampling_distribution with one rng.uniform() draw. Pure apart
// from the rng: the same logits, params and rng state give the same token.
int sample_token(const float* logits, int n, const SamplingParams& p, Rng& rng);

struct GenerateOptions {
  int max_tokens = 200;  // tokens to generate (fewer when <|endoftext|> comes first)
  SamplingParams sampling;
  uint64_t seed = 1;
  int vocab_limit = 0;  // sample among ids [0, vocab_limit) only (the tokenizer's; 0: all logits)
  bool stop_at_end_of_text = true;
};

struct GenerateResult {
  std::vector<int> tokens;  // generated ids, without the prompt and without a final <|endoftext|>
  bool stopped_at_end_of_text = false;
  bool prompt_truncated = false;  // the prompt was longer than seq_len: only its last seq_len tokens were seen
};

// Continue `prompt` (non-empty) on `model`: each step feeds the last min(len, seq_len) tokens to
// Model::last_logits and samples the next id; on_token (may be empty) sees each id as it comes.
GenerateResult generate(Model& model, const std::vector<int>& prompt, const GenerateOptions& opt,
                        const std::function<void(int)>& on_token = {});

struct SampleOptions {
  std::string checkpoint;  // checkpoint folder, or a run / checkpoints folder (its latest)
  std::string prompt;
  int max_tokens = 200;
  double temperature = 1.0;
  int top_k = 50;
  uint64_t seed = 1;            // sample i of num_samples uses seed + i
  std::string device = "auto";  // auto | cpu | cuda
  std::string tokenizer_dir;    // empty: default_tokenizer_dir()
  int num_samples = 1;
};

// `orthogpt sample`: load the checkpoint's config and weights, encode <|endoftext|> + prompt, and
// write prompt + continuation to `out` token by token (flushed), samples separated by a rule.
// Returns each sample's generated text (without the prompt). Errors (og::Error) name the option
// or file: a missing/corrupt checkpoint, temperature <= 0, top_k < 1, an empty prompt, ...
std::vector<std::string> run_sample(const SampleOptions& opt, std::FILE* out);

// Samples during training (train.sample_every): continues <|endoftext|> + train.sample_prompt by
// train.sample_tokens tokens with temperature 1 and top-k 50, seeded by (train.seed, step).
// The constructor loads the tokenizer (default_tokenizer_dir()), so a missing one stops the run
// before training starts.
class TrainingSampler {
 public:
  explicit TrainingSampler(const Config& cfg);
  std::string sample(Model& model, int64_t step);  // the generated text, without the prompt

 private:
  GPT2Tokenizer tok_;
  std::vector<int> prompt_;
  int max_tokens_;
  uint64_t seed_;
};

}  // namespace og
