// orthogpt: command-line entry.
//   orthogpt train --config X.yaml [--section.key value ...]   train (see --help-config)
//   orthogpt tokenize --input FILES --output-dir D            text -> token shards
//   orthogpt check-reference [--device cpu|cuda] DIR...       optimizer vs PyTorch reference vectors
//   orthogpt bench [--config X.yaml] [--steps N] [--section.key value ...]   model + optimizer throughput
//   orthogpt sample --checkpoint DIR --prompt TEXT [--max-tokens N ...]    generate text from a checkpoint
// Every user error is an og::Error: printed as "error: ..." with a non-zero exit.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/tokenize.h"
#include "dist/bootstrap.h"
#include "optim/check_reference.h"
#include "train/bench.h"
#include "train/config.h"
#include "train/sample.h"
#include "train/trainer.h"

namespace {

int cmd_train(const std::string& config_path, const std::vector<std::string>& overrides, og::DistContext& dist) {
  og::Config cfg = og::load_config(config_path, overrides);
  og::validate_config(cfg, dist.world);
  // Rank 0 logs; the others only warn about and report errors.
  spdlog::set_level(dist.rank == 0 ? spdlog::level::from_str(cfg.log.level) : spdlog::level::warn);
  og::run_train(cfg, dist);
  return 0;
}

}  // namespace

// Only the CLI11 option setup (a programming error, caught by any run) can throw outside the try
// blocks below.
// NOLINTNEXTLINE(bugprone-exception-escape)
int main(int argc, char** argv) {
  CLI::App app{"orthogpt: GPT pretraining with Muon, Dion and Dion2 (C++/CUDA)"};
  app.require_subcommand(1);
  spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");

  // ---- train ----
  auto* train = app.add_subcommand("train", "train a model; any config key can be overridden as --section.key value");
  std::string config_path;
  bool help_config = false;
  train->add_option("-c,--config", config_path, "YAML config file");
  train->add_flag("--help-config", help_config, "list every config key with its type and default");
  train->allow_extras();

  // ---- tokenize ----
  auto* tok = app.add_subcommand("tokenize", "tokenize text files (plain text or JSONL) into train/val shards");
  og::TokenizeOptions topt;
  tok->add_option("-i,--input", topt.inputs, "input files (*.jsonl: objects with a \"text\" field)")->required();
  tok->add_option("-o,--output-dir", topt.output_dir, "output folder for the shards")->required();
  tok->add_option("--val-fraction", topt.val_fraction, "fraction of documents for validation")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  tok->add_option("--prefix", topt.prefix, "shard name prefix")->capture_default_str();
  tok->add_option("--split", topt.split, "plain-text documents: blank-line | file")
      ->check(CLI::IsMember({"blank-line", "file"}))
      ->capture_default_str();
  tok->add_option("--shard-tokens", topt.shard_tokens, "tokens per shard")->capture_default_str();
  tok->add_option("--tokenizer-dir", topt.tokenizer_dir, "folder with encoder.json and vocab.bpe");
  tok->add_option("--threads", topt.threads, "threads (0: all cores)")->capture_default_str();
  bool no_progress = false;
  tok->add_flag("--no-progress", no_progress, "no progress bar");

  // ---- check-reference ----
  auto* chk = app.add_subcommand("check-reference",
                                 "replay PyTorch reference optimizer vectors (manifest.yaml + data.bin per case)");
  std::string chk_device = "cpu";
  std::vector<std::string> chk_dirs;
  chk->add_option("--device", chk_device, "cpu | cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  chk->add_option("dirs", chk_dirs, "case folders")->required();

  // ---- bench ----
  auto* bench = app.add_subcommand(
      "bench", "time forward+backward and the optimizer of a config's model on random tokens (no data needed)");
  og::BenchOptions bopt;
  bench->add_option("-c,--config", bopt.config_path, "YAML config (default: built-in defaults = the 160M model)");
  bench->add_option("--steps", bopt.steps, "timed steps")->check(CLI::Range(1, 1000000))->capture_default_str();
  bench->add_option("--warmup", bopt.warmup, "untimed warm-up steps")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  bench->add_option("--grad-accum", bopt.grad_accum, "micro-batches per step")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  bench->allow_extras();

  // ---- sample ----
  auto* smp = app.add_subcommand("sample", "generate text from a checkpoint (prompt + continuation on stdout)");
  og::SampleOptions sopt;
  smp->add_option("--checkpoint", sopt.checkpoint, "checkpoint folder, or a run folder (its latest checkpoint)")
      ->required();
  smp->add_option("--prompt", sopt.prompt, "text to continue")->required();
  smp->add_option("--max-tokens", sopt.max_tokens, "tokens to generate (fewer if <|endoftext|> comes)")
      ->capture_default_str();
  smp->add_option("--temperature", sopt.temperature, "softmax temperature (> 0; greedy: --top-k 1)")
      ->capture_default_str();
  smp->add_option("--top-k", sopt.top_k, "sample among the k most likely tokens (>= 1)")->capture_default_str();
  smp->add_option("--seed", sopt.seed, "random seed (sample i uses seed + i)")->capture_default_str();
  smp->add_option("--device", sopt.device, "auto | cpu | cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  smp->add_option("--tokenizer-dir", sopt.tokenizer_dir, "folder with encoder.json and vocab.bpe");
  smp->add_option("--num-samples", sopt.num_samples, "independent samples")->capture_default_str();

  og::DistContext dist;
  try {
    dist = og::init_distributed(&argc, &argv);
  } catch (const og::Error& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  if (dist.world > 1) spdlog::set_pattern(fmt::format("[%H:%M:%S] [rank {}] %^%l%$ %v", dist.rank));
  int rc = 0;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    rc = app.exit(e);
    og::finalize_distributed(dist);
    return rc;
  }

  try {
    if (train->parsed()) {
      if (help_config) {
        std::fputs(og::config_help().c_str(), stdout);
        return 0;
      }
      rc = cmd_train(config_path, train->remaining(), dist);
    }
    if (tok->parsed()) {
      topt.progress = !no_progress;
      const og::TokenizeSummary s = og::run_tokenize(topt);
      if (dist.rank == 0)
        std::printf(
            "tokenized %lld documents: train %lld docs / %lld tokens, val %lld docs / %lld tokens, %zu shard(s) in "
            "%s\n",
            (long long)s.documents, (long long)s.train_documents, (long long)s.train_tokens, (long long)s.val_documents,
            (long long)s.val_tokens, s.shards.size(), topt.output_dir.c_str());
    }
    if (bench->parsed()) {
      OG_CHECK(dist.world == 1, "bench runs in one process (started with {} ranks)", dist.world);
      bopt.overrides = bench->remaining();
      og::run_bench(bopt, stdout);
    }
    if (smp->parsed()) {
      OG_CHECK(dist.world == 1, "sample runs in one process (started with {} ranks)", dist.world);
      // stdout carries the text: log lines go to stderr
      spdlog::set_default_logger(spdlog::stderr_color_mt("sample"));
      spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");
      og::run_sample(sopt, stdout);
    }
    if (chk->parsed()) {
      rc = og::run_check_reference(chk_dirs, chk_device == "cuda" ? og::Device::CUDA : og::Device::CPU, stdout);
    }
  } catch (const og::Error& e) {
    spdlog::error("{}", e.what());
    // Other ranks may be waiting in a collective: take the whole job down, never hang.
    if (dist.world > 1) og::abort_distributed(dist, 1);
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("unexpected failure: {}", e.what());
    if (dist.world > 1) og::abort_distributed(dist, 2);
    return 2;
  }
  og::finalize_distributed(dist);
  return rc;
}
