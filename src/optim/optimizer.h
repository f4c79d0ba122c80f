// The optimizer interface. An Optimizer applies one algorithm to one parameter group; the
// trainer holds one per group (optim/param_groups.h). The same interface serves both backends:
// for a CPU optimizer the pointers are host memory, for a CUDA optimizer device memory.
#pragma once
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/param_layout.h"
#include "optim/hparams.h"

namespace og {

enum class Device { CPU, CUDA };

// One parameter as an optimizer sees it. rows/cols are those of the WHOLE parameter (lr_eff and
// the selection dimension come from the whole shape).
struct ParamSlot {
  std::string name;
  ParamRole role = ParamRole::Matrix;
  int64_t rows = 0, cols = 0;
  float* w = nullptr;        // fp32 master weights, rows*cols, row-major
  const float* g = nullptr;  // gradient, same layout
  size_t numel() const { return (size_t)rows * (size_t)cols; }
  // Under FSDP this rank holds rows [row0, row0 + local_rows) of the whole rows x cols parameter
  // and w / g point at that shard (local_rows x cols). Replicated parameters: row0 = 0, local_rows = rows.
  int64_t row0 = 0, local_rows = -1;  // -1: the whole parameter (local_rows = rows)
  int64_t shard_rows() const { return local_rows < 0 ? rows : local_rows; }
};

struct StepContext {
  int64_t step = 1;  // optimizer step, 1-based (AdamW bias correction, random selection)
  float lr = 0.0f;   // this group's scheduled learning rate (before any shape adjustment)
};

// A view of one state tensor, for checkpoints, cross-rank synchronization and tests.
// dtype is F32 (data points at floats) or BF16 (uint16 storage), count is in elements.
struct StateTensor {
  std::string name;  // e.g. "h.0.attn.q/momentum"
  void* data = nullptr;
  size_t count = 0;
  StateDtype dtype = StateDtype::F32;
  Device device = Device::CPU;
  // The same on every FSDP rank (a counter, Dion's Q of a tall matrix) rather than the rows of
  // this rank's parameter shard: re-sharding copies it instead of slicing it by rows.
  bool replicated = false;
  size_t bytes() const { return count * (dtype == StateDtype::F32 ? 4 : 2); }
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual Algorithm algorithm() const = 0;
  virtual void step(const StepContext& ctx) = 0;
  // Every state tensor, in a fixed order (momentum, variance, Q, step counters as floats, ...).
  virtual std::vector<StateTensor> state() = 0;
  // Diagnostics of the last step when hparams.diagnostics is on (e.g. "select_mass": fraction of
  // the momentum's l1 mass in the selected slices, averaged over the group's matrices).
  virtual std::map<std::string, double> stats() const { return {}; }
  // Make the state identical on every data-parallel rank (a collective: every rank calls it).
  // Only optimizers whose state may diverge between ranks do anything (the distributed Dion2
  // under dist.compressed_sync averages its momenta); the trainer calls it before checkpoints.
  virtual void synchronize_state() {}
};

// Build the optimizer for `params` (all on `device`). Throws og::Error for a combination that
// makes no sense (a matrix algorithm given a vector, fraction outside (0, 1], ...).
std::unique_ptr<Optimizer> make_optimizer(const OptimHParams& hp, std::vector<ParamSlot> params,
                                          Device device = Device::CPU);

// lr_eff of a matrix algorithm for a (rows, cols) parameter (OPTIMIZERS.md, adjust_lr).
float adjusted_lr(float lr, AdjustLr rule, int64_t rows, int64_t cols);

}  // namespace og
