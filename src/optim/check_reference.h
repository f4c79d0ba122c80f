// check-reference: run our optimizers on the PyTorch reference's cross-check cases and compare.
// Per case and step t: W is re-synced to the reference W{t-1} (our optimizer carries its own
// state), G{t} is fed, and our update ΔW = W_ours − W{t-1} is compared with the reference
// ΔW = W{t} − W{t-1} by ‖ΔW_ours − ΔW_ref‖ / ‖ΔW_ref‖ per parameter. Where the case holds
// momentum{t}_i / variance{t}_i, our state after step t is compared the same way.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "optim/optimizer.h"
#include "optim/reference_case.h"

namespace og {

// Tolerance on the per-step update error: 1e-4 for AdamW and Lion (fp32 elementwise math on
// both sides), and for the matrix algorithms, whose reference runs NS in bf16, 6e-2 with Polar
// Express and 5e-2 otherwise.
double update_tolerance(const OptimHParams& hp);
// Tolerance on the state arrays (momentum, variance): 1e-4 (fp32 state), 1e-2 (bf16 state).
double state_tolerance(const OptimHParams& hp);

struct ReferenceCheck {
  std::string name;
  Algorithm algorithm = Algorithm::AdamW;
  double worst_update = 0.0;  // worst per-step, per-parameter relative error of ΔW
  int64_t worst_step = 0;
  int worst_param = 0;
  double worst_state = -1.0;  // worst relative error of a state array; < 0: the case has none
  std::string worst_state_array;
  double update_tol = 0.0, state_tol = 0.0;
  bool pass = false;
};

ReferenceCheck check_reference_case(const ReferenceCase& c, Device device);

// Check every case folder, print one line per case (name, algorithm, worst per-step error,
// tolerance, PASS/FAIL; an unreadable case is a FAIL line with the error) and return 0 if all
// pass, 1 otherwise.
int run_check_reference(const std::vector<std::string>& case_dirs, Device device, std::FILE* out);

}  // namespace og
