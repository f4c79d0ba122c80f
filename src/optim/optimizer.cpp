// make_optimizer: validate a group's hyperparameters and parameters, then build the CPU reference
// optimizer or hand over to the CUDA backend. Also the lr shape rule shared by all backends.
#include "optim/optimizer.h"

#include <cmath>
#include <set>

#include "core/error.h"
#include "optim/cpu_optimizers.h"
#include "optim/dion.h"
#ifdef ORTHOGPT_CUDA
#include "optim/cuda/cuda_optimizer.h"
#endif

namespace og {

float adjusted_lr(float lr, AdjustLr rule, int64_t rows, int64_t cols) {
  switch (rule) {
    case AdjustLr::SpectralNorm: return (float)((double)lr * std::sqrt((double)rows / (double)cols));
    case AdjustLr::RmsNorm: return (float)((double)lr * 0.2 * std::sqrt((double)std::max(rows, cols)));
    case AdjustLr::None: return lr;
  }
  return lr;
}

void check_step_context(const StepContext& ctx, Algorithm a) {
  OG_CHECK(std::isfinite(ctx.lr) && ctx.lr >= 0.0f, "{}: learning rate {} at step {} must be finite and >= 0",
           name_of(a), ctx.lr, ctx.step);
  OG_CHECK(ctx.step >= 1, "{}: optimizer step {} must be >= 1", name_of(a), ctx.step);
}

std::vector<std::pair<size_t, size_t>> param_chunks(const std::vector<ParamSlot>& params, size_t max_floats) {
  std::vector<std::pair<size_t, size_t>> chunks;
  size_t begin = 0, total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (i > begin && total + params[i].numel() > max_floats) {
      chunks.emplace_back(begin, i);
      begin = i;
      total = 0;
    }
    total += params[i].numel();
  }
  if (begin < params.size()) chunks.emplace_back(begin, params.size());
  return chunks;
}

namespace {

bool in_unit(float x) { return std::isfinite(x) && x >= 0.0f && x < 1.0f; }  // [0, 1)

}  // namespace

void validate_optimizer(const OptimHParams& hp, const std::vector<ParamSlot>& params) {
  const char* alg = name_of(hp.algorithm);
  OG_CHECK(std::isfinite(hp.weight_decay) && hp.weight_decay >= 0.0f, "{}: weight_decay {} must be >= 0", alg,
           hp.weight_decay);
  OG_CHECK(std::isfinite(hp.eps) && hp.eps > 0.0f, "{}: epsilon {} must be > 0", alg, hp.eps);
  if (hp.algorithm == Algorithm::AdamW || hp.algorithm == Algorithm::Lion)
    OG_CHECK(in_unit(hp.betas[0]) && in_unit(hp.betas[1]), "{}: betas ({}, {}) must be in [0, 1)", alg, hp.betas[0],
             hp.betas[1]);
  if (is_matrix_algorithm(hp.algorithm)) {
    OG_CHECK(in_unit(hp.mu), "{}: mu {} must be in [0, 1)", alg, hp.mu);
    OG_CHECK(in_unit(hp.beta2), "{}: beta2 {} must be in [0, 1)", alg, hp.beta2);
  }
  if (hp.algorithm == Algorithm::Dion2 || hp.algorithm == Algorithm::NorDion2) {
    OG_CHECK(std::isfinite(hp.fraction) && hp.fraction > 0.0f && hp.fraction <= 1.0f,
             "{}: fraction {} must be in (0, 1]", alg, hp.fraction);
    OG_CHECK(std::isfinite(hp.ef_decay) && hp.ef_decay >= 0.0f && hp.ef_decay <= 1.0f,
             "{}: ef_decay {} must be in [0, 1]", alg, hp.ef_decay);
  }
  if (hp.algorithm == Algorithm::NorDion2)
    OG_CHECK(hp.select_dim != SelectDim::Cols,
             "nordion2: select_dim cols is not possible (NorDion2 always selects rows, one per output neuron)");
  if (hp.algorithm == Algorithm::Dion)
    OG_CHECK(std::isfinite(hp.rank_fraction) && hp.rank_fraction > 0.0f && hp.rank_fraction <= 1.0f,
             "dion: rank_fraction {} must be in (0, 1]", hp.rank_fraction);

  std::set<std::string> names;
  for (const ParamSlot& p : params) {
    OG_CHECK(names.insert(p.name).second, "{}: parameter '{}' appears twice in the group", alg, p.name);
    OG_CHECK(p.rows > 0 && p.cols > 0, "{}: parameter '{}' has an empty shape ({} x {})", alg, p.name, p.rows, p.cols);
    OG_CHECK(p.w && p.g, "{}: parameter '{}' has no weight or gradient buffer", alg, p.name);
    if (is_matrix_algorithm(hp.algorithm))
      OG_CHECK(p.role == ParamRole::Matrix,
               "{}: parameter '{}' has role '{}'; matrix algorithms take only hidden matrices "
               "(embedding, lm_head and vectors go to adamw or lion)",
               alg, p.name, role_name(p.role));
  }
}

std::unique_ptr<Optimizer> make_optimizer(const OptimHParams& hp, std::vector<ParamSlot> params, Device device) {
  validate_optimizer(hp, params);
  if (device == Device::CUDA) {
#ifdef ORTHOGPT_CUDA
    return make_cuda_optimizer(hp, std::move(params));
#else
    fail("{}: device cuda requested but orthogpt was built without CUDA", name_of(hp.algorithm));
#endif
  }
  switch (hp.algorithm) {
    case Algorithm::AdamW: return make_adamw_cpu(hp, std::move(params));
    case Algorithm::Lion: return make_lion_cpu(hp, std::move(params));
    case Algorithm::Muon: return make_muon_cpu(hp, std::move(params));
    case Algorithm::NorMuon: return make_normuon_cpu(hp, std::move(params));
    case Algorithm::Dion2: return make_dion2_cpu(hp, std::move(params));
    case Algorithm::NorDion2: return make_nordion2_cpu(hp, std::move(params));
    case Algorithm::Dion: return make_dion_cpu(hp, std::move(params));
  }
  fail("unknown algorithm {}", (int)hp.algorithm);
}

}  // namespace og
