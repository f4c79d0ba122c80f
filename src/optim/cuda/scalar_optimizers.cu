// AdamW and Lion on the GPU (OPTIMIZERS.md "Scalar optimizers"): one fused elementwise kernel
// per step over every parameter of the group (multi-tensor launch, chunk_table.h), fp32
// arithmetic, state in fp32 or bf16.
#include <cmath>

#include "optim/cpu_optimizers.h"
#include "optim/cuda/chunk_table.h"
#include "optim/cuda/device_math.cuh"
#include "optim/cuda/scalar_optimizers.h"
#include "optim/cuda/state_arena.h"

namespace og::cuda {
namespace {

struct ScalarDesc {
  float* w;
  const float* g;
  void* m;      // momentum (fp32 or bf16)
  void* v;      // AdamW second moment (fp32 or bf16); unused by Lion
  float* step;  // AdamW: the step the state was last updated at (one fp32); unused by Lion
  int64_t numel;
};

struct AdamWArgs {
  float lr, wd, beta1, beta2, eps;
  float step_size;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
  float t;             // the step, recorded in the state
};
struct LionArgs {
  float lr, wd, beta1, beta2;
};

// One block per chunk, kChunkThreads threads, VEC elements per thread per iteration.
//   W <- W(1 - lr wd);  M <- b1 M + (1-b1) G;  V <- b2 V + (1-b2) G²
//   W <- W - step_size · M / (sqrt(V)/sqrt(1-b2^t) + eps)
// With bf16 state, the W update uses M and V as stored (rounded), like the CPU reference.
template <int VEC, typename S>
__global__ void adamw_kernel(const ChunkRef* __restrict__ chunks, const ScalarDesc* __restrict__ descs, AdamWArgs a) {
  const ChunkRef c = chunks[blockIdx.x];
  const ScalarDesc d = descs[c.tensor];
  S* m = static_cast<S*>(d.m);
  S* v = static_cast<S*>(d.v);
  const int64_t end = min(c.start + kChunkElems, d.numel);
  const float decay = 1.0f - a.lr * a.wd;
  if (c.start == 0 && threadIdx.x == 0) *d.step = a.t;
  auto update = [&](float& w, float g, float& mm, float& vv) {
    w *= decay;
    mm = to_f32(from_f32<S>(a.beta1 * mm + (1.0f - a.beta1) * g));
    vv = to_f32(from_f32<S>(a.beta2 * vv + (1.0f - a.beta2) * g * g));
    w -= a.step_size * mm / (sqrtf(vv) * a.inv_sqrt_bc2 + a.eps);
  };
  for (int64_t i = c.start + (int64_t)threadIdx.x * VEC; i < end; i += (int64_t)blockDim.x * VEC) {
    if (i + VEC <= end) {
      float w[VEC], g[VEC], mm[VEC], vv[VEC];
      load_vec<VEC>(d.w + i, w);
      load_vec<VEC>(d.g + i, g);
      load_vec<VEC>(m + i, mm);
      load_vec<VEC>(v + i, vv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) update(w[e], g[e], mm[e], vv[e]);
      store_vec<VEC>(d.w + i, w);
      store_vec<VEC>(m + i, mm);
      store_vec<VEC>(v + i, vv);
    } else {
      for (int64_t j = i; j < end; ++j) {
        float w = d.w[j], mm = to_f32(m[j]), vv = to_f32(v[j]);
        update(w, d.g[j], mm, vv);
        d.w[j] = w;
        m[j] = from_f32<S>(mm);
        v[j] = from_f32<S>(vv);
      }
    }
  }
}

// Same launch shape.  U <- sign(b1 M + (1-b1) G);  M <- b2 M + (1-b2) G;  W <- W(1 - lr wd) - lr U
template <int VEC, typename S>
__global__ void lion_kernel(const ChunkRef* __restrict__ chunks, const ScalarDesc* __restrict__ descs, LionArgs a) {
  const ChunkRef c = chunks[blockIdx.x];
  const ScalarDesc d = descs[c.tensor];
  S* m = static_cast<S*>(d.m);
  const int64_t end = min(c.start + kChunkElems, d.numel);
  const float decay = 1.0f - a.lr * a.wd;
  auto update = [&](float& w, float g, float& mm) {
    const float u = a.beta1 * mm + (1.0f - a.beta1) * g;
    const float s = u > 0.0f ? 1.0f : (u < 0.0f ? -1.0f : 0.0f);
    mm = a.beta2 * mm + (1.0f - a.beta2) * g;
    w = w * decay - a.lr * s;
  };
  for (int64_t i = c.start + (int64_t)threadIdx.x * VEC; i < end; i += (int64_t)blockDim.x * VEC) {
    if (i + VEC <= end) {
      float w[VEC], g[VEC], mm[VEC];
      load_vec<VEC>(d.w + i, w);
      load_vec<VEC>(d.g + i, g);
      load_vec<VEC>(m + i, mm);
#pragma unroll
      for (int e = 0; e < VEC; ++e) update(w[e], g[e], mm[e]);
      store_vec<VEC>(d.w + i, w);
      store_vec<VEC>(m + i, mm);
    } else {
      for (int64_t j = i; j < end; ++j) {
        float w = d.w[j], mm = to_f32(m[j]);
        update(w, d.g[j], mm);
        d.w[j] = w;
        m[j] = from_f32<S>(mm);
      }
    }
  }
}

class CudaScalarOptimizer final : public CudaOptimizer {
 public:
  CudaScalarOptimizer(const OptimHParams& hp, std::vector<ParamSlot> params, const CudaOptimOptions& opt)
      : hp_(hp), params_(std::move(params)), stream_(opt.stream) {
    std::vector<int64_t> numel;
    for (const auto& p : params_) {
      names_.push_back(p.name);
      numel.push_back((int64_t)p.numel());
    }
    momentum_.init(numel, hp_.state_dtype);
    if (hp_.algorithm == Algorithm::AdamW) {
      variance_.init(numel, hp_.state_dtype);
      step_.init(std::vector<int64_t>(params_.size(), 1), StateDtype::F32);
    }
    std::vector<ScalarDesc> descs;
    vec4_ = true;
    for (size_t i = 0; i < params_.size(); ++i) {
      const ParamSlot& p = params_[i];
      const bool adamw = hp_.algorithm == Algorithm::AdamW;
      descs.push_back({p.w, p.g, momentum_.ptr(i), adamw ? variance_.ptr(i) : nullptr,
                       adamw ? static_cast<float*>(step_.ptr(i)) : nullptr, (int64_t)p.numel()});
      vec4_ = vec4_ && aligned_to(p.w, 16) && aligned_to(p.g, 16);  // state arenas are 256-B aligned
    }
    upload(descs_, descs);
    chunks_.build(numel);
    // Descriptor uploads and memsets ran on the legacy stream, asynchronously: finish them before
    // any step can run on another stream.
    CUDA_CHECK(cudaDeviceSynchronize());
  }

  Algorithm algorithm() const override { return hp_.algorithm; }
  void set_stream(cudaStream_t s) override { stream_ = s; }
  cudaStream_t stream() const override { return stream_; }

  void step(const StepContext& ctx) override {
    check_step_context(ctx, hp_.algorithm);
    const int64_t nblocks = chunks_.count();
    if (nblocks == 0) return;
    const bool bf16_state = hp_.state_dtype == StateDtype::BF16;
    if (hp_.algorithm == Algorithm::AdamW) {
      AdamWArgs a;
      a.lr = ctx.lr, a.wd = hp_.weight_decay, a.beta1 = hp_.betas[0], a.beta2 = hp_.betas[1], a.eps = hp_.eps;
      const double bc1 = 1.0 - std::pow((double)hp_.betas[0], (double)ctx.step);
      const double bc2 = 1.0 - std::pow((double)hp_.betas[1], (double)ctx.step);
      a.step_size = (float)(ctx.lr / bc1);
      a.inv_sqrt_bc2 = (float)(1.0 / std::sqrt(bc2));
      a.t = (float)ctx.step;
      launch(adamw_kernel<4, float>, adamw_kernel<1, float>, adamw_kernel<4, bf16>, adamw_kernel<1, bf16>, bf16_state,
             nblocks, a);
    } else {
      LionArgs a{ctx.lr, hp_.weight_decay, hp_.betas[0], hp_.betas[1]};
      launch(lion_kernel<4, float>, lion_kernel<1, float>, lion_kernel<4, bf16>, lion_kernel<1, bf16>, bf16_state,
             nblocks, a);
    }
  }

  // Per parameter, as the CPU reference: momentum, and for AdamW variance and step.
  std::vector<StateTensor> state() override {
    std::vector<StateTensor> out;
    for (size_t i = 0; i < params_.size(); ++i) {
      out.push_back(momentum_.view(i, names_[i], "momentum"));
      if (hp_.algorithm == Algorithm::AdamW) {
        out.push_back(variance_.view(i, names_[i], "variance"));
        out.push_back(step_.view(i, names_[i], "step"));
      }
    }
    return out;
  }

 private:
  template <typename K, typename Args>
  void launch(K f32v4, K f32v1, K bf16v4, K bf16v1, bool bf16_state, int64_t nblocks, const Args& a) {
    K k = bf16_state ? (vec4_ ? bf16v4 : bf16v1) : (vec4_ ? f32v4 : f32v1);
    k<<<(unsigned)nblocks, kChunkThreads, 0, stream_>>>(chunks_.chunks.data(), descs_.data(), a);
    CUDA_CHECK_LAUNCH();
  }

  OptimHParams hp_;
  std::vector<ParamSlot> params_;
  std::vector<std::string> names_;
  cudaStream_t stream_;
  StateArena momentum_, variance_, step_;
  DeviceBuffer<ScalarDesc> descs_;
  ChunkTable chunks_;
  bool vec4_ = false;
};

}  // namespace

std::unique_ptr<CudaOptimizer> make_cuda_scalar_optimizer(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                          const CudaOptimOptions& options) {
  return std::make_unique<CudaScalarOptimizer>(hp, std::move(params), options);
}

}  // namespace og::cuda
