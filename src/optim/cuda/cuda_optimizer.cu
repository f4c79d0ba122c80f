// make_cuda_optimizer: checks the hyperparameters every algorithm shares and dispatches to the
// CUDA implementation of hp.algorithm.
#include "optim/cuda/cuda_optimizer.h"

#include "core/cuda_utils.h"
#include "core/error.h"
#include "optim/cuda/dion2_optimizer.h"
#include "optim/cuda/dion_cuda.h"
#include "optim/cuda/muon_optimizer.h"
#include "optim/cuda/scalar_optimizers.h"

namespace og {

std::unique_ptr<CudaOptimizer> make_cuda_optimizer(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                   const CudaOptimOptions& options) {
  OG_CHECK(cuda_available(), "{}: no CUDA device available", name_of(hp.algorithm));
  for (const ParamSlot& p : params)
    OG_CHECK(p.rows >= 1 && p.cols >= 1 && p.w && p.g, "{}: parameter '{}' ({}x{}) has no data", name_of(hp.algorithm),
             p.name, p.rows, p.cols);
  switch (hp.algorithm) {
    case Algorithm::AdamW:
    case Algorithm::Lion: return cuda::make_cuda_scalar_optimizer(hp, std::move(params), options);
    case Algorithm::Muon:
    case Algorithm::NorMuon: return cuda::make_cuda_muon(hp, std::move(params), options);
    case Algorithm::Dion2:
    case Algorithm::NorDion2: return cuda::make_cuda_dion2(hp, std::move(params), options);
    case Algorithm::Dion: return cuda::make_cuda_dion(hp, std::move(params), options);
  }
  fail("unknown optimizer algorithm {}", (int)hp.algorithm);
}

}  // namespace og
