// Hyperparameters of one optimizer group: everything OPTIMIZERS.md lets a user choose.
// Filled from the YAML config (train/config) or from a reference manifest (check-reference).
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace og {

enum class Algorithm { AdamW, Lion, Muon, NorMuon, Dion2, NorDion2, Dion };
enum class AdjustLr { SpectralNorm, RmsNorm, None };
enum class Ortho { NewtonSchulz, PolarExpress };
enum class Select { L1, Random };
enum class SelectDim { Shorter, Rows, Cols };
enum class StateDtype { F32, BF16 };

// Parse / print the names used in configs and manifests ("dion3" is an alias of nordion2,
// "newton_schulz5" of newton_schulz). Unknown names throw og::Error listing the valid ones.
Algorithm parse_algorithm(const std::string& s);
AdjustLr parse_adjust_lr(const std::string& s);
Ortho parse_ortho(const std::string& s);
Select parse_select(const std::string& s);
SelectDim parse_select_dim(const std::string& s);
StateDtype parse_state_dtype(const std::string& s);
const char* name_of(Algorithm a);
const char* name_of(AdjustLr a);
const char* name_of(Ortho o);
const char* name_of(Select s);
const char* name_of(SelectDim s);
const char* name_of(StateDtype s);
bool is_matrix_algorithm(Algorithm a);  // muon, normuon, dion2, nordion2, dion

struct OptimHParams {
  Algorithm algorithm = Algorithm::AdamW;
  float weight_decay = 0.0f;  // decoupled: W <- W * (1 - lr * wd), unadjusted lr
  // scalar algorithms (AdamW, Lion)
  std::array<float, 2> betas = {0.9f, 0.95f};
  float eps = 1e-8f;  // AdamW epsilon; also the NS normalization epsilon of matrix algorithms
  // matrix algorithms
  float mu = 0.95f;
  bool nesterov = false;
  AdjustLr adjust_lr = AdjustLr::SpectralNorm;
  Ortho ortho = Ortho::NewtonSchulz;
  float beta2 = 0.95f;  // NorMuon / NorDion2 neuron-wise second moment
  // Dion2 / NorDion2
  float fraction = 0.25f;
  Select select = Select::L1;
  SelectDim select_dim = SelectDim::Shorter;
  bool ef = true;          // selective decay of the selected slices (paper); off: decay all of M
  float ef_decay = 0.95f;  // Dion2's decay; NorDion2 uses mu
  // Dion
  float rank_fraction = 0.25f;
  int cqr_warmup_steps = 0;  // plain Cholesky-QR allowed after this many steps (QR before)
  // state storage
  StateDtype state_dtype = StateDtype::F32;
  uint64_t seed = 0;         // random selection, Dion's Q init and sketches
  bool diagnostics = false;  // compute per-step statistics (selection mass, ...)
};

}  // namespace og
