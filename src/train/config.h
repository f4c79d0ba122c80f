// Run configuration: one YAML file per run, every key overridable from the CLI as
// `--section.key value`, plus short aliases for the keys people ablate. Loading is strict: an
// unknown key (with a "did you mean"), a wrong type or an impossible value is an og::Error that
// names the key, raised before any work starts.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "model/gpt_config.h"
#include "optim/hparams.h"

namespace og {

struct ModelSection {
  int vocab_size = 50304;
  int d_model = 768;
  int n_layer = 12;
  int n_head = 6;
  int seq_len = 1024;
  double rope_base = 10000.0;
};

struct DataSection {
  std::string train = "data/fineweb10B/fineweb_train_*.bin";  // glob of train shards
  std::string val = "data/fineweb10B/fineweb_val_*.bin";      // glob of val shards
  int64_t val_tokens = 10485760;  // tokens per validation pass (rounded down to whole batches)
};

struct TrainSection {
  int64_t steps = 3000;
  int64_t batch_size = 1024;      // global batch, in sequences of seq_len tokens
  int64_t micro_batch_size = 32;  // sequences per rank per forward/backward
  double warmup_frac = 0.0;       // linear warmup over the first round(frac * steps) steps
  double warmdown_frac = 0.2;     // linear decay over the last round(frac * steps) steps
  int64_t val_every = 125;        // 0: only at the end
  uint64_t seed = 42;
  std::string device = "auto";  // auto | cpu | cuda
  bool skip_nonfinite = false;  // on: skip a step whose loss/grad is NaN/Inf (counted); off: stop
  int threads = 0;              // CPU threads (0: all cores)
  int64_t fault_nan_step = -1;  // testing: poison the gradient with NaN at this step (-1: never)
  // testing (tests/mpi/rank_failure.sh): rank fault_kill_rank SIGKILLs itself at the start of step
  // fault_kill_step; rank fault_hang_rank sleeps forever before the gradient all-reduce of step
  // fault_hang_step (-1: never). The other ranks must end the job, never hang.
  int fault_kill_rank = -1;
  int64_t fault_kill_step = -1;
  int fault_hang_rank = -1;
  int64_t fault_hang_step = -1;
  // CUDA activation recomputation in backward: none | elementwise (ReLU² and rmsnorm outputs,
  // about free) | block (each block keeps only its input and re-runs its forward: ~1/3 more compute)
  std::string recompute = "none";
  // CUDA attention: auto (cuDNN's fused attention when available, else flash) | flash (the
  // project's kernels, deterministic) | cudnn (an error if unavailable; not deterministic)
  std::string attention = "auto";
  // Text samples during training (rank 0; a {"type": "sample"} row in metrics.jsonl)
  int64_t sample_every = 0;        // every N steps (0: never)
  std::string sample_prompt = "";  // text to continue (empty: start a document)
  int64_t sample_tokens = 64;      // tokens per sample
};

struct MatrixOptimSection {
  std::string algorithm = "dion2";  // muon | normuon | dion2 | nordion2 (dion3) | dion | adamw | lion
  double mu = 0.95;
  bool nesterov = true;
  std::string adjust_lr = "spectral_norm";  // spectral_norm | rms_norm | none
  std::string ortho = "newton_schulz";      // newton_schulz | polar_express
  double fraction = 0.25;
  std::string select = "l1";           // l1 | random
  std::string select_dim = "shorter";  // shorter | rows | cols
  bool ef = true;
  double ef_decay = -1.0;  // < 0: same as mu
  double rank_fraction = 0.25;
  double beta2 = 0.95;
  std::string state_dtype = "fp32";  // fp32 | bf16
};

struct ScalarOptimSection {
  std::string algorithm = "adamw";  // adamw | lion
  std::array<double, 2> betas = {0.9, 0.95};
  double eps = 1e-8;
  double embedding_lr_scale = 1.0;
  double lm_head_lr_scale = -1.0;  // < 0: auto (1/sqrt(d_model) for lion, 1 for adamw)
  double weight_decay = 0.0;       // embedding and lm_head (the reference uses 0)
};

struct OptimSection {
  double lr = 0.02;
  double weight_decay = 0.01;  // matrix and vector groups
  bool diagnostics = false;    // per-step optimizer time and selection statistics
  MatrixOptimSection matrix;
  ScalarOptimSection scalar;
};

struct DistSection {
  std::string mode = "ddp";            // ddp | fsdp
  bool compressed_sync = false;        // Dion2 + random selection: all-reduce only selected rows
  std::string select_scope = "local";  // local | global
  std::string owner_split = "auto";    // DDP matrix optimizers: auto | on | off (optim/distributed_optimizer.h)
  double bucket_mb = 25.0;             // gradient all-reduce bucket size
  double timeout_s = 600.0;            // abort a collective that takes longer than this
};

struct LogSection {
  std::string dir = "runs/default";  // outputs: config.yaml, metrics.jsonl, checkpoints
  int64_t every = 1;                 // progress line every N steps
  std::string level = "info";        // trace | debug | info | warn | error
};

struct CheckpointSection {
  int64_t every = 0;  // 0: only at the end (if enabled)
  bool enabled = false;
  std::string resume = "";  // checkpoint folder to resume from
  int keep = 2;
};

struct Config {
  ModelSection model;
  DataSection data;
  TrainSection train;
  OptimSection optim;
  DistSection dist;
  LogSection log;
  CheckpointSection checkpoint;

  GPTConfig gpt() const;
  OptimHParams matrix_hparams() const;
  // embedding, lm_head, vector groups share the scalar algorithm with their own lr and wd
  OptimHParams scalar_hparams(float weight_decay) const;
  float lm_head_lr_scale() const;
};

// Load a YAML file over the defaults (path may be empty: defaults only), then apply CLI
// overrides (`--a.b value`, `--a.b=value`, or an alias). Throws og::Error naming the file/key.
Config load_config(const std::string& yaml_path, const std::vector<std::string>& overrides = {});
// Apply one key=value (full dotted key), as from the CLI.
void set_config_value(Config& c, const std::string& key, const std::string& value, const std::string& origin);
// Check values that are impossible on their own or together (world_size: data-parallel ranks).
void validate_config(const Config& c, int world_size = 1);
// The resolved config as YAML (every key, nested by section).
std::string config_to_yaml(const Config& c);
// Every known key and its help text, for `orthogpt train --help-config`.
std::string config_help();
// Short aliases: --optimizer, --lr, --fraction, --select, --ef, --steps, --batch-size, ...
const std::vector<std::pair<std::string, std::string>>& config_aliases();

}  // namespace og
