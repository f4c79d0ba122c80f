// NorMuon's neuron-wise normalization (OPTIMIZERS.md "NorMuon"), shared by NorMuon (all rows) and
// NorDion2 (the k selected rows): for a batch of `count` row-major k×L bf16 matrices O_q,
//   n_j = mean_l O_jl²;   V[r_j] ← V[r_j] + (1 − β2)·(n_j − V[r_j])
//   factor_j = s_q / (sqrt(V[r_j]) + 1e-8),   s_q = ‖O_q‖_F / max(‖O_q / (sqrt(V)+1e-8)‖_F, 1e-8)
// where r_j = sel_q[j] (or j without a selection). The update then uses factor_j · O_jl.
#pragma once
#include <cstdint>

#include "optim/cuda/blas.h"
#include "optim/hparams.h"

namespace og::cuda {

struct NeuronNormDesc {
  void* v;             // this parameter's V (one value per parameter row), fp32 or bf16
  const int32_t* sel;  // selected rows (k of them), or nullptr: row j is parameter row j
};

// o: count·k·L contiguous; descs: device array of count; rowsq: scratch of count·k floats;
// factors: output, count·k floats. Two launches, no host synchronization.
void neuron_norm_factors(cudaStream_t stream, const bf16* o, int count, int64_t k, int64_t L,
                         const NeuronNormDesc* descs, StateDtype v_dtype, float beta2, float* rowsq, float* factors);

}  // namespace og::cuda
