#include "train/trainer.h"

#include <spdlog/spdlog.h>

#include <omp.h>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include <cstring>

#include "core/error.h"
#include "core/timer.h"
#include "data/loader.h"
#include "model/model.h"
#include "optim/distributed_optimizer.h"
#include "optim/lr_schedule.h"
#include "train/backend.h"
#include "train/checkpoint.h"
#include "train/fault_injection.h"
#include "train/fsdp.h"
#include "train/metrics.h"
#include "train/sample.h"

#ifdef ORTHOGPT_CUDA
#include "core/cuda_utils.h"
#endif

namespace og {
namespace {

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = (int64_t)std::llround(s);
  if (t >= 3600) return fmt::format("{}h{:02}m{:02}s", t / 3600, (t / 60) % 60, t % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

std::string fmt_rate(double tokens_per_s) {
  if (tokens_per_s >= 1e6) return fmt::format("{:.2f}M", tokens_per_s / 1e6);
  if (tokens_per_s >= 1e3) return fmt::format("{:.1f}k", tokens_per_s / 1e3);
  return fmt::format("{:.0f}", tokens_per_s);
}

double evaluate(Model& model, Communicator& comm, DataLoader& val, int64_t batches, std::vector<int32_t>& x,
                std::vector<int32_t>& y) {
  val.reset();
  double sum = 0;
  for (int64_t i = 0; i < batches; ++i) {
    val.next_batch(x.data(), y.data());
    sum += model.forward_loss(x.data(), y.data(), val.B(), val.T());
  }
  return comm.all_reduce_scalar(sum / (double)batches, ReduceOp::Avg);
}

std::string model_signature(const Model& m) {
  std::string s = fmt::format("gpt vocab={} d={} layers={} heads={} T={};", m.config().vocab_size, m.config().d_model,
                              m.config().n_layer, m.config().n_head, m.config().seq_len);
  for (const auto& p : m.layout().params()) s += fmt::format("{}[{}x{}];", p.name, p.rows, p.cols);
  return s;
}

std::string optimizer_signature(const std::vector<StateTensor>& state) {
  std::string s;
  for (const auto& t : state) s += fmt::format("{}[{} {}];", t.name, t.count, name_of(t.dtype));
  return s;
}

// Host copy of a state tensor (device state is copied through a staging buffer).
void state_to_host(const StateTensor& t, std::vector<char>& host) {
  host.resize(t.bytes());
#ifdef ORTHOGPT_CUDA
  if (t.device == Device::CUDA) {
    CUDA_CHECK(cudaMemcpy(host.data(), t.data, host.size(), cudaMemcpyDeviceToHost));
    return;
  }
#endif
  std::memcpy(host.data(), t.data, host.size());
}

void state_from_host(const StateTensor& t, const std::vector<char>& host) {
#ifdef ORTHOGPT_CUDA
  if (t.device == Device::CUDA) {
    CUDA_CHECK(cudaMemcpy(t.data, host.data(), host.size(), cudaMemcpyHostToDevice));
    return;
  }
#endif
  std::memcpy(t.data, host.data(), host.size());
}

}  // namespace

std::vector<GroupSpec> build_group_specs(const Config& cfg) {
  std::vector<GroupSpec> specs;
  const Algorithm matrix_algo = parse_algorithm(cfg.optim.matrix.algorithm);
  GroupSpec matrix{"matrix", {ParamRole::Matrix}, cfg.matrix_hparams(), 1.0};
  if (!is_matrix_algorithm(matrix_algo)) {
    // A scalar algorithm on the matrices (the AdamW / Lion baselines): scalar betas/eps.
    matrix.hp = cfg.scalar_hparams((float)cfg.optim.weight_decay);
    matrix.hp.algorithm = matrix_algo;
  }
  specs.push_back(matrix);
  specs.push_back({"embedding",
                   {ParamRole::Embedding},
                   cfg.scalar_hparams((float)cfg.optim.scalar.weight_decay),
                   cfg.optim.scalar.embedding_lr_scale});
  specs.push_back({"lm_head",
                   {ParamRole::LmHead},
                   cfg.scalar_hparams((float)cfg.optim.scalar.weight_decay),
                   cfg.lm_head_lr_scale()});
  specs.push_back({"vector", {ParamRole::Vector}, cfg.scalar_hparams((float)cfg.optim.weight_decay), 1.0});
  return specs;
}

TrainResult run_train(const Config& cfg, DistContext& dist) {
  namespace fs = std::filesystem;
  const int rank = dist.rank, world = dist.world;
  Communicator& comm = *dist.host_comm;
  if (cfg.train.threads > 0) omp_set_num_threads(cfg.train.threads);
  const Device device = resolve_device(cfg.train.device);  // before any output: a bad device leaves nothing

  // ---- outputs ---------------------------------------------------------------------------
  const std::string resolved = config_to_yaml(cfg);
  if (rank == 0) {
    std::error_code ec;
    fs::create_directories(cfg.log.dir, ec);
    OG_CHECK(!ec, "log.dir: cannot create {}: {}", cfg.log.dir, ec.message());
    const std::string path = (fs::path(cfg.log.dir) / "config.yaml").string();
    std::ofstream f(path);
    f << resolved;
    OG_CHECK(f.good(), "cannot write {}", path);
  }
  spdlog::info("resolved config (also in {}/config.yaml):\n{}", cfg.log.dir, resolved);

  // ---- model, data, optimizer ------------------------------------------------------------
  const GPTConfig gpt = cfg.gpt();
  const int B = (int)cfg.train.micro_batch_size, T = gpt.seq_len;
  const int64_t grad_accum = cfg.train.batch_size / (cfg.train.micro_batch_size * world);
  const int64_t tokens_per_step = cfg.train.batch_size * (int64_t)T;
  const int64_t N = cfg.train.steps;

  // Data first: a bad shard is reported before a large model is built.
  DataLoader train_loader(cfg.data.train, "data.train", B, T, rank, world, gpt.vocab_size);
  std::unique_ptr<DataLoader> val_loader;
  int64_t val_batches = 0;
  if (!cfg.data.val.empty() && cfg.data.val_tokens > 0) {
    val_loader = std::make_unique<DataLoader>(cfg.data.val, "data.val", B, T, rank, world, gpt.vocab_size);
    val_batches = cfg.data.val_tokens / ((int64_t)B * T * world);
    OG_CHECK(val_batches > 0, "data.val_tokens: {} is less than one validation batch ({} x {} x {} ranks)",
             cfg.data.val_tokens, B, T, world);
  }
  std::unique_ptr<Model> model = make_model(cfg, device, B, dist.local_rank);
  {
    std::vector<float> init(model->layout().total());
    gpt_init_params(model->layout(), init.data(), cfg.train.seed);
    model->upload_params(init.data());
  }
  // Data parallel: DDP replicates weights and optimizer state and averages whole gradients;
  // FSDP keeps master weights, gradients and optimizer state as row shards (train/fsdp.h).
  std::unique_ptr<Fsdp> fsdp;
  std::unique_ptr<GradientAverager> averager;
  if (cfg.dist.mode == "fsdp")
    fsdp = std::make_unique<Fsdp>(dist, *model, cfg.dist);
  else
    averager = std::make_unique<GradientAverager>(dist, *model, cfg.dist.timeout_s);
  // FSDP: the master shards, before an optimizer may look at them; the model then keeps no whole
  // copy of its weights or gradients (it gathers each unit as it goes).
  if (fsdp) fsdp->shard_params();
  const std::vector<GroupSpec> specs = build_group_specs(cfg);
  // DDP: the groups' optimizers across ranks (optim/distributed_optimizer.h). Under
  // dist.compressed_sync the matrix gradients stay local: the matrix optimizer all-reduces only
  // the selected momentum slices, so the averager leaves the matrices out.
  OptimizerFactory factory;
  if (averager && world > 1) {
    factory = [&](const GroupSpec& spec, std::vector<ParamSlot> slots, Device dev) {
      DistributedOptions o;
      o.comm = &averager->optimizer_comm();
      o.compressed_sync = cfg.dist.compressed_sync && spec.name == "matrix";
      o.select_scope = cfg.dist.select_scope;
      o.owner_split = cfg.dist.owner_split;
      return make_distributed_optimizer(spec.hp, std::move(slots), dev, o);
    };
    if (cfg.dist.compressed_sync) averager->exclude_role(ParamRole::Matrix);
  }
  ParamGroups groups = fsdp ? fsdp->make_groups(specs)
                            : ParamGroups(specs, model->layout(), model->params(), model->grads(), device, factory);
  bind_optimizers(groups, *model);
  comm.set_timeout(cfg.dist.timeout_s);  // a dead or hanging peer aborts the job, never hangs it

  const double flops_tok = flops_per_token(gpt.n_layer, gpt.d_model, T, gpt.vocab_size);
  spdlog::info(
      "model: {} parameters ({} in matrices), d_model {}, {} layers, {} heads, seq {}, vocab {}",
      model->layout().num_elements(),
      [&] {
        size_t n = 0;
        for (const auto& p : model->layout().params()) n += p.role == ParamRole::Matrix ? p.numel() : 0;
        return n;
      }(),
      gpt.d_model, gpt.n_layer, gpt.n_head, T, gpt.vocab_size);
  spdlog::info("train: {} steps x {} tokens ({} seqs = {} micro-batches of {} x {} ranks), device {}{}",
               cfg.train.steps, tokens_per_step, cfg.train.batch_size, grad_accum, B, world, describe_device(device),
               describe_cuda_model(cfg, *model));
  spdlog::info("data: {} train shard(s), {} tokens{}", train_loader.files().size(), train_loader.total_tokens(),
               val_loader ? fmt::format("; val: {} batches = {} tokens", val_batches, val_batches * B * T * world)
                          : std::string("; no validation"));
  spdlog::info("optimizer groups:\n{}", groups.describe());
  if (fsdp) {
    const FsdpMemory mem = fsdp->memory(groups);  // a collective
    spdlog::info("fully sharded data parallel: {} ranks, shards gathered / reduce-scattered over {}", world,
                 fsdp->backend());
    spdlog::info("{}", mem.describe());
  } else if (world > 1) {
    spdlog::info("data parallel: {} ranks, gradients averaged over {}", world, averager->backend());
  }

  // ---- resume ----------------------------------------------------------------------------
  int64_t start_step = 0;
  if (!cfg.checkpoint.resume.empty()) {
    CheckpointReader ck(cfg.checkpoint.resume);
    const CheckpointMeta& m = ck.meta();
    OG_CHECK(m.model_signature == model_signature(*model),
             "--resume {}: the checkpoint's model differs from this config's:\n  checkpoint: {}\n  config:     {}",
             ck.dir(), m.model_signature.substr(0, 200), model_signature(*model).substr(0, 200));
    OG_CHECK(ck.sharded() == (fsdp != nullptr),
             "--resume {}: written under dist.mode {} ({} rank(s)), this run uses dist.mode {}; the modes store "
             "different files (one state.bin / one file per rank)",
             ck.dir(), ck.sharded() ? "fsdp" : "ddp", m.world, cfg.dist.mode);
    std::vector<StateTensor> st = groups.state();
    OG_CHECK(m.optimizer_signature == (fsdp ? fsdp_optimizer_signature(specs) : optimizer_signature(st)),
             "--resume {}: the checkpoint's optimizer state does not match this config's optimizer groups "
             "(algorithm, fraction/rank or state dtype changed?)",
             ck.dir());
    OG_CHECK(m.step < N, "--resume {}: the checkpoint is at step {}, train.steps is {}", ck.dir(), m.step, N);
    if (fsdp) {
      fsdp->load_checkpoint(ck, groups);  // re-shards when written at another world size
      train_loader.restore(resume_loader_state(m, rank, world, B, T));
    } else {
      OG_CHECK(m.world == world, "--resume {}: written by {} data-parallel rank(s), this run has {}", ck.dir(), m.world,
               world);
      std::vector<float> host(model->layout().total());
      ck.read("params", host.data(), host.size() * sizeof(float));
      model->upload_params(host.data());
      std::vector<char> buf;
      for (const auto& t : st) {
        buf.resize(t.bytes());
        ck.read("optim/" + t.name, buf.data(), buf.size());
        state_from_host(t, buf);
      }
      train_loader.restore(m.loaders.at(rank));
    }
    start_step = m.step;
    spdlog::info("resumed from {} at step {}", ck.dir(), start_step);
  }
  auto save_checkpoint = [&](int64_t steps_done) {
    Timer t;
    // every rank's loader position, gathered to all (rank 0 writes)
    const LoaderState mine = train_loader.state();
    std::vector<int64_t> send = {mine.shard, mine.position, mine.epoch}, all(3 * (size_t)world);
    comm.all_gather(send.data(), all.data(), 3, DType::I64);
    CheckpointMeta m;
    m.step = steps_done;
    m.world = world;
    for (int r = 0; r < world; ++r) m.loaders.push_back({all[3 * r], all[3 * r + 1], all[3 * r + 2]});
    m.model_signature = model_signature(*model);
    m.config_yaml = resolved;
    const std::string dir = checkpoint_dir(cfg.log.dir, steps_done);
    if (fsdp) {  // every rank writes its shards
      m.optimizer_signature = fsdp_optimizer_signature(specs);
      fsdp->save_checkpoint(dir, m, groups);
      if (rank == 0) prune_checkpoints(cfg.log.dir, cfg.checkpoint.keep);
      spdlog::info("checkpoint: {} ({} rank files, {:.1f}s)", dir, world, t.seconds());
      return;
    }
    if (rank != 0) return;
    std::vector<StateTensor> st = groups.state();
    m.optimizer_signature = optimizer_signature(st);
    std::vector<float> host(model->layout().total());
    model->download_params(host.data());
    std::vector<std::vector<char>> bufs(st.size());
    std::vector<NamedTensor> tensors = {{"params", host.data(), host.size() * sizeof(float)}};
    for (size_t i = 0; i < st.size(); ++i) {
      state_to_host(st[i], bufs[i]);
      tensors.push_back({"optim/" + st[i].name, bufs[i].data(), bufs[i].size()});
    }
    write_checkpoint(dir, m, tensors);
    prune_checkpoints(cfg.log.dir, cfg.checkpoint.keep);
    spdlog::info("checkpoint: {} ({:.1f}s)", dir, t.seconds());
  };

  // Text samples during training (rank 0 logs them); built here so a missing tokenizer stops the
  // run now. Under FSDP every rank runs the sampler's forward passes, whose unit gathers are
  // collectives (the same seed and the same gathered weights give every rank the same tokens).
  std::unique_ptr<TrainingSampler> sampler =
      (rank == 0 || fsdp) && cfg.train.sample_every > 0 ? std::make_unique<TrainingSampler>(cfg) : nullptr;
  MetricsWriter metrics;
  if (rank == 0) metrics.open((fs::path(cfg.log.dir) / "metrics.jsonl").string(), start_step > 0);

  // ---- loop --------------------------------------------------------------------------------
  // On a GPU the model and the optimizers queue their work on one stream; the host waits once
  // per step, when it reads the gradient norm (the loss sum is ready by then), because the
  // non-finite guard must decide before the optimizer runs. The optimizer step and the next
  // step's data loading and forward/backward are then queued while the GPU is busy. Hence
  // optim_ms on a GPU is measured with CUDA events and reported one step late (in the row of
  // the step after it; absent in the first row); on the CPU it is the host time of the step.
  std::vector<int32_t> x((size_t)B * T), y((size_t)B * T);
  TrainResult res;
  Timer wall;
  double train_seconds = 0;  // excludes validation and checkpoints
  QueueTimer optim_timer(*model);
  double peak_gpu_gib = 0;
  auto sample_gpu_memory = [&] {
    const DeviceMemory m = device_memory(*model);
    if (m.gpu) peak_gpu_gib = std::max(peak_gpu_gib, m.in_use_gib);
  };
  // Queued work of the last step (its optimizer) belongs to training time: wait for it before
  // validation or a checkpoint and count the wait.
  auto drain = [&] {
    Timer t;
    model->synchronize();
    train_seconds += t.seconds();
  };
  auto validate = [&](int64_t step) {
    if (!val_loader) return;
    drain();
    Timer t;
    const double vl = evaluate(*model, comm, *val_loader, val_batches, x, y);
    OG_CHECK(std::isfinite(vl), "step {}: validation loss is {}", step, vl);
    if (step == 0) res.first_val_loss = vl;
    res.final_val_loss = vl;
    spdlog::info("step {:>6}/{} | val loss {:.4f} | {:.1f}s", step, N, vl, t.seconds());
    metrics.write({{"type", "val"},
                   {"step", step},
                   {"tokens", step * tokens_per_step},
                   {"val_loss", vl},
                   {"elapsed_s", wall.seconds()}});
  };
  auto checkpoint_now = [&](int64_t steps_done) {
    drain();
    groups.synchronize_state();  // compressed sync: every rank's momenta become the synced ones
    drain();
    save_checkpoint(steps_done);
  };

  for (int64_t step = start_step; step < N; ++step) {
    if (step == 0 || (step > start_step && cfg.train.val_every > 0 && step % cfg.train.val_every == 0)) validate(step);

    Timer step_timer;
    if (fsdp)
      fsdp->zero_grads();
    else
      model->zero_grad();
    for (int64_t micro = 0; micro < grad_accum; ++micro) {
      train_loader.next_batch(x.data(), y.data());
      if (averager) averager->set_last_micro_batch(micro + 1 == grad_accum);  // DDP: reduce during its backward
      model->forward_backward_accumulate(x.data(), y.data(), B, T, 1.0f / (float)grad_accum);
    }
    // Data parallel: average gradients (and the loss, for the log) over ranks (FSDP: backward
    // started the reduce-scatters; wait for them). Fault injection for tests poisons the gradient.
    inject_rank_faults(cfg.train, rank, step);  // fault injection for tests (train.fault_kill_*/hang_*)
    const bool poison = step == cfg.train.fault_nan_step;
    if (fsdp) {
      fsdp->finish_gradients();
      if (poison) fsdp->poison_gradient();
    } else {
      averager->average();
      if (poison) poison_gradient(*model);
    }
    // The step's one wait on a GPU. Under compressed sync the matrix gradients differ between
    // ranks: the logged norm is the rms over ranks of the local norms, the same on every rank (so
    // all skip a step together).
    const double grad_norm =
        std::sqrt(fsdp                                    ? fsdp->grad_norm_sq()
                  : cfg.dist.compressed_sync && world > 1 ? comm.all_reduce_scalar(model->grad_norm_sq(), ReduceOp::Avg)
                                                          : model->grad_norm_sq());
    const double loss = comm.all_reduce_scalar(model->take_loss_sum() / (double)grad_accum, ReduceOp::Avg);
    // On a GPU the previous step's optimizer is done by now: read its time.
    const double prev_gpu_optim_ms = device == Device::CUDA && optim_timer.has_interval()
                                         ? optim_timer.elapsed_ms()
                                         : std::numeric_limits<double>::quiet_NaN();
    const double lr = cfg.optim.lr * lr_multiplier(step, N, cfg.train.warmup_frac, cfg.train.warmdown_frac);

    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      if (!cfg.train.skip_nonfinite)
        fail(
            "step {}: non-finite {} (loss {}, grad norm {}); stopping (set train.skip_nonfinite on to skip such steps)",
            step, std::isfinite(loss) ? "gradient" : "loss", loss, grad_norm);
      ++res.skipped_steps;
      spdlog::warn("step {}: non-finite loss {} / grad norm {}; step skipped ({} so far)", step, loss, grad_norm,
                   res.skipped_steps);
      metrics.write({{"type", "skip"}, {"step", step}, {"skipped_steps", res.skipped_steps}});
      if (cfg.checkpoint.enabled && cfg.checkpoint.every > 0 && (step + 1) % cfg.checkpoint.every == 0)
        checkpoint_now(step + 1);
      continue;
    }

    Timer opt_host_timer;
    optim_timer.start();
    groups.step(step + 1, lr);
    // CUDA: refresh the bf16 weights (FSDP: the bf16 shards the next gathers send)
    if (fsdp)
      fsdp->params_updated();
    else
      model->params_changed();
    optim_timer.stop();
    const double optim_ms = device == Device::CUDA ? prev_gpu_optim_ms : opt_host_timer.ms();
    const double step_s = step_timer.seconds();
    train_seconds += step_s;
    res.final_train_loss = loss;
    res.steps_done = step + 1;
    if (step == start_step) sample_gpu_memory();

    const double tok_s = (double)tokens_per_step / step_s;
    const double model_flops = flops_tok * tok_s;
    const double mfu = device == Device::CUDA ? model_flops / kPeakFlops : std::numeric_limits<double>::quiet_NaN();
    nlohmann::json row = {{"type", "train"},
                          {"step", step + 1},
                          {"tokens", (step + 1) * tokens_per_step},
                          {"loss", loss},
                          {"lr", lr},
                          {"grad_norm", grad_norm},
                          {"tokens_per_s", tok_s},
                          {"step_ms", step_s * 1e3},
                          {"tflops", model_flops / 1e12},
                          {"elapsed_s", wall.seconds()}};
    if (std::isfinite(optim_ms)) row["optim_ms"] = optim_ms;
    if (std::isfinite(mfu)) row["mfu"] = mfu;
    if (res.skipped_steps) row["skipped_steps"] = res.skipped_steps;
    for (const auto& [k, v] : groups.stats()) row[k] = v;
    if (world > 1) {  // bytes this rank sent (ring formulas): gradients (+ FSDP's weight gather) + optimizers
      double bytes = fsdp ? fsdp->last_bytes() : averager->last_bytes();
      row["comm_bytes_grad"] = bytes;
      for (const auto& [k, v] : groups.stats())
        if (k.size() > 11 && k.compare(k.size() - 11, 11, ".comm_bytes") == 0) bytes += v;
      row["comm_bytes"] = bytes;
    }
    metrics.write(row);

    if ((step + 1) % cfg.log.every == 0 || step + 1 == N) {
      sample_gpu_memory();
      const double eta = train_seconds / (double)(step + 1 - start_step) * (double)(N - step - 1);
      spdlog::info(
          "step {:>6}/{} | loss {:.4f} | lr {:.3e} | gnorm {:.3f} | {} tok/s | {} | optim {} | "
          "elapsed {} | ETA {}",
          step + 1, N, loss, lr, grad_norm, fmt_rate(tok_s),
          std::isfinite(mfu) ? fmt::format("MFU {:.1f}%", 100 * mfu) : fmt::format("{:.1f} GFLOP/s", model_flops / 1e9),
          std::isfinite(optim_ms) ? fmt::format("{:.1f} ms", optim_ms) : std::string("-"), fmt_duration(wall.seconds()),
          fmt_duration(eta));
    }
    // ---- text samples (train.sample_every): rank 0 continues train.sample_prompt -------------
    if (sampler && (step + 1) % cfg.train.sample_every == 0) {
      drain();
      const std::string text = sampler->sample(*model, step + 1);
      if (rank == 0) {
        spdlog::info("step {:>6}/{} | sample: {}{}", step + 1, N, cfg.train.sample_prompt, text);
        metrics.write({{"type", "sample"}, {"step", step + 1}, {"prompt", cfg.train.sample_prompt}, {"text", text}});
      }
    }
    if (cfg.checkpoint.enabled &&
        ((cfg.checkpoint.every > 0 && (step + 1) % cfg.checkpoint.every == 0) || step + 1 == N))
      checkpoint_now(step + 1);
  }
  drain();
  sample_gpu_memory();
  validate(N);
  res.seconds = wall.seconds();
  nlohmann::json done = {{"type", "done"},
                         {"steps", res.steps_done},
                         {"skipped_steps", res.skipped_steps},
                         {"final_train_loss", res.final_train_loss},
                         {"final_val_loss", res.final_val_loss},
                         {"seconds", res.seconds},
                         {"train_seconds", train_seconds}};
  const DeviceMemory mem = device_memory(*model);
  if (mem.gpu) {
    done["gpu_memory_peak_gib"] = peak_gpu_gib;
    spdlog::info(
        "GPU memory: peak {:.2f} GiB in use of {:.1f} GiB (model: weights+grads+bf16 copy {:.2f} GiB, "
        "activations {:.2f} GiB, workspaces {:.2f} GiB; optimizer state {:.2f} GiB)",
        peak_gpu_gib, mem.total_gib, mem.model_weights_gib, mem.model_activations_gib, mem.model_other_gib, [&] {
          double b = 0;
          for (const auto& t : groups.state()) b += (double)t.bytes();
          return b / (1024.0 * 1024.0 * 1024.0);
        }());
  }
  metrics.write(done);
  res.final_params.resize(model->layout().total());
  if (fsdp)
    fsdp->download_params(res.final_params.data());  // a collective
  else
    model->download_params(res.final_params.data());
  spdlog::info("done: {} steps in {}, final train loss {:.4f}, val loss {:.4f} -> {:.4f}{}", res.steps_done,
               fmt_duration(res.seconds), res.final_train_loss, res.first_val_loss, res.final_val_loss,
               res.skipped_steps ? fmt::format(", {} steps skipped", res.skipped_steps) : std::string());
  return res;
}

}  // namespace og
