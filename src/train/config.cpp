#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>

#include "core/error.h"

namespace og {
namespace {

// ---- one schema entry per key --------------------------------------------------------------
struct Field {
  std::string key;   // "optim.matrix.fraction"
  std::string type;  // int | float | bool | string | float pair
  std::string help;
  std::vector<std::string> choices;                      // for strings with a fixed set of values
  std::function<void(Config&, const std::string&)> set;  // throws a bare message on bad text
  std::function<std::string(const Config&)> get;
};

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

int64_t parse_int(const std::string& text) {
  const std::string s = trim(text);
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno == ERANGE) {
    // accept integral floats written as 1e6 or 2048.0
    double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && *end == '\0' && std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18) return (int64_t)d;
    throw Error(fmt::format("expected an integer, got '{}'", text));
  }
  return v;
}

double parse_float(const std::string& text) {
  const std::string s = trim(text);
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0') throw Error(fmt::format("expected a number, got '{}'", text));
  if (!std::isfinite(v)) throw Error(fmt::format("expected a finite number, got '{}'", text));
  return v;
}

bool parse_bool(const std::string& text) {
  std::string s = trim(text);
  std::transform(s.begin(), s.end(), s.begin(), ::tolower);
  if (s == "true" || s == "on" || s == "yes" || s == "1") return true;
  if (s == "false" || s == "off" || s == "no" || s == "0") return false;
  throw Error(fmt::format("expected on/off (true/false), got '{}'", text));
}

std::array<double, 2> parse_pair(const std::string& text) {
  std::string s = trim(text);
  if (!s.empty() && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  std::vector<std::string> parts;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) parts.push_back(item);
  if (parts.size() != 2) throw Error(fmt::format("expected two numbers like [0.9, 0.95], got '{}'", text));
  return {parse_float(parts[0]), parse_float(parts[1])};
}

std::string fmt_double(double v) {
  std::string s = fmt::format("{}", v);
  return s;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

class Schema {
 public:
  Schema() { build(); }
  const std::vector<Field>& fields() const { return fields_; }
  const Field* find(const std::string& key) const {
    for (const auto& f : fields_)
      if (f.key == key) return &f;
    return nullptr;
  }
  bool is_section(const std::string& prefix) const {
    for (const auto& f : fields_)
      if (f.key.rfind(prefix + ".", 0) == 0) return true;
    return false;
  }
  std::string suggest(const std::string& key) const {
    // nearest full key, or a key with the same last component
    std::string best;
    size_t best_d = (size_t)-1;
    const std::string last = key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1);
    for (const auto& f : fields_) {
      size_t d = edit_distance(key, f.key);
      const std::string flast = f.key.substr(f.key.rfind('.') + 1);
      if (flast == last) d = std::min(d, (size_t)1);
      if (d < best_d) {
        best_d = d;
        best = f.key;
      }
    }
    for (const auto& [alias, full] : config_aliases()) {
      size_t d = edit_distance(key, alias);
      if (d < best_d) {
        best_d = d;
        best = alias;
      }
    }
    if (best_d <= std::max<size_t>(3, key.size() / 3)) return fmt::format(" (did you mean '{}'?)", best);
    return "";
  }

 private:
  std::vector<Field> fields_;

  template <typename Acc> void add_int(std::string key, Acc acc, std::string help) {
    fields_.push_back(
        {key,
         "int",
         help,
         {},
         [acc](Config& c, const std::string& t) { acc(c) = (std::decay_t<decltype(acc(c))>)parse_int(t); },
         [acc](const Config& c) { return std::to_string(acc(const_cast<Config&>(c))); }});
  }
  template <typename Acc> void add_float(std::string key, Acc acc, std::string help) {
    fields_.push_back({key,
                       "float",
                       help,
                       {},
                       [acc](Config& c, const std::string& t) { acc(c) = parse_float(t); },
                       [acc](const Config& c) { return fmt_double(acc(const_cast<Config&>(c))); }});
  }
  template <typename Acc> void add_bool(std::string key, Acc acc, std::string help) {
    fields_.push_back({key,
                       "bool",
                       help,
                       {},
                       [acc](Config& c, const std::string& t) { acc(c) = parse_bool(t); },
                       [acc](const Config& c) { return std::string(acc(const_cast<Config&>(c)) ? "on" : "off"); }});
  }
  template <typename Acc>
  void add_string(std::string key, Acc acc, std::string help, std::vector<std::string> choices = {}) {
    fields_.push_back({key, "string", help, choices,
                       [acc, choices](Config& c, const std::string& t) {
                         const std::string v = trim(t);
                         if (!choices.empty() && std::find(choices.begin(), choices.end(), v) == choices.end()) {
                           std::string list;
                           for (const auto& ch : choices) list += (list.empty() ? "" : ", ") + ch;
                           throw Error(fmt::format("'{}' is not one of: {}", v, list));
                         }
                         acc(c) = v;
                       },
                       [acc](const Config& c) { return acc(const_cast<Config&>(c)); }});
  }
  template <typename Acc> void add_pair(std::string key, Acc acc, std::string help) {
    fields_.push_back({key,
                       "float pair",
                       help,
                       {},
                       [acc](Config& c, const std::string& t) { acc(c) = parse_pair(t); },
                       [acc](const Config& c) {
                         auto p = acc(const_cast<Config&>(c));
                         return fmt::format("[{}, {}]", fmt_double(p[0]), fmt_double(p[1]));
                       }});
  }

// `member` is a member path (train.steps): it cannot be parenthesized.
#define OG_ACC(member) \
  [](Config & c) -> auto& { return c.member; }  // NOLINT(bugprone-macro-parentheses)
  void build() {
    add_int("model.vocab_size", OG_ACC(model.vocab_size), "vocabulary size (GPT-2 padded: 50304)");
    add_int("model.d_model", OG_ACC(model.d_model), "model width");
    add_int("model.n_layer", OG_ACC(model.n_layer), "number of transformer blocks");
    add_int("model.n_head", OG_ACC(model.n_head), "attention heads (must divide d_model)");
    add_int("model.seq_len", OG_ACC(model.seq_len), "sequence length T");
    add_float("model.rope_base", OG_ACC(model.rope_base), "rotary embedding base");

    add_string("data.train", OG_ACC(data.train), "glob of training shards");
    add_string("data.val", OG_ACC(data.val), "glob of validation shards");
    add_int("data.val_tokens", OG_ACC(data.val_tokens), "tokens per validation pass");

    add_int("train.steps", OG_ACC(train.steps), "optimizer steps");
    add_int("train.batch_size", OG_ACC(train.batch_size), "global batch in sequences");
    add_int("train.micro_batch_size", OG_ACC(train.micro_batch_size), "sequences per rank per micro-step");
    add_float("train.warmup_frac", OG_ACC(train.warmup_frac), "fraction of steps with linear warmup");
    add_float("train.warmdown_frac", OG_ACC(train.warmdown_frac), "fraction of steps with linear decay to 0");
    add_int("train.val_every", OG_ACC(train.val_every), "validate every N steps (0: at the end only)");
    add_int("train.seed", OG_ACC(train.seed), "seed for init and random selection");
    add_string("train.device", OG_ACC(train.device), "where to train", {"auto", "cpu", "cuda"});
    add_bool("train.skip_nonfinite", OG_ACC(train.skip_nonfinite), "skip (not stop at) steps with NaN/Inf");
    add_int("train.threads", OG_ACC(train.threads), "CPU threads (0: all cores)");
    add_int("train.fault_nan_step", OG_ACC(train.fault_nan_step), "testing: inject NaN into the gradient at this step");
    add_int("train.fault_kill_rank", OG_ACC(train.fault_kill_rank),
            "testing: this rank SIGKILLs itself at train.fault_kill_step (-1: none)");
    add_int("train.fault_kill_step", OG_ACC(train.fault_kill_step), "testing: step at which fault_kill_rank dies");
    add_int("train.fault_hang_rank", OG_ACC(train.fault_hang_rank),
            "testing: this rank sleeps forever before the gradient all-reduce of train.fault_hang_step (-1: none)");
    add_int("train.fault_hang_step", OG_ACC(train.fault_hang_step), "testing: step at which fault_hang_rank hangs");
    add_string("train.recompute", OG_ACC(train.recompute),
               "CUDA activation recomputation in backward (elementwise: ~free; block: least memory)",
               {"none", "elementwise", "block"});
    add_string("train.attention", OG_ACC(train.attention),
               "CUDA attention: auto (cuDNN if usable, else flash) | flash (own kernels, deterministic) | cudnn",
               {"auto", "flash", "cudnn"});
    add_int("train.sample_every", OG_ACC(train.sample_every),
            "rank 0 logs a text sample (temperature 1, top-k 50) every N steps, also in metrics.jsonl (0: never)");
    add_string("train.sample_prompt", OG_ACC(train.sample_prompt),
               "text the training samples continue (empty: the start of a document)");
    add_int("train.sample_tokens", OG_ACC(train.sample_tokens), "tokens per training sample");

    add_float("optim.lr", OG_ACC(optim.lr), "base learning rate");
    add_float("optim.weight_decay", OG_ACC(optim.weight_decay), "decoupled weight decay of matrix/vector groups");
    add_bool("optim.diagnostics", OG_ACC(optim.diagnostics), "log optimizer time and selection statistics");
    add_string("optim.matrix.algorithm", OG_ACC(optim.matrix.algorithm), "matrix optimizer",
               {"muon", "normuon", "dion2", "nordion2", "dion3", "dion", "adamw", "lion"});
    add_float("optim.matrix.mu", OG_ACC(optim.matrix.mu), "momentum");
    add_bool("optim.matrix.nesterov", OG_ACC(optim.matrix.nesterov), "Nesterov momentum (muon, normuon)");
    add_string("optim.matrix.adjust_lr", OG_ACC(optim.matrix.adjust_lr), "lr shape factor",
               {"spectral_norm", "rms_norm", "none"});
    add_string("optim.matrix.ortho", OG_ACC(optim.matrix.ortho), "orthonormalization",
               {"newton_schulz", "polar_express"});
    add_float("optim.matrix.fraction", OG_ACC(optim.matrix.fraction), "Dion2 fraction of slices per step (0, 1]");
    add_string("optim.matrix.select", OG_ACC(optim.matrix.select), "Dion2 selection rule", {"l1", "random"});
    add_string("optim.matrix.select_dim", OG_ACC(optim.matrix.select_dim), "Dion2 selected dimension",
               {"shorter", "rows", "cols"});
    add_bool("optim.matrix.ef", OG_ACC(optim.matrix.ef), "Dion2 selective decay (off: decay whole momentum)");
    add_float("optim.matrix.ef_decay", OG_ACC(optim.matrix.ef_decay), "Dion2 decay factor (< 0: mu)");
    add_float("optim.matrix.rank_fraction", OG_ACC(optim.matrix.rank_fraction), "Dion rank fraction (0, 1]");
    add_float("optim.matrix.beta2", OG_ACC(optim.matrix.beta2), "NorMuon/NorDion2 second-moment decay");
    add_string("optim.matrix.state_dtype", OG_ACC(optim.matrix.state_dtype), "optimizer state dtype", {"fp32", "bf16"});
    add_string("optim.scalar.algorithm", OG_ACC(optim.scalar.algorithm), "embedding/lm_head/vector optimizer",
               {"adamw", "lion"});
    add_pair("optim.scalar.betas", OG_ACC(optim.scalar.betas), "AdamW/Lion betas");
    add_float("optim.scalar.eps", OG_ACC(optim.scalar.eps), "AdamW epsilon");
    add_float("optim.scalar.embedding_lr_scale", OG_ACC(optim.scalar.embedding_lr_scale), "embedding lr = lr * this");
    add_float("optim.scalar.lm_head_lr_scale", OG_ACC(optim.scalar.lm_head_lr_scale),
              "lm_head lr = lr * this (< 0: 1/sqrt(d_model) for lion, 1 for adamw)");
    add_float("optim.scalar.weight_decay", OG_ACC(optim.scalar.weight_decay), "weight decay of embedding and lm_head");

    add_string("dist.mode", OG_ACC(dist.mode), "data-parallel mode", {"ddp", "fsdp"});
    add_bool("dist.compressed_sync", OG_ACC(dist.compressed_sync), "Dion2 random: all-reduce selected rows only");
    add_string("dist.select_scope", OG_ACC(dist.select_scope), "Dion2 selection under sharding", {"local", "global"});
    add_string("dist.owner_split", OG_ACC(dist.owner_split),
               "DDP: orthonormalize each matrix on one rank and all-gather (auto: where the NS work outweighs the "
               "memory passes)",
               {"auto", "on", "off"});
    add_float("dist.bucket_mb", OG_ACC(dist.bucket_mb), "gradient all-reduce bucket size (MB)");
    add_float("dist.timeout_s", OG_ACC(dist.timeout_s), "abort a collective after this many seconds");

    add_string("log.dir", OG_ACC(log.dir), "run output folder");
    add_int("log.every", OG_ACC(log.every), "progress line every N steps");
    add_string("log.level", OG_ACC(log.level), "log level", {"trace", "debug", "info", "warn", "error"});

    add_bool("checkpoint.enabled", OG_ACC(checkpoint.enabled), "write checkpoints");
    add_int("checkpoint.every", OG_ACC(checkpoint.every), "checkpoint every N steps (0: at the end)");
    add_string("checkpoint.resume", OG_ACC(checkpoint.resume), "checkpoint folder to resume from");
    add_int("checkpoint.keep", OG_ACC(checkpoint.keep), "checkpoints to keep");
  }
#undef OG_ACC
};

const Schema& schema() {
  static const Schema s;
  return s;
}

void load_yaml_node(Config& c, const YAML::Node& node, const std::string& prefix, const std::string& file) {
  if (!node.IsMap()) fail("{}: '{}' must be a mapping of keys", file, prefix.empty() ? "<top level>" : prefix);
  for (const auto& kv : node) {
    // a complex key (`? [a, b]` or `? {a: 1}`) is legal YAML but never a config key
    if (!kv.first.IsScalar())
      fail("{}: a key under '{}' is a {}, not a name", file, prefix.empty() ? "<top level>" : prefix,
           kv.first.IsMap()        ? "mapping"
           : kv.first.IsSequence() ? "list"
                                   : "null");
    const std::string k = kv.first.Scalar();
    const std::string key = prefix.empty() ? k : prefix + "." + k;
    const YAML::Node& v = kv.second;
    const Field* f = schema().find(key);
    if (!f) {
      if (v.IsMap() && schema().is_section(key)) {
        load_yaml_node(c, v, key, file);
        continue;
      }
      fail("{}: unknown key '{}'{}", file, key, schema().suggest(key));
    }
    std::string text;
    if (v.IsScalar()) {
      text = v.Scalar();
    } else if (v.IsSequence() && f->type == "float pair") {
      for (size_t i = 0; i < v.size(); ++i) {
        if (!v[i].IsScalar()) fail("{}: key '{}': expected a list of two numbers", file, key);
        text += (i ? "," : "") + v[i].Scalar();
      }
    } else if (v.IsNull()) {
      if (f->type != "string") fail("{}: key '{}' has no value (expected {})", file, key, f->type);
      text = "";
    } else {
      fail("{}: key '{}': expected a {} value, got a {}", file, key, f->type, v.IsMap() ? "mapping" : "list");
    }
    try {
      f->set(c, text);
    } catch (const Error& e) {
      fail("{}: key '{}': {}", file, key, e.what());
    }
  }
}

}  // namespace

const std::vector<std::pair<std::string, std::string>>& config_aliases() {
  static const std::vector<std::pair<std::string, std::string>> a = {
      {"optimizer", "optim.matrix.algorithm"},
      {"scalar-optimizer", "optim.scalar.algorithm"},
      {"lr", "optim.lr"},
      {"fraction", "optim.matrix.fraction"},
      {"select", "optim.matrix.select"},
      {"ef", "optim.matrix.ef"},
      {"steps", "train.steps"},
      {"batch-size", "train.batch_size"},
      {"micro-batch-size", "train.micro_batch_size"},
      {"device", "train.device"},
      {"seed", "train.seed"},
      {"out", "log.dir"},
      {"resume", "checkpoint.resume"},
  };
  return a;
}

void set_config_value(Config& c, const std::string& key_in, const std::string& value, const std::string& origin) {
  std::string key = key_in;
  for (const auto& [alias, full] : config_aliases())
    if (key == alias) key = full;
  const Field* f = schema().find(key);
  if (!f) fail("{}: unknown key '{}'{}", origin, key_in, schema().suggest(key_in));
  try {
    f->set(c, value);
  } catch (const Error& e) {
    fail("{}: key '{}': {}", origin, key, e.what());
  }
}

namespace {

// Load `path` over `c`: a top-level `base: other.yaml` (relative to this file) is loaded first,
// so experiment files only state what differs from a shared base.
void load_yaml_file(Config& c, const std::string& path, std::vector<std::string>& chain) {
  namespace fs = std::filesystem;
  // error_code overloads: a name the OS refuses (too long, bad bytes) is an og::Error, not a throw
  std::error_code ec;
  const bool exists = fs::exists(path, ec);
  OG_CHECK(!ec, "config file {}: {}", path, ec.message());
  OG_CHECK(exists, "config file {} does not exist", path);
  const fs::path canon_path = fs::weakly_canonical(path, ec);
  OG_CHECK(!ec, "config file {}: {}", path, ec.message());
  const std::string canon = canon_path.string();
  for (const auto& p : chain)
    OG_CHECK(p != canon, "config file {}: 'base' chain loops back to {}", chain.front(), path);
  chain.push_back(canon);
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    fail("{}: YAML syntax error: {}", path, e.what());
  }
  if (root.IsNull()) return;
  OG_CHECK(root.IsMap(), "{}: the top level must be a mapping of sections", path);
  if (root["base"]) {
    OG_CHECK(root["base"].IsScalar(), "{}: key 'base' must be a file name", path);
    const fs::path base = fs::path(path).parent_path() / root["base"].Scalar();
    load_yaml_file(c, base.string(), chain);
    root.remove("base");
  }
  try {
    load_yaml_node(c, root, "", path);
  } catch (const YAML::Exception& e) {  // any yaml-cpp surprise still names the file
    fail("{}: {}", path, e.what());
  }
}

}  // namespace

Config load_config(const std::string& yaml_path, const std::vector<std::string>& overrides) {
  Config c;
  if (!yaml_path.empty()) {
    std::vector<std::string> chain;
    load_yaml_file(c, yaml_path, chain);
  }
  for (size_t i = 0; i < overrides.size(); ++i) {
    std::string arg = overrides[i];
    OG_CHECK(arg.rfind("--", 0) == 0 && arg.size() > 2,
             "command line: unexpected argument '{}' (overrides look like --section.key value)", arg);
    arg = arg.substr(2);
    std::string key, value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      key = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else {
      key = arg;
      OG_CHECK(i + 1 < overrides.size(), "command line: --{} needs a value", key);
      value = overrides[++i];
    }
    set_config_value(c, key, value, "command line");
  }
  return c;
}

void validate_config(const Config& c, int world) {
  auto need = [](bool ok, const char* key, const std::string& why) {
    if (!ok) fail("config: {}: {}", key, why);
  };
  const auto& m = c.model;
  need(m.vocab_size > 0 && m.vocab_size <= 65536, "model.vocab_size",
       fmt::format("{} must be in [1, 65536] (tokens are stored as uint16)", m.vocab_size));
  need(m.d_model > 0, "model.d_model", "must be positive");
  need(m.n_layer > 0, "model.n_layer", "must be positive");
  need(m.n_head > 0, "model.n_head", "must be positive");
  need(m.d_model % std::max(1, m.n_head) == 0, "model.n_head",
       fmt::format("{} heads do not divide d_model {}", m.n_head, m.d_model));
  need(m.n_head > 0 && (m.d_model / m.n_head) % 2 == 0, "model.n_head",
       fmt::format("head_dim {} must be even (rotary rotates halves)", m.n_head ? m.d_model / m.n_head : 0));
  need(m.seq_len > 0, "model.seq_len", "must be positive");
  need(m.rope_base > 1.0, "model.rope_base", "must be > 1");

  need(!c.data.train.empty(), "data.train", "no training shard glob given");
  need(c.data.val_tokens >= 0, "data.val_tokens", "must be >= 0");

  const auto& t = c.train;
  need(t.steps > 0, "train.steps", "must be positive");
  need(t.micro_batch_size > 0, "train.micro_batch_size", "must be positive");
  need(t.batch_size > 0, "train.batch_size", "must be positive");
  need(world > 0 && t.batch_size % (t.micro_batch_size * world) == 0, "train.batch_size",
       fmt::format("{} is not divisible by micro_batch_size {} x {} rank(s)", t.batch_size, t.micro_batch_size, world));
  need(t.warmup_frac >= 0 && t.warmup_frac <= 1, "train.warmup_frac", "must be in [0, 1]");
  need(t.warmdown_frac >= 0 && t.warmdown_frac <= 1, "train.warmdown_frac", "must be in [0, 1]");
  need(t.warmup_frac + t.warmdown_frac <= 1.0 + 1e-12, "train.warmdown_frac",
       "warmup_frac + warmdown_frac must not exceed 1");
  need(t.val_every >= 0, "train.val_every", "must be >= 0");
  need(t.threads >= 0, "train.threads", "must be >= 0");
  need(t.sample_every >= 0, "train.sample_every", "must be >= 0");
  need(t.sample_tokens >= 1, "train.sample_tokens", "must be >= 1");
  need(t.fault_kill_rank >= -1 && t.fault_kill_rank < world, "train.fault_kill_rank",
       fmt::format("{} must be -1 (none) or a rank in [0, {})", t.fault_kill_rank, world));
  need(t.fault_hang_rank >= -1 && t.fault_hang_rank < world, "train.fault_hang_rank",
       fmt::format("{} must be -1 (none) or a rank in [0, {})", t.fault_hang_rank, world));

  const auto& o = c.optim;
  need(o.lr > 0, "optim.lr", "must be positive");
  need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0");
  const auto& mx = o.matrix;
  need(mx.mu >= 0 && mx.mu < 1, "optim.matrix.mu", fmt::format("{} must be in [0, 1)", mx.mu));
  need(mx.fraction > 0 && mx.fraction <= 1, "optim.matrix.fraction", fmt::format("{} must be in (0, 1]", mx.fraction));
  need(mx.ef_decay <= 1, "optim.matrix.ef_decay", "must be <= 1 (< 0 means: use mu)");
  need(mx.rank_fraction > 0 && mx.rank_fraction <= 1, "optim.matrix.rank_fraction",
       fmt::format("{} must be in (0, 1]", mx.rank_fraction));
  need(mx.beta2 >= 0 && mx.beta2 < 1, "optim.matrix.beta2", "must be in [0, 1)");
  const auto& s = o.scalar;
  need(s.betas[0] >= 0 && s.betas[0] < 1 && s.betas[1] >= 0 && s.betas[1] < 1, "optim.scalar.betas",
       "each beta must be in [0, 1)");
  need(s.eps > 0, "optim.scalar.eps", "must be positive");
  need(s.embedding_lr_scale > 0, "optim.scalar.embedding_lr_scale", "must be positive");
  need(s.lm_head_lr_scale != 0, "optim.scalar.lm_head_lr_scale", "must be positive (or < 0 for auto)");
  need(s.weight_decay >= 0, "optim.scalar.weight_decay", "must be >= 0");

  need(!c.dist.compressed_sync || (mx.algorithm == "dion2" && mx.select == "random"), "dist.compressed_sync",
       "needs optim.matrix.algorithm dion2 with select random (replicas must pick the same slices)");
  need(!c.dist.compressed_sync || c.dist.mode == "ddp", "dist.compressed_sync",
       "only for replicated parameters (dist.mode ddp), not dist.mode " + c.dist.mode);
  const bool selective = mx.algorithm == "dion2" || mx.algorithm == "nordion2" || mx.algorithm == "dion3";
  need(!(c.dist.mode == "fsdp" && selective && mx.select_dim == "cols"), "optim.matrix.select_dim",
       "cols is not possible under dist.mode fsdp: parameters are sharded by rows and " + mx.algorithm +
           " selects along the sharded dimension (use rows or shorter)");
  need(c.dist.bucket_mb > 0, "dist.bucket_mb", "must be positive");
  need(c.dist.timeout_s > 0, "dist.timeout_s", "must be positive");

  need(!c.log.dir.empty(), "log.dir", "must not be empty");
  need(c.log.every > 0, "log.every", "must be positive");
  need(c.checkpoint.every >= 0, "checkpoint.every", "must be >= 0");
  need(c.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1");
}

std::string config_to_yaml(const Config& c) {
  // Nested mappings in schema order (keys of one section are contiguous in the schema).
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::vector<std::string> open;  // currently open section path
  for (const auto& f : schema().fields()) {
    std::vector<std::string> parts;
    std::stringstream ss(f.key);
    std::string p;
    while (std::getline(ss, p, '.')) parts.push_back(p);
    const std::vector<std::string> sec(parts.begin(), parts.end() - 1);
    size_t common = 0;
    while (common < open.size() && common < sec.size() && open[common] == sec[common]) ++common;
    for (size_t i = open.size(); i > common; --i) out << YAML::EndMap;
    for (size_t i = common; i < sec.size(); ++i) out << YAML::Key << sec[i] << YAML::Value << YAML::BeginMap;
    open = sec;
    out << YAML::Key << parts.back() << YAML::Value;
    const std::string v = f.get(c);
    if (f.type == "float pair") {
      auto pr = parse_pair(v);
      out << YAML::Flow << YAML::BeginSeq << fmt_double(pr[0]) << fmt_double(pr[1]) << YAML::EndSeq;
    } else if (f.type == "string") {
      out << YAML::DoubleQuoted << v;
    } else {
      out << v;
    }
  }
  for (size_t i = 0; i < open.size(); ++i) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::string config_help() {
  std::string s;
  for (const auto& f : schema().fields()) {
    s += fmt::format("  --{:<34} {:<10} {}", f.key, f.type, f.help);
    if (!f.choices.empty()) {
      s += " {";
      for (size_t i = 0; i < f.choices.size(); ++i) s += (i ? "|" : "") + f.choices[i];
      s += "}";
    }
    s += fmt::format(" [default: {}]\n", f.get(Config{}));
  }
  s += "  aliases:";
  for (const auto& [a, full] : config_aliases()) s += fmt::format(" --{}={}", a, full);
  return s + "\n";
}

GPTConfig Config::gpt() const {
  GPTConfig g;
  g.vocab_size = model.vocab_size;
  g.d_model = model.d_model;
  g.n_layer = model.n_layer;
  g.n_head = model.n_head;
  g.seq_len = model.seq_len;
  g.rope_base = (float)model.rope_base;
  return g;
}

OptimHParams Config::matrix_hparams() const {
  OptimHParams h;
  const auto& mx = optim.matrix;
  h.algorithm = parse_algorithm(mx.algorithm);
  h.weight_decay = (float)optim.weight_decay;
  h.betas = {(float)optim.scalar.betas[0], (float)optim.scalar.betas[1]};
  h.eps = (float)optim.scalar.eps;
  h.mu = (float)mx.mu;
  h.nesterov = mx.nesterov;
  h.adjust_lr = parse_adjust_lr(mx.adjust_lr);
  h.ortho = parse_ortho(mx.ortho);
  h.beta2 = (float)mx.beta2;
  h.fraction = (float)mx.fraction;
  h.select = parse_select(mx.select);
  h.select_dim = parse_select_dim(mx.select_dim);
  h.ef = mx.ef;
  h.ef_decay = (float)(mx.ef_decay < 0 ? mx.mu : mx.ef_decay);
  h.rank_fraction = (float)mx.rank_fraction;
  h.state_dtype = parse_state_dtype(mx.state_dtype);
  h.seed = train.seed;
  h.diagnostics = optim.diagnostics;
  return h;
}

OptimHParams Config::scalar_hparams(float wd) const {
  OptimHParams h;
  h.algorithm = parse_algorithm(optim.scalar.algorithm);
  h.weight_decay = wd;
  h.betas = {(float)optim.scalar.betas[0], (float)optim.scalar.betas[1]};
  h.eps = (float)optim.scalar.eps;
  h.state_dtype = parse_state_dtype(optim.matrix.state_dtype);
  h.seed = train.seed;
  h.diagnostics = optim.diagnostics;
  return h;
}

float Config::lm_head_lr_scale() const {
  if (optim.scalar.lm_head_lr_scale > 0) return (float)optim.scalar.lm_head_lr_scale;
  return optim.scalar.algorithm == "lion" ? 1.0f / std::sqrt((float)model.d_model) : 1.0f;
}

}  // namespace og
