// GptCuda: construction, the activation memory plan, and the og::Model entry points (token
// staging, loss/grad-norm reads, parameter transfers). The forward and backward passes
// themselves are in gpt_cuda_passes.cu.
//
// Memory plan (N = max_batch · seq_len rows, d = d_model, F = 4d; bytes):
//   per block, recompute none:        res_in, res_mid fp32 (8Nd); ln1, ln2, q, k, v, att bf16
//                                     (12Nd); fc, act bf16 (16Nd); rstd/lse (small)  = 36 Nd
//   per block, recompute elementwise: ln1, ln2 and act shared by all blocks           = 24 Nd
//   per block, recompute block:       res_in only; one shared set for the block being
//                                     back-propagated                                 =  4 Nd
//   once: final residual + rmsnorm (6Nd), backward scratch dres fp32 + dres bf16 + dln (8Nd),
//   dact (8Nd; the attention backward's datt/dq/dk/dv live inside it), one chunk of bf16
//   logits (logits_chunk_bytes), per-token losses.
#include "model/cuda/gpt_cuda.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "model/cuda/loss_sum.h"

namespace og {
namespace {

constexpr size_t kMatmulWorkspace = size_t(32) << 20;  // what cuBLAS recommends for Hopper

constexpr size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Hands out 256-byte aligned views of one allocation; with a null base it only sums the sizes.
struct Carver {
  char* base = nullptr;
  size_t offset = 0;
  template <typename T> T* take(size_t count) {
    T* p = base ? reinterpret_cast<T*>(base + offset) : nullptr;
    offset += align256(count * sizeof(T));
    return p;
  }
};

}  // namespace

Recompute parse_recompute(const std::string& s) {
  if (s == "none") return Recompute::None;
  if (s == "elementwise") return Recompute::Elementwise;
  if (s == "block") return Recompute::Block;
  fail("train.recompute: '{}' is not one of: none, elementwise, block", s);
}

AttentionKernel parse_attention_kernel(const std::string& s) {
  if (s == "auto") return AttentionKernel::Auto;
  if (s == "flash") return AttentionKernel::Flash;
  if (s == "cudnn") return AttentionKernel::Cudnn;
  fail("train.attention: '{}' is not one of: auto, flash, cudnn", s);
}

const char* name_of(Recompute r) {
  switch (r) {
    case Recompute::None: return "none";
    case Recompute::Elementwise: return "elementwise";
    case Recompute::Block: return "block";
  }
  return "?";
}

// The model's own whole buffers as a UnitSource: the embedding's fp32 master rows, every other
// unit's bf16 copy, and the whole gradient buffer (accumulating; zero_grad zeroes it).
class GptCuda::OwnUnits final : public UnitSource {
 public:
  explicit OwnUnits(GptCuda& m) : m_(m) {}
  const void* acquire(int unit, int) override {
    const size_t off = m_.units_[unit].offset;
    if (unit == 0) return m_.params_.data() + off;
    return m_.wbf_.data() + off;
  }
  void release(int) override {}
  void* grad_buffer(int unit) override { return m_.grads_.data() + m_.units_[unit].offset; }
  void grads_ready(int) override {}

 private:
  GptCuda& m_;
};

void GptCuda::StreamDeleter::operator()(CUstream_st* s) const { cudaStreamDestroy(s); }
void GptCuda::EventDeleter::operator()(CUevent_st* e) const { cudaEventDestroy(e); }
void GptCuda::PinnedDeleter::operator()(void* p) const { cudaFreeHost(p); }

GptCuda::GptCuda(const GPTConfig& cfg, int max_batch, const CudaModelOptions& options)
    : cfg_(cfg), layout_(gpt_param_layout(cfg)), max_batch_(max_batch), options_(options) {
  OG_CHECK(max_batch >= 1, "cuda model: max batch {} must be >= 1", max_batch);
  OG_CHECK(cfg.vocab_size >= 1 && cfg.d_model >= 1 && cfg.n_layer >= 1 && cfg.n_head >= 1 && cfg.seq_len >= 1,
           "cuda model: vocab_size, d_model, n_layer, n_head and seq_len must be positive");
  OG_CHECK(cfg.d_model % cfg.n_head == 0, "cuda model: d_model {} is not a multiple of n_head {}", cfg.d_model,
           cfg.n_head);
  OG_CHECK(cfg.head_dim() % 2 == 0, "cuda model: head_dim {} must be even for rotary", cfg.head_dim());
  OG_CHECK((int64_t)max_batch * cfg.seq_len < (int64_t(1) << 31),
           "cuda model: max batch {} x seq_len {} rows do not fit the kernels' int32 row count", max_batch,
           cfg.seq_len);
  OG_CHECK(options.logits_chunk_bytes >= 1, "cuda model: logits_chunk_bytes must be positive");

  units_ = gpt_param_units(layout_);
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    auto at = [&](const char* w) { return layout_.find(h + w).offset - units_[1 + l].offset; };
    lw_.push_back({at("attn.q"), at("attn.k"), at("attn.v"), at("attn.o"), at("mlp.fc"), at("mlp.proj")});
  }

  // A blocking stream (not cudaStreamNonBlocking): work that other code puts on the legacy
  // default stream (plain cudaMemcpy of optimizer state in checkpoints, optimizer set-up) stays
  // ordered with the model's work without extra synchronization.
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreate(&s));
  stream_owner_.reset(s);
  stream_ = s;
  matmul_ = std::make_unique<gpu::Matmul>(kMatmulWorkspace);

  const size_t total = layout_.total();
  params_.resize(total);
  grads_.resize(total);
  wbf_.resize(total);
  own_ = std::make_unique<OwnUnits>(*this);
  src_ = own_.get();
  plan();

  const int64_t N = (int64_t)max_batch_ * cfg_.seq_len;
  emb_workspace_.resize(gpu::embedding_backward_workspace_bytes(N, cfg_.vocab_size));
  tokens_d_.resize(2 * (size_t)N);
  scalars_.resize(3 + gpu::kSumSquaresPartials);
  make_attention();

  void* pinned = nullptr;
  CUDA_CHECK(cudaMallocHost(&pinned, 2 * 2 * (size_t)N * sizeof(int32_t)));
  staging_owner_.reset(pinned);
  staging_ = static_cast<int32_t*>(pinned);
  CUDA_CHECK(cudaMallocHost(&pinned, sizeof(double)));
  host_scalar_owner_.reset(pinned);
  host_scalar_ = static_cast<double*>(pinned);
  for (auto& e : staged_) {
    cudaEvent_t ev = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    e.reset(ev);
  }

  CUDA_CHECK(cudaMemsetAsync(params_.data(), 0, params_.bytes(), stream_));
  CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), stream_));
  CUDA_CHECK(cudaMemsetAsync(arena_.data(), 0, arena_.bytes(), stream_));
  CUDA_CHECK(cudaMemsetAsync(tokens_d_.data(), 0, tokens_d_.bytes(), stream_));
  CUDA_CHECK(cudaMemsetAsync(scalars_.data(), 0, scalars_.bytes(), stream_));
  if (options_.init_params) {
    std::vector<float> init(total);
    gpt_init_params(layout_, init.data(), options_.init_seed);
    upload_params(init.data());
  } else {
    params_changed();
  }
  synchronize();
}

GptCuda::~GptCuda() {
  // Destructors must not throw: wait quietly, then the owners release everything.
  if (stream_) cudaStreamSynchronize(stream_);
}

void GptCuda::plan() {
  const size_t N = (size_t)max_batch_ * cfg_.seq_len, d = cfg_.d_model, F = cfg_.d_ff(), V = cfg_.vocab_size;
  const size_t H = cfg_.n_head;
  const size_t Nd = N * d, NF = N * F;
  using gpu::bf16;

  // Rows of one lm_head/cross-entropy chunk: the largest power of two whose bf16 logits fit the
  // budget (at least 64 rows), at most N.
  int64_t rows = 64;
  while ((size_t)rows * 2 * V * sizeof(bf16) <= options_.logits_chunk_bytes && (size_t)rows < N) rows *= 2;
  chunk_rows_ = std::min<int64_t>(rows, (int64_t)N);

  const bool block = options_.recompute == Recompute::Block;
  const bool elementwise = options_.recompute == Recompute::Elementwise;
  for (int pass = 0; pass < 2; ++pass) {
    Carver c{pass == 0 ? nullptr : arena_.data(), 0};
    LayerActs shared;  // buffers every block reuses, rewritten before its backward
    if (block || elementwise) {
      shared.ln1 = c.take<bf16>(Nd);
      shared.ln2 = c.take<bf16>(Nd);
      shared.act = c.take<bf16>(NF);
    }
    if (block) {
      shared.rstd1 = c.take<float>(N);
      shared.q = c.take<bf16>(Nd);
      shared.k = c.take<bf16>(Nd);
      shared.v = c.take<bf16>(Nd);
      shared.rstdq = c.take<float>(N * H);
      shared.rstdk = c.take<float>(N * H);
      shared.att = c.take<bf16>(Nd);
      shared.lse = c.take<float>(N * H);
      shared.res_mid = c.take<float>(Nd);
      shared.rstd2 = c.take<float>(N);
      shared.fc = c.take<bf16>(NF);
    }
    layers_.assign(cfg_.n_layer, LayerActs{});
    for (auto& L : layers_) {
      if (block) L = shared;
      L.res_in = c.take<float>(Nd);
      if (block) continue;
      L.ln1 = elementwise ? shared.ln1 : c.take<bf16>(Nd);
      L.ln2 = elementwise ? shared.ln2 : c.take<bf16>(Nd);
      L.act = elementwise ? shared.act : c.take<bf16>(NF);
      L.rstd1 = c.take<float>(N);
      L.q = c.take<bf16>(Nd);
      L.k = c.take<bf16>(Nd);
      L.v = c.take<bf16>(Nd);
      L.rstdq = c.take<float>(N * H);
      L.rstdk = c.take<float>(N * H);
      L.att = c.take<bf16>(Nd);
      L.lse = c.take<float>(N * H);
      L.res_mid = c.take<float>(Nd);
      L.rstd2 = c.take<float>(N);
      L.fc = c.take<bf16>(NF);
    }
    res_final_ = c.take<float>(Nd);
    lnf_ = c.take<bf16>(Nd);
    rstdf_ = c.take<float>(N);
    logits_ = c.take<bf16>((size_t)chunk_rows_ * V);
    logits_f32_ = c.take<float>(V);
    losses_ = c.take<float>(N);
    dres_ = c.take<float>(Nd);
    dres_bf_ = c.take<bf16>(Nd);
    dln_ = c.take<bf16>(Nd);
    // dact also holds datt, dq, dk, dv (four 256-byte aligned [N, d] slices) in the attention backward
    dact_ = c.take<bf16>(std::max(NF, 4 * align256(Nd * sizeof(bf16)) / sizeof(bf16)));
    delta_ = c.take<float>(N * H);
    if (pass == 0) {
      arena_bytes_ = c.offset;
      arena_.resize(arena_bytes_);
    }
  }
}

void GptCuda::make_attention() {
  const AttentionKernel want = options_.attention;
  if (want == AttentionKernel::Flash) return;
  const int H = cfg_.n_head, hd = cfg_.head_dim();
  if (want == AttentionKernel::Auto && !gpu::CudnnAttention::built_with_cudnn()) {
    spdlog::info("attention: flash kernels (this build has no cuDNN)");
    return;
  }
  try {
    cudnn_attention_ = std::make_unique<gpu::CudnnAttention>(max_batch_, cfg_.seq_len, H, hd);
  } catch (const Error& e) {
    if (want == AttentionKernel::Cudnn) fail("train.attention: cudnn: {}", e.what());
    spdlog::warn("attention: flash kernels, cuDNN is not usable here: {}", e.what());
  }
}

std::string GptCuda::attention_description() const {
  return cudnn_attention_ ? cudnn_attention_->describe() : std::string("flash kernels");
}

CudaModelMemory GptCuda::memory() const {
  CudaModelMemory m;
  m.weights = params_.bytes() + grads_.bytes() + wbf_.bytes();
  m.activations = arena_.bytes();
  m.other = kMatmulWorkspace + emb_workspace_.bytes() + tokens_d_.bytes() + scalars_.bytes() +
            (cudnn_attention_ ? cudnn_attention_->device_bytes() : 0);
  return m;
}

// ---- host-side checks ---------------------------------------------------------------------------

void GptCuda::check_batch(int B, int T, const char* what) const {
  OG_CHECK(B >= 1 && B <= max_batch_, "cuda model: {}: batch {} outside [1, {}] (the max batch it was built for)", what,
           B, max_batch_);
  OG_CHECK(T >= 1 && T <= cfg_.seq_len, "cuda model: {}: sequence length {} outside [1, {}] (seq_len)", what, T,
           cfg_.seq_len);
}

// The kernels would turn a bad token into NaN; checking on the host (a pass over B·T ints, noise
// next to a step) gives the CPU model's clear error instead.
void GptCuda::validate_tokens(const int32_t* tokens, int64_t N, bool targets, const char* what) const {
  const int32_t V = cfg_.vocab_size;
  for (int64_t n = 0; n < N; ++n) {
    const int32_t t = tokens[n];
    if (t >= 0 && t < V) continue;
    if (targets && t == -1) continue;
    fail("cuda model: {}: {} token {} at row {} is outside [0, {}){}", what, targets ? "target" : "input", t, n, V,
         targets ? " (and is not the ignore index -1)" : "");
  }
}

int64_t GptCuda::count_valid_targets(const int32_t* targets, int64_t N) const {
  int64_t valid = 0;
  for (int64_t n = 0; n < N; ++n) valid += targets[n] >= 0;
  OG_CHECK(valid > 0, "cuda model: every target of the batch is the ignore index -1");
  return valid;
}

void GptCuda::stage_tokens(const int32_t* inputs, const int32_t* targets, int64_t N) {
  const size_t cap = (size_t)max_batch_ * cfg_.seq_len;
  int32_t* slot = staging_ + (size_t)slot_ * 2 * cap;
  // The copy that last read this slot (two calls ago) must be done before the host rewrites it.
  CUDA_CHECK(cudaEventSynchronize(staged_[slot_].get()));
  std::memcpy(slot, inputs, (size_t)N * sizeof(int32_t));
  CUDA_CHECK(cudaMemcpyAsync(inputs_d(), slot, (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  if (targets) {
    std::memcpy(slot + cap, targets, (size_t)N * sizeof(int32_t));
    CUDA_CHECK(cudaMemcpyAsync(targets_d(), slot + cap, (size_t)N * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  }
  CUDA_CHECK(cudaEventRecord(staged_[slot_].get(), stream_));
  slot_ ^= 1;
}

double GptCuda::read_scalar(const double* device_value) {
  CUDA_CHECK(cudaMemcpyAsync(host_scalar_, device_value, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return *host_scalar_;
}

// ---- og::Model ------------------------------------------------------------------------------------

void GptCuda::zero_grad() {
  if (!attached_) CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), stream_));
}

void GptCuda::params_changed() {
  if (!attached_) gpu::convert_f32_to_bf16(wbf_.data(), params_.data(), (int64_t)layout_.total(), stream_);
}

void GptCuda::check_own(const char* what) const {
  OG_CHECK(!attached_, "internal: cuda model: {} on a model whose weights are held by a unit source (fsdp)", what);
}

void GptCuda::route_units(UnitSource* src) {
  check_own("route_units");
  src_ = src ? src : own_.get();
}

void GptCuda::attach_units(UnitSource* src) {
  OG_CHECK(src != nullptr, "internal: cuda model: attach_units(nullptr)");
  synchronize();  // queued work may still read the whole buffers
  src_ = src;
  attached_ = true;
  params_.release();
  grads_.release();
  wbf_.release();
}

void GptCuda::synchronize() { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void GptCuda::enqueue_train(const int32_t* inputs, const int32_t* targets, int B, int T, float grad_scale,
                            double* loss_acc) {
  OG_CHECK(inputs != nullptr && targets != nullptr, "cuda model: forward_backward needs inputs and targets");
  check_batch(B, T, "forward_backward");
  const int64_t N = (int64_t)B * T;
  validate_tokens(inputs, N, false, "forward_backward");
  validate_tokens(targets, N, true, "forward_backward");
  const int64_t valid = count_valid_targets(targets, N);
  stage_tokens(inputs, targets, N);
  forward_blocks(B, T);
  // d(mean loss)/d(loss_n) = 1/valid, times the caller's scale (e.g. 1/grad_accum).
  head_forward_backward(N, grad_scale / (float)valid);
  gpu::accumulate_loss_sum(loss_acc, losses_, N, 1.0 / (double)valid, stream_);
  backward_blocks(B, T);
}

float GptCuda::forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T, float grad_scale) {
  double* acc = scalars_.data() + 1;
  CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(double), stream_));
  enqueue_train(inputs, targets, B, T, grad_scale, acc);
  return (float)read_scalar(acc);
}

void GptCuda::forward_backward_accumulate(const int32_t* inputs, const int32_t* targets, int B, int T,
                                          float grad_scale) {
  enqueue_train(inputs, targets, B, T, grad_scale, scalars_.data());
}

double GptCuda::take_loss_sum() {
  const double s = read_scalar(scalars_.data());
  CUDA_CHECK(cudaMemsetAsync(scalars_.data(), 0, sizeof(double), stream_));
  return s;
}

float GptCuda::forward_loss(const int32_t* inputs, const int32_t* targets, int B, int T) {
  OG_CHECK(inputs != nullptr && targets != nullptr, "cuda model: forward_loss needs inputs and targets");
  check_batch(B, T, "forward_loss");
  const int64_t N = (int64_t)B * T;
  validate_tokens(inputs, N, false, "forward_loss");
  validate_tokens(targets, N, true, "forward_loss");
  const int64_t valid = count_valid_targets(targets, N);
  stage_tokens(inputs, targets, N);
  forward_blocks(B, T);
  head_loss(N);
  double* acc = scalars_.data() + 1;
  CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(double), stream_));
  gpu::accumulate_loss_sum(acc, losses_, N, 1.0 / (double)valid, stream_);
  return (float)read_scalar(acc);
}

std::vector<float> GptCuda::last_logits(const int32_t* tokens, int T) {
  OG_CHECK(tokens != nullptr, "cuda model: last_logits needs tokens");
  check_batch(1, T, "last_logits");
  validate_tokens(tokens, T, false, "last_logits");
  stage_tokens(tokens, nullptr, T);
  forward_blocks(1, T);
  const int64_t d = cfg_.d_model, V = cfg_.vocab_size;
  // bf16 logits of the last position (like the training path), widened to fp32.
  matmul_->forward(logits_, lnf_ + (int64_t)(T - 1) * d, acquire_bf16(head_unit(), -1), 1, d, V, stream_);
  src_->release(head_unit());
  gpu::convert_bf16_to_f32(logits_f32_, logits_, V, stream_);
  std::vector<float> out((size_t)V);
  CUDA_CHECK(cudaMemcpyAsync(out.data(), logits_f32_, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return out;
}

void GptCuda::upload_params(const float* host) {
  check_own("upload_params");
  CUDA_CHECK(cudaMemcpyAsync(params_.data(), host, params_.bytes(), cudaMemcpyHostToDevice, stream_));
  params_changed();
  synchronize();  // the host buffer may be freed when this returns
}

void GptCuda::download_params(float* host) {
  check_own("download_params");
  CUDA_CHECK(cudaMemcpyAsync(host, params_.data(), params_.bytes(), cudaMemcpyDeviceToHost, stream_));
  synchronize();
}

double GptCuda::grad_norm_sq() {
  check_own("grad_norm_sq");
  gpu::sum_squares(scalars_.data() + 2, scalars_.data() + 3, grads_.data(), (int64_t)layout_.total(), stream_);
  return read_scalar(scalars_.data() + 2);
}

// ---- factory and device queries ----------------------------------------------------------------

std::unique_ptr<GptCuda> make_cuda_model(const GPTConfig& cfg, int max_batch, const CudaModelOptions& options) {
  OG_CHECK(cuda_available(), "cuda model: no CUDA device is available");
  return std::make_unique<GptCuda>(cfg, max_batch, options);
}

size_t gpu_memory_in_use() {
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return total_b - free_b;
}

size_t gpu_memory_total() {
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return total_b;
}

std::string gpu_device_name() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  return prop.name;
}

}  // namespace og
