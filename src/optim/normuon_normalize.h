// NorMuon's neuron-wise normalization of an orthonormalized update (OPTIMIZERS.md "NorMuon"),
// shared by NorMuon (all rows) and NorDion2 (the k selected rows only):
//   f   = ‖O‖_F
//   n_i = mean_j O_ij²                       per row of O
//   V_r ← V_r + (1 − β2)·(n_i − V_r)          r = the parameter row of O's row i (no bias correction)
//   Ô   = O / (√V_r + 1e-8)                   1e-8 hard-coded as in the reference
//   Ô   ← Ô · f / max(‖Ô‖_F, 1e-8)            Frobenius norm restored (clamp avoids 0/0)
// Math in double on fp32 storage; the normalization uses the fresh fp32 V even when the stored V
// is rounded to bf16 (as the reference computes in fp32 and casts on the write-back).
#pragma once
#include <cstdint>

namespace og {

// O: k x cols dense, normalized in place. V: the parameter's rows x 1 second moment; row i of O
// belongs to parameter row rows_of_o[i] (nullptr: row i). bf16_state: round stored V to bf16.
void normuon_normalize(float* o, int64_t k, int64_t cols, float* v, const int64_t* rows_of_o, double beta2,
                       bool bf16_state);

}  // namespace og
