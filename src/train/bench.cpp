// `orthogpt bench` (see bench.h). A step here is the trainer's step: zero_grad, grad_accum
// forward+backward micro-batches, the gradient norm read (the step's one host wait), the
// optimizer groups and the bf16 weight refresh. The host then waits for the step to finish so
// every timed step stands alone.
#include "train/bench.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "core/error.h"
#include "core/rng.h"
#include "model/model.h"
#include "optim/param_groups.h"
#include "train/backend.h"
#include "train/config.h"
#include "train/metrics.h"
#include "train/trainer.h"

namespace og {
namespace {

std::string fmt_rate(double per_s) {
  if (per_s >= 1e6) return fmt::format("{:.3f}M", per_s / 1e6);
  if (per_s >= 1e3) return fmt::format("{:.1f}k", per_s / 1e3);
  return fmt::format("{:.0f}", per_s);
}

BenchPhase summarize(const std::vector<double>& ms, int64_t tokens, double flops_per_tok, bool gpu) {
  BenchPhase p;
  double sum = 0;
  p.min_ms = std::numeric_limits<double>::infinity();
  for (double v : ms) {
    sum += v;
    p.min_ms = std::min(p.min_ms, v);
  }
  p.mean_ms = sum / (double)ms.size();
  p.tokens_per_s = tokens > 0 ? (double)tokens / (p.mean_ms / 1e3) : 0.0;
  p.mfu = gpu && tokens > 0 ? flops_per_tok * p.tokens_per_s / kPeakFlops : std::numeric_limits<double>::quiet_NaN();
  return p;
}

}  // namespace

BenchResult run_bench(const BenchOptions& o, std::FILE* out) {
  OG_CHECK(o.steps >= 1, "bench: --steps {} must be >= 1", o.steps);
  OG_CHECK(o.warmup >= 0, "bench: --warmup {} must be >= 0", o.warmup);
  OG_CHECK(o.grad_accum >= 1, "bench: --grad-accum {} must be >= 1", o.grad_accum);
  Config cfg = load_config(o.config_path, o.overrides);
  cfg.train.batch_size = cfg.train.micro_batch_size * o.grad_accum;  // the bench's own step size
  validate_config(cfg, 1);

  const Device device = resolve_device(cfg.train.device);
  const bool gpu = device == Device::CUDA;
  const GPTConfig g = cfg.gpt();
  const int B = (int)cfg.train.micro_batch_size, T = g.seq_len;
  const int64_t tokens_per_step = (int64_t)B * T * o.grad_accum;
  const double flops_tok = flops_per_token(g.n_layer, g.d_model, T, g.vocab_size);

  std::unique_ptr<Model> model = make_model(cfg, device, B);
  {
    std::vector<float> init(model->layout().total());
    gpt_init_params(model->layout(), init.data(), cfg.train.seed);
    model->upload_params(init.data());
  }
  ParamGroups groups(build_group_specs(cfg), model->layout(), model->params(), model->grads(), device);
  bind_optimizers(groups, *model);

  // Random tokens, one batch per micro-step (fixed seed: every run sees the same data).
  Rng rng(cfg.train.seed + 1);
  std::vector<std::vector<int32_t>> xs(o.grad_accum), ys(o.grad_accum);
  for (int m = 0; m < o.grad_accum; ++m) {
    xs[m].resize((size_t)B * T);
    ys[m].resize((size_t)B * T);
    for (auto& t : xs[m]) t = (int32_t)rng.below((uint64_t)g.vocab_size);
    for (auto& t : ys[m]) t = (int32_t)rng.below((uint64_t)g.vocab_size);
  }

  QueueTimer t_step(*model), t_fb(*model), t_opt(*model);
  std::vector<double> fb_ms, opt_ms, step_ms;
  BenchResult r;
  r.tokens_per_step = tokens_per_step;
  r.num_params = model->layout().num_elements();
  r.device = describe_device(device);
  const double lr = cfg.optim.lr;
  for (int s = 0; s < o.warmup + o.steps; ++s) {
    t_step.start();
    t_fb.start();
    model->zero_grad();
    for (int m = 0; m < o.grad_accum; ++m)
      model->forward_backward_accumulate(xs[m].data(), ys[m].data(), B, T, 1.0f / (float)o.grad_accum);
    t_fb.stop();
    const double gnorm = std::sqrt(model->grad_norm_sq());
    const double loss = model->take_loss_sum() / o.grad_accum;
    OG_CHECK(std::isfinite(loss) && std::isfinite(gnorm), "bench: step {}: non-finite loss {} / grad norm {}", s, loss,
             gnorm);
    t_opt.start();
    groups.step(s + 1, lr);
    model->params_changed();
    t_opt.stop();
    t_step.stop();
    model->synchronize();
    if (s == 0) r.first_loss = loss;
    r.last_loss = loss;
    if (s < o.warmup) continue;
    fb_ms.push_back(t_fb.elapsed_ms());
    opt_ms.push_back(t_opt.elapsed_ms());
    step_ms.push_back(t_step.elapsed_ms());
  }
  r.forward_backward = summarize(fb_ms, tokens_per_step, flops_tok, gpu);
  r.optimizer = summarize(opt_ms, 0, flops_tok, gpu);
  r.step = summarize(step_ms, tokens_per_step, flops_tok, gpu);
  const DeviceMemory mem = device_memory(*model);
  r.gpu_memory_gib = mem.in_use_gib;
  double state_gib = 0;
  for (const auto& t : groups.state()) state_gib += (double)t.bytes() / (1024.0 * 1024.0 * 1024.0);

  if (!out) return r;
  auto print = [&](const std::string& s) { std::fputs(s.c_str(), out); };
  print(fmt::format("orthogpt bench on {}\n", r.device));
  print(fmt::format("model: d_model {}, {} layers, {} heads (head_dim {}), seq {}, vocab {}: {:.1f}M parameters{}\n",
                    g.d_model, g.n_layer, g.n_head, g.head_dim(), T, g.vocab_size, r.num_params / 1e6,
                    describe_cuda_model(cfg, *model)));
  print(fmt::format("step: micro-batch {} x grad-accum {} = {} tokens; {:.4g} GFLOP/token (6N + attention)\n", B,
                    o.grad_accum, tokens_per_step, flops_tok / 1e9));
  print(fmt::format("optimizer groups:\n{}", groups.describe()));
  print(fmt::format("{} warm-up + {} timed steps ({}); loss {:.4f} -> {:.4f}\n\n", o.warmup, o.steps,
                    gpu ? "CUDA events" : "host clock", r.first_loss, r.last_loss));
  print(fmt::format("{:<18} {:>10} {:>10} {:>12} {:>10} {:>8}\n", "phase", "mean ms", "min ms", "tokens/s", "TFLOP/s",
                    "MFU"));
  auto row = [&](const char* name, const BenchPhase& p) {
    const bool has_tokens = p.tokens_per_s > 0;
    print(fmt::format("{:<18} {:>10.2f} {:>10.2f} {:>12} {:>10} {:>8}\n", name, p.mean_ms, p.min_ms,
                      has_tokens ? fmt_rate(p.tokens_per_s) : "-",
                      has_tokens ? fmt::format("{:.1f}", flops_tok * p.tokens_per_s / 1e12) : "-",
                      std::isfinite(p.mfu) ? fmt::format("{:.1f}%", 100 * p.mfu) : "-"));
  };
  row("forward+backward", r.forward_backward);
  row("optimizer", r.optimizer);
  row("step", r.step);
  if (mem.gpu)
    print(
        fmt::format("\nGPU memory: {:.2f} GiB in use of {:.1f} GiB; model weights+grads+bf16 copy {:.2f} GiB, "
                    "activations {:.2f} GiB, workspaces {:.2f} GiB; optimizer state {:.2f} GiB\n",
                    mem.in_use_gib, mem.total_gib, mem.model_weights_gib, mem.model_activations_gib,
                    mem.model_other_gib, state_gib));
  else
    print(fmt::format("\noptimizer state {:.2f} GiB (host)\n", state_gib));
  std::fflush(out);
  return r;
}

}  // namespace og
