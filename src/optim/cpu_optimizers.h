// The CPU reference optimizers: one factory per algorithm (make_optimizer validates the
// hyperparameters and the parameter roles, then dispatches here), and the few helpers they share.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "optim/optimizer.h"

namespace og {

std::unique_ptr<Optimizer> make_adamw_cpu(const OptimHParams& hp, std::vector<ParamSlot> params);
std::unique_ptr<Optimizer> make_lion_cpu(const OptimHParams& hp, std::vector<ParamSlot> params);
std::unique_ptr<Optimizer> make_muon_cpu(const OptimHParams& hp, std::vector<ParamSlot> params);
std::unique_ptr<Optimizer> make_normuon_cpu(const OptimHParams& hp, std::vector<ParamSlot> params);
std::unique_ptr<Optimizer> make_dion2_cpu(const OptimHParams& hp, std::vector<ParamSlot> params);
std::unique_ptr<Optimizer> make_nordion2_cpu(const OptimHParams& hp, std::vector<ParamSlot> params);

// make_optimizer's checks of a group (hyperparameter ranges, shapes, roles, buffers), for
// factories that build optimizers another way (distributed_optimizer.h).
void validate_optimizer(const OptimHParams& hp, const std::vector<ParamSlot>& params);

// Throws og::Error unless ctx has a finite lr >= 0 and a step >= 1.
void check_step_context(const StepContext& ctx, Algorithm a);

// A host fp32 state tensor. bf16 state on the CPU is stored as fp32 values rounded to bf16, so
// the view is always F32 (convert when moving state to a backend that stores uint16).
inline StateTensor host_state(const std::string& param, const char* what, std::vector<float>& v) {
  return StateTensor{param + "/" + what, v.data(), v.size(), StateDtype::F32, Device::CPU};
}

// Consecutive ranges [begin, end) of params whose sizes add up to at most max_floats (a range
// holds at least one param): the matrix optimizers orthonormalize a range as one batch with a
// bounded scratch buffer.
std::vector<std::pair<size_t, size_t>> param_chunks(const std::vector<ParamSlot>& params, size_t max_floats);

}  // namespace og
